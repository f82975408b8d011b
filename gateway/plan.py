"""`ot-gateway plan FILE`: what will be acquired, per device and in total."""

from __future__ import annotations

from connectors.modbus.config import ModbusDeviceConfig
from connectors.modbus.plan import ModbusPoint, PlanInfo, build_plan, describe_plan
from gateway.config import GatewayConfig
from gateway.runtime import device_points


def plan_config(cfg: GatewayConfig) -> list[PlanInfo]:
    """The request plan of every Modbus device, in config order."""
    points = device_points(cfg)
    return [
        describe_plan(
            dev, build_plan(dev, [p for p in points[dev.id] if isinstance(p, ModbusPoint)])
        )
        for dev in cfg.devices
        if isinstance(dev, ModbusDeviceConfig)
    ]


def _other_devices(cfg: GatewayConfig) -> list[str]:
    """One line per OPC UA / MQTT device: how its points are acquired."""
    lines = []
    for dev in cfg.devices:
        if isinstance(dev, ModbusDeviceConfig):
            continue
        points = [p for _, _, p in cfg.iter_points() if p.device == dev.id]
        rbe = sum(1 for p in points if cfg.report_by_exception(p))
        if dev.protocol == "opcua":
            lines.append(
                f"device {dev.id} ({dev.endpoint}): {len(points)} points, {rbe} by subscription "
                f"(report by exception), {len(points) - rbe} polled"
            )
        else:
            lines.append(
                f"device {dev.id} ({dev.endpoint}): {len(points)} configured points fed by "
                "subscriptions (the publisher sets the rate)"
            )
    return lines


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
    lines.extend(_other_devices(cfg))
    lines.append(
        f"total: {len(cfg.devices)} devices, {total_req:.2f} requests/s, "
        f"{total_samples:.2f} samples/s expected"
    )
    return "\n".join(lines)
