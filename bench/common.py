"""Shared helpers of the bench scripts: processes, /proc figures, store counting, statistics.

Every figure about the gateway is taken from outside its process:
- CPU seconds: user+system from ``/proc/<pid>/stat`` (all threads, children excluded);
- peak RSS: ``VmHWM`` from ``/proc/<pid>/status``;
- readings delivered: rows in the gateway's SQLite file (read-only connection, WAL);
- latency from source time to commit: `CommitWatcher` polls the store file and notes when rows
  become visible (a committed WAL transaction is visible to a new read at once).

Processes are started by the scripts (simulator, gateway, broker, load generators) and stopped
by their PID only; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent
GOOD_OR_UNCERTAIN = 0x80000000
"""Quality codes below this are Good or Uncertain (usable); Bad has bit 31 set."""


# -- /proc --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread id (``/proc/<pid>/task/*``); the main thread's id is `pid`."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def threads_share(pid: int, before: dict[int, float], after: dict[int, float], wall: float) -> str:
    """CPU share of the main (event-loop) thread and of the busiest other threads."""
    used = {k: (v - before.get(k, 0.0)) / wall for k, v in after.items()}
    main = used.pop(pid, 0.0)
    others = sorted((v for v in used.values() if v >= 0.005), reverse=True)
    return f"loop {main * 100:.0f} %" + "".join(f" + {v * 100:.0f} %" for v in others[:3])


def status_mb(pid: int, key: str = "VmHWM") -> float:
    """A ``/proc/<pid>/status`` size (VmHWM = peak RSS, VmRSS = current) [MB]."""
    m = re.search(rf"{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def machine() -> dict[str, str]:
    """nproc, CPU model, load average, Python, SQLite and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    libs = []
    for name in ("pymodbus", "paho-mqtt", "aiomqtt", "influxdb-client", "pydantic"):
        with contextlib.suppress(PackageNotFoundError):
            libs.append(f"{name} {version(name)}")
    mosq = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True,
                          check=False).stdout.splitlines()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "libs": ", ".join(libs),
        "mosquitto": mosq[0] if mosq else "?",
    }


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_json(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for a process to write a JSON ready file; fail if it exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited {proc.returncode}")
        if path.exists():
            text = path.read_text().strip()
            if text:
                try:
                    data: dict[str, Any] = json.loads(text)
                except json.JSONDecodeError:
                    pass
                else:
                    return data
        time.sleep(0.05)
    raise RuntimeError(f"{path} not written within {timeout} s")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM by PID, wait, then SIGKILL by PID if it did not exit."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def ot_gateway() -> list[str]:
    """The ``ot-gateway`` command of this venv (``python -m gateway`` when not installed)."""
    script = BIN / "ot-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def start_simulator(profile: dict[str, Any], work: Path, name: str = "sim",
                    timeout: float = 120) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``ot-gateway simulate -c <profile>`` in its own process; returns it and its ready file."""
    cfg = work / f"{name}.yaml"
    ready = work / f"{name}.ready.json"
    cfg.write_text(yaml.safe_dump(profile, sort_keys=False))
    ready.unlink(missing_ok=True)
    with (work / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen([*ot_gateway(), "simulate", "-c", str(cfg), "--ready-file",
                                 str(ready)], stdout=subprocess.DEVNULL, stderr=log, cwd=work)
    try:
        return proc, wait_json(ready, proc, timeout)
    except BaseException:
        stop(proc)
        raise


def start_gateway(cfg: dict[str, Any], work: Path, name: str = "gw",
                  timeout: float = 180) -> tuple[subprocess.Popen[bytes], str]:
    """``ot-gateway run -c <cfg>`` in its own process, API on a free port; returns it and its URL."""
    path = work / f"{name}.yaml"
    ready = work / f"{name}.ready.json"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ready.unlink(missing_ok=True)
    with (work / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [*ot_gateway(), "run", "-c", str(path), "--api-host", "127.0.0.1", "--api-port", "0",
             "--ready-file", str(ready), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        port = wait_json(ready, proc, timeout)["api_port"]
    except BaseException as exc:
        stop(proc)
        tail = (work / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"gateway did not start: {exc}\n{tail}") from exc
    return proc, f"http://127.0.0.1:{port}"


def metric(url: str, name: str) -> float:
    """One value from the gateway's /metrics (0 when absent)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def metric_sum(url: str, prefix: str) -> float:
    """Sum of every series of a metric family on /metrics (e.g. overruns over devices)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(prefix)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


# -- the store, read from outside ---------------------------------------------------------------


def open_store(path: Path) -> sqlite3.Connection:
    """A read-only connection to the gateway's store (WAL: never blocks the writer)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA query_only=1")
    return conn


def wait_store(path: Path, timeout: float = 30) -> sqlite3.Connection:
    """Wait until the store file exists and has its readings table, then open it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = open_store(path)
            conn.execute("SELECT max(id) FROM readings").fetchone()
            return conn
        except sqlite3.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def max_id(conn: sqlite3.Connection) -> int:
    """Highest reading row id (AUTOINCREMENT: rows committed so far, with no purge)."""
    row = conn.execute("SELECT max(id) FROM readings").fetchone()
    return int(row[0] or 0)


def window_counts(conn: sqlite3.Connection, t0_ns: int, t1_ns: int) -> tuple[int, int]:
    """(all rows, usable rows) with source time in [t0, t1)."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(quality < ?), 0) FROM readings WHERE ts_ns >= ? AND ts_ns < ?",
        (GOOD_OR_UNCERTAIN, t0_ns, t1_ns)).fetchone()
    return int(row[0]), int(row[1])


def point_spans(conn: sqlite3.Connection, t0_ns: int, t1_ns: int,
                ) -> list[tuple[int, int, int, int]]:
    """Per point with source time in [t0, t1): (point id, usable rows, first ts, last ts)."""
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        "SELECT point_id, sum(quality < ?), min(ts_ns), max(ts_ns) FROM readings "
        "WHERE ts_ns >= ? AND ts_ns < ? GROUP BY point_id",
        (GOOD_OR_UNCERTAIN, t0_ns, t1_ns))]


def point_ids(conn: sqlite3.Connection, like: str) -> list[int]:
    """Ids of the points whose key matches a LIKE pattern (e.g. ``bench/%/p0``)."""
    return [int(r[0]) for r in conn.execute("SELECT id FROM points WHERE key LIKE ?", (like,))]


def series(conn: sqlite3.Connection, ids: Sequence[int], t0_ns: int, t1_ns: int,
           ) -> dict[int, list[int]]:
    """Source times [ns] of some points in [t0, t1), sorted per point."""
    out: dict[int, list[int]] = {i: [] for i in ids}
    wanted = set(ids)
    for pid, ts in conn.execute(
            "SELECT point_id, ts_ns FROM readings WHERE ts_ns >= ? AND ts_ns < ? ORDER BY ts_ns",
            (t0_ns, t1_ns)):
        if pid in wanted:
            out[pid].append(ts)
    return out


class CommitWatcher(threading.Thread):
    """Polls the store file and records, for a sample of new rows, commit-seen − source time.

    Every ``period`` seconds it reads the rows committed since the last poll (every
    ``sample_every``-th row id, to stay cheap at 50k rows/s) and notes ``now − ts_ns`` for
    each. The figure is an upper bound of the latency from source time to commit with the
    poll period as resolution. Rows whose source time lies before ``since_ns`` are ignored.
    """

    def __init__(self, path: Path, *, period: float = 0.05, sample_every: int = 1) -> None:
        super().__init__(daemon=True, name="commit-watcher")
        self.path = path
        self.period = period
        self.sample_every = max(1, sample_every)
        self.latencies: list[float] = []
        self.recent: list[tuple[float, float]] = []  # (monotonic, latency) of the last ~5 s
        self.since_ns = 0
        self.until_ns = 1 << 62
        self._halt = threading.Event()
        self._conn = wait_store(path)
        self._last = max_id(self._conn)

    def run(self) -> None:
        conn, k = self._conn, self.sample_every
        while not self._halt.wait(self.period):
            top = max_id(conn)
            if top <= self._last:
                continue
            rows = conn.execute(
                "SELECT ts_ns FROM readings WHERE id > ? AND id <= ? AND id % ? = 0",
                (self._last, top, k)).fetchall()
            now = time.time_ns()
            lo, hi = self.since_ns, self.until_ns
            self.latencies.extend((now - ts) / 1e9 for (ts,) in rows if lo <= ts < hi)
            mono = time.monotonic()
            self.recent = [x for x in self.recent if x[0] > mono - 5.0]
            self.recent.extend((mono, (now - ts) / 1e9) for (ts,) in rows)
            self._last = top

    def recent_p50(self, seconds: float = 1.0) -> float:
        """Median latency of the rows seen in the last `seconds` (NaN when none)."""
        cut = time.monotonic() - seconds
        return pct([lat for mono, lat in list(self.recent) if mono > cut], 0.5)

    def wait_settled(self, below: float = 0.25, timeout: float = 60.0) -> float:
        """Wait until the median latency of the last 3 s is below `below` [s]; seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if time.monotonic() - start >= 3.0 and self.recent_p50(3.0) < below:
                return time.monotonic() - start
            time.sleep(0.5)
        return timeout

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self._conn.close()


# -- statistics and tables ----------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def mmm(values: Sequence[float], fmt: str = "{:.3f}", unit: str = "") -> str:
    """``min / median / max`` of several runs (one value when there is one run)."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return "–"
    if len(vals) == 1:
        return fmt.format(vals[0]) + unit
    return (f"{fmt.format(min(vals))} / {fmt.format(statistics.median(vals))} / "
            f"{fmt.format(max(vals))}{unit}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    """Progress on stderr (tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
