"""Helpers for OPC UA tests: simulator profiles, device configs, bounded sample collection.

The simulator runs as a real subprocess (`tests.sim_helpers.start_simulator`); every wait here
is bounded by a deadline (asyncio.timeout), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from connectors.opcua.config import OpcUaAddress, OpcUaDeviceConfig
from connectors.opcua.connector import OpcUaConnector, OpcUaPoint
from gateway.model import Sample
from tests.sim_helpers import SimProcess, wait_for

NS = 2  # namespace index of the simulator's variables (asyncua: 0 UA, 1 server, 2 first)


def var(name: str, signal: dict[str, Any], type_: str = "Double", **extra: Any) -> dict[str, Any]:
    """One simulator variable entry."""
    return {"name": name, "type": type_, "signal": signal, **extra}


def const(value: Any) -> dict[str, Any]:
    return {"kind": "constant", "value": value}


def counter(period: float = 1.0) -> dict[str, Any]:
    return {"kind": "counter", "period": period}


def server(
    variables: Sequence[dict[str, Any]],
    faults: Sequence[dict[str, Any]] = (),
    device_id: str = "opc",
    **extra: Any,
) -> dict[str, Any]:
    """A simulator OPC UA server entry."""
    return {
        "id": device_id,
        "protocol": "opcua",
        "variables": list(variables),
        "faults": list(faults),
        **extra,
    }


def profile(*servers: dict[str, Any]) -> dict[str, Any]:
    return {"devices": list(servers)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_stats(sim: SimProcess, device_id: str = "opc") -> dict[str, Any]:
    """A device's counters from a stats file written after this call (bounded wait)."""
    since = time.time()
    wait_for(
        lambda: sim.stats_path.stat().st_mtime > since + 0.01, 5.0, what="a fresh stats file"
    )
    return dict(sim.stats()["devices"][device_id])


def endpoint(sim: SimProcess, device_id: str = "opc") -> str:
    return str(sim.ready["devices"][device_id]["endpoint"])


def insecure_device(sim: SimProcess, device_id: str = "opc", **extra: Any) -> OpcUaDeviceConfig:
    """Device config with security policy None (insecure: true) and short liveness settings."""
    settings: dict[str, Any] = {
        "id": device_id,
        "endpoint": endpoint(sim, device_id),
        "security_policy": "None",
        "insecure": True,
        "timeout": 2.0,
        "publishing_interval": 0.1,
        "keepalive_count": 3,
        "watchdog": 1.0,
    }
    settings.update(extra)
    return OpcUaDeviceConfig(**settings)


def point(key: str, node: str | None = None, **address: Any) -> OpcUaPoint:
    """A point; ``node`` is a string identifier in the simulator namespace (``s=`` added)."""
    if node is not None:
        address["node_id"] = f"ns={NS};s={node}"
    return OpcUaPoint(key, OpcUaAddress(**address))


async def collect(
    connector: OpcUaConnector,
    until: Callable[[list[list[Sample]]], bool],
    within: float = 10.0,
) -> list[list[Sample]]:
    """Iterate ``connector.samples()`` until ``until(batches)`` holds; TimeoutError after ``within`` s.

    Returns:
        Every batch received (including ``[]`` keep-alive batches), in order.
    """
    batches: list[list[Sample]] = []
    stream = connector.samples()
    try:
        async with asyncio.timeout(within):
            async for batch in stream:
                batches.append(batch)
                if until(batches):
                    return batches
    finally:
        await _close(stream)
    raise AssertionError("samples() ended")  # pragma: no cover - the iterator is endless


async def connect_once(device: OpcUaDeviceConfig, points: Sequence[OpcUaPoint]) -> None:
    """Open and close a connector (raises what ``async with`` raises)."""
    async with OpcUaConnector(device, points):
        pass


async def drain(stream: AsyncIterator[list[Sample]], within: float) -> None:
    """Consume ``stream`` until it raises; TimeoutError after ``within`` s."""
    async with asyncio.timeout(within):
        async for _ in stream:
            pass


async def _close(stream: AsyncIterator[list[Sample]]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def flat(batches: list[list[Sample]]) -> list[Sample]:
    return [s for b in batches for s in b]


def of(batches: list[list[Sample]], key: str) -> list[Sample]:
    return [s for s in flat(batches) if s.point_id == key]


def make_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A ``pki/trusted`` and ``pki/rejected`` pair under ``tmp_path``."""
    trusted = tmp_path / "pki" / "trusted"
    rejected = tmp_path / "pki" / "rejected"
    trusted.mkdir(parents=True)
    return trusted, rejected
