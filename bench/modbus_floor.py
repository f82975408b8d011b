"""Modbus floors: the simulator's own request capacity, and the bare pymodbus polling loop.

Both run the simulator (``ot-gateway simulate``) in one process and a bare pymodbus client in
another (this file's ``client`` sub-command), CPU and RSS from /proc:

- capacity: C connections (one per simulated device) each reading 125 holding registers back
  to back (the next request as soon as the response arrived) for a window: requests/s the
  simulator answers, and the simulator's and the client's CPU share;
- bare polling loop: D connections polling R registers every interval in requests of at most
  125 registers, phases staggered like the gateway's, no decoding, no storing: CPU seconds per
  1,000 registers read and RSS of the client process, the cost a gateway cannot go below with
  this library.

Usage: .venv/bin/python bench/modbus_floor.py capacity [--connections 1] [--window 10]
       .venv/bin/python bench/modbus_floor.py poll --devices 50 --registers 200 [--window 20]
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
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, log, start_simulator, status_mb, stop, wait_json
from modbus_throughput import sim_profile

MAX_COUNT = 125


async def _capacity(ports: list[int], out: Path, ready: Path) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2, retries=0) for p in ports]
    for c in clients:
        await c.connect()
    counts = [0] * len(clients)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)

    async def hammer(i: int) -> None:
        c = clients[i]
        while not stopping.is_set():
            rr = await c.read_holding_registers(0, count=MAX_COUNT, device_id=1)
            assert not rr.isError()
            counts[i] += 1

    async def report() -> None:
        while not stopping.is_set():
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"requests": sum(counts), "t": time.monotonic()}))
            tmp.replace(out)
            await asyncio.sleep(0.2)

    ready.write_text("{}")  # noqa: ASYNC240 - once, before the measurement
    tasks = [asyncio.create_task(hammer(i)) for i in range(len(clients))]
    await report()
    for t in tasks:
        t.cancel()
    for c in clients:
        c.close()


async def _poll(ports: list[int], registers: int, interval: float, out: Path, ready: Path) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=interval / 2, retries=0)
               for p in ports]
    await asyncio.gather(*(c.connect() for c in clients))
    chunks = [(a, min(MAX_COUNT, registers - a)) for a in range(0, registers, MAX_COUNT)]
    read = [0]
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)

    async def poller(i: int) -> None:
        c = clients[i]
        phase = (zlib.crc32(f"d{i}".encode()) % 1000) / 1000 * interval
        base = time.monotonic() + phase
        k = 0
        while not stopping.is_set():
            due = base + k * interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            for start, count in chunks:
                rr = await c.read_holding_registers(start, count=count, device_id=1)
                if not rr.isError():
                    read[0] += len(rr.registers)
            k = max(k + 1, int((time.monotonic() - base) / interval) + 1)

    tasks = [asyncio.create_task(poller(i)) for i in range(len(clients))]
    ready.write_text("{}")  # noqa: ASYNC240 - once, before the measurement
    while not stopping.is_set():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"registers": read[0]}))
        tmp.replace(out)
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()


def _client(args: argparse.Namespace) -> int:
    ports = json.loads(args.ports)
    if args.mode == "capacity":
        asyncio.run(_capacity(ports, args.out, args.ready))
    else:
        asyncio.run(_poll(ports, args.registers, args.interval, args.out, args.ready))
    return 0


def _run(mode: str, devices: int, registers: int, interval: float, window: float,
         warmup: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="otgw-bench-") as tmp:
        work = Path(tmp)
        sim, ready = start_simulator(sim_profile(devices, registers), work, timeout=300)
        client = None
        try:
            ports = [ready["devices"][f"d{i}"]["port"] for i in range(devices)]
            out, ready_file = work / "client.json", work / "client.ready"
            client = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "client", "--mode", mode,
                 "--ports", json.dumps(ports), "--registers", str(registers), "--interval",
                 str(interval), "--out", str(out), "--ready", str(ready_file)])
            wait_json(ready_file, client, 120)
            time.sleep(warmup)
            key = "requests" if mode == "capacity" else "registers"
            n0, c0, s0, m0 = (json.loads(out.read_text())[key], cpu_seconds(client.pid),
                              cpu_seconds(sim.pid), time.monotonic())
            time.sleep(window)
            n1, c1, s1, m1 = (json.loads(out.read_text())[key], cpu_seconds(client.pid),
                              cpu_seconds(sim.pid), time.monotonic())
            wall = m1 - m0
            result = {"per_s": (n1 - n0) / wall, "client_cpu": (c1 - c0) / wall,
                      "sim_cpu": (s1 - s0) / wall, "rss_mb": status_mb(client.pid, "VmHWM")}
            if mode == "poll":
                result["cpu_per_1k"] = (c1 - c0) / max(n1 - n0, 1) * 1000
                result["delivered"] = (n1 - n0) / (devices * registers * wall / interval)
            return result
        finally:
            stop(client)
            stop(sim)


def capacity(connections: int, window: float = 10.0) -> dict[str, float]:
    """Requests/s (125 registers each) the simulator answers on `connections` connections."""
    return _run("capacity", connections, MAX_COUNT, 1.0, window, warmup=2.0)


def bare_poll(devices: int, registers: int, interval: float = 1.0,
              window: float = 20.0) -> dict[str, float]:
    """The bare pymodbus polling loop: CPU-s per 1,000 registers, RSS."""
    return _run("poll", devices, registers, interval, window, warmup=3.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["capacity", "poll", "client"])
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--mode", choices=["capacity", "poll"])
    parser.add_argument("--ports")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args()
    if args.command == "client":
        return _client(args)
    if args.command == "capacity":
        log(f"simulator capacity, {args.connections} connection(s)")
        r: dict[str, Any] = capacity(args.connections, args.window)
    else:
        log(f"bare pymodbus loop {args.devices} x {args.registers} @ {args.interval} s")
        r = bare_poll(args.devices, args.registers, args.interval, args.window)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
