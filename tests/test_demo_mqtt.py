"""`make demo` with MQTT (issue #4): in-process broker, simulated JSON and Sparkplug B publishers.

Starts the demo the way a user does (``python -m gateway demo``), then checks through the API
that the MQTT assets are online next to the Modbus ones, that the scripted faults of
``simulator/profiles/demo_mqtt.yaml`` (publisher silent, Sparkplug death) produced gaps whose
bounds match the MQTT simulator's ground truth, that unmapped topics are listed, and that the
in-process broker carries the gateway's northbound readings (read by an independent paho
subscriber). Everything is stopped by PID. A second test covers the broker module alone
(`gateway.demo_broker`): port fallback, MQTT 3.1.1 only, wills, clean stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from gateway.demo_broker import DemoBroker
from tests.gw_helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXPECTED_INTERVAL = 1.0
"""`expected_interval` of the demo's MQTT mappings and the publishers' interval [s]."""
TOL = timedelta(seconds=EXPECTED_INTERVAL)
"""Gap bounds vs ground truth: within one expected interval (DESIGN §4; the Modbus e2e tests
use one poll interval + the request timeout, and MQTT has no request timeout)."""

MQTT_ASSETS = {("north", "chiller-1"), ("north", "chiller-2"), ("south", "compressor-1")}
# publisher id in the MQTT profile -> (its assets in the gateway, fault kind, accepted causes)
FAULTS = {
    "chillers": ({"chiller-1", "chiller-2"}, "silent", {"stale"}),
    "edge-south": ({"compressor-1"}, "death", {"device_offline", "bad_quality"}),
}


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class DemoProcess:
    """`python -m gateway demo` with its output collected by a reader thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", "0",
             "--data-dir", str(data_dir), "--fresh"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def find(self, pattern: str) -> re.Match[str] | None:
        """First output line matching `pattern`; fails at once if the demo exited."""
        for line in list(self.lines):
            if m := re.search(pattern, line):
                return m
        if self.proc.poll() is not None:
            raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.output()}")
        return None

    def stop(self, timeout: float = 60) -> int:
        """SIGINT by PID (what Ctrl-C sends), SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(10)
        return self.proc.returncode


class Subscriber:
    """An independent paho MQTT 3.1.1 client collecting every message on `topic`."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, _u, _f, rc, _p: (
            None if rc.is_failure else c.subscribe(topic, qos=0))
        self.client.on_subscribe = lambda _c, _u, _m, _rc, _p: self.subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.append(
            (msg.topic, bytes(msg.payload), bool(msg.retain)))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def reading(self, site: str, asset: str) -> dict[str, Any] | None:
        """The first live (not retained) reading published for `site/asset`, decoded."""
        prefix = f"ot/{site}/{asset}/"
        for topic, payload, retained in list(self.messages):
            if topic.startswith(prefix) and not retained:
                body: dict[str, Any] = json.loads(payload)
                return body
        return None


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    proc = DemoProcess(tmp_path / "demo")
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.output()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_mqtt_assets_gaps_unmapped_and_northbound(demo: DemoProcess) -> None:
    api = wait_for(lambda: demo.find(r"API and page: (http://\S+?)/?\s"), timeout=90,
                   what="API line in the banner").group(1)
    sub_line = wait_for(lambda: demo.find(r"mosquitto_sub -h (\S+) -p (\d+) -t 'ot/#'"),
                        timeout=10, what="mosquitto_sub line in the banner")
    assert sub_line.group(1) == "127.0.0.1"
    broker_port = int(sub_line.group(2))

    def get(path: str, **params: Any) -> Any:
        resp = httpx.get(api + path, params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    # -- the broker carries the gateway's normalized readings (northbound) ----------------
    sub = Subscriber(broker_port, "ot/#")
    try:
        assert sub.subscribed.wait(20), "no SUBACK from the demo broker"
        chiller = wait_for(lambda: sub.reading("north", "chiller-1"), timeout=30,
                           what="a northbound reading of an MQTT-fed asset")
        boiler = wait_for(lambda: sub.reading("north", "boiler-1"), timeout=30,
                          what="a northbound reading of a Modbus-fed asset")
        birth = wait_for(lambda: next((json.loads(p) for t, p, _r in list(sub.messages)
                                       if t == "ot/_gateway/demo-gw"), None),
                         timeout=30, what="the gateway's retained birth")
    finally:
        sub.close()
    assert chiller["point"] in {"supply_temp", "return_temp", "power"}
    assert isinstance(chiller["value"], float)
    assert chiller["severity"] == "good"
    assert chiller["source"].startswith(f"mqtt://127.0.0.1:{broker_port}/plant/north/chiller-1")
    assert boiler["source"].startswith("modbus://127.0.0.1:")
    assert birth["status"] == "online"
    assert birth["inventory"]["site_assets"]["south"][-1] == "compressor-1"

    # -- MQTT assets online next to the Modbus ones ---------------------------------------
    def mqtt_assets_online() -> bool:
        states = {(a["site"], a["id"]): a["state"] for a in get("/api/v1/assets")}
        return all(states.get(key) == "online" for key in MQTT_ASSETS)

    wait_for(mqtt_assets_online, timeout=60, interval=0.5, what="MQTT assets online")
    devices = {d["id"]: d for d in get("/api/v1/devices")}
    assert devices["plant-broker"]["protocol"] == "mqtt"
    assert devices["plant-broker"]["link_up"] is True
    assert {d["protocol"] for d in devices.values()} == {"modbus", "mqtt"}

    # -- topics nobody configured are listed ----------------------------------------------
    def unmapped() -> dict[str, Any] | None:
        topics = {u.get("topic"): u for u in get("/api/v1/unmapped")}
        vib = [t for t in topics if t.startswith("spBv1.0/south/") and t.endswith("#vibration")]
        return topics if "plant/north/dryer-9" in topics and vib else None

    topics = wait_for(unmapped, timeout=30, interval=0.5, what="unmapped dryer and vibration")
    assert topics["plant/north/dryer-9"]["reason"] == "unknown_point"
    assert topics["plant/north/dryer-9"]["device"] == "plant-broker"

    # -- scripted faults: gaps match the simulator's ground truth -------------------------
    truth_path = demo.data_dir / "sim-mqtt-truth.jsonl"

    def truth() -> list[dict[str, Any]]:
        if not truth_path.exists():
            return []
        return [json.loads(line) for line in truth_path.read_text().splitlines() if line]

    def faults_over() -> list[dict[str, Any]] | None:
        records = truth()
        kinds = {(r["publisher"], r["kind"]) for r in records}
        return records if all((p, k) in kinds for p, (_a, k, _c) in FAULTS.items()) else None

    wait_for(faults_over, timeout=90, interval=0.5, what="silent and death faults over")

    def mqtt_gaps(**params: Any) -> list[dict[str, Any]]:
        return [g for g in get("/api/v1/gaps", **params) if (g["site"], g["asset"]) in MQTT_ASSETS]

    wait_for(lambda: not mqtt_gaps(open="true"), timeout=30, interval=0.5,
             what="the MQTT assets' gaps closed")
    gaps = mqtt_gaps()
    records = truth()
    malformed = [r for r in records if r["kind"] == "malformed"]
    assert malformed, "the profile injects malformed payloads before the silent window"

    points = {(a["site"], a["id"]): [p["id"] for p in get(f"/api/v1/assets/{a['site']}/{a['id']}")
                                     ["points"]]
              for a in get("/api/v1/assets") if (a["site"], a["id"]) in MQTT_ASSETS}
    for publisher, (assets, kind, causes) in FAULTS.items():
        windows = sorted((_ts(r["start"]), _ts(r["end"])) for r in records
                         if r["publisher"] == publisher and r["kind"] == kind)
        assert windows
        for (site, asset), pids in points.items():
            if asset not in assets:
                continue
            for pid in pids:
                found = sorted((g for g in gaps if g["asset"] == asset and g["point"] == pid),
                               key=lambda g: g["start"])
                assert len(found) == len(windows), (asset, pid, found, windows)
                for gap, (t_start, t_end) in zip(found, windows, strict=True):
                    assert gap["cause"] in causes, gap
                    assert abs(_ts(gap["start"]) - t_start) <= TOL, (site, asset, pid, gap, t_start)
                    assert abs(_ts(gap["end"]) - t_end) <= TOL, (site, asset, pid, gap, t_end)
                    assert gap["samples_missed"] >= 1

    # The malformed payloads were counted, not turned into readings or gaps.
    metrics = httpx.get(api + "/metrics", timeout=10).text
    for kind in ("truncated_json", "invalid_utf8", "invalid_json", "empty", "too_deep"):
        assert f'otgw_protocol_errors_total{{device="plant-broker",kind="{kind}"}}' in metrics

    # -- a clean stop also stops both simulators ------------------------------------------
    sim_pids = [json.loads((demo.data_dir / name).read_text())["pid"]
                for name in ("sim-ready.json", "sim-mqtt-ready.json")]
    assert demo.stop() == 0, demo.output()
    assert "stopped; readings and gaps are kept in" in demo.output()
    wait_for(lambda: all(_gone(pid) for pid in sim_pids), timeout=15, what="simulators exited")
    assert "Traceback" not in demo.output(), demo.output()


# ---------------------------------------------------------------------------------------------
# The broker module alone


def _client(client_id: str, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)


async def test_demo_broker_port_fallback_wills_and_clean_stop() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy_port = taken.getsockname()[1]
    broker = DemoBroker(port=busy_port)
    try:
        port = await broker.start()
        assert broker.fell_back
        assert port != busy_port

        got: list[tuple[str, bytes, bool]] = []
        subscribed = threading.Event()
        sub = _client("t-sub")
        sub.on_subscribe = lambda *_a: subscribed.set()
        sub.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), bool(m.retain)))
        await asyncio.to_thread(sub.connect, "127.0.0.1", port, 10)
        sub.loop_start()
        sub.subscribe("t/#", qos=1)
        assert await asyncio.to_thread(subscribed.wait, 10)

        pub = _client("t-pub")
        pub.will_set("t/will", b"gone", qos=1)
        await asyncio.to_thread(pub.connect, "127.0.0.1", port, 10)
        pub.loop_start()
        info = pub.publish("t/data", b"42", qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.is_published()  # PUBACK from the broker
        wait = asyncio.to_thread
        await wait(wait_for, lambda: ("t/data", b"42", False) in got, timeout=10, what="data")
        assert broker.clients() == 2
        # MQTT 3.1.1 has no DISCONNECT-with-will: drop the TCP connection, the will follows.
        pub.loop_stop()
        sock = pub.socket()
        assert isinstance(sock, socket.socket)
        sock.close()
        await wait(wait_for, lambda: ("t/will", b"gone", False) in got, timeout=15, what="will")

        # amqtt speaks MQTT 3.1.1 only: an MQTT 5 client is refused in CONNACK.
        refused: list[str] = []
        v5 = _client("t-v5", mqtt.MQTTv5)
        v5.on_connect = lambda _c, _u, _f, rc, _p=None: refused.append(str(rc))
        await asyncio.to_thread(v5.connect, "127.0.0.1", port, 10)
        v5.loop_start()
        try:
            await wait(wait_for, lambda: refused, timeout=10, what="CONNACK to MQTT 5")
        finally:
            v5.loop_stop()
        assert refused[0] == "Unsupported protocol version"
        sub.loop_stop()
    finally:
        await broker.stop()
        taken.close()
    # Stopped: nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
