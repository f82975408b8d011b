"""The simulator's OPC UA servers, as a real subprocess, checked with a plain asyncua client.

The client here is asyncua's own ``Client`` (not the gateway's connector), so the simulator is
tested independently of the code it is used to test.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from tests.opcua_helpers import const, counter, endpoint, fresh_stats, profile, server, var
from tests.sim_helpers import run_simulator_once, start_simulator, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMIT_IDS = {
    "max_nodes_per_read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "max_monitored_items_per_call": (
        ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
    ),
}


def read_params(*node_ids: str, attr: int = ua.AttributeIds.Value) -> ua.ReadParameters:
    return ua.ReadParameters(
        TimestampsToReturn=ua.TimestampsToReturn.Both,
        NodesToRead=[ua.ReadValueId(ua.NodeId.from_string(n), attr) for n in node_ids],
    )


@pytest.mark.parametrize(
    ("device", "path"),
    [
        ({"id": "o", "protocol": "opcua", "faults": [{"kind": "offline", "start": 0,
          "duration": 1, "mode": "silent"}]}, "devices[0].faults"),
        ({"id": "o", "protocol": "opcua", "variables": [{"name": "x", "type": "Double128",
          "signal": const(1)}]}, "devices[0].variables[0].type"),
        ({"id": "o", "protocol": "opcua", "variables": [{"name": "x", "signal": const(1)}],
          "faults": [{"kind": "status", "start": 0, "duration": 1, "status": "Bad",
                      "variables": ["y"]}]}, "devices[0].faults"),
        ({"id": "o", "protocol": "opcua", "security": {"policies": ["Basic999"]}},
         "devices[0].security.policies[0]"),
        ({"id": "o", "protocol": "opcua", "variables": [{"name": "x", "type": "Double",
          "signal": const("text")}]}, "devices[0].variables[0].signal"),
        ({"id": "o", "protocol": "opc"}, "devices[0].protocol"),
        ({"id": "o", "protocol": "opcua", "registers": []}, "devices[0].registers"),
    ],
)
def test_invalid_opcua_profiles_exit_2_naming_the_key(
    tmp_path: Path, device: dict[str, Any], path: str
) -> None:
    result = run_simulator_once({"devices": [device]}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{path}:" in result.stderr
    assert "Traceback" not in result.stderr


async def test_serves_variables_units_ranges_and_oracle(tmp_path: Path) -> None:
    variables = [
        var("Boiler/Temp", const(80.5), unit="Cel", eu_range=[0, 200]),
        var("Ticks", counter(1.0), "UInt32", node_id="i=42"),
        var("Name", const("BLR-1"), "String"),
        var("Scaled", const(1.26), "Int16", scale=10),
    ]
    with start_simulator(profile(server(variables)), tmp_path) as sim:
        info = sim.ready["devices"]["opc"]
        assert info["protocol"] == "opcua"
        assert info["namespace_index"] == 2
        assert info["endpoint"] == f"opc.tcp://127.0.0.1:{info['port']}/ot-gateway/sim"
        async with Client(endpoint(sim), timeout=5) as client:
            values = await client.uaclient.read(
                read_params("ns=2;s=Boiler.Temp", "ns=2;i=42", "ns=2;s=Name", "ns=2;s=Scaled")
            )
            temp = client.get_node("ns=2;s=Boiler.Temp")
            eu_range = await (await temp.get_child("2:EURange")).read_value()
            unit = await (await temp.get_child("2:EngineeringUnits")).read_value()
            dtype = await temp.read_data_type()
            namespaces = await client.get_namespace_array()
    assert [v.Value.Value for v in values] == [80.5, values[1].Value.Value, "BLR-1", 13]
    ticks = values[1]
    assert ticks.Value.VariantType == ua.VariantType.UInt32
    assert ticks.Value.Value == math.floor(ticks.SourceTimestamp.timestamp())  # the oracle
    assert ticks.ServerTimestamp is not None
    assert (eu_range.Low, eu_range.High) == (0.0, 200.0)
    assert unit.DisplayName.Text == "Cel"
    assert dtype == ua.NodeId(ua.ObjectIds.Double)
    assert namespaces[2] == "urn:ot-gateway:simulator:opc:plant"


async def test_operation_limits_are_announced_and_enforced(tmp_path: Path) -> None:
    variables = [var(f"V{i}", const(float(i))) for i in range(12)]
    limits = {"max_nodes_per_read": 10, "max_monitored_items_per_call": 5}
    with start_simulator(profile(server(variables, limits=limits)), tmp_path) as sim:
        async with Client(endpoint(sim), timeout=5) as client:
            announced = await client.uaclient.read(
                read_params(*(f"i={i}" for i in LIMIT_IDS.values()))
            )
            ok = await client.uaclient.read(read_params(*(f"ns=2;s=V{i}" for i in range(10))))
            with pytest.raises(ua.UaStatusCodeError) as info:
                await client.uaclient.read(read_params(*(f"ns=2;s=V{i}" for i in range(11))))
        stats = fresh_stats(sim)
    assert [v.Value.Value for v in announced] == [10, 5]
    assert [v.Value.Value for v in ok] == [float(i) for i in range(10)]
    assert info.value.code == ua.StatusCodes.BadTooManyOperations
    assert stats["too_many_operations"] == 1
    assert stats["reads_by_size"]["10"] == 1


async def test_status_and_clock_skew_faults_and_truth(tmp_path: Path) -> None:
    variables = [var("A", const(1.0)), var("B", const(2.0))]
    faults = [
        {"kind": "status", "start": 0.2, "duration": 30, "status": "UncertainLastUsableValue",
         "variables": ["A"]},
        {"kind": "clock_skew", "start": 0.2, "duration": 30, "offset": -86400,
         "variables": ["B"]},
        {"kind": "status", "start": 0.2, "duration": 0.5, "status": 0x80000000},
    ]
    with start_simulator(profile(server(variables, faults)), tmp_path) as sim:
        sim.wait_stats(lambda s: sorted(s["devices"]["opc"]["active_faults"]) == ["clock_skew", "status"])
        async with Client(endpoint(sim), timeout=5) as client:
            a, b = await client.uaclient.read(read_params("ns=2;s=A", "ns=2;s=B"))
        records = wait_for(lambda: sim.truth(), 10.0, what="truth of the short status fault")
    assert (a.StatusCode.value, a.Value.Value) == (0x40900000, 1.0)
    assert b.StatusCode.value == 0
    assert b.SourceTimestamp is not None
    assert abs(b.SourceTimestamp.timestamp() - (time.time() - 86400)) < 60
    (record,) = records
    assert (record["kind"], record["status"], record["variables"]) == ("status", 0x80000000, None)


async def test_offline_fault_stops_server_and_a_new_one_listens_again(tmp_path: Path) -> None:
    faults = [{"kind": "offline", "start": 1.0, "duration": 1.5}]
    prof = profile(server([var("C", counter(1.0), "UInt32")], faults), {
        "id": "plc",
        "registers": [{"table": "holding", "address": 0, "type": "uint16", "signal": const(7)}],
    })
    with start_simulator(prof, tmp_path) as sim:
        assert set(sim.ports) == {"opc", "plc"}  # both protocols in one process
        client = Client(endpoint(sim), timeout=2)
        await client.connect()
        first = await client.get_node("ns=2;s=C").read_value()
        records = wait_for(lambda: sim.truth(), 15.0, what="offline record")
        with pytest.raises((ConnectionError, ua.UaError, TimeoutError, OSError)):
            await client.get_node("ns=2;s=C").read_value()  # the old session is gone
        await client.disconnect()
        async with Client(endpoint(sim), timeout=5) as fresh:
            later = await fresh.get_node("ns=2;s=C").read_value()
        stats = fresh_stats(sim)
    assert later > first
    (record,) = records
    assert record["kind"] == "offline"
    start = datetime.strptime(record["start"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    end = datetime.strptime(record["end"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert 1.0 <= (end - start).total_seconds() < 10.0
    assert stats["restarts"] == 1
    assert stats["listening"] is True


async def test_packaged_opcua_profile_serves(tmp_path: Path) -> None:
    from simulator.profiles import opcua_profile_path

    with start_simulator(opcua_profile_path(), tmp_path) as sim:
        assert set(sim.ports) == {"opc-chillers", "opc-line"}
        async with Client(endpoint(sim, "opc-chillers"), timeout=5) as client:
            seconds = await client.get_node("ns=2;s=Plant.Seconds").read_data_value()
        async with Client(endpoint(sim, "opc-line"), timeout=5) as client:
            with pytest.raises(ua.UaStatusCodeError):  # 6 nodes > MaxNodesPerRead 5
                await client.uaclient.read(
                    read_params(*(f"ns=2;s={n}" for n in ("Line.Speed", "Line.State",
                     "Line.Packages", "Sealer.Temp", "Sealer.Heating", "Line.Recipe")))
                )
    assert seconds.Value.Value == math.floor(seconds.SourceTimestamp.timestamp())
