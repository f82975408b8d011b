"""MQTT delivery guarantees through the gateway process (RELIABILITY M2, R2).

* M2, ``ack: commit``: a QoS 1 message is acknowledged only after its reading is committed.
  The test holds the store's SQLite write lock so commits wait, publishes, SIGKILLs the gateway
  before it could commit, restarts it: the broker redelivers (persistent session) and every
  message is in the store. With ``ack: receipt`` the same sequence loses them — checked too, so
  the test proves it can tell the two apart.
* R2, half-open link: a TCP proxy between gateway and broker stops forwarding (both ways, no
  FIN/RST, like a pulled cable). The gateway detects it within 1.5 × keepalive, reconnects
  with its persistent session once the path is back, and the QoS 1 messages the broker queued
  meanwhile arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.mosquitto_helpers import Mosquitto, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-field")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def _config(port: int, data: Path, ack: str, keepalive: int = 5) -> dict[str, Any]:
    return {
        "gateway": {"data_dir": str(data)},
        "api": {"port": 0},
        "reconnect": {"initial": 0.1, "max": 0.5},
        "devices": [{
            "id": "broker", "protocol": "mqtt", "host": "127.0.0.1", "port": port,
            "keepalive": keepalive, "client_id": "otgw-delivery", "clean_start": False,
            "session_expiry": 600, "ack": ack,
            "mappings": [{"topic": "plant/{site}/{asset}/{point}", "decoder": "plain",
                          "qos": 1}],
        }],
        "sites": [{"id": "north", "assets": [{"id": "pump-1", "points": [
            {"id": "flow", "device": "broker"},
        ]}]}],
    }


def _metric(gw: GatewayProcess, name: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _values(gw: GatewayProcess) -> list[float]:
    """Good values of the point in the store (via the readings API), sorted."""
    rows = gw.get("/api/v1/readings", points="north/pump-1/flow", quality="good")
    items = rows["rows"] if isinstance(rows, dict) else rows
    return sorted(float(r["value"]) for r in items)


def _run_crash_before_commit(tmp_path: Path, ack: str) -> list[float]:
    """Publish 1 (committed), then 2..6 while commits are blocked; SIGKILL; restart."""
    with Mosquitto(tmp_path / "broker", max_queued_messages=0) as broker:
        gw = GatewayProcess(_config(broker.port, tmp_path / "data", ack), tmp_path)
        try:
            gw.start()
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=20, what="link")
            _publish(broker.port, [("plant/north/pump-1/flow", b"1")])
            wait_for(lambda: _values(gw) == [1.0], timeout=20, what="first reading committed")
            lock = sqlite3.connect(tmp_path / "data" / "gateway.db", timeout=30,
                                   isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")  # the gateway's next commit waits for this
                _publish(broker.port, [("plant/north/pump-1/flow", str(v).encode())
                                       for v in range(2, 7)])
                wait_for(lambda: _metric(gw, "otgw_readings_in_total") >= 6, timeout=20,
                         what="messages received (not yet committed)")
                assert _metric(gw, "otgw_readings_committed_total") == 1
                gw.kill()
            finally:
                lock.rollback()
                lock.close()
            gw.start()
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=20, what="relink")
            if ack == "commit":
                wait_for(lambda: len(_values(gw)) >= 6, timeout=30, what="redelivered")
            else:
                # Nothing is owed by the broker: wait until the session is surely resumed and
                # a marker published after the restart has arrived.
                _publish(broker.port, [("plant/north/pump-1/flow", b"100")])
                wait_for(lambda: 100.0 in _values(gw), timeout=30, what="marker")
            return [v for v in _values(gw) if v != 100.0]
        finally:
            gw.stop()


def test_m2_ack_after_commit_survives_a_crash_before_the_commit(tmp_path: Path) -> None:
    assert _run_crash_before_commit(tmp_path / "commit", "commit") == [1, 2, 3, 4, 5, 6]


def test_m2_ack_on_receipt_loses_the_uncommitted_window(tmp_path: Path) -> None:
    """The documented weaker guarantee of the default: the in-memory window is lost."""
    assert _run_crash_before_commit(tmp_path / "receipt", "receipt") == [1]


class BlackholeProxy:
    """A loopback TCP proxy (own thread and loop) that can silently stop forwarding.

    ``blackhole(True)``: bytes in both directions are read and discarded, connections stay
    open (no FIN/RST): a half-open link as seen by both ends. New connections are accepted
    and black-holed too. ``blackhole(False)`` forwards again (new connections work; the old
    ones are closed, as a real link that lost bytes cannot carry on).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._dead = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

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
                    if not self._dead:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))
        self._writers -= {writer, up_w}

    def blackhole(self, on: bool) -> None:
        def apply() -> None:
            self._dead = on
            if not on:
                for w in list(self._writers):
                    w.close()
        self._loop.call_soon_threadsafe(apply)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_r2_half_open_link_detected_and_queued_messages_delivered(tmp_path: Path) -> None:
    keepalive = 5
    with Mosquitto(tmp_path / "broker", max_queued_messages=0) as broker:
        proxy = BlackholeProxy(broker.port)
        gw = GatewayProcess(
            _config(proxy.port, tmp_path / "data", "commit", keepalive=keepalive), tmp_path)
        try:
            gw.start()
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=20, what="link")
            _publish(broker.port, [("plant/north/pump-1/flow", b"1")])
            wait_for(lambda: _values(gw) == [1.0], timeout=20, what="first reading")
            proxy.blackhole(True)
            # Published straight to the broker while the gateway's path is dead: the broker
            # holds them for the gateway's persistent session (QoS 1, unlimited queue).
            _publish(broker.port, [("plant/north/pump-1/flow", str(v).encode())
                                   for v in range(2, 12)])
            # Detection: the device goes down (bounded wait; the bound itself is in the doc,
            # not asserted on a shared machine).
            wait_for(lambda: not gw.get("/api/v1/devices")[0]["link_up"],
                     timeout=3 * keepalive + 10, what="half-open link detected")
            proxy.blackhole(False)
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=30, what="relink")
            wait_for(lambda: len(_values(gw)) >= 11, timeout=30, what="queued messages")
            assert _values(gw) == [float(v) for v in range(1, 12)]
            gaps = gw.get("/api/v1/gaps", point="flow")
            assert [g["cause"] for g in gaps] == ["device_offline"], gaps
            assert gaps[0]["end"] is not None  # closed by the redelivered data
        finally:
            gw.stop()
            proxy.close()
