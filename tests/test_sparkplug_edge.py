"""Sparkplug B edge node output against Debian's mosquitto, read back by an independent decoder.

The node runs in the test's event loop (or, for SIGKILL, in a child process) with a real
`Inventory` and real `Reading`s. Everything the broker delivers on ``spBv1.0/#`` is captured
by a plain paho client in its own network thread and decoded with a message class built at
test time from the published ``connectors/mqtt/sparkplug_b.proto`` (compiled by
``grpc_tools.protoc`` into a separate descriptor pool, so the gateway's generated module is not
used to read its own output; without grpc_tools the generated module is the fallback). The
stream is checked against the spec's birth/death/seq/alias rules and then replayed through the
project's host-side state machine (`SparkplugSessions`) as an interop cross-check.

Sparkplug 3.0.0: §4.2 (message types, QoS 0, not retained), §5.4-5.7 (sessions, will,
bdSeq, DDEATH), §5.17 (Rebirth), §6.4.5-6.4.9.1 (seq, aliases, quality codes).
RELIABILITY S13 (no commands acted on but Rebirth), M6 (quality mapping), R7 (NDEATH on stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from pydantic import ValidationError

from connectors.mqtt.sparkplug import decode_payload, parse_topic
from connectors.mqtt.sparkplug_session import SparkplugSessions
from gateway.model import Reading, Value
from gateway.quality import Q, is_bad
from gateway.sparkplug_edge import (
    BDSEQ_FILE,
    EdgePoint,
    SparkplugEdgeConfig,
    SparkplugEdgeNode,
)
from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from tests.mosquitto_helpers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "connectors" / "mqtt"
GROUP = "plant"
NODE = "gw-north"
PUMP = f"spBv1.0/{GROUP}/DBIRTH/{NODE}/north:pump-1"
TANK = f"spBv1.0/{GROUP}/DBIRTH/{NODE}/north:tank-2"
WAIT = 15.0  # s, bound of every wait
UNITS = {"flow": "m3/h", "speed": "/min", "level": "m"}

# Sparkplug datatype codes (§6.4.16) and quality codes (§6.4.9.1), spelled out independently.
INT32, INT64, DOUBLE, BOOLEAN, STRING = 3, 4, 10, 11, 12
SP_BAD, SP_STALE = 0, 500


# -- independent decoder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload_cls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Sparkplug B ``Payload`` message class, compiled from the .proto at test time."""
    try:
        from grpc_tools import protoc
    except ImportError:  # fallback: the generated module
        from connectors.mqtt import sparkplug_b_pb2

        return sparkplug_b_pb2.Payload
    out = tmp_path_factory.mktemp("proto") / "sparkplug_b.desc"
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", "sparkplug_b.proto"]
    )
    assert rc == 0, "protoc failed"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()  # separate from the default pool the gateway uses
    for f in files.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("otgw.sparkplug_b.Payload"))


@dataclass(frozen=True)
class Msg:
    """One delivered MQTT message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def kind(self) -> str:
        return self.topic.split("/")[2]

    @property
    def device(self) -> str:
        parts = self.topic.split("/")
        return parts[4] if len(parts) == 5 else ""


class Capture:
    """A paho subscriber (own network thread) recording every message in arrival order."""

    def __init__(self, port: int, topic: str = "spBv1.0/#") -> None:
        self._lock = threading.Lock()
        self._msgs: list[Msg] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="spb-capture", protocol=mqtt.MQTTv311
        )

        def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            with self._lock:
                self._msgs.append(Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain)))

        self.client.on_message = on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "capture not subscribed"

    def all(self) -> list[Msg]:
        with self._lock:
            return list(self._msgs)

    def of(self, kind: str, topic: str | None = None) -> list[Msg]:
        return [m for m in self.all() if m.kind == kind and (topic is None or m.topic == topic)]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def until(predicate: Callable[[], Any], what: str, bound: float = WAIT) -> Any:
    """Poll ``predicate`` (yielding to the event loop) until truthy; fail after ``bound`` s."""
    deadline = time.monotonic() + bound
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound} s waiting for {what}")
        await asyncio.sleep(0.01)


def metric(payload: Any, name: str) -> Any:
    found = [m for m in payload.metrics if m.name == name]
    assert len(found) == 1, f"metric {name!r}: {len(found)} found"
    return found[0]


def props(m: Any) -> dict[str, tuple[int, object]]:
    """Metric properties as ``key -> (type, value)``."""
    out: dict[str, tuple[int, object]] = {}
    for key, value in zip(m.properties.keys, m.properties.values, strict=True):
        which = value.WhichOneof("value")
        out[key] = (value.type, getattr(value, which) if which else None)
    return out


def ms(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def bd_seq_of(payload: Any) -> int:
    bd = metric(payload, "bdSeq")
    assert bd.datatype == INT64
    assert bd.WhichOneof("value") == "long_value"
    return int(bd.long_value)


def check_stream(msgs: list[Msg], payload_cls: Any) -> dict[str, int]:
    """Check the spec's rules over everything the node published; return counts by type.

    seq: 0 in NBIRTH, +1 mod 256 per message after it (NDEATH has none). Births carry name,
    alias, datatype and timestamp for every metric, aliases unique across the node; DATA
    carries aliases only, of metrics born for that device; no DATA for a device that is not
    born. QoS 0 and not retained (NDEATH: the will, QoS 1).
    """
    expected: int | None = None
    aliases: dict[int, tuple[str, str]] = {}
    born: set[str] = set()
    counts: dict[str, int] = {}
    for m in msgs:
        if m.kind in ("NCMD", "DCMD", "STATE"):
            continue
        counts[m.kind] = counts.get(m.kind, 0) + 1
        p = payload_cls.FromString(m.payload)
        assert p.HasField("timestamp"), m.topic
        assert p.timestamp > 0, m.topic
        assert not m.retain, m.topic
        if m.kind == "NDEATH":
            assert not p.HasField("seq"), "NDEATH carries no seq"
            assert [x.name for x in p.metrics] == ["bdSeq"]
            born.clear()
            continue
        assert m.qos == 0, m.topic
        assert p.HasField("seq"), m.topic
        if m.kind == "NBIRTH":
            assert p.seq == 0, "NBIRTH seq must be 0"
            aliases.clear()
            born.clear()
            for x in p.metrics:
                assert x.name
                assert x.HasField("datatype")
                assert x.HasField("timestamp")
                assert not x.HasField("alias"), "no alias on bdSeq / Node Control/Rebirth"
        else:
            assert expected is not None, f"{m.topic} before any NBIRTH"
            assert p.seq == expected, f"{m.topic}: seq {p.seq}, expected {expected}"
        expected = (p.seq + 1) % 256
        if m.kind == "DBIRTH":
            for x in p.metrics:
                assert x.name, x
                assert x.HasField("alias"), x
                assert x.HasField("datatype"), x
                assert x.HasField("timestamp")
                owner = aliases.setdefault(x.alias, (m.device, x.name))
                assert owner == (m.device, x.name), f"alias {x.alias} reused: {owner}"
            born.add(m.device)
        elif m.kind == "DDEATH":
            assert m.device in born, f"DDEATH of {m.device} not born"
            assert len(p.metrics) == 0
            born.discard(m.device)
        elif m.kind == "DDATA":
            assert m.device in born, f"DDATA of {m.device} before its DBIRTH / after DDEATH"
            for x in p.metrics:
                assert x.HasField("alias"), "DATA uses aliases"
                assert not x.name, "DATA carries no metric names"
                assert not x.HasField("datatype")
                assert x.HasField("timestamp")
                assert aliases[x.alias][0] == m.device
    return counts


def replay_as_host(msgs: list[Msg]) -> tuple[SparkplugSessions, dict[str, int]]:
    """Feed the stream to the project's host-side state machine; return it and its counts."""
    sessions = SparkplugSessions(reorder_timeout=5.0)
    counts: dict[str, int] = {}
    for i, m in enumerate(msgs):
        topic = parse_topic(m.topic)
        assert topic is not None, m.topic
        payload = None if m.kind in ("NCMD", "DCMD") else decode_payload(m.payload, 1 << 20)
        out = sessions.handle(topic, payload, float(i), datetime.now(UTC))
        for key, n in out.counts.items():
            counts[key] = counts.get(key, 0) + n
    for bad in ("seq_gap", "seq_duplicate", "unknown_metric", "data_before_birth",
                "datatype_mismatch", "stale_death", "missing_seq", "birth_without_bdseq"):
        assert counts.get(bad, 0) == 0, f"host state machine counted {bad}: {counts}"
    return sessions, counts


# -- plant, readings, node -------------------------------------------------------------------


def plant(speed_interval: float = 60.0) -> InventorySpec:
    """north: pump-1 (flow, speed, running on d1), tank-2 (level on d2), empty-3 (no points)."""
    return InventorySpec(
        sites=(SiteSpec("north"),),
        assets=(AssetSpec("north", "pump-1"), AssetSpec("north", "tank-2"),
                AssetSpec("north", "empty-3")),
        points=(
            PointSpec("north", "pump-1", "flow", "d1", 60.0, unit="m3/h"),
            PointSpec("north", "pump-1", "speed", "d1", speed_interval, unit="/min"),
            PointSpec("north", "pump-1", "running", "d1", 60.0),
            PointSpec("north", "tank-2", "level", "d2", 60.0, unit="m"),
        ),
        devices=(DeviceSpec("d1", "modbus", "10.0.0.1:502"), DeviceSpec("d2", "mqtt", "b")),
    )


def rd(asset: str, point: str, value: Value, quality: int = Q.GOOD,
       at: datetime | None = None) -> Reading:
    t = at or datetime.now(UTC)
    return Reading(
        site="north", asset=asset, point=point, value=None if is_bad(quality) else value,
        unit=UNITS.get(point), quality=quality, source_time=t, gateway_time=t,
        source=f"test://{asset}/{point}",
    )


def feed(inv: Inventory, node: SparkplugEdgeNode, readings: list[Reading]) -> None:
    """What the runtime's writer does after a commit: inventory first, then the listeners."""
    inv.observe(readings)
    node.listener(readings)


def config(port: int, **extra: Any) -> SparkplugEdgeConfig:
    return SparkplugEdgeConfig(
        host="127.0.0.1", port=port, group_id=GROUP, keepalive=5,
        reconnect_initial=0.1, reconnect_max=0.5, **extra,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    mq = Mosquitto(tmp_path / "mq")
    try:
        yield mq
    finally:
        mq.stop()


@pytest.fixture
def capture(broker: Mosquitto) -> Any:
    cap = Capture(broker.port)
    try:
        yield cap
    finally:
        cap.stop()


async def births_of_both(inv: Inventory, node: SparkplugEdgeNode, cap: Capture,
                         t: datetime) -> None:
    """Make pump-1 and tank-2 online and wait for their DBIRTHs."""
    feed(inv, node, [rd("pump-1", "flow", 12.5, at=t), rd("pump-1", "speed", 1450, at=t),
                     rd("pump-1", "running", True, at=t), rd("tank-2", "level", 3.25, at=t)])
    before = len(cap.of("DBIRTH"))
    assert await node.refresh_states(datetime.now(UTC)) == 2
    await until(lambda: len(cap.of("DBIRTH")) >= before + 2, "two DBIRTHs")


# -- tests -----------------------------------------------------------------------------------


async def test_births_aliases_quality_seq_wrap_and_clean_ndeath(
    broker: Mosquitto, capture: Capture, payload_cls: Any, tmp_path: Path
) -> None:
    inv = Inventory(plant(), now=datetime.now(UTC))
    node = SparkplugEdgeNode(config(broker.port, edge_node_id=None), NODE, inv,
                             plant().points, state_dir=tmp_path / "state")
    await node.start(wait=10)
    try:
        # NBIRTH: seq 0, bdSeq 0 (fresh state), Rebirth = false (Boolean, no alias), QoS 0.
        (nbirth,) = await until(lambda: capture.of("NBIRTH"), "NBIRTH")
        assert nbirth.topic == f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
        p = payload_cls.FromString(nbirth.payload)
        assert p.seq == 0
        assert bd_seq_of(p) == 0
        rebirth = metric(p, "Node Control/Rebirth")
        assert (rebirth.datatype, rebirth.boolean_value) == (BOOLEAN, False)
        assert json.loads((tmp_path / "state" / BDSEQ_FILE).read_text())["bd_seq"] == 0
        assert not capture.of("DBIRTH"), "no device is alive before its asset is seen"

        # DBIRTH per asset with points (empty-3 has none): every metric, values, units.
        t0 = datetime.now(UTC).replace(microsecond=123000)
        await births_of_both(inv, node, capture, t0)
        pump = payload_cls.FromString(capture.of("DBIRTH", PUMP)[-1].payload)
        tank = payload_cls.FromString(capture.of("DBIRTH", TANK)[-1].payload)
        assert [m.name for m in pump.metrics] == ["flow", "speed", "running"]
        flow, speed, running = (metric(pump, n) for n in ("flow", "speed", "running"))
        assert (flow.datatype, flow.double_value) == (DOUBLE, 12.5)
        assert (speed.datatype, speed.long_value) == (INT64, 1450)
        assert (running.datatype, running.boolean_value) == (BOOLEAN, True)
        assert props(flow) == {"engUnit": (STRING, "m3/h")}
        assert props(running) == {}, "Good: no Quality property"
        assert flow.timestamp == ms(t0)
        level = metric(tank, "level")
        assert (level.datatype, level.double_value) == (DOUBLE, 3.25)
        alias = {m.name: m.alias for m in [*pump.metrics, *tank.metrics]}
        assert len(set(alias.values())) == 4
        assert not capture.of("DBIRTH", f"spBv1.0/{GROUP}/DBIRTH/{NODE}/north:empty-3")

        # DDATA: aliases only; Good plain, Bad -> is_null + BAD, Uncertain -> STALE.
        t1 = datetime.now(UTC)
        feed(inv, node, [rd("pump-1", "flow", 13.0, at=t1),
                         rd("pump-1", "speed", None, Q.BAD_TIMEOUT, at=t1),
                         rd("pump-1", "running", False, at=t1),
                         rd("tank-2", "level", 2.5, Q.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, at=t1)])
        await until(lambda: len(capture.of("DDATA")) >= 2, "DDATA of both devices")
        by_alias: dict[int, Any] = {}
        for m in capture.of("DDATA"):
            for x in payload_cls.FromString(m.payload).metrics:
                by_alias[x.alias] = x
        d_flow, d_speed = by_alias[alias["flow"]], by_alias[alias["speed"]]
        d_running, d_level = by_alias[alias["running"]], by_alias[alias["level"]]
        assert (d_flow.double_value, props(d_flow), d_flow.timestamp) == (13.0, {}, ms(t1))
        assert d_speed.is_null
        assert d_speed.WhichOneof("value") is None
        assert props(d_speed) == {"Quality": (INT32, SP_BAD)}
        assert d_running.boolean_value is False
        assert props(d_running) == {}
        assert d_level.double_value == 2.5
        assert props(d_level) == {"Quality": (INT32, SP_STALE)}

        # seq wraps 255 -> 0: one DDATA per reading, each waited for.
        for i in range(260):
            n = len(capture.of("DDATA"))
            feed(inv, node, [rd("pump-1", "flow", float(i))])
            await until(lambda n=n: len(capture.of("DDATA")) > n, f"DDATA {i}")
        seqs = [payload_cls.FromString(m.payload).seq for m in capture.all()
                if m.kind != "NDEATH"]
        assert 255 in seqs
        assert seqs.index(0, seqs.index(255)) == seqs.index(255) + 1
    finally:
        await node.stop()

    # Clean stop: NDEATH with the session's bdSeq (QoS 1, no seq), then nothing more.
    (ndeath,) = await until(lambda: capture.of("NDEATH"), "NDEATH on stop")
    p = payload_cls.FromString(ndeath.payload)
    assert bd_seq_of(p) == 0
    assert ndeath.qos == 1
    assert ndeath.topic == f"spBv1.0/{GROUP}/NDEATH/{NODE}"
    msgs = capture.all()
    assert msgs[-1].kind == "NDEATH"
    counts = check_stream(msgs, payload_cls)
    assert counts["DDATA"] == 262
    assert node.stats.published == 264
    sessions, host = replay_as_host(msgs)
    assert host["ndeath"] == 1
    assert not sessions.nodes[(GROUP, NODE)].online
    assert node.status()["connected"] is False


async def test_ncmd_rebirth_ignored_commands_and_ddeath(
    broker: Mosquitto, capture: Capture, payload_cls: Any, tmp_path: Path
) -> None:
    inv = Inventory(plant(), now=datetime.now(UTC))
    node = SparkplugEdgeNode(config(broker.port, rebirth_min_interval=0.2), NODE, inv,
                             plant().points, state_dir=tmp_path / "state")
    await node.start(wait=10)
    host = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scada-host")
    host.connect("127.0.0.1", broker.port)
    host.loop_start()
    try:
        await until(lambda: capture.of("NBIRTH"), "NBIRTH")
        await births_of_both(inv, node, capture, datetime.now(UTC))

        def command(topic: str, name: str, value: object) -> None:
            cmd = payload_cls(timestamp=ms(datetime.now(UTC)))
            x = cmd.metrics.add()
            x.name = name
            if isinstance(value, bool):
                x.datatype, x.boolean_value = BOOLEAN, value
            else:
                x.datatype, x.double_value = DOUBLE, value
            host.publish(topic, cmd.SerializeToString(), qos=0).wait_for_publish(5)

        # Commands other than Rebirth change nothing (S13): a write, garbage, a DCMD.
        ncmd = f"spBv1.0/{GROUP}/NCMD/{NODE}"
        command(ncmd, "flow", 99.0)
        command(ncmd, "Node Control/Rebirth", False)
        host.publish(ncmd, b"\xff\x01not protobuf", qos=0).wait_for_publish(5)
        command(f"spBv1.0/{GROUP}/DCMD/{NODE}/north:pump-1", "flow", 99.0)
        await until(lambda: node.stats.commands == 3, "three NCMDs received")
        assert (node.stats.commands_ignored, node.stats.commands_invalid) == (2, 1)
        assert len(capture.of("NBIRTH")) == 1

        # Rebirth: NBIRTH (seq 0, same bdSeq) and every DBIRTH again, current values.
        command(ncmd, "Node Control/Rebirth", True)
        await until(lambda: len(capture.of("NBIRTH")) == 2 and len(capture.of("DBIRTH")) == 4,
                    "NBIRTH + DBIRTHs after Rebirth")
        first, second = (payload_cls.FromString(m.payload) for m in capture.of("NBIRTH"))
        assert bd_seq_of(first) == bd_seq_of(second) == 0
        msgs = capture.all()
        i = max(k for k, m in enumerate(msgs) if m.kind == "NBIRTH")
        assert [m.kind for m in msgs[i:i + 3]] == ["NBIRTH", "DBIRTH", "DBIRTH"]
        assert [payload_cls.FromString(m.payload).seq for m in msgs[i:i + 3]] == [0, 1, 2]
        assert metric(payload_cls.FromString(capture.of("DBIRTH", PUMP)[-1].payload),
                      "flow").double_value == 12.5
        assert node.stats.rebirths == 1

        # pump-1's device link goes down -> asset offline -> DDEATH (tank-2 stays).
        inv.link_down("d1", datetime.now(UTC), "test: link down")
        assert await node.refresh_states(datetime.now(UTC)) == 1
        (ddeath,) = await until(lambda: capture.of("DDEATH"), "DDEATH")
        assert ddeath.device == "north:pump-1"

        # Readings of the dead device are held (not sent); its peers' are sent.
        held = node.stats.held
        feed(inv, node, [rd("pump-1", "flow", 20.0), rd("tank-2", "level", 4.0)])
        await until(lambda: any(m.device == "north:tank-2" for m in capture.of("DDATA")),
                    "tank-2 DDATA")
        assert node.stats.held == held + 1

        # Back online: the DBIRTH carries the latest held value; later readings are DDATA.
        inv.link_up("d1", datetime.now(UTC))
        feed(inv, node, [rd("pump-1", "flow", 21.0)])
        assert await node.refresh_states(datetime.now(UTC)) == 1
        await until(lambda: len(capture.of("DBIRTH", PUMP)) == 3, "pump-1 DBIRTH again")
        reborn = payload_cls.FromString(capture.of("DBIRTH", PUMP)[-1].payload)
        assert metric(reborn, "flow").double_value == 21.0
        assert node.stats.held == held + 2
        assert not [m for m in capture.of("DDATA") if m.device == "north:pump-1"]
        feed(inv, node, [rd("pump-1", "flow", 22.0)])
        pump_data = await until(
            lambda: [m for m in capture.of("DDATA") if m.device == "north:pump-1"], "DDATA")
        assert payload_cls.FromString(pump_data[-1].payload).metrics[0].double_value == 22.0
    finally:
        host.loop_stop()
        host.disconnect()
        await node.stop()
    await until(lambda: capture.of("NDEATH"), "NDEATH")
    check_stream(capture.all(), payload_cls)
    _sessions, counts = replay_as_host(capture.all())
    assert counts["ddeath"] == 1
    assert counts["ignored_command"] >= 1  # the host machine sees our NCMDs and ignores them
    assert node.status()["rebirths"] == 1


class CutProxy:
    """A loopback TCP proxy in the test's event loop whose connections can be cut at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))
        self._writers -= {writer, up_w}

    def cut(self) -> None:
        """Abort every connection (no MQTT DISCONNECT reaches the broker)."""
        for w in list(self._writers):
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_link_cut_will_ndeath_and_bdseq_increments_and_wraps(
    broker: Mosquitto, capture: Capture, payload_cls: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / BDSEQ_FILE).write_text(json.dumps({"bd_seq": 254}))
    proxy = await CutProxy(broker.port).start()
    inv = Inventory(plant(), now=datetime.now(UTC))
    node = SparkplugEdgeNode(config(proxy.port, mqtt_version="5"), NODE, inv, plant().points,
                             state_dir=state)
    await node.start(wait=10)
    try:
        (nbirth,) = await until(lambda: capture.of("NBIRTH"), "NBIRTH")
        assert bd_seq_of(payload_cls.FromString(nbirth.payload)) == 255
        await births_of_both(inv, node, capture, datetime.now(UTC))

        # Abrupt loss: the broker publishes the will, whose bdSeq matches the NBIRTH's.
        proxy.cut()
        (will,) = await until(lambda: capture.of("NDEATH"), "will NDEATH")
        assert bd_seq_of(payload_cls.FromString(will.payload)) == 255
        assert will.qos == 1

        # Reconnect: new CONNECT with bdSeq 255 + 1 = 0 (wrap), NBIRTH and DBIRTHs again.
        await until(lambda: len(capture.of("NBIRTH")) == 2, "NBIRTH after reconnect")
        second = payload_cls.FromString(capture.of("NBIRTH")[-1].payload)
        assert bd_seq_of(second) == 0
        await until(lambda: len(capture.of("DBIRTH")) == 4, "DBIRTHs after reconnect")
        assert json.loads((state / BDSEQ_FILE).read_text())["bd_seq"] == 0
        assert node.stats.connects == 2

        feed(inv, node, [rd("tank-2", "level", 5.0)])
        await until(lambda: capture.of("DDATA"), "DDATA in the new session")
    finally:
        await node.stop()
        await proxy.close()
    await until(lambda: len(capture.of("NDEATH")) == 2, "NDEATH on stop")
    assert bd_seq_of(payload_cls.FromString(capture.of("NDEATH")[-1].payload)) == 0
    check_stream(capture.all(), payload_cls)
    _sessions, counts = replay_as_host(capture.all())
    assert (counts["nbirth"], counts["ndeath"]) == (2, 2)


CHILD = textwrap.dedent("""
    import asyncio, pathlib, sys
    from datetime import UTC, datetime
    from gateway.model import Reading
    from gateway.quality import Q
    from gateway.sparkplug_edge import EdgePoint, SparkplugEdgeConfig, SparkplugEdgeNode
    from inventory.inventory import Inventory
    from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec

    async def main(port, state, ready):
        spec = InventorySpec(
            sites=(SiteSpec("north"),), assets=(AssetSpec("north", "pump-1"),),
            points=(PointSpec("north", "pump-1", "flow", "d1", 60.0, unit="m3/h"),),
            devices=(DeviceSpec("d1", "modbus", "h:502"),))
        inv = Inventory(spec, now=datetime.now(UTC))
        cfg = SparkplugEdgeConfig(host="127.0.0.1", port=port, group_id="plant",
                                  keepalive=60, reconnect_initial=0.1)
        node = SparkplugEdgeNode(cfg, "gw-north", inv,
                                 [EdgePoint("north", "pump-1", "flow", "m3/h")],
                                 state_dir=pathlib.Path(state))
        await node.start(wait=10)
        t = datetime.now(UTC)
        readings = [Reading("north", "pump-1", "flow", 7.5, "m3/h", Q.GOOD, t, t, "test://")]
        inv.observe(readings)
        node.listener(readings)
        await node.refresh_states(datetime.now(UTC))
        pathlib.Path(ready).write_text("ok")
        await asyncio.sleep(3600)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
""")


async def test_sigkill_will_ndeath_and_restart_increments_persisted_bdseq(
    broker: Mosquitto, capture: Capture, payload_cls: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"

    async def run_and_kill(run: int) -> None:
        ready = tmp_path / f"ready-{run}"
        proc = subprocess.Popen(  # noqa: ASYNC220 - stopped by PID below
            [sys.executable, "-c", CHILD, str(broker.port), str(state), str(ready)], cwd=ROOT
        )
        try:
            await until(lambda: ready.exists() or proc.poll() is not None, "child ready")
            assert proc.poll() is None, "child exited"
            await until(lambda: len(capture.of("DBIRTH")) == run, f"DBIRTH {run}")
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # keepalive is 60 s: the will comes from the closed socket, not a keepalive timeout
        await until(lambda: len(capture.of("NDEATH")) == run, f"NDEATH {run} after SIGKILL")

    await run_and_kill(1)
    await run_and_kill(2)
    births = [bd_seq_of(payload_cls.FromString(m.payload)) for m in capture.of("NBIRTH")]
    deaths = [bd_seq_of(payload_cls.FromString(m.payload)) for m in capture.of("NDEATH")]
    assert births == deaths == [0, 1]
    assert json.loads((state / BDSEQ_FILE).read_text()) == {
        "group_id": GROUP, "edge_node_id": NODE, "bd_seq": 1}
    dbirth = payload_cls.FromString(capture.of("DBIRTH")[-1].payload)
    assert metric(dbirth, "flow").double_value == 7.5
    check_stream(capture.all(), payload_cls)
    replay_as_host(capture.all())


async def test_stale_point_and_datatype_redeclaration(
    broker: Mosquitto, capture: Capture, payload_cls: Any, tmp_path: Path
) -> None:
    spec = plant(speed_interval=1.0)  # speed goes stale 2.5 s after its last reading
    inv = Inventory(spec, now=datetime.now(UTC))
    node = SparkplugEdgeNode(config(broker.port), NODE, inv, spec.points)
    await node.start(wait=10)
    try:
        await until(lambda: capture.of("NBIRTH"), "NBIRTH")
        t0 = datetime.now(UTC)
        await births_of_both(inv, node, capture, t0)
        alias = {m.name: m.alias for m in
                 payload_cls.FromString(capture.of("DBIRTH", PUMP)[-1].payload).metrics}

        # 10 s later by the inventory's clock speed is stale, flow/running are not: the asset
        # is degraded (still alive) and speed is re-sent once with quality STALE.
        later = t0 + timedelta(seconds=10)
        assert await node.refresh_states(later) == 0
        stale = await until(lambda: capture.of("DDATA"), "STALE mark")
        (x,) = payload_cls.FromString(stale[0].payload).metrics
        assert (x.alias, x.long_value, props(x)) == (alias["speed"], 1450,
                                                    {"Quality": (INT32, SP_STALE)})
        assert node.stats.stale_marks == 1
        assert await node.refresh_states(later + timedelta(seconds=1)) == 0
        assert node.stats.stale_marks == 1, "marked once"

        # speed was declared Int64; a fractional value re-declares it (DBIRTH, Double).
        feed(inv, node, [rd("pump-1", "flow", 1.0), rd("pump-1", "speed", 1450.5)])
        await until(lambda: len(capture.of("DBIRTH", PUMP)) == 2, "DBIRTH re-declaring speed")
        redeclared = payload_cls.FromString(capture.of("DBIRTH", PUMP)[-1].payload)
        speed = metric(redeclared, "speed")
        assert (speed.datatype, speed.double_value, speed.alias) == (DOUBLE, 1450.5,
                                                                     alias["speed"])
        assert node.stats.type_changes == 1
        # an int for a Double metric is sent as a double, without another DBIRTH
        feed(inv, node, [rd("pump-1", "speed", 1451)])
        await until(lambda: any(
            y.alias == alias["speed"] and y.double_value == 1451.0
            for m in capture.of("DDATA") for y in payload_cls.FromString(m.payload).metrics),
            "DDATA speed 1451.0")
        assert len(capture.of("DBIRTH", PUMP)) == 2
    finally:
        await node.stop()
    await until(lambda: capture.of("NDEATH"), "NDEATH")
    check_stream(capture.all(), payload_cls)
    replay_as_host(capture.all())


def test_config_and_device_id_rules() -> None:
    base: dict[str, Any] = {"host": "127.0.0.1", "group_id": "plant"}
    cfg = SparkplugEdgeConfig(**base)
    assert (cfg.effective_port, cfg.qos, cfg.mqtt_version, cfg.device_id) == (
        1883, 0, "3.1.1", "{site}:{asset}")
    for bad in ({"group_id": "a/b"}, {"group_id": "a+b"}, {"group_id": "#"},
                {"group_id": ""}, {"edge_node_id": "gw/1"}, {"device_id": "{site}/{asset}"},
                {"device_id": "{site}"}, {"device_id": "{asset}-{point}"}, {"qos": 2},
                {"unknown": 1}, {"password": "x"}):
        with pytest.raises(ValidationError):
            SparkplugEdgeConfig(**{**base, **bad})
    with pytest.raises(ValidationError):
        cfg.group_id = "other"  # type: ignore[misc]  # frozen
    inv = Inventory(plant(), now=datetime.now(UTC))
    points = [EdgePoint("north", "pump-1", "flow"), EdgePoint("south", "pump-1", "flow")]
    with pytest.raises(ValueError, match="clashes"):
        SparkplugEdgeNode(SparkplugEdgeConfig(**base, device_id="{asset}"), "gw", inv, points)
    with pytest.raises(ValueError, match="reserved"):
        SparkplugEdgeNode(SparkplugEdgeConfig(**base), "gw/x", inv, points)
    node = SparkplugEdgeNode(SparkplugEdgeConfig(**base), "gw", inv, points)
    assert node.status()["devices_total"] == 2
    names = {m.name for m in node.collect()}
    assert {"otgw_sparkplug_up", "otgw_sparkplug_messages", "otgw_sparkplug_bdseq"} <= names
