"""OPC UA subscription throughput: simulator, connector and measurement in separate processes.

For each workload (monitored items × change period): start the OPC UA simulator with that many
UInt32 counter variables (each changes once per period), start a client process that opens an
`OpcUaConnector` subscribing to all of them (publishing interval 1 s, queue size 10) and counts
what `samples()` yields, then measure over a window, from outside:

- delivered: 1 − counter values missing between the first and last value received of each
  point (exact loss, independent of the window edges) / values spanned;
- client CPU seconds (user+sys from /proc/<pid>/stat) per 1,000 notifications, client peak
  RSS (VmHWM), and the simulator's CPU (the asyncua server is usually the bottleneck).

Usage: .venv/bin/python bench/opcua_subscriptions.py [--window 15] [--only NAME]
Prints a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKLOADS: dict[str, tuple[int, float]] = {
    # name: (monitored items, change period [s])
    "1,000 items, each changing every 1 s": (1000, 1.0),
    "2,000 items @ 1 s (L1 OPC UA part)": (2000, 1.0),
    "5,000 items @ 1 s": (5000, 1.0),
    "1,000 items @ 0.2 s": (1000, 0.2),
    "2,000 items @ 0.25 s": (2000, 0.25),
    "10,000 items @ 1 s": (10000, 1.0),
    "5,000 items @ 0.33 s": (5000, 0.33),
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def wait_json(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}")
        if path.exists() and path.read_text().strip():
            try:
                data: dict[str, Any] = json.loads(path.read_text())
            except json.JSONDecodeError:
                time.sleep(0.05)
                continue
            return data
        time.sleep(0.1)
    raise RuntimeError(f"{path} not written within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


# -- client process ---------------------------------------------------------------------------


async def client_main(endpoint: str, items: int, out: Path) -> None:
    """Subscribe to ``items`` counters; every 0.5 s write the counts to ``out`` (JSON)."""
    sys.path.insert(0, str(ROOT))
    from connectors.opcua.config import OpcUaAddress, OpcUaDeviceConfig
    from connectors.opcua.connector import OpcUaConnector, OpcUaPoint

    device = OpcUaDeviceConfig(
        id="bench", endpoint=endpoint, security_policy="None", insecure=True, timeout=10,
        publishing_interval=1.0, keepalive_count=5, watchdog=10,
    )
    points = [
        OpcUaPoint(f"b/a/c{i}", OpcUaAddress(node_id=f"ns=2;s=C{i}", queue_size=10,
                                              value_type="number"))
        for i in range(items)
    ]
    seen: dict[str, set[int]] = {p.key: set() for p in points}
    async with OpcUaConnector(device, points) as conn:
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop_event.set)

        async def report() -> None:
            while not stop_event.is_set():
                distinct = sum(len(v) for v in seen.values())
                span = sum(max(v) - min(v) + 1 for v in seen.values() if v)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps({
                    "notifications": conn.opcua_stats.notifications, "distinct": distinct,
                    "span": span,
                    "keepalives": conn.opcua_stats.keepalives, "errors": dict(conn.stats.errors),
                    "t": time.time(),
                }))
                tmp.replace(out)
                await asyncio.sleep(0.5)

        reporter = loop.create_task(report())
        stream = conn.samples()
        consume = loop.create_task(_consume(stream, seen))
        await stop_event.wait()
        consume.cancel()
        reporter.cancel()


async def _consume(stream: Any, seen: dict[str, set[int]]) -> None:
    async for batch in stream:
        for sample in batch:
            if isinstance(sample.value, int):
                seen[sample.point_id].add(sample.value)


# -- driver -------------------------------------------------------------------------------------


def counts(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run(name: str, items: int, period: float, window: float, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    profile = {"devices": [{
        "id": "opc", "protocol": "opcua",
        "update_interval": max(0.02, period / 5),
        "variables": [
            {"name": f"C{i}", "type": "UInt32", "signal": {"kind": "counter", "period": period}}
            for i in range(items)
        ],
    }]}
    (work / "profile.yaml").write_text(yaml.safe_dump(profile))
    ready = work / "ready.json"
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator", "-c", str(work / "profile.yaml"),
         "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client: subprocess.Popen[bytes] | None = None
    try:
        endpoint = wait_json(ready, sim, 60)["devices"]["opc"]["endpoint"]
        out = work / "client.json"
        client = subprocess.Popen(
            [sys.executable, __file__, "--client", endpoint, "--items", str(items),
             "--out", str(out)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_json(out, client, 120)
        time.sleep(5.0)  # warm-up: initial values, steady publishing
        c0, s0, a = cpu_seconds(client.pid), cpu_seconds(sim.pid), counts(out)
        t0 = time.monotonic()
        time.sleep(window)
        c1, s1, b = cpu_seconds(client.pid), cpu_seconds(sim.pid), counts(out)
        elapsed = b["t"] - a["t"] or (time.monotonic() - t0)
        received = b["distinct"] - a["distinct"]
        # loss: counter values missing between the first and last value seen of each point
        missing = (b["span"] - b["distinct"]) - (a["span"] - a["distinct"])
        spanned = b["span"] - a["span"]
        cpu = c1 - c0
        return {
            "name": name,
            "expected_per_s": items / period,
            "delivered": 1 - missing / max(spanned, 1),
            "missing": missing,
            "per_s": received / elapsed,
            "cpu_per_1000": cpu / max(received, 1) * 1000,
            "client_cpu": cpu / (time.monotonic() - t0),
            "server_cpu": (s1 - s0) / (time.monotonic() - t0),
            "rss": peak_rss_mb(client.pid),
            "errors": b["errors"],
        }
    finally:
        if client is not None:
            stop(client)
        stop(sim)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--only")
    parser.add_argument("--client")
    parser.add_argument("--items", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(args.client, args.items, Path(args.out)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        for i, (name, (items, period)) in enumerate(WORKLOADS.items()):
            if args.only and args.only not in name:
                continue
            row = run(name, items, period, args.window, Path(tmp) / str(i))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print("| workload | expected notifications/s | delivered | received/s | "
          "connector CPU-s per 1,000 | connector CPU | simulator CPU | connector peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['expected_per_s']:,.0f} | {100 * r['delivered']:.1f} % | "
              f"{r['per_s']:,.0f} | {r['cpu_per_1000']:.3f} | {100 * r['client_cpu']:.0f} % | "
              f"{100 * r['server_cpu']:.0f} % | {r['rss']:.0f} MB |")
    return 0 if all(math.isfinite(r["delivered"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
