"""Discovery of unconfigured variables by the connector (OpcUaConnector.unmapped) against the
OPC UA simulator subprocess: bounds, chunking under small operation limits, off switch, and that
it runs beside the sample stream. Through the gateway and its API: tests/test_e2e_opcua.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from connectors.opcua.connector import OpcUaConnector
from tests.opcua_helpers import (
    collect,
    const,
    counter,
    flat,
    fresh_stats,
    insecure_device,
    point,
    profile,
    server,
    var,
)
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

VARIABLES = [
    var("Boiler1/Temp", const(80.0), unit="Cel", eu_range=[0, 200]),
    var("Boiler1/Pressure", const(2.5), unit="bar", eu_range=[0, 10]),
    var("Boiler1/Flow", const(12.0), unit="m3/h"),
    var("Boiler2/Temp", const(81.0)),
    var("Line/Counter", counter(1.0), "UInt32"),
    var("Vector", const(1.0), array=4),
]


async def settled(conn: OpcUaConnector, within: float = 15.0) -> None:
    """Wait (bounded) until the connection's first discovery walk has finished."""
    async with asyncio.timeout(within):
        while conn.discovery.walks == 0:  # noqa: ASYNC110 - a plain attribute, bounded
            await asyncio.sleep(0.05)


async def test_lists_unconfigured_variables_with_units_under_small_limits(tmp_path: Path) -> None:
    limits = {"max_nodes_per_browse": 2, "max_nodes_per_read": 4}
    with start_simulator(profile(server(VARIABLES, limits=limits)), tmp_path) as sim:
        device = insecure_device(sim)
        points = [point("s/a/temp", "Boiler1.Temp"), point("s/a/count", browse_path="2:opc/2:Line/2:Counter")]
        async with OpcUaConnector(device, points) as conn:
            # The sample stream is not held up by the walk running beside it.
            batches = await collect(conn, lambda b: len({s.point_id for s in flat(b)}) == 2)
            await settled(conn)
            listed = conn.unmapped()
            status = conn.discovery
        stats = fresh_stats(sim)
    assert {s.point_id for s in flat(batches)} == {"s/a/temp", "s/a/count"}
    assert (status.state, status.error, status.walks) == ("done", None, 1)
    assert status.variables == 6  # everything under Objects (namespace 0 skipped)
    by_node = {u["node"]: u for u in listed}
    assert sorted(by_node) == [  # configured ones (by node id and by browse path) left out
        "ns=2;s=Boiler1.Flow", "ns=2;s=Boiler1.Pressure", "ns=2;s=Boiler2.Temp", "ns=2;s=Vector",
    ]
    pressure = by_node["ns=2;s=Boiler1.Pressure"]
    assert (pressure["unit"], pressure["eu_range"], pressure["sample"]) == ("bar", [0.0, 10.0], "2.5")
    assert by_node["ns=2;s=Boiler1.Flow"]["unit"] == "m3/h"
    assert by_node["ns=2;s=Vector"]["value_type"] == "unsupported"
    port = sim.ports["opc"]
    assert pressure["source"] == f"opc.tcp://127.0.0.1:{port}#ns=2;s=Boiler1.Pressure"
    assert stats["too_many_operations"] == 0  # every Browse and Read chunked to the limits
    assert stats["max_nodes_per_read_call"] <= 4


@pytest.mark.parametrize(
    ("discover", "state", "count"),
    [
        ({"max_variables": 2}, "partial", 2),
        ({"max_nodes": 3}, "partial", 0),  # opc, Boiler1, Boiler2: no variable reached
        ({"start": "ns=2;s=opc/Boiler1"}, "done", 3),
        ({"start": "ns=2;s=opc", "depth": 1}, "done", 1),  # only Vector is a direct child
        ({"start": "ns=2;s=NoSuchNode"}, "failed", 0),  # BadNodeIdUnknown
        ({"start": "nsu=urn:not:there;s=X"}, "failed", 0),
    ],
)
async def test_bounds_and_start_node(
    tmp_path: Path, discover: dict[str, Any], state: str, count: int
) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        device = insecure_device(sim, discover=discover)
        async with OpcUaConnector(device, [point("s/a/temp", "Boiler2.Temp")]) as conn:
            await settled(conn)
            listed = conn.unmapped()
            status = conn.discovery
    assert status.state == state, status
    assert len(listed) == count
    assert (status.error is None) == (state == "done")


async def test_discovery_off_never_browses(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        device = insecure_device(sim, discover=False)
        async with OpcUaConnector(device, [point("s/a/temp", "Boiler1.Temp")]) as conn:
            await collect(conn, lambda b: len(flat(b)) >= 1)
            assert conn.discovery.state == "off"
            assert conn.unmapped() == []
        stats = fresh_stats(sim)
    assert stats["browses"] == 0
