"""Write-back (OpcUaConnector.write, the connectors.base.WritableConnector contract) against the
OPC UA simulator subprocess.

The simulator checks client writes as a device would (BadNotWritable, BadTypeMismatch,
BadOutOfRange) and counts every Write request it receives, so "nothing was sent" is asserted
on the server side, not inferred.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.base import WriteError
from connectors.opcua.connector import OpcUaConnector
from gateway.quality import Q
from tests.opcua_helpers import (
    collect,
    const,
    counter,
    fresh_stats,
    insecure_device,
    of,
    point,
    profile,
    server,
    var,
)
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

VARIABLES = [
    var("Setpoint", const(20.0), "Float", writable=True, eu_range=[0, 100]),
    var("Level", const(1.5), "Double", writable=True),
    var("Count", counter(0.5), "Int16", writable=True),
    var("Enable", const(False), "Boolean", writable=True),
    var("Mode", const("auto"), "String", writable=True),
    var("Total", const(7), "UInt32", writable=True),
    var("ReadOnly", const(3.0)),
    var("Vector", const(1.0), writable=True, array=3),
]
POINTS = {
    "setpoint": "Setpoint",
    "level": "Level",
    "count": "Count",
    "enable": "Enable",
    "mode": "Mode",
    "total": "Total",
    "read-only": "ReadOnly",
    "vector": "Vector",
}


def points(**address: Any) -> list[Any]:
    return [point(f"s/a/{key}", node, **address) for key, node in POINTS.items()]


async def test_writes_each_type_reads_back_and_overrides_the_signal(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        device = insecure_device(sim)
        polled = point("s/a/count-polled", "Count", mode="poll", poll_interval=0.2)
        async with OpcUaConnector(device, [*points(), polled]) as conn:
            cases: list[tuple[str, object, str, object]] = [
                ("setpoint", 12.5, "Write ns=2;s=Setpoint Float 12.5", 12.5),
                ("level", 3, "Write ns=2;s=Level Double 3.0", 3.0),
                ("count", 13.000000000000002, "Write ns=2;s=Count Int16 13", 13),
                ("enable", True, "Write ns=2;s=Enable Boolean true", True),
                ("mode", "manual", 'Write ns=2;s=Mode String "manual"', "manual"),
                ("total", 4_000_000_000, "Write ns=2;s=Total UInt32 4000000000", 4_000_000_000),
            ]
            before = time.time()
            for key, raw, encoded, confirmed in cases:
                result = await conn.write(f"s/a/{key}", raw)
                assert result.encoded == encoded
                assert result.registers is None
                sample = result.confirmed
                assert sample is not None
                assert (sample.point_id, sample.value, sample.quality) == (
                    f"s/a/{key}", confirmed, Q.GOOD,
                )
                assert sample.source_time is not None
                assert sample.source_time.timestamp() >= before - 1  # the device stamped it
            # The written count stands: the counter signal (every 0.5 s) no longer drives it.
            batches = await collect(conn, lambda _: conn.stats.polls >= 8)
            assert conn.stats.errors["ts_adjusted"] == 0
        stats = fresh_stats(sim)
    assert {s.value for s in of(batches, "s/a/count-polled")} == {13}
    assert stats["client_write_requests"] == len(cases)
    assert stats["client_values_written"] == len(cases)
    assert stats["client_writes_refused"] == 0


async def test_values_that_do_not_fit_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        async with OpcUaConnector(insecure_device(sim), points()) as conn:
            bad: list[tuple[str, object, str]] = [
                ("count", 70_000, "outside Int16"),
                ("count", 12.5, "not an integer"),
                ("count", True, "not a number"),
                ("total", -1, "outside UInt32"),
                ("setpoint", "12", "not a number"),
                ("setpoint", 1e39, "outside the Float range"),
                ("level", math.nan, "not finite"),
                ("enable", 2, "not a Boolean"),
                ("mode", 5, "not a string"),
            ]
            for key, raw, reason in bad:
                with pytest.raises(WriteError, match=reason) as info:
                    await conn.write(f"s/a/{key}", raw)
                assert (info.value.kind, info.value.code) == ("encode", None)
                assert "nothing was sent" in info.value.message
            dry = await conn.write("s/a/setpoint", 55.5, dry_run=True)
            assert (dry.encoded, dry.confirmed) == ("Write ns=2;s=Setpoint Float 55.5", None)
            with pytest.raises(WriteError) as no_access:
                await conn.write("s/a/read-only", 1.0)
            assert (no_access.value.kind, no_access.value.code) == ("unsupported", "BadNotWritable")
            with pytest.raises(WriteError, match="array") as array:
                await conn.write("s/a/vector", 1.0)
            assert array.value.kind == "unsupported"
            with pytest.raises(WriteError) as unknown:
                await conn.write("s/a/nope", 1.0)
            assert unknown.value.kind == "unsupported"
            assert conn.stats.errors["write_encode"] == len(bad)
        stats = fresh_stats(sim)
    assert stats["client_write_requests"] == 0  # no Write reached the server
    assert stats["client_values_written"] == 0


async def test_device_refusal_maps_the_status_code(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        async with OpcUaConnector(insecure_device(sim), points()) as conn:
            with pytest.raises(WriteError, match="BadOutOfRange") as info:
                await conn.write("s/a/setpoint", 150.0)  # EURange is [0, 100]
            assert (info.value.kind, info.value.code) == ("device", "BadOutOfRange")
            ok = await conn.write("s/a/setpoint", 99.0)
            assert ok.confirmed is not None
            assert ok.confirmed.value == 99.0
        stats = fresh_stats(sim)
    assert stats["client_write_requests"] == 2
    assert stats["client_writes_refused"] == 1
    assert stats["client_values_written"] == 1


async def test_offline_connector_sends_nothing(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        conn = OpcUaConnector(insecure_device(sim), points())
        with pytest.raises(WriteError) as before_connect:
            await conn.write("s/a/setpoint", 1.0)
        assert before_connect.value.kind == "offline"
        async with conn:
            await conn.write("s/a/setpoint", 2.0)
        with pytest.raises(WriteError) as after_close:
            await conn.write("s/a/setpoint", 3.0)
        assert after_close.value.kind == "offline"
        stats = fresh_stats(sim)
    assert stats["client_write_requests"] == 1


async def test_write_to_a_hung_server_times_out_with_unknown_outcome(tmp_path: Path) -> None:
    """The server process is paused: no answer within ``timeout``; the write is not resent."""
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        device = insecure_device(sim, timeout=1.0, watchdog=5.0)
        async with OpcUaConnector(device, points()) as conn:
            await conn.write("s/a/level", 1.0, dry_run=True)  # reads the node's type first
            sim.pause()
            try:
                started = time.monotonic()
                with pytest.raises(WriteError, match="outcome is unknown") as info:
                    await conn.write("s/a/level", 42.0)
                assert info.value.kind == "timeout"
                assert time.monotonic() - started <= device.timeout + 1.0
            finally:
                sim.resume()
        # The request was on the wire: the server takes it once it runs again (never twice).
        stats = sim.wait_stats(lambda s: s["devices"]["opc"]["client_write_requests"] >= 1)
    assert stats["devices"]["opc"]["client_write_requests"] == 1
