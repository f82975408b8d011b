"""Northbound MQTT through the gateway process, read back by an independent client (issue #4).

A real mosquitto; the gateway subscribes to ``plant/...`` (an MQTT device) and publishes the
normalized readings under ``ot/{site}/{asset}/{point}`` plus its retained birth, per-asset
state and last will. ``mosquitto_sub`` (Debian's client, not our code) reads everything back.
Commands sent to the gateway's topics change nothing (S13).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.mosquitto_helpers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


class Subscriber:
    """``mosquitto_sub -v`` writing ``topic payload`` lines to a file; stopped by PID."""

    def __init__(self, port: int, topic: str, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen(
            [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-v", "-q", "1",
             "-i", f"check-{path.stem}"],
            stdout=self._out, stderr=subprocess.STDOUT,
        )

    def messages(self) -> list[tuple[str, str]]:
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            topic, _, payload = line.partition(" ")
            out.append((topic, payload))
        return out

    def last(self, topic: str) -> dict[str, Any] | None:
        found = [p for t, p in self.messages() if t == topic]
        return json.loads(found[-1]) if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self._out.close()


def retained(port: int, topic: str) -> dict[str, Any]:
    """The retained message on ``topic``, read by a fresh ``mosquitto_sub`` (bounded)."""
    out = subprocess.run(
        [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1", "-W", "5",
         "--retained-only"],
        capture_output=True, check=True, timeout=15,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


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


def _config(port: int, data: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-north", "data_dir": str(data)},
        "api": {"port": 0},
        "reconnect": {"initial": 0.1, "max": 0.5},
        "northbound": {"mqtt": {"host": "127.0.0.1", "port": port, "qos": 1, "keepalive": 5,
                                "reconnect_initial": 0.1, "reconnect_max": 0.5}},
        "devices": [{
            "id": "broker", "protocol": "mqtt", "host": "127.0.0.1", "port": port,
            "keepalive": 5,
            "mappings": [{"topic": "plant/{site}/{asset}/{point}", "decoder": "plain",
                          "expected_interval": 1.0}],
        }],
        "sites": [{"id": "north", "assets": [
            {"id": "pump-1", "points": [
                {"id": "flow", "device": "broker", "unit": "m3/h", "scale": 0.1},
                {"id": "speed", "device": "broker", "unit": "/min"},
            ]},
            {"id": "tank-2", "points": []},
        ]}],
    }


def test_readings_birth_asset_state_and_last_will(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "ot/#", tmp_path / "sub.txt")
        gw = GatewayProcess(_config(broker.port, tmp_path / "data"), tmp_path)
        try:
            gw.start()
            # Birth: retained, with the configured inventory.
            birth = wait_for(lambda: sub.last("ot/_gateway/gw-north"), timeout=20, what="birth")
            assert birth["status"] == "online"
            assert birth["gateway"] == "gw-north"
            assert birth["inventory"]["site_assets"] == {"north": ["pump-1", "tank-2"]}
            assert birth["inventory"]["points"] == 2
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=20, what="link")

            # Readings: normalized (scaled, unit, quality) under ot/{site}/{asset}/{point}.
            _publish(broker.port, [("plant/north/pump-1/flow", b"125"),
                                   ("plant/north/pump-1/speed", b"1450")])
            flow = wait_for(lambda: sub.last("ot/north/pump-1/flow"), timeout=20, what="flow")
            assert flow["value"] == pytest.approx(12.5)
            assert flow["unit"] == "m3/h"
            assert flow["quality"] == 0
            assert flow["severity"] == "good"
            assert flow["gateway"] == "gw-north"
            assert flow["source"].endswith("plant/north/pump-1/flow")
            speed = wait_for(lambda: sub.last("ot/north/pump-1/speed"), timeout=20, what="speed")
            assert speed["value"] == pytest.approx(1450)

            # Per-asset state, retained: online while data flows, offline when it stops.
            state = wait_for(lambda: sub.last("ot/_gateway/gw-north/assets/north/pump-1"),
                             timeout=20, what="asset state")
            assert state["state"] in {"online", "degraded"}
            assert retained(broker.port, "ot/_gateway/gw-north/assets/north/tank-2")["state"] \
                == "unknown"

            def offline() -> bool:
                last = sub.last("ot/_gateway/gw-north/assets/north/pump-1")
                return last is not None and last["state"] == "offline"

            wait_for(offline, timeout=30, what="pump-1 offline after the field went quiet")
            asset = wait_for(
                lambda: (a := gw.get("/api/v1/assets/north/pump-1"))["open_gaps"] == 2 and a,
                timeout=30, what="two stale gaps open")
            assert asset["state"] == "offline"

            def with_gaps() -> dict[str, Any] | None:
                last = sub.last("ot/_gateway/gw-north/assets/north/pump-1")
                return last if last is not None and last["open_gaps"] == 2 else None

            state = wait_for(with_gaps, timeout=20, what="asset state with its open gaps")
            assert state["state"] == "offline"
            assert state["points_by_state"]["offline"] == 2

            # Coverage per site and asset over the last hour, retained (first one at start).
            cov = retained(broker.port, "ot/_gateway/gw-north/coverage")
            assert cov["window_s"] == 3600
            assert set(cov["site"]) == {"north"}
            assert 0.0 <= cov["asset"]["north/pump-1"]["coverage"] <= 1.0

            # Gap records: the retained gaps document lists the open gaps as the API does.
            def gaps_doc() -> dict[str, Any] | None:
                doc = sub.last("ot/_gateway/gw-north/gaps")
                return doc if doc is not None and len(doc["open"]) == 2 else None

            doc = wait_for(gaps_doc, timeout=20, what="gaps document")
            api_gaps = gw.get("/api/v1/gaps", open="true")
            assert {g["id"] for g in doc["open"]} == {g["id"] for g in api_gaps}
            assert {(g["point"], g["cause"]) for g in doc["open"]} == {
                ("flow", "stale"), ("speed", "stale")}

            # Commands on the gateway's topics are not read (S13): nothing changes.
            _publish(broker.port, [("ot/_gateway/gw-north/set", b'{"write": 1}'),
                                   ("ot/north/pump-1/flow/set", b"999")])
            assert gw.get("/api/v1/assets/north/pump-1")["state"] == "offline"

            # SIGKILL: the broker publishes the last will (retained) after 1.5 x keepalive.
            gw.kill()
            death = wait_for(
                lambda: (m := sub.last("ot/_gateway/gw-north")) and m["status"] == "offline"
                and m, timeout=30, what="last will")
            assert death["reason"] == "connection lost"
            assert retained(broker.port, "ot/_gateway/gw-north")["status"] == "offline"

            # Restart: birth again, then a clean stop publishes offline/stopped.
            gw.start()
            wait_for(lambda: retained(broker.port, "ot/_gateway/gw-north")["status"] == "online",
                     timeout=20, what="re-birth")
            assert gw.stop() == 0, gw.log()
            stopped = retained(broker.port, "ot/_gateway/gw-north")
            assert stopped["status"] == "offline"
            assert stopped["reason"] == "stopped"
        finally:
            gw.stop()
            sub.stop()


def test_sparkplug_edge_node_through_the_gateway(tmp_path: Path) -> None:
    """``northbound.sparkplug`` wired: NBIRTH, DBIRTH with the scaled value, DDATA, NDEATH."""
    from connectors.mqtt import sparkplug_b_pb2 as pb

    with Mosquitto(tmp_path / "broker") as broker:
        received: list[tuple[str, Any]] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spb-host")

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            payload = pb.Payload()
            payload.ParseFromString(msg.payload)
            received.append((msg.topic, payload))

        client.on_message = on_message
        client.connect("127.0.0.1", broker.port)
        client.subscribe("spBv1.0/#", qos=1)
        client.loop_start()
        cfg = _config(broker.port, tmp_path / "data")
        del cfg["northbound"]["mqtt"]
        cfg["northbound"]["sparkplug"] = {"host": "127.0.0.1", "port": broker.port,
                                          "group_id": "plant", "device_id": "{asset}"}
        gw = GatewayProcess(cfg, tmp_path)
        try:
            gw.start()
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=20, what="link")
            wait_for(lambda: any("NBIRTH" in t for t, _ in received), timeout=20, what="NBIRTH")
            _publish(broker.port, [("plant/north/pump-1/flow", b"125")])

            def births() -> list[Any]:
                return [p for t, p in received if t == "spBv1.0/plant/DBIRTH/gw-north/pump-1"]

            def flow_value() -> float | None:
                for t, p in received:
                    if t.endswith("/pump-1") and ("DBIRTH" in t or "DDATA" in t):
                        for m in p.metrics:
                            if m.name == "flow" and not m.is_null:
                                return float(m.double_value or m.float_value)
                return None

            value = wait_for(flow_value, timeout=20, what="flow in DBIRTH or DDATA")
            assert value == pytest.approx(12.5)
            assert births(), "a DBIRTH for the online asset"
            nbirth = next(p for t, p in received if t == "spBv1.0/plant/NBIRTH/gw-north")
            bdseq = next(m.long_value for m in nbirth.metrics if m.name == "bdSeq")
            ready = gw.get("/readyz")["details"]["northbound"]
            assert ready[0]["connected"] is True
            assert gw.stop() == 0, gw.log()
            death = wait_for(
                lambda: next((p for t, p in received if t == "spBv1.0/plant/NDEATH/gw-north"),
                             None), timeout=20, what="NDEATH")
            assert next(m.long_value for m in death.metrics if m.name == "bdSeq") == bdseq
        finally:
            gw.stop()
            client.loop_stop()
            client.disconnect()
