"""Profile the gateway process with py-spy during a workload; print its top entries.

`start_profile` attaches ``py-spy record`` (sampling, ``--nonblocking``: the gateway is never
paused) to a running gateway PID for the measurement window and writes collapsed stacks;
`summarize` turns them into the top functions by *own* time (the frame on top of the stack)
and by *total* time (anywhere on the stack), as shares of all samples of all threads.

Usage (standalone): .venv/bin/python bench/profile_gateway.py modbus|modbus1k|mqtt [--window 20]
[--out DIR] runs the Modbus 50 × 200 @ 1 s (10 × 100 @ 1 s for ``modbus1k``) or the MQTT 10k msg/s
workload once with the profiler attached.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BIN, log, table

PY_SPY = BIN / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


def start_profile(pid: int, duration: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on `pid` for `duration` seconds into `out` (collapsed stacks)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(duration)),
         "--rate", str(rate), "--format", "raw", "--nolineno", "--nonblocking", "--threads",
         "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarize(raw: Path, top: int = 15) -> tuple[str, str, int]:
    """Top functions by own time: (event-loop thread table, other threads table, samples).

    Shares are of that group's samples. py-spy counts a thread as active while it runs Python
    or native code (SQLite, a syscall, waiting for the GIL), so the store thread's
    ``Store._append_group`` includes SQLite and fsync time.
    """
    own: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        parts = stack.split(";")
        main = "MainThread" in parts[0]
        frames = [_short(f) for f in parts if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        samples += n
        own[main][frames[-1]] += n

    def render(c: Counter[str]) -> str:
        total = sum(c.values()) or 1
        rows = [[f"{n / total * 100:.1f} %", f"`{name}`"] for name, n in c.most_common(top)]
        return table(["share", "function (file)"], rows)

    return render(own[True]), render(own[False]), samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["modbus", "modbus1k", "mqtt"])
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--out", default="/tmp/otgw-profile")  # noqa: S108 - a scratch dir
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    out = Path(args.out) / f"{args.workload}.txt"
    if args.workload in ("modbus", "modbus1k"):
        from modbus_throughput import run_workload
        devices, registers = (50, 200) if args.workload == "modbus" else (10, 100)
        r = run_workload(devices, registers, 1.0, args.window, profile_to=out)
    else:
        from mqtt_ingest import run_gateway
        r = run_gateway(10_000, args.window, profile_to=out)
    log(f"{args.workload}: {r}")
    loop, others, samples = summarize(out, args.top)
    print(f"{args.workload}: {samples} samples; raw stacks in {out}\n\nevent-loop thread, own "
          f"time:\n\n{loop}\n\nother threads (store writer, ...), own time:\n\n{others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
