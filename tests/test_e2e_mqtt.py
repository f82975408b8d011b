"""MQTT end to end: a real mosquitto, a publisher, the gateway process, its store and API.

Covers the config wiring (an MQTT device with a topic-template mapping and a point with its own
JSON rule), normalization into the store, gaps when the publisher goes quiet, bad payloads
counted without stopping the connector, and unmapped sources (issue #4).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.mosquitto_helpers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub")
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
        "gateway": {"data_dir": str(data)},
        "api": {"port": 0},
        "reconnect": {"initial": 0.1, "max": 0.5},
        "devices": [{
            "id": "broker", "protocol": "mqtt", "host": "127.0.0.1", "port": port,
            "keepalive": 5,
            "mappings": [{"topic": "plant/{site}/{asset}/{point}", "decoder": "plain",
                          "expected_interval": 0.5}],
        }],
        "sites": [{"id": "north", "assets": [{"id": "pump-1", "points": [
            {"id": "flow", "device": "broker", "unit": "m3/h"},
            {"id": "speed", "device": "broker", "scale": 0.1, "unit": "/min"},
            {"id": "state", "device": "broker", "expected_interval": 60,
             "mqtt": {"topic": "json/pump-1", "decoder": "json", "value": "/s",
                      "value_type": "string", "timestamp": "/t", "timestamp_unit": "ms"}},
        ]}]}],
    }


def test_mqtt_readings_gaps_and_unmapped_through_the_gateway(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        gw = GatewayProcess(_config(broker.port, tmp_path / "data"), tmp_path)
        try:
            gw.start()
            wait_for(lambda: gw.get("/api/v1/devices")[0]["link_up"], timeout=20, what="subscribed")
            t_ms = int(time.time() * 1000)
            _publish(broker.port, [
                ("plant/north/pump-1/flow", b"12.5"),
                ("plant/north/pump-1/speed", b"14500"),
                ("json/pump-1", json.dumps({"s": "RUN", "t": t_ms}).encode()),
                ("plant/north/pump-1/flow", b"{not a number"),  # Bad sample, counted
                ("plant/north/pump-9/flow", b"1"),  # no such point: unmapped source
            ])

            def points() -> dict[str, Any] | None:
                pts = {p["id"]: p for p in gw.get("/api/v1/assets/north/pump-1")["points"]}
                return pts if all(p["last_seen"] for p in pts.values()) else None

            pts = wait_for(points, timeout=20, what="all three points seen")
            assert pts["speed"]["value"] == pytest.approx(1450.0)
            assert pts["speed"]["unit"] == "/min"
            assert pts["state"]["value"] == "RUN"
            assert pts["state"]["source"].endswith("/json/pump-1")
            # The JSON point keeps the publisher's timestamp as its source time (ms precision).
            seen = pts["state"]["last_seen"]
            assert seen.startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(t_ms / 1000)))
            # The malformed payload became a Bad sample (no value), counted, not a crash;
            # a good payload afterwards closes the gap it opened.
            assert pts["flow"]["value"] is None
            assert pts["flow"]["quality"] == 0x80740000  # BadTypeMismatch: not a number
            [bad_gap] = gw.get("/api/v1/gaps", point="flow")
            assert bad_gap["cause"] == "bad_quality"
            _publish(broker.port, [("plant/north/pump-1/flow", b"13.0")])
            wait_for(lambda: gw.get("/api/v1/gaps", point="flow")[0]["end"], timeout=20,
                     what="bad-quality gap closed")

            # The template mapping expects a message every 0.5 s: silence opens a stale gap.
            gaps = wait_for(lambda: gw.get("/api/v1/gaps", point="flow", open="true"),
                            timeout=20, what="stale gap on flow")
            assert gaps[0]["cause"] == "stale"
            _publish(broker.port, [("plant/north/pump-1/flow", b"13.5")])
            wait_for(lambda: not gw.get("/api/v1/gaps", point="flow", open="true"),
                     timeout=20, what="stale gap closed by new data")

            import httpx

            metrics = httpx.get(gw.url + "/metrics", timeout=10).text
            assert 'otgw_protocol_errors_total{device="broker",kind=' in metrics
            unmapped = httpx.get(gw.url + "/api/v1/unmapped", timeout=10)
            assert unmapped.status_code == 200, unmapped.text
            topics = {u["topic"]: u for u in unmapped.json()}
            assert topics["plant/north/pump-9/flow"]["device"] == "broker"
        finally:
            assert gw.stop() == 0, gw.log()
