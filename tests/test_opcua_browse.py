"""Discovery (connectors.opcua.browse) against the OPC UA simulator subprocess."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from asyncua import ua

from connectors.base import ConnectError
from connectors.opcua.browse import browse, render_points_yaml, unece_code, unit_text
from connectors.opcua.certs import generate_self_signed
from connectors.opcua.config import OpcUaAddress, OpcUaDeviceConfig
from connectors.opcua.connector import OpcUaConnector
from tests.opcua_helpers import collect, const, counter, endpoint, flat, point, profile, server, var
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

VARIABLES = [
    var("Boiler1/Temp", const(80.0), unit="Cel", eu_range=[0, 200]),
    var("Boiler1/Pressure", const(2.5), unit="bar"),
    var("Boiler2/Temp", const(81.0)),
    var("Line/Counter", counter(1.0), "UInt32", node_id="i=7001"),
    var("Setpoint", const(50.0), writable=True),
    var("Vector", const(1.0), array=4),
]
LIMITS = {"max_nodes_per_browse": 2, "max_nodes_per_read": 4}


async def test_browse_lists_variables_with_types_access_and_paths(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES, limits=LIMITS)), tmp_path) as sim:
        found = await browse(endpoint(sim), insecure=True)
        stats = sim.wait_stats(lambda s: s["devices"]["opc"]["browses"] > 0)["devices"]["opc"]
    by_path = {v["browse_path"]: v for v in found}
    assert sorted(by_path) == [
        "2:opc/2:Boiler1/2:Pressure",
        "2:opc/2:Boiler1/2:Temp",
        "2:opc/2:Boiler2/2:Temp",
        "2:opc/2:Line/2:Counter",
        "2:opc/2:Setpoint",
        "2:opc/2:Vector",
    ]  # no EURange / EngineeringUnits properties, nothing from namespace 0
    temp = by_path["2:opc/2:Boiler1/2:Temp"]
    assert temp["node_id"] == "ns=2;s=Boiler1.Temp"
    assert (temp["data_type"], temp["value_rank"], temp["access"]) == ("Double", -1, "read")
    assert temp["supported"] is True
    assert temp["source"] == f"opc.tcp://127.0.0.1:{sim.ports['opc']}#ns=2;s=Boiler1.Temp"
    assert by_path["2:opc/2:Line/2:Counter"]["node_id"] == "ns=2;i=7001"
    assert by_path["2:opc/2:Line/2:Counter"]["data_type"] == "UInt32"
    assert by_path["2:opc/2:Setpoint"]["access"] == "read_write"
    assert by_path["2:opc/2:Vector"]["supported"] is False
    # units, ranges and value types for the config entries
    assert (temp["unit"], temp["eu_range"], temp["value_type"]) == ("Cel", [0.0, 200.0], "number")
    assert temp["sample"] == "80.0"
    assert by_path["2:opc/2:Boiler1/2:Pressure"]["unit"] == "bar"
    assert by_path["2:opc/2:Boiler2/2:Temp"]["unit"] is None
    assert by_path["2:opc/2:Vector"]["value_type"] == "unsupported"
    assert by_path["2:opc/2:Vector"]["sample"] is None
    assert stats["too_many_operations"] == 0  # chunked to 2 nodes per Browse, 4 per Read
    assert stats["max_nodes_per_read_call"] <= 4


async def test_browse_filters_depth_and_start_node(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        ep = endpoint(sim)
        temps = await browse(ep, pattern="*Temp", insecure=True)
        shallow = await browse(ep, depth=2, insecure=True)
        boiler1 = await browse(ep, start_node="ns=2;s=opc/Boiler1", insecure=True)
        by_uri = await browse(
            ep, start_node="nsu=urn:ot-gateway:simulator:opc:plant;s=opc/Line", insecure=True
        )
        by_id = await browse(ep, pattern="ns=2;i=7001", insecure=True)
        limited = await browse(ep, limit=2, insecure=True)
        bounded = await browse(ep, max_nodes=3, insecure=True)  # opc, Boiler1, Boiler2
        excluded = await browse(ep, exclude=["ns=2;s=Setpoint", "ns=2;i=7001"], insecure=True)
    assert [v["node_id"] for v in temps] == ["ns=2;s=Boiler1.Temp", "ns=2;s=Boiler2.Temp"]
    assert [v["browse_path"] for v in shallow] == ["2:opc/2:Setpoint", "2:opc/2:Vector"]
    assert [v["browse_path"] for v in boiler1] == ["2:Pressure", "2:Temp"]
    assert [v["node_id"] for v in by_uri] == ["ns=2;i=7001"]
    assert [v["display_name"] for v in by_id] == ["Counter"]
    assert len(limited) == 2
    assert bounded == []  # the walk stopped before reaching a variable
    assert {v["node_id"] for v in excluded} & {"ns=2;s=Setpoint", "ns=2;i=7001"} == set()
    assert len(excluded) == 4


async def test_browse_refuses_policy_none_without_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match="insecure"):
        await browse("opc.tcp://127.0.0.1:4840", insecure=False)
    with pytest.raises(ValueError, match="depth"):
        await browse("opc.tcp://127.0.0.1:4840", depth=0, insecure=True)


async def test_browse_over_secure_channel_with_device_settings(tmp_path: Path) -> None:
    security = {"policies": ["Basic256Sha256_SignAndEncrypt"]}
    with start_simulator(profile(server(VARIABLES[:2], security=security)), tmp_path) as sim:
        cert, key = tmp_path / "c.der", tmp_path / "k.pem"
        generate_self_signed(cert, key, "urn:ot-gateway:test-client", "localhost")
        trusted = tmp_path / "pki" / "trusted"
        trusted.mkdir(parents=True)
        shutil.copy(sim.ready["devices"]["opc"]["certificate"], trusted / "server.der")
        device = OpcUaDeviceConfig(
            id="opc", endpoint="opc.tcp://ignored:1", certificate=str(cert),
            private_key=str(key), trust_dir=str(trusted),
        )
        found = await browse(endpoint(sim), device=device)
    assert len(found) == 2


async def test_rendered_yaml_is_valid_config_and_resolves(tmp_path: Path) -> None:
    with start_simulator(profile(server(VARIABLES)), tmp_path) as sim:
        found = await browse(endpoint(sim), insecure=True)
        text = render_points_yaml(found, "boiler-house")
        entries = yaml.safe_load(text)
        assert len(entries) == 5  # the array variable is commented out
        assert "unsupported" in text
        assert len({e["id"] for e in entries}) == 5
        for entry in entries:
            assert entry["device"] == "boiler-house"
            OpcUaAddress(node_id=entry["node_id"])
        # the browse paths found are usable as config browse paths
        paths = [v["browse_path"] for v in found if v["supported"]]
        points = [point(f"s/a/p{i}", browse_path=p, value_type="any") for i, p in enumerate(paths)]
        device = OpcUaDeviceConfig(
            id="opc", endpoint=endpoint(sim), security_policy="None", insecure=True,
            publishing_interval=0.1,
        )
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda b: len({s.point_id for s in flat(b)}) == 5)
    assert all(s.quality == 0 for s in flat(batches))
    poll = yaml.safe_load(render_points_yaml(found[:1], "d", mode="poll"))
    assert poll[0]["mode"] == "poll"


@pytest.mark.parametrize(
    ("unit_id", "display", "expected"),
    [
        (int.from_bytes(b"CEL", "big"), "degC", "Cel"),  # UNECE code mapped to UCUM
        (int.from_bytes(b"KWH", "big"), "kWh", "kW.h"),
        (int.from_bytes(b"P1", "big"), "percent", "%"),
        (-1, "bar", "bar"),  # no code: the display name
        (int.from_bytes(b"ZZZ", "big"), "widgets/h", "widgets/h"),
        (-1, "", None),
        (-1, "x" * 33, None),  # too long for a unit code
    ],
)
def test_unit_text_from_engineering_units(unit_id: int, display: str, expected: str | None) -> None:
    info = ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(display),
    )
    assert unit_text(info) == expected
    assert unit_text(None) is None
    assert unece_code(int.from_bytes(b"CEL", "big")) == "CEL"
    assert unece_code(-1) == ""
