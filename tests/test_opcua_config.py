"""OPC UA config models: node id / browse path forms, point address rules, device security (S10)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.opcua.config import (
    OpcUaAddress,
    OpcUaDeviceConfig,
    OpcUaDiscovery,
    SecurityPolicy,
    parse_browse_path,
    parse_node_id,
)

SECURE = {"certificate": "c.der", "private_key": "k.pem", "trust_dir": "pki/trusted"}


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("i=85", "i=85"),
        ("ns=0;i=2258", "i=2258"),
        ("ns=2;s=Pump7.Flow", "ns=2;s=Pump7.Flow"),
        ("ns=3;i=1001", "ns=3;i=1001"),
        ("ns=2;s=a;b=c", "ns=2;s=a;b=c"),  # string ids may hold ; and =
        ("nsu=urn:vendor:plant;s=Pump7.Flow", "nsu=urn:vendor:plant;s=Pump7.Flow"),
        ("nsu=http://x.org/UA/;i=5", "nsu=http://x.org/UA/;i=5"),
        ("ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a", "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a"),
        ("ns=1;b=M/RbKBsRVkePCePcx24oRA==", "ns=1;b=M/RbKBsRVkePCePcx24oRA=="),
    ],
)
def test_node_id_forms(text: str, canonical: str) -> None:
    assert parse_node_id(text).canonical() == canonical
    assert OpcUaAddress(node_id=text).locator == canonical


@pytest.mark.parametrize(
    "text",
    ["", "Pump7", "ns=2", "ns=x;i=1", "ns=70000;i=1", "i=-1", "i=4294967296", "ns=1;g=nope",
     "ns=1;b=***", "s=", "x=1", "ns=2;i=1.5"],
)
def test_bad_node_ids(text: str) -> None:
    with pytest.raises(ValueError, match=r"node id|namespace|identifier|GUID|base64"):
        parse_node_id(text)
    with pytest.raises(ValidationError, match="node_id"):
        OpcUaAddress(node_id=text)


@given(ns=st.integers(0, 65535), ident=st.integers(0, 2**32 - 1))
def test_numeric_node_ids_round_trip(ns: int, ident: int) -> None:
    parsed = parse_node_id(f"ns={ns};i={ident}")
    assert (parsed.namespace, parsed.kind, int(parsed.identifier)) == (ns, "i", ident)


def test_browse_paths() -> None:
    assert parse_browse_path("2:Plant/2:Pump7/2:Flow") == [(2, "Plant"), (2, "Pump7"), (2, "Flow")]
    assert parse_browse_path("/Server/0:ServerStatus") == [(0, "Server"), (0, "ServerStatus")]
    assert parse_browse_path("3:Line 1/3:Speed.Set") == [(3, "Line 1"), (3, "Speed.Set")]
    for bad in ("", "/", "2:A//2:B", "2:", "99999:X"):
        with pytest.raises(ValueError, match=r"browse path|namespace"):
            parse_browse_path(bad)


def test_address_needs_exactly_one_of_node_id_and_browse_path() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        OpcUaAddress()
    with pytest.raises(ValidationError, match="exactly one"):
        OpcUaAddress(node_id="i=85", browse_path="0:Server")
    assert OpcUaAddress(browse_path="2:A/2:B").locator == "path=2:A/2:B"


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"mode": "poll", "deadband_type": "absolute", "deadband_value": 1}, "deadband_type"),
        ({"mode": "poll", "sampling_interval": 0.5}, "sampling_interval"),
        ({"mode": "poll", "queue_size": 5}, "queue_size"),
        ({"mode": "poll", "max_report_interval": 60}, "max_report_interval"),
        ({"poll_interval": 1.0}, "poll_interval"),
        ({"deadband_value": 2.0}, "deadband_value"),
        ({"deadband_type": "percent", "deadband_value": 120}, "deadband_value"),
        ({"queue_size": 0}, "queue_size"),
        ({"sampling_interval": -1}, "sampling_interval"),
        ({"poll_interval": 0.001, "mode": "poll"}, "poll_interval"),
        ({"deadband_type": "absolute", "deadband_value": float("nan")}, "deadband_value"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_address_rules_name_the_key(fields: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        OpcUaAddress(node_id="ns=2;s=X", **fields)


def test_address_defaults() -> None:
    address = OpcUaAddress(node_id="ns=2;s=X")
    assert (address.mode, address.queue_size, address.deadband_type) == (
        "subscription", 1, "none"
    )
    assert address.sampling_interval is None
    assert OpcUaAddress(node_id="ns=2;s=X", mode="poll", poll_interval=0.5).poll_interval == 0.5


def test_device_defaults_are_secure() -> None:
    device = OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc:4841/ua", **SECURE)
    assert device.security_policy is SecurityPolicy.BASIC256SHA256
    assert device.security_mode == "SignAndEncrypt"
    assert (device.host, device.port, device.source_prefix) == ("plc", 4841, "opc.tcp://plc:4841")
    assert OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", **SECURE).port == 4840
    assert device.liveness_limit == max(1.0 * 5, 5.0) + 0.5


@pytest.mark.parametrize("policy", ["None", "Basic128Rsa15", "Basic256"])
def test_insecure_policies_need_insecure_flag(policy: str) -> None:
    with pytest.raises(ValidationError, match=f"security_policy: {policy}") as info:
        OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", security_policy=policy, **SECURE)
    assert "insecure: true" in str(info.value)
    device = OpcUaDeviceConfig(
        id="d", endpoint="opc.tcp://plc", security_policy=policy, insecure=True, **SECURE
    )
    assert device.security_policy.is_insecure


@pytest.mark.parametrize("missing", ["certificate", "private_key", "trust_dir"])
def test_secure_policies_need_certificate_key_and_trust_dir(missing: str) -> None:
    fields = {k: v for k, v in SECURE.items() if k != missing}
    with pytest.raises(ValidationError, match=f"{missing}: required"):
        OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", **fields)


def test_credentials() -> None:
    with pytest.raises(ValidationError, match="username: credentials are never sent"):
        OpcUaDeviceConfig(
            id="d", endpoint="opc.tcp://plc", security_policy="None", insecure=True,
            username="u", password="p",  # noqa: S106 - test value
        )
    with pytest.raises(ValidationError, match="password: set username"):
        OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", password="p", **SECURE)  # noqa: S106
    device = OpcUaDeviceConfig(
        id="d", endpoint="opc.tcp://plc", username="u", password="SENTINEL-x", **SECURE  # noqa: S106
    )
    assert "SENTINEL" not in repr(device)
    assert "SENTINEL" not in str(device.model_dump())
    assert device.password is not None
    assert device.password.get_secret_value() == "SENTINEL-x"


@pytest.mark.parametrize(
    "endpoint",
    ["http://plc:4840", "opc.tcp://", "opc.tcp://plc:0", "opc.tcp://plc:70000",
     "opc.tcp://user:pw@plc:4840", "plc:4840"],
)
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        OpcUaDeviceConfig(id="d", endpoint=endpoint, **SECURE)


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", 0), ("publishing_interval", 0.001), ("keepalive_count", 0), ("watchdog", 0.1),
     ("session_timeout", 5), ("max_nodes_per_read", 0), ("max_future_skew", -1)],
)
def test_device_ranges(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", **SECURE, **{field: value})


def test_every_value_field_documents_unit_or_range() -> None:
    for model in (OpcUaDeviceConfig, OpcUaAddress, OpcUaDiscovery):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            if info.annotation in (float, float | None):
                assert "[" in info.description, f"{model.__name__}.{name}: no unit/range"


def test_discovery_is_on_by_default_and_bounded() -> None:
    device = OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", **SECURE)
    assert device.discover == OpcUaDiscovery()
    assert (device.discover.enabled, device.discover.start, device.discover.depth) == (
        True, "i=85", 5,
    )
    assert (device.discover.max_nodes, device.discover.timeout) == (10_000, 30.0)
    off = OpcUaDeviceConfig(id="d", endpoint="opc.tcp://plc", **SECURE, discover=False)
    assert off.discover.enabled is False
    custom = OpcUaDeviceConfig(
        id="d", endpoint="opc.tcp://plc", **SECURE,
        discover={"start": "nsu=urn:plant;s=Line1", "depth": 3, "interval": 600},
    )
    assert (custom.discover.start, custom.discover.depth, custom.discover.interval) == (
        "nsu=urn:plant;s=Line1", 3, 600.0,
    )


@pytest.mark.parametrize(
    ("discover", "key"),
    [({"start": "Objects"}, "start"), ({"depth": 0}, "depth"), ({"max_nodes": 0}, "max_nodes"),
     ({"timeout": 0}, "timeout"), ({"interval": 5}, "interval"), ({"depht": 2}, "depht")],
)
def test_discovery_errors_name_the_key(discover: dict[str, object], key: str) -> None:
    from gateway.config import ConfigError, parse_config

    text = (
        "devices:\n  - {id: o, protocol: opcua, endpoint: 'opc.tcp://h', security_policy: None,"
        f" insecure: true, discover: {discover!r}}}\n"
    ).replace("'", '"')
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert f"devices[0].discover.{key}" in str(info.value)
