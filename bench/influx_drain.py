"""Forwarding to InfluxDB (victoria-metrics): backlog drain rate, RSS, steady-state CPU cost.

Two measurements, each with the gateway as its own process (`python -m gateway run`) and
Debian's victoria-metrics (InfluxDB v2 write API) as another, CPU and RSS read from /proc for
the gateway PID only:

1. drain: a store pre-filled with a backlog of N readings (default 1,000,000: 1,000 points ×
   1,000 readings), a gateway with no devices and one sink: time from the gateway being ready
   to the sink's backlog reaching 0 (readings/s), gateway RSS during the drain (peak VmHWM and
   VmRSS at ready), and a read-back count from victoria-metrics.
2. steady state: the simulator (D devices × R uint16 registers @ 1 s) polled by the gateway
   for a window, once without a sink and once with one; the extra gateway CPU seconds per
   1,000 readings is the cost of forwarding.

Usage: .venv/bin/python bench/influx_drain.py [--readings 1000000] [--window 30]
Prints Markdown tables (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_seconds, metric, ot_gateway, start_gateway, status_mb, stop  # noqa: E402

from gateway.model import Reading  # noqa: E402
from gateway.store import Store  # noqa: E402
from tests.vm_helpers import VictoriaMetrics  # noqa: E402


def sink_cfg(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "influxdb", "name": "vm", "url": url, "org": "bench", "bucket": "bench",
            "batch_size": 5000, "flush_interval": 1.0, "timeout": 30, "max_retry_delay": 5,
            **extra}


async def prefill(db: Path, n: int, points: int) -> None:
    store = await Store.open(db, retention_hours=24 * 365, max_bytes=2**40)
    t0 = datetime.now(UTC) - timedelta(seconds=n // points + 60)
    chunk: list[Reading] = []
    for i in range(n):
        t = t0 + timedelta(seconds=i // points)
        chunk.append(Reading("bench", f"a{i % points // 100}", f"p{i % points}", float(i % 10007),
                             "Cel", 0, t, t, "bench://"))
        if len(chunk) == 50_000:
            await store.append(chunk)
            chunk = []
    if chunk:
        await store.append(chunk)
    await store.close()


def drain(n: int, points: int, batch: int, work: Path) -> dict[str, float]:
    data = work / "drain"
    data.mkdir()
    t = time.perf_counter()
    asyncio.run(prefill(data / "gateway.db", n, points))
    print(f"prefilled {n} readings in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    with VictoriaMetrics(work / "vm-drain") as vm:
        cfg = {"gateway": {"data_dir": str(data)}, "api": {"host": "127.0.0.1", "port": 0},
               "store": {"max_bytes": 2**40, "retention_hours": 24 * 365},
               "sinks": [sink_cfg(vm.url, batch_size=batch)]}
        proc, url = start_gateway(cfg, work, "drain")
        t_ready = time.perf_counter()
        rss_ready = status_mb(proc.pid, "VmRSS")
        cpu0 = cpu_seconds(proc.pid)
        rss_samples = []
        try:
            while True:
                backlog = metric(url, 'otgw_sink_backlog_records{sink="vm"}')
                rss_samples.append(status_mb(proc.pid, "VmRSS"))
                if backlog == 0 and metric(url, 'otgw_sink_written_total{sink="vm"}') >= n:
                    break
                if time.perf_counter() - t_ready > 1800:
                    raise SystemExit("drain did not finish in 30 min")
                time.sleep(0.1)
            elapsed = time.perf_counter() - t_ready
            cpu = cpu_seconds(proc.pid) - cpu0
            peak = status_mb(proc.pid, "VmHWM")
        finally:
            stop(proc)
        count = 0
        deadline = time.monotonic() + 30
        while count < n and time.monotonic() < deadline:
            vm.flush()
            time.sleep(0.5)
            count = sum(len(s["values"]) for s in vm.export_raw('{__name__="reading_quality"}'))
    return {"readings": n, "seconds": elapsed, "rate": n / elapsed, "cpu_s": cpu,
            "cpu_per_1000": cpu / n * 1000, "rss_ready": rss_ready,
            "rss_max": max(rss_samples), "peak_hwm": peak, "read_back": count}


def steady(devices: int, registers: int, window: float, with_sink: bool, work: Path,
           vm: VictoriaMetrics) -> dict[str, float]:
    tag = "sink" if with_sink else "nosink"
    profile = {"seed": 1, "devices": [
        {"id": f"d{i}", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "faults": [],
         "registers": [{"table": "holding", "address": a, "type": "uint16",
                        "signal": {"kind": "counter", "period": 1}} for a in range(registers)]}
        for i in range(devices)]}
    prof = work / f"sim-{tag}.yaml"
    prof.write_text(yaml.safe_dump(profile))
    ready = work / f"sim-{tag}.ready.json"
    sim = subprocess.Popen([*ot_gateway(), "simulate", "-c", str(prof), "--ready-file",
                            str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text().strip()):
            if sim.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("simulator did not start")
            time.sleep(0.05)
        ports = {d: v["port"] for d, v in json.loads(ready.read_text())["devices"].items()}
        cfg: dict[str, Any] = {
            "gateway": {"data_dir": str(work / f"steady-{tag}")},
            "api": {"host": "127.0.0.1", "port": 0},
            "devices": [{"id": d, "host": "127.0.0.1", "port": p, "poll_interval": 1.0,
                         "timeout": 0.5} for d, p in ports.items()],
            "sites": [{"id": "s", "assets": [{"id": d, "points": [
                {"id": f"r{a}", "device": d, "register": "holding", "address": a,
                 "type": "uint16"} for a in range(registers)]} for d in ports]}],
        }
        if with_sink:
            cfg["sinks"] = [sink_cfg(vm.url)]
        proc, url = start_gateway(cfg, work, f"steady-{tag}")
        try:
            time.sleep(5)  # warm-up
            c0, n0, t0 = cpu_seconds(proc.pid), metric(url, "otgw_readings_committed_total"), time.perf_counter()
            w0 = metric(url, 'otgw_sink_written_total{sink="vm"}')
            time.sleep(window)
            c1, n1, t1 = cpu_seconds(proc.pid), metric(url, "otgw_readings_committed_total"), time.perf_counter()
            w1 = metric(url, 'otgw_sink_written_total{sink="vm"}')
            rss = status_mb(proc.pid, "VmHWM")
        finally:
            stop(proc)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(30)
    n = n1 - n0
    return {"readings": n, "rate": n / (t1 - t0), "cpu_s": c1 - c0,
            "cpu_per_1000": (c1 - c0) / n * 1000 if n else float("nan"),
            "forwarded": w1 - w0, "rss": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otgw-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_drain:
            d = drain(args.readings, args.points, args.batch, work)
            print("\n| backlog | batch | drain time | drain rate | gateway CPU-s per 1,000 | RSS at ready | max RSS during drain | read back |")
            print("|---|---|---|---|---|---|---|---|")
            print(f"| {d['readings']:,.0f} readings | {args.batch} | {d['seconds']:.1f} s | "
                  f"{d['rate']:,.0f} readings/s | {d['cpu_per_1000']:.4f} | {d['rss_ready']:.0f} MB | "
                  f"{d['rss_max']:.0f} MB | {d['read_back']:,.0f} |")
        if not args.skip_steady:
            with VictoriaMetrics(work / "vm-steady") as vm:
                rows = [(s, steady(args.devices, args.registers, args.window, s, work, vm))
                        for s in (False, True)]
            print(f"\n| {args.devices} devices × {args.registers} registers @ 1 s | readings/s | forwarded | gateway CPU-s per 1,000 readings | peak RSS |")
            print("|---|---|---|---|---|")
            for with_sink, r in rows:
                print(f"| {'with sink' if with_sink else 'no sink'} | {r['rate']:,.0f} | "
                      f"{r['forwarded']:,.0f} | {r['cpu_per_1000']:.4f} | {r['rss']:.0f} MB |")
            extra = rows[1][1]["cpu_per_1000"] - rows[0][1]["cpu_per_1000"]
            print(f"\nforwarding cost: {extra:.4f} CPU-s per 1,000 readings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
