"""Modbus polling throughput: simulator in one process, gateway in another, measured from outside.

For each workload: start the simulator (N devices × R holding registers, uint16 counters), start
`python -m gateway run` against it, let it warm up, then measure over a window:
- delivered: readings committed to the store (from /metrics) / expected (points × window / interval)
- gateway CPU seconds (user+sys from /proc/<pid>/stat) per 1,000 readings
- gateway peak RSS (VmHWM from /proc/<pid>/status)

Usage: .venv/bin/python bench/modbus_throughput.py [--window 20] [--only NAME]
Prints a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKLOADS: dict[str, tuple[int, int, float]] = {
    # name: (devices, registers per device, poll interval [s])
    "1 device x 125 registers @ 0.05 s": (1, 125, 0.05),
    "1 device x 125 registers @ 0.02 s": (1, 125, 0.02),
    "1 device x 125 registers @ 0.01 s": (1, 125, 0.01),
    "10 devices x 100 registers @ 1 s": (10, 100, 1.0),
    "100 devices x 10 registers @ 1 s": (100, 10, 1.0),
    "100 devices x 100 registers @ 1 s": (100, 100, 1.0),
    "500 devices x 30 registers @ 1 s": (500, 30, 1.0),
    "1000 devices x 50 registers @ 1 s": (1000, 50, 1.0),
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def committed(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(r"^otgw_readings_committed_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}")
        if path.exists() and path.read_text().strip():
            data: dict[str, Any] = json.loads(path.read_text())
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


def run_workload(devices: int, registers: int, interval: float, window: float, work: Path) -> dict[str, float]:
    profile = {"seed": 1, "devices": [
        {"id": f"d{i}", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "faults": [],
         "registers": [{"table": "holding", "address": a, "type": "uint16",
                        "signal": {"kind": "counter", "period": 1}} for a in range(registers)]}
        for i in range(devices)]}
    (work / "sim.yaml").write_text(yaml.safe_dump(profile))
    sim = subprocess.Popen([sys.executable, "-m", "simulator", "-c", str(work / "sim.yaml"),
                            "--ready-file", str(work / "sim-ready.json")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw: subprocess.Popen[bytes] | None = None
    try:
        ports = wait_file(work / "sim-ready.json", sim, 60)["devices"]
        timeout = min(1.0, interval / 2)
        cfg = {
            "gateway": {"data_dir": str(work / "data")},
            "api": {"port": 0},
            "devices": [{"id": f"d{i}", "host": "127.0.0.1", "port": ports[f"d{i}"]["port"],
                         "poll_interval": interval, "timeout": timeout} for i in range(devices)],
            "sites": [{"id": "bench", "assets": [
                {"id": f"a{i}", "points": [
                    {"id": f"p{a}", "device": f"d{i}", "register": "holding", "address": a}
                    for a in range(registers)]}
                for i in range(devices)]}],
        }
        (work / "gw.yaml").write_text(yaml.safe_dump(cfg))
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(work / "gw.yaml"),
                               "--ready-file", str(work / "gw-ready.json"), "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=open(work / "gw.log", "wb"))
        url = f"http://127.0.0.1:{wait_file(work / 'gw-ready.json', gw, 60)['api_port']}"
        time.sleep(5)  # warm-up: connects, first polls, page cache
        n0, c0, t0 = committed(url), cpu_seconds(gw.pid), time.monotonic()
        time.sleep(window)
        n1, c1, t1 = committed(url), cpu_seconds(gw.pid), time.monotonic()
        rss = peak_rss_mb(gw.pid)
        points = devices * registers
        expected = points * (t1 - t0) / interval
        got = n1 - n0
        return {
            "points": points, "rate": points / interval, "delivered": got / expected,
            "readings_s": got / (t1 - t0), "cpu_per_1k": (c1 - c0) / max(got, 1) * 1000,
            "cpu_frac": (c1 - c0) / (t1 - t0), "rss_mb": rss,
        }
    finally:
        if gw is not None:
            stop(gw)
        stop(sim)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=20.0, help="measurement window [s]")
    parser.add_argument("--only", default=None, help="substring of a workload name")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; window {args.window:g} s after 5 s warm-up\n")
    print("| workload | expected readings/s | delivered | readings/s | gateway CPU-s per 1,000 | gateway CPU | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, (devices, registers, interval) in WORKLOADS.items():
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory(prefix="otgw-bench-") as tmp:
            r = run_workload(devices, registers, interval, args.window, Path(tmp))
        print(f"| {name} | {r['rate']:,.0f} | {r['delivered'] * 100:.1f} % | {r['readings_s']:,.0f} | "
              f"{r['cpu_per_1k']:.4f} | {r['cpu_frac'] * 100:.0f} % | {r['rss_mb']:.0f} MB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
