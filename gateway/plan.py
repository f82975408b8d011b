"""`ot-gateway plan FILE`: what will be polled, per device and in total."""

from __future__ import annotations

from connectors.modbus.plan import PlanInfo, build_plan, describe_plan
from gateway.config import GatewayConfig
from gateway.runtime import device_points


def plan_config(cfg: GatewayConfig) -> list[PlanInfo]:
    """The request plan of every device, in config order."""
    points = device_points(cfg)
    return [describe_plan(dev, build_plan(dev, points[dev.id])) for dev in cfg.devices]


def render_plan(cfg: GatewayConfig) -> str:
    """A human-readable plan: one block per device, one line per request, then totals."""
    lines: list[str] = []
    total_req = total_samples = 0.0
    for info in plan_config(cfg):
        lines.append(
            f"device {info['device']} ({info['endpoint']}): {info['points']} points, "
            f"{info['requests']} requests, {info['registers']} registers/bits per cycle, "
            f"{info['requests_per_s']:.2f} requests/s, {info['samples_per_s']:.2f} samples/s"
        )
        for group in info["groups"]:
            lines.append(f"  every {group['poll_interval_s']:g} s:")
            for r in group["requests"]:
                what = "bits" if r["function_code"] in (1, 2) else "registers"
                lines.append(
                    f"    unit {r['unit_id']} FC{r['function_code']} {r['table']:<8} "
                    f"{r['start']:>5}..{r['start'] + r['count'] - 1:<5} "
                    f"{r['count']:>4} {what}, {r['points']} points"
                )
            for key in group["rejected"]:
                lines.append(f"    not polled (no valid request): {key}")
        total_req += info["requests_per_s"]
        total_samples += info["samples_per_s"]
    lines.append(
        f"total: {len(cfg.devices)} devices, {total_req:.2f} requests/s, "
        f"{total_samples:.2f} samples/s expected"
    )
    return "\n".join(lines)
