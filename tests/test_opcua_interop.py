"""Interoperability: the connector against node-opcua, an OPC UA server that is not asyncua.

Also where asyncua's server falls short: node-opcua implements the percent deadband (asyncua's
server ignores it), checks written Variants against the variable's DataType, and serves
EngineeringUnits with UNECE codes.

The server (``tests/interop/node-opcua/server.js``, node-opcua pinned in its package-lock.json)
runs as a subprocess on a free loopback port and is stopped by PID. The test command installs
it with ``npm ci --prefix tests/interop/node-opcua``; when Node.js or the npm modules are
missing these tests FAIL with that instruction (never skip).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError

from connectors.base import WriteError
from connectors.opcua.browse import browse
from connectors.opcua.certs import generate_self_signed
from connectors.opcua.config import OpcUaAddress, OpcUaDeviceConfig
from connectors.opcua.connector import OpcUaConnector, OpcUaPoint
from gateway.quality import Q, is_bad
from tests.opcua_helpers import collect, flat, of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NODE_DIR = Path(__file__).parent / "interop" / "node-opcua"
INSTALL = "npm ci --prefix tests/interop/node-opcua"
NS = "nsu=urn:ot-gateway:interop"
SERVER_URI = "urn:ot-gateway:interop:server"
READY_TIMEOUT = 60.0  # node-opcua loads its nodeset (and may create a PKI) at start


class NodeServer:
    def __init__(self, proc: subprocess.Popen[bytes], ready: dict[str, Any], log: Path) -> None:
        self.proc, self.ready, self.log = proc, ready, log

    @property
    def endpoint(self) -> str:
        return str(self.ready["endpoint"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js (node) is not installed; install it, then run `{INSTALL}`")
    if not (NODE_DIR / "node_modules" / "node-opcua" / "package.json").exists():
        pytest.fail(f"node-opcua is not installed; run `{INSTALL}`")
    return node


@contextlib.contextmanager
def node_server(tmp_path: Path, *extra: str) -> Iterator[NodeServer]:
    node = _require_node()
    ready = tmp_path / "node-ready.json"
    log = tmp_path / "node-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [node, str(NODE_DIR / "server.js"), "--port", "0", "--ready", str(ready),
             "--pki", str(tmp_path / "node-pki"), "--application-uri", SERVER_URI, *extra],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    server: NodeServer | None = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"node-opcua server exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"node-opcua server not ready after {READY_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.05)
        server = NodeServer(proc, json.loads(ready.read_text()), log)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def points() -> list[OpcUaPoint]:
    def p(name: str, **extra: Any) -> OpcUaPoint:
        return OpcUaPoint(f"interop/server/{name.lower()}", OpcUaAddress(node_id=f"{NS};s=Interop.{name}", **extra))

    return [
        p("Counter"),
        p("Sine"),
        p("Flag"),
        p("Label"),
        p("Faulty"),
        p("Stale"),
        OpcUaPoint(
            "interop/server/counter-polled",
            OpcUaAddress(node_id=f"{NS};s=Interop.Counter", mode="poll", poll_interval=0.25),
        ),
    ]


def check_values(batches: list[list[Any]]) -> None:
    counters = of(batches, "interop/server/counter") + of(batches, "interop/server/counter-polled")
    assert len(counters) >= 3
    for sample in counters:
        assert sample.quality == Q.GOOD
        assert sample.source_time is not None
        assert sample.value == math.floor(sample.source_time.timestamp())  # the oracle
    for sample in of(batches, "interop/server/sine"):
        assert sample.quality == Q.GOOD
        assert isinstance(sample.value, float)
        assert -10.0 <= sample.value <= 10.0
    assert {type(s.value) for s in of(batches, "interop/server/flag")} == {bool}
    for sample in of(batches, "interop/server/label"):
        assert isinstance(sample.value, str)
        assert sample.value.startswith("tick-")
    assert [(s.value, s.quality) for s in of(batches, "interop/server/faulty")][-1] == (
        None, 0x808C0000  # BadSensorFailure, passed through, no value
    )
    assert [(s.value, s.quality) for s in of(batches, "interop/server/stale")][-1] == (
        42.5, 0x40900000  # UncertainLastUsableValue, value kept
    )


async def test_subscribes_and_polls_node_opcua_over_none(tmp_path: Path) -> None:
    with node_server(tmp_path) as server:
        device = OpcUaDeviceConfig(
            id="interop", endpoint=server.endpoint, security_policy="None", insecure=True,
            publishing_interval=0.2, keepalive_count=5, watchdog=2.0,
        )
        async with OpcUaConnector(device, points()) as conn:
            batches = await collect(
                conn,
                lambda b: len(of(b, "interop/server/counter")) >= 3
                and len(of(b, "interop/server/counter-polled")) >= 3,
                within=20.0,
            )
            assert conn.opcua_stats.monitored_items == 6
    check_values(batches)


async def test_secure_channel_with_user_and_password_against_node_opcua(tmp_path: Path) -> None:
    server_cert, server_key = tmp_path / "server-cert.pem", tmp_path / "server-key.pem"
    generate_self_signed(server_cert, server_key, SERVER_URI, "127.0.0.1")
    client_cert, client_key = tmp_path / "client-cert.der", tmp_path / "client-key.pem"
    generate_self_signed(client_cert, client_key, "urn:ot-gateway:interop-client", "localhost")
    trusted = tmp_path / "pki" / "trusted"
    trusted.mkdir(parents=True)
    shutil.copy(server_cert, trusted / "server.pem")
    extra = ("--cert", str(server_cert), "--key", str(server_key),
             "--user", "operator", "--password", "SENTINEL-interop")
    with node_server(tmp_path, *extra) as server:
        device = OpcUaDeviceConfig(
            id="interop", endpoint=server.endpoint, security_policy="Basic256Sha256",
            security_mode="SignAndEncrypt", certificate=str(client_cert),
            private_key=str(client_key), trust_dir=str(trusted), username="operator",
            password="SENTINEL-interop",  # noqa: S106 - test password
            publishing_interval=0.2, watchdog=2.0,
        )
        async with OpcUaConnector(device, points()) as conn:
            batches = await collect(
                conn,
                lambda b: len(of(b, "interop/server/counter")) >= 3
                and len(of(b, "interop/server/counter-polled")) >= 3,
                within=20.0,
            )
        found = await browse(server.endpoint, pattern="Interop/*", device=device)
    check_values(batches)
    assert all(s.source_time is not None for s in flat(batches))
    assert sorted(v["display_name"] for v in found) == [
        "Counter", "Faulty", "Flag", "Label", "Level", "Setpoint", "Sine", "Stale"
    ]
    assert {v["node_id"].split(";", 1)[1] for v in found} >= {"s=Interop.Counter"}


async def test_percent_deadband_write_back_and_units_against_node_opcua(tmp_path: Path) -> None:
    """Percent deadband of an AnalogItem's EURange (5 % of [0, 200] = 10 units), refused
    without an EURange; a Float write typed from the node's DataType; units from UNECE codes."""

    def p(key: str, name: str, **extra: Any) -> OpcUaPoint:
        return OpcUaPoint(f"interop/server/{key}", OpcUaAddress(node_id=f"{NS};s=Interop.{name}",
                                                                **extra))

    pts = [
        p("level-raw", "Level"),
        p("level-pct", "Level", deadband_type="percent", deadband_value=5.0),
        p("sine-pct", "Sine", deadband_type="percent", deadband_value=5.0),  # no EURange
        p("setpoint", "Setpoint", mode="poll", poll_interval=0.2),
    ]
    with node_server(tmp_path) as server:
        device = OpcUaDeviceConfig(
            id="interop", endpoint=server.endpoint, security_policy="None", insecure=True,
            publishing_interval=0.1, keepalive_count=5, watchdog=2.0, discover=False,
        )
        async with OpcUaConnector(device, pts) as conn:
            batches = await collect(
                conn, lambda b: len(of(b, "interop/server/level-pct")) >= 4, within=30.0
            )
            refused = dict(conn.stats.errors)
            result = await conn.write("interop/server/setpoint", 42.25)
            with pytest.raises(WriteError) as encode_error:
                await conn.write("interop/server/setpoint", "high")
            # node-opcua is strict about types: the Double a type-blind client would send fails.
            node = conn.client.get_node(ua.NodeId.from_string(result.encoded.split()[1]))
            with pytest.raises(UaStatusCodeError, match="BadTypeMismatch"):
                await node.write_value(ua.Variant(42.25, ua.VariantType.Double))
            polled = await collect(
                conn, lambda b: len(of(b, "interop/server/setpoint")) >= 2, within=10.0
            )
        found = await browse(server.endpoint, pattern="Interop/*", insecure=True)
    raw = [s.value for s in of(batches, "interop/server/level-raw")]
    damped = [s.value for s in of(batches, "interop/server/level-pct")]
    assert all(abs(b - a) > 10.0 for a, b in itertools.pairwise(damped)), damped  # type: ignore[operator]
    assert len(raw) > 3 * len(damped)  # the 0.5-unit wobble reaches only the raw item
    (sine,) = of(batches, "interop/server/sine-pct")  # the server refused the filter
    assert is_bad(sine.quality)
    assert sine.quality == 0x80440000  # BadMonitoredItemFilterUnsupported, node-opcua's answer
    assert sine.value is None
    assert refused["monitored_item"] == 1
    assert result.encoded == "Write ns=2;s=Interop.Setpoint Float 42.25"
    assert result.confirmed is not None
    assert (result.confirmed.value, result.confirmed.quality) == (42.25, Q.GOOD)
    assert encode_error.value.kind == "encode"
    assert {s.value for s in of(polled, "interop/server/setpoint")} == {42.25}
    by_name = {v["display_name"]: v for v in found}
    assert (by_name["Level"]["unit"], by_name["Level"]["eu_range"]) == ("Cel", [0.0, 200.0])
    assert by_name["Setpoint"]["access"] == "read_write"
    assert by_name["Setpoint"]["data_type"] == "Float"
