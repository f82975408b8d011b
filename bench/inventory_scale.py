"""Inventory at scale (issue #8): memory, gap-detection cost with quiet points, cost per reading.

Measures, each case in a fresh subprocess (so RSS figures do not mix):
- ``rss``: RSS of an `Inventory` with N configured points (10 sites × 100 assets × N/1,000
  points, one device per asset) after one Good reading per point and a tick, and the peak;
  the interpreter with the same imports but no inventory is the baseline. Also a full gateway
  process (``python -m gateway run``) with N configured Modbus points whose devices are down
  (nothing listens), points from a CSV point file (``gateway_yaml``: inline YAML): every
  point goes offline and gets a `device_offline` gap; RSS read from /proc 60 s after all
  gaps are open (steady state), and the peak of the whole run. This is the whole gateway (config models, connectors, store, inventory).
- ``tick``: CPU per `Inventory.tick` (the runtime calls it every 0.25 s) with N healthy,
  quiet points (their deadlines lie ahead: interval 10 s, fed every interval, tick at 4 Hz
  of simulated time; feeding, and collecting its garbage, is not counted), and
  `tick_examined` (heap entries and points looked at); the same with N silent
  report-by-exception points kept fresh by keep-alives (`device_alive` every 0.5 s for each of
  the 1,000 devices, counted with the ticks). Per-tick CPU is averaged over the second half
  of the simulated minute, after the first deadline horizon (25 s) in which every quiet RBE
  point is parked once (that tick's cost is reported separately).
- ``observe``: CPU per reading through `Inventory.observe` (batches of 1,000 Good readings
  in arrival order, N points), and per call of the views the API serves (`sites`,
  ``assets(with_points=False)``, `devices`, and ``assets()`` with every point) and of the
  coverage computation `/metrics` refreshes (by site and by asset, store count excluded).

Time is simulated (no sleeping); CPU is `time.process_time` of the measuring process. Single
process, so figures are per core. Usage:

    .venv/bin/python bench/inventory_scale.py [--points 1000,10000,100000] [--runs 3]
        [--no-gateway]

Prints Markdown tables (min / median / max over the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL = 10.0  # expected interval of every point [s]
TICK_S = 0.25  # as gateway.runtime.TICK_S [s]
SETTLE_S = 60.0  # wait after every gap is open before reading the gateway's RSS [s]


def _rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process [KiB]."""
    fields: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def _spec(n: int, *, rbe: bool = False) -> Any:
    from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec

    per_asset = max(1, n // 1000)
    assets = [(f"site-{i // 100}", f"asset-{i % 100}") for i in range(max(1, n // per_asset))]
    return InventorySpec(
        sites=tuple(SiteSpec(s) for s in dict.fromkeys(s for s, _ in assets)),
        assets=tuple(AssetSpec(s, a, f"Asset {a}", "pump") for s, a in assets),
        points=tuple(
            PointSpec(s, a, f"p{p}", f"dev-{s}-{a}", INTERVAL, "Cel",
                      f"modbus://127.0.0.1:502/1/hr/{p}", report_by_exception=rbe)
            for s, a in assets for p in range(per_asset)
        ),
        devices=tuple(DeviceSpec(f"dev-{s}-{a}", "modbus", "127.0.0.1:502") for s, a in assets),
    )


def _readings(spec: Any, t: datetime) -> list[Any]:
    from gateway.model import Reading

    return [Reading(p.site, p.asset, p.point, 20.0, "Cel", 0, t, t, p.source) for p in spec.points]


# -- cases (run in a child process) ----------------------------------------------------------


def case_rss(n: int) -> dict[str, float]:
    import gateway.model  # noqa: F401 - the same imports as with an inventory
    import inventory.inventory

    base, _ = _rss_kib()
    spec = _spec(n)
    inv = inventory.inventory.Inventory(spec, now=T0)
    for d in spec.devices:
        inv.link_up(d.id, T0)
    t = T0 + timedelta(seconds=1)
    readings = _readings(spec, t)
    for i in range(0, len(readings), 1000):
        inv.observe(readings[i : i + 1000])
    del readings
    inv.tick(t)
    rss, peak = _rss_kib()
    return {"base_mib": base / 1024, "rss_mib": rss / 1024, "peak_mib": peak / 1024,
            "bytes_per_point": (rss - base) * 1024 / n}


def case_tick(n: int, rbe: bool) -> dict[str, float]:
    import gc

    from inventory.inventory import Inventory

    spec = _spec(n, rbe=rbe)
    inv = Inventory(spec, now=T0)
    devices = [d.id for d in spec.devices]
    for d in devices:
        inv.link_up(d, T0)
    readings = _readings(spec, T0)
    per_tick = max(1, int(len(readings) * TICK_S / INTERVAL))
    from gateway.model import Reading

    cpu: list[float] = []
    examined: list[int] = []
    t = 0.0
    fed = 0
    inv.observe(readings)
    steps = int(60 / TICK_S)  # one simulated minute (several deadline horizons)
    for _ in range(steps):
        t += TICK_S
        now = T0 + timedelta(seconds=t)
        if not rbe:  # polled points: every point gets a reading each interval (not counted)
            batch = [Reading(r.site, r.asset, r.point, 20.0, "Cel", 0, now, now, r.source)
                     for r in readings[fed : fed + per_tick]]
            fed = (fed + per_tick) % len(readings)
            inv.observe(batch)
        gc.collect(0)  # the fed readings are garbage: do not bill their collection to the tick
        gc.disable()
        c0 = time.process_time()
        if rbe and int(t / TICK_S) % 2 == 0:  # keep-alives every 0.5 s, no value changes
            for d in devices:
                inv.device_alive(d, now)
        gaps = inv.tick(now)
        cpu.append(time.process_time() - c0)
        gc.enable()
        assert gaps == [], "a healthy point went stale"
        examined.append(inv.tick_examined)
    # After the first deadline horizon (25 s): by then quiet RBE points have been parked once.
    half = len(examined) // 2
    return {"us_per_tick": statistics.fmean(cpu[half:]) * 1e6,
            "ms_first_horizon": max(cpu[:half]) * 1e3,
            "examined_max": max(examined[half:]),
            "examined_mean": statistics.fmean(examined[half:]),
            "parked": float(getattr(inv, "parked_count", 0))}


def case_observe(n: int) -> dict[str, float]:
    from gateway.model import Reading
    from inventory.inventory import Inventory

    spec = _spec(n)
    inv = Inventory(spec, now=T0)
    for d in spec.devices:
        inv.link_up(d.id, T0)
    keys = [(p.site, p.asset, p.point, p.source) for p in spec.points]
    total = max(200_000, n)
    cpu = 0.0
    done = 0
    t = 0.0
    while done < total:
        t += 0.1
        now = T0 + timedelta(seconds=t)
        start = done % n
        batch = [Reading(s, a, p, 20.0, "Cel", 0, now, now, src)
                 for s, a, p, src in keys[start : start + 1000]]
        c0 = time.process_time()
        inv.observe(batch)
        cpu += time.process_time() - c0
        done += len(batch)
    now = T0 + timedelta(seconds=t)
    inv.tick(now)
    out = {"us_per_reading": cpu / done * 1e6}

    def timed(fn: Any, reps: int) -> float:
        c0 = time.process_time()
        for _ in range(reps):
            fn()
        return (time.process_time() - c0) / reps * 1e3

    summary = getattr(inv, "summary_version", None) is not None
    out["ms_sites"] = timed(lambda: inv.sites(now), 50)
    if summary:
        out["ms_assets_summary"] = timed(lambda: inv.assets(now, with_points=False), 50)
    out["ms_devices"] = timed(lambda: inv.devices(now), 20)
    received = {p.key: 10 for p in spec.points}
    out["ms_coverage"] = timed(lambda: [inv.coverage(
        received, window_start=now - timedelta(hours=1), now=now, monitored_since=T0,
        group_by=g) for g in ("site", "asset")], 5)
    out["ms_assets_full"] = timed(lambda: inv.assets(now), 3)
    return out


# -- full gateway with N configured points on devices that are down --------------------------


def gateway_rss(n: int, csv_points: bool = True) -> dict[str, float]:
    """RSS of `python -m gateway run` with N configured points whose devices are down.

    The points come from a CSV point file (`point_files`, the format plant tools export) or,
    with ``csv_points=False``, inline in the YAML.
    """
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import yaml

    per_device = 100
    devices = max(1, n // per_device)
    with tempfile.TemporaryDirectory(prefix="otgw-invscale-") as tmp:

        def points(d: int) -> list[dict[str, Any]]:
            return [{"id": f"p{p}", "device": f"d{d}", "register": "holding", "address": p,
                     "type": "uint16"} for p in range(per_device)]

        cfg: dict[str, Any] = {
            "gateway": {"name": "scale", "data_dir": str(Path(tmp) / "data")},
            "api": {"host": "127.0.0.1", "port": 0},
            "devices": [{"id": f"d{d}", "host": "127.0.0.1", "port": port,
                         "poll_interval": INTERVAL, "timeout": 1.0} for d in range(devices)],
            "sites": [{"id": f"site-{s}", "assets": [
                {"id": f"asset-{d}"} | ({} if csv_points else {"points": points(d)})
                for d in range(s, devices, 10)]} for s in range(min(10, devices))],
        }
        if csv_points:
            rows = ["site,asset,point,device,register,address,type"]
            rows += [f"site-{d % 10},asset-{d},p{p},d{d},holding,{p},uint16"
                     for d in range(devices) for p in range(per_device)]
            (Path(tmp) / "points.csv").write_text("\n".join(rows) + "\n")
            cfg["point_files"] = ["points.csv"]
        path = Path(tmp) / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        ready = Path(tmp) / "ready.json"
        log = (Path(tmp) / "gw.log").open("wb")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(path), "--api-port", "0",
             "--ready-file", str(ready), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        try:
            import httpx

            deadline = time.monotonic() + 300
            while not ready.exists() or not ready.read_text().strip():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not start: {proc.returncode}")
                time.sleep(0.2)
            started = time.perf_counter() - t0
            api = f"http://127.0.0.1:{json.loads(ready.read_text())['api_port']}"
            while True:  # every point offline with its gap open
                m = httpx.get(api + "/metrics", timeout=60).text
                line = next(ln for ln in m.splitlines() if ln.startswith("otgw_open_gaps "))
                if float(line.split()[1]) >= n:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("gaps did not open in time")
                time.sleep(1.0)
            # Steady state: startup's transients (config models, every point going Bad, the
            # gap storm, the first reconnect rounds) are freed and handed back (`gateway.heap`
            # trims every 30 s); sampled every 5 s the RSS settles ≈ 35-40 s after the gaps
            # open (291 -> 281 MiB at 100k points). `peak_mib` is the whole run's high-water mark.
            time.sleep(SETTLE_S)
            with open(f"/proc/{proc.pid}/status") as f:
                status = {k: v for k, _, v in (ln.partition(":") for ln in f)}
            return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024,
                    "peak_mib": int(status["VmHWM"].split()[0]) / 1024,
                    "start_s": started}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()


# -- driver ------------------------------------------------------------------------------------


def child(case: str, n: int) -> dict[str, float]:
    """Run one case in a fresh interpreter; its JSON result."""
    out = subprocess.run(
        [sys.executable, __file__, "--case", case, "--n", str(n)],
        check=True, capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float], fmt: str) -> str:
    """min / median / max."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values),
                                                 max(values)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-gateway", action="store_true", help="skip the full gateway RSS")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        sys.path.insert(0, str(ROOT))
        fn = {"rss": lambda n: case_rss(n), "tick": lambda n: case_tick(n, False),
              "tick_rbe": lambda n: case_tick(n, True), "observe": case_observe,
              "gateway": gateway_rss,
              "gateway_yaml": lambda n: gateway_rss(n, csv_points=False)}[args.case]
        print(json.dumps(fn(args.n)))
        return
    sizes = [int(x) for x in args.points.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    cases = ["rss", "tick", "tick_rbe", "observe"] + ([] if args.no_gateway else ["gateway"])
    for _ in range(args.runs):
        for case in cases:
            for n in sizes:
                results.setdefault((case, n), []).append(child(case, n))

    def col(case: str, n: int, key: str, fmt: str) -> str:
        rows = [r[key] for r in results[(case, n)] if key in r]
        return spread(rows, fmt) if rows else "n/a"

    print(f"\nInventory scale; {args.runs} runs each, min / median / max; python "
          f"{sys.version.split()[0]}\n")
    print("| points | inventory RSS (MiB) | per point (bytes) | interpreter baseline (MiB) |"
          + ("" if args.no_gateway else " gateway RSS (MiB), all points offline | peak |"))
    print("|---|---|---|---|" + ("" if args.no_gateway else "---|---|"))
    for n in sizes:
        gw = "" if args.no_gateway else (
            f" {col('gateway', n, 'rss_mib', '.0f')} | {col('gateway', n, 'peak_mib', '.0f')} |")
        print(f"| {n:,} | {col('rss', n, 'rss_mib', '.0f')} | "
              f"{col('rss', n, 'bytes_per_point', '.0f')} | "
              f"{col('rss', n, 'base_mib', '.0f')} |" + gw)
    print("\n| points | CPU per tick, quiet polled (µs) | tick_examined max | "
          "CPU per tick + keep-alives, quiet RBE (µs) | RBE tick_examined max | parked | "
          "RBE: largest tick of the first 25 s (ms) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        print(f"| {n:,} | {col('tick', n, 'us_per_tick', '.1f')} | "
              f"{col('tick', n, 'examined_max', '.0f')} | "
              f"{col('tick_rbe', n, 'us_per_tick', '.1f')} | "
              f"{col('tick_rbe', n, 'examined_max', '.0f')} | "
              f"{col('tick_rbe', n, 'parked', '.0f')} | "
              f"{col('tick_rbe', n, 'ms_first_horizon', '.1f')} |")
    print("\n| points | observe (µs per reading) | sites (ms) | assets summary (ms) | "
          "devices (ms) | assets with points (ms) | coverage by site + by asset (ms) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        print(f"| {n:,} | {col('observe', n, 'us_per_reading', '.2f')} | "
              f"{col('observe', n, 'ms_sites', '.3f')} | "
              f"{col('observe', n, 'ms_assets_summary', '.3f')} | "
              f"{col('observe', n, 'ms_devices', '.3f')} | "
              f"{col('observe', n, 'ms_assets_full', '.1f')} | "
              f"{col('observe', n, 'ms_coverage', '.1f')} |")


if __name__ == "__main__":
    main()
