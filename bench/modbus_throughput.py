"""Modbus polling into the local store: simulator in one process, gateway in another, measured from outside.

For each workload (D devices × R uint16 holding registers @ interval): start the simulator
(``ot-gateway simulate``), start the gateway (``ot-gateway run``) polling it, warm up, then
measure over a window [t0, t0 + W):

- delivered: usable readings in the store file with source time in the window / expected,
  where a point's expected count is the number of poll cycles between its first and last
  reading in the window (round((last − first) / interval) + 1) — exact, independent of where
  the window edges fall; a point with no reading expects W / interval;
- readings/s: rows with source time in the window / W;
- gateway CPU seconds (user+sys, /proc/<pid>/stat) per 1,000 readings committed in the window
  (row ids, AUTOINCREMENT), gateway CPU share, peak RSS (VmHWM);
- latency from source time (the response's arrival) to commit, seen by polling the store file
  every 50 ms (`common.CommitWatcher`): p50 / p99;
- start-up: seconds until the API is up, then until /readyz reports every device connected,
  then (after a 5 s warm-up) until the median commit latency is below 0.25 s (the backlog of
  the connect storm is committed; 1000 devices need ≈ 20 s); the window starts after that.
  Also the seconds the gateway took to stop on SIGTERM (SIGKILL after 30 s);
- poll jitter: per device, the differences between consecutive acquisition times of its first
  register minus the interval: p99 of |error| and the share of cycles within ±0.5 period
  (RELIABILITY §7.4 L1); overruns counted by the gateway (/metrics).

Usage: .venv/bin/python bench/modbus_throughput.py [--window 20] [--runs 1] [--only NAME]
Prints a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CommitWatcher,
    cpu_seconds,
    log,
    max_id,
    metric_sum,
    mmm,
    pct,
    point_ids,
    point_spans,
    series,
    start_gateway,
    start_simulator,
    status_mb,
    stop,
    table,
    thread_cpu,
    threads_share,
    wait_store,
)

WORKLOADS: dict[str, tuple[int, int, float]] = {
    # name: (devices, registers per device, poll interval [s])
    "1 device x 125 registers @ 0.01 s": (1, 125, 0.01),
    "10 devices x 100 registers @ 1 s": (10, 100, 1.0),
    "100 devices x 10 registers @ 1 s": (100, 10, 1.0),
    "50 devices x 200 registers @ 1 s": (50, 200, 1.0),
    "100 devices x 100 registers @ 1 s": (100, 100, 1.0),
    "500 devices x 30 registers @ 1 s": (500, 30, 1.0),
    "1000 devices x 50 registers @ 1 s": (1000, 50, 1.0),
}


def sim_profile(devices: int, registers: int) -> dict[str, Any]:
    """D devices on free loopback ports, each R uint16 counters from holding address 0."""
    return {"seed": 1, "devices": [
        {"id": f"d{i}", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "faults": [],
         "registers": [{"table": "holding", "address": a, "type": "uint16",
                        "signal": {"kind": "counter", "period": 1}} for a in range(registers)]}
        for i in range(devices)]}


def gateway_config(ports: dict[str, Any], devices: int, registers: int, interval: float,
                   data: Path) -> dict[str, Any]:
    """One asset per device, one point per register, no sink."""
    return {
        "gateway": {"data_dir": str(data)},
        "api": {"host": "127.0.0.1", "port": 0},
        "devices": [{"id": f"d{i}", "host": "127.0.0.1", "port": ports[f"d{i}"]["port"],
                     "poll_interval": interval, "timeout": min(1.0, interval / 2)}
                    for i in range(devices)],
        "sites": [{"id": "bench", "assets": [
            {"id": f"a{i}", "points": [
                {"id": f"p{a}", "device": f"d{i}", "register": "holding", "address": a}
                for a in range(registers)]}
            for i in range(devices)]}],
    }


class Simulator:
    """``ot-gateway simulate`` serving D devices × R registers, reusable across gateway runs."""

    def __init__(self, devices: int, registers: int) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="otgw-bench-sim-")
        self.proc, self.ready = start_simulator(sim_profile(devices, registers), Path(self._tmp.name),
                                                timeout=300)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self._tmp.cleanup()


def wait_connected(url: str, total: int, timeout: float) -> float:
    """Seconds until /readyz reports every device's link up (``timeout`` if never)."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(url + "/readyz", timeout=5).json()["details"]["devices_up"] >= total:
                return time.monotonic() - start
        time.sleep(0.25)
    return timeout


def measure(devices: int, registers: int, interval: float, window: float, work: Path,
            warmup: float = 5.0, profile_to: Path | None = None,
            sim: Simulator | None = None) -> dict[str, float]:
    """One run of one workload; see the module docstring for the figures."""
    own = sim is None
    simulator = sim if sim is not None else Simulator(devices, registers)
    ready = simulator.ready
    gw = None
    try:
        data = work / "data"
        t_start = time.monotonic()
        gw, url = start_gateway(gateway_config(ready["devices"], devices, registers, interval, data),
                                work, timeout=300)
        started_s = time.monotonic() - t_start
        watcher = CommitWatcher(data / "gateway.db", sample_every=max(1, devices * registers // 2000))
        watcher.start()
        connect_s = wait_connected(url, devices, 120)
        time.sleep(warmup)  # first polls, page cache
        settle_s = watcher.wait_settled(0.25, 60)  # the backlog of a connect storm is committed
        t0_ns = time.time_ns()
        watcher.since_ns = t0_ns
        watcher.until_ns = t0_ns + int(window * 1e9)
        conn = wait_store(data / "gateway.db")
        over0 = metric_sum(url, "otgw_overruns_total")
        n0, c0, m0 = max_id(conn), cpu_seconds(gw.pid), time.monotonic()
        pid = gw.pid
        th0 = thread_cpu(pid)
        s0 = cpu_seconds(simulator.proc.pid)
        profiler = None
        if profile_to is not None:
            from profile_gateway import start_profile
            profiler = start_profile(gw.pid, window, profile_to)
        time.sleep(window)
        n1, c1, m1 = max_id(conn), cpu_seconds(gw.pid), time.monotonic()
        th1 = thread_cpu(gw.pid)
        s1 = cpu_seconds(simulator.proc.pid)
        over1 = metric_sum(url, "otgw_overruns_total")
        rss = status_mb(gw.pid, "VmHWM")
        if profiler is not None:
            profiler.wait(60)
        time.sleep(min(3.0, 2 * interval + 1))  # let the window's last readings commit
        watcher.stop()
        t_stop = time.monotonic()
        stop(gw)
        stop_s = time.monotonic() - t_stop
        gw = None
        t1_ns = t0_ns + int(window * 1e9)
        spans = point_spans(conn, t0_ns, t1_ns)
        seen = {pid for pid, *_ in spans}
        points = devices * registers
        expected = sum(round((last - first) / 1e9 / interval) + 1 for _, _, first, last in spans)
        expected += (points - len(seen)) * round(window / interval)
        usable = sum(n for _, n, _, _ in spans)
        rows = conn.execute("SELECT count(*) FROM readings WHERE ts_ns >= ? AND ts_ns < ?",
                            (t0_ns, t1_ns)).fetchone()[0]
        firsts = point_ids(conn, "bench/%/p0")
        errors: list[float] = []
        for ts in series(conn, firsts, t0_ns, t1_ns).values():
            errors.extend(abs((b - a) / 1e9 - interval) for a, b in itertools.pairwise(ts))
        conn.close()
        committed = n1 - n0
        return {
            "points": points, "rate": points / interval,
            "delivered": usable / expected if expected else float("nan"),
            "lost": expected - usable,
            "readings_s": rows / window,
            "cpu_per_1k": (c1 - c0) / max(committed, 1) * 1000,
            "cpu_frac": (c1 - c0) / (m1 - m0), "rss_mb": rss,
            "lat_p50": pct(watcher.latencies, 0.5), "lat_p99": pct(watcher.latencies, 0.99),
            "jitter_p99": pct(errors, 0.99),
            "on_time": sum(e <= interval / 2 for e in errors) / len(errors) if errors else float("nan"),
            "overruns": over1 - over0,
            "threads": threads_share(pid, th0, th1, m1 - m0),
            "sim_cpu": (s1 - s0) / (m1 - m0),
            "start_s": started_s, "connect_s": connect_s, "stop_s": stop_s, "settle_s": settle_s,
        }
    finally:
        stop(gw)
        if own:
            simulator.__exit__()


def run_workload(devices: int, registers: int, interval: float, window: float,
                 warmup: float = 5.0, profile_to: Path | None = None,
                 sim: Simulator | None = None) -> dict[str, float]:
    """`measure` in a fresh temporary directory (with `sim`, or a simulator of its own)."""
    with tempfile.TemporaryDirectory(prefix="otgw-bench-") as tmp:
        return measure(devices, registers, interval, window, Path(tmp), warmup, profile_to, sim)


HEADER = ["workload", "expected readings/s", "delivered", "readings/s", "CPU-s per 1,000",
          "gateway CPU", "peak RSS", "latency p50 / p99", "jitter p99", "polls within ±½ period",
          "overruns"]


def row(name: str, runs: list[dict[str, float]]) -> list[str]:
    """One table row: min / median / max over runs."""
    def col(key: str) -> list[float]:
        return [r[key] for r in runs]
    return [
        name, f"{runs[0]['rate']:,.0f}", mmm([v * 100 for v in col("delivered")], "{:.2f}", " %"),
        mmm(col("readings_s"), "{:,.0f}"), mmm(col("cpu_per_1k"), "{:.4f}"),
        mmm([v * 100 for v in col("cpu_frac")], "{:.0f}", " %"), mmm(col("rss_mb"), "{:.0f}", " MB"),
        f"{mmm([v * 1000 for v in col('lat_p50')], '{:.0f}')} / "
        f"{mmm([v * 1000 for v in col('lat_p99')], '{:.0f}')} ms",
        mmm([v * 1000 for v in col("jitter_p99")], "{:.0f}", " ms"),
        mmm([v * 100 for v in col("on_time")], "{:.1f}", " %"),
        mmm(col("overruns"), "{:.0f}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="measurement window [s]")
    parser.add_argument("--runs", type=int, default=1, help="runs per workload")
    parser.add_argument("--only", default=None, help="substring of a workload name")
    args = parser.parse_args()
    rows = []
    for name, (devices, registers, interval) in WORKLOADS.items():
        if args.only and args.only not in name:
            continue
        runs = []
        with Simulator(devices, registers) as sim:
            for i in range(args.runs):
                log(f"modbus {name}: run {i + 1}/{args.runs}")
                runs.append(run_workload(devices, registers, interval, args.window, sim=sim))
        rows.append(row(name, runs))
        print(table(HEADER, rows[-1:]) if len(rows) == 1 else "| " + " | ".join(rows[-1]) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
