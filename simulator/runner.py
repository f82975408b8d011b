"""Run a whole profile: start every device, play the fault schedule, write truth/stats/ready.

Modbus devices are pymodbus servers (`simulator.modbus_server`), OPC UA devices asyncua servers
(`simulator.opcua_server`, imported only when a profile has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from simulator.config import DeviceConfig, Fault, OpcUaServerConfig, Profile
from simulator.faults import ActiveFault, ActiveFaults, FaultKey, Transition, run_schedule
from simulator.modbus_server import ModbusDevice, suppress_pymodbus_logs
from simulator.truth import TruthWriter, atomic_write_json, fault_record, rfc3339, utc_now

log = logging.getLogger("simulator")

#: Seconds between two rewrites of the stats file.
STATS_INTERVAL = 0.5


class Device(Protocol):
    """What the runner needs from a simulated device of any protocol."""

    id: str
    host: str
    port: int
    faults: ActiveFaults

    async def start(self) -> None:
        """Open the listener. Raises OSError."""
        ...

    async def stop(self) -> None:
        """Close everything for good."""
        ...

    async def begin_fault(self, index: int, fault: Fault) -> None:
        """Apply a fault."""
        ...

    async def end_fault(self, index: int) -> ActiveFault | None:
        """Remove a fault; return the ended occurrence."""
        ...

    def stats_snapshot(self) -> dict[str, Any]:
        """Counters for the stats file."""
        ...


def make_device(cfg: DeviceConfig | OpcUaServerConfig, seed: int, workdir: Path) -> Device:
    """The simulated device of a profile entry.

    Args:
        cfg: The device's profile entry.
        seed: The profile seed.
        workdir: Directory for generated files (an OPC UA server's certificate).

    Returns:
        A not yet started device.
    """
    if isinstance(cfg, OpcUaServerConfig):
        from simulator.opcua_server import OpcUaDevice, suppress_asyncua_logs

        suppress_asyncua_logs()
        return OpcUaDevice(cfg, seed, workdir)
    return ModbusDevice(cfg, seed)


class SimulatorError(Exception):
    """The simulator cannot run (e.g. a port cannot be bound); ``str()`` is the message."""


class Simulator:
    """All devices of a profile in one process.

    Args:
        profile: the validated profile.
        truth_path: ground-truth JSON Lines file (None: off).
        stats_path: stats JSON file (None: off).
        ready_path: ready JSON file, written once every device listens (None: off):
            ``{"pid", "started", "devices": {id: {"host", "port"}}}`` (OPC UA devices add
            ``protocol``, ``endpoint``, ``namespace``, ``namespace_index``, ``certificate``);
            ``started`` (RFC 3339 UTC) is t = 0 of the fault schedule.
    """

    def __init__(
        self,
        profile: Profile,
        truth_path: str | Path | None = None,
        stats_path: str | Path | None = None,
        ready_path: str | Path | None = None,
    ) -> None:
        self.profile = profile
        workdir = Path(ready_path).parent if ready_path is not None else Path.cwd()
        self.devices = [make_device(cfg, profile.seed, workdir) for cfg in profile.devices]
        self._truth = TruthWriter(truth_path)
        self._stats_path = Path(stats_path) if stats_path is not None else None
        self._ready_path = Path(ready_path) if ready_path is not None else None
        self._faults: dict[FaultKey, Fault] = {
            (d, f): fault
            for d, dev in enumerate(profile.devices)
            for f, fault in enumerate(dev.faults)
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._stats_seq = 0
        self.t0 = 0.0
        self.started = utc_now()

    def ports(self) -> dict[str, dict[str, Any]]:
        """Device id → ``{"host": ..., "port": ...}`` (actual ports once started).

        OPC UA devices also give ``protocol``, ``endpoint``, ``namespace``, ``namespace_index``
        and ``certificate`` (the server certificate file, or None).
        """
        out: dict[str, dict[str, Any]] = {}
        for d in self.devices:
            info = getattr(d, "ready_info", None)
            out[d.id] = info() if callable(info) else {"host": d.host, "port": d.port}
        return out

    def stats(self) -> dict[str, Any]:
        """The stats file content: ``{"seq", "time", "devices": {id: counters}}``.

        ``seq`` counts the snapshots (1, 2, ...) and ``time`` is when this one was taken (epoch
        seconds): a test that acted at time t waits for a snapshot with ``time > t`` before it
        asserts on counters (e.g. that a Modbus device received no write).
        """
        self._stats_seq += 1
        return {
            "seq": self._stats_seq,
            "time": time.time(),
            "devices": {d.id: d.stats_snapshot() for d in self.devices},
        }

    async def start(self) -> None:
        """Open every listener, write the ready file, start the fault schedule (t = 0).

        Raises:
            SimulatorError: a device cannot listen.
        """
        suppress_pymodbus_logs()
        try:
            for device in self.devices:
                await device.start()
        except OSError as exc:
            await self.stop()
            raise SimulatorError(str(exc)) from None
        self.t0 = time.monotonic()
        self.started = utc_now()
        if self._ready_path is not None:
            atomic_write_json(
                self._ready_path,
                {"pid": os.getpid(), "started": rfc3339(self.started), "devices": self.ports()},
            )
        log.info("simulator ready: %d devices", len(self.devices))
        loop = asyncio.get_running_loop()
        if self._faults:
            self._tasks.append(loop.create_task(run_schedule(self._faults, self.t0, self._apply)))
        if self._stats_path is not None:
            self._tasks.append(loop.create_task(self._stats_loop()))

    async def _apply(self, tr: Transition) -> None:
        dev_idx, fault_idx = tr.key
        device = self.devices[dev_idx]
        if tr.begin:
            await device.begin_fault(fault_idx, self._faults[tr.key])
            return
        active = await device.end_fault(fault_idx)
        if active is not None:
            self._truth.write(fault_record(device.id, active.fault, active.started, utc_now()))

    def write_stats(self) -> None:
        """Rewrite the stats file now (atomically)."""
        if self._stats_path is not None:
            atomic_write_json(self._stats_path, self.stats())

    async def _stats_loop(self) -> None:
        while True:
            self.write_stats()
            await asyncio.sleep(STATS_INTERVAL)

    async def stop(self) -> None:
        """Stop the schedule, record faults in progress (ended now), close all, final stats."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        end = utc_now()
        for device in self.devices:
            for active in device.faults.active.values():
                self._truth.write(fault_record(device.id, active.fault, active.started, end))
            device.faults.active.clear()
            await device.stop()
        self.write_stats()
        log.info("simulator stopped")


async def run(
    profile: Profile,
    truth_path: str | Path | None = None,
    stats_path: str | Path | None = None,
    ready_path: str | Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``profile`` until ``stop`` is set (or the task is cancelled), then clean up.

    Paths default to the profile's ``truth``/``stats`` keys when None.

    Args:
        profile: the validated profile.
        truth_path: ground-truth JSON Lines file.
        stats_path: stats JSON file, rewritten every 0.5 s and at exit.
        ready_path: ready JSON file ``{"pid", "started", "devices": {id: {"host", "port"}}}``.
        stop: set it to stop; None runs until cancelled.

    Raises:
        SimulatorError: a device cannot listen.
    """
    sim = Simulator(
        profile,
        truth_path if truth_path is not None else profile.truth,
        stats_path if stats_path is not None else profile.stats,
        ready_path,
    )
    await sim.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await sim.stop()
