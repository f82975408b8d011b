"""Simulated MQTT field publishers: JSON, plain and a Sparkplug B edge node, with faults.

Run: ``python -m simulator.mqtt_publisher -c profile.yaml [--truth T.jsonl] [--stats S.json]
[--ready-file R.json]`` (profile format: `simulator.mqtt_profile`). Exit codes: 0 after
SIGTERM/SIGINT (truth and stats flushed), 1 when the broker cannot be reached, 2 for an
invalid profile.

Oracle: every value is the message's ``seq`` (float); JSON payloads carry ``seq`` and ``ts``
(source time, ms since the Unix epoch). The stats file lists, per publisher, messages
published, the highest seq per asset and how many QoS 1 messages the broker acknowledged
(PUBACK), which defines "broker-accepted" (RELIABILITY §6). Ground truth (JSON Lines): one
record per fault occurrence with wall-clock ``start``/``end``.

Like the Modbus simulator, it imports nothing from gateway/, connectors/ or inventory/.

Source: MQTT 5.0 §3.14.2.1 (DISCONNECT reason 0x04 "Disconnect with Will Message"), §3.1.2.5
(will); Sparkplug 3.0.0 ch. 5 (NBIRTH/NDEATH bdSeq, DBIRTH, seq, Rebirth NCMD).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from simulator import mqtt_sparkplug as spb
from simulator.mqtt_profile import (
    MqttBroker,
    MqttFault,
    MqttProfileError,
    MqttPublisherProfile,
    load_mqtt_profile,
)

log = logging.getLogger("simulator.mqtt")
MALFORMED = [b'{"seq": ', b"\xff\xfe\x00", b"not json", b"", b"[" * 1000]
SPARKPLUG_MALFORMED = [b"\x0a\xff\xff\xff", b"\x12\x05abc"]


def rfc3339(ts: datetime) -> str:
    """Aware datetime as ``2026-01-02T03:04:05.000006Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ms() -> int:
    """Wall-clock ms since the Unix epoch."""
    return time.time_ns() // 1_000_000


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    Path(tmp).replace(path)


class Truth:
    """Appends ground-truth records (JSON Lines), flushed per line."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        if self.path is None:
            return
        with self.lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


class Publisher:
    """One simulated MQTT client publishing per its profile."""

    def __init__(self, prof: MqttPublisherProfile, broker: MqttBroker, truth: Truth) -> None:
        self.prof = prof
        self.broker = broker
        self.truth = truth
        self.seq: dict[str, int] = dict.fromkeys(prof.assets or [""], 0)
        self.published = 0
        self.acked = 0
        self.malformed = 0
        self.rebirths = 0
        self.bd_seq = -1
        self.sp_seq = 0
        self.client: paho.Client | None = None
        self.connected = threading.Event()
        self.rebirth_requested = threading.Event()
        self.silent_until = 0.0
        self.dead_until = 0.0
        self.skip_seq = 0
        self.qos1_mids: set[int] = set()
        self.lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------

    def _node_topic(self, kind: str, device: str = "") -> str:
        tail = f"/{device}" if device else ""
        return f"spBv1.0/{self.prof.group}/{kind}/{self.prof.node}{tail}"

    def connect(self, timeout: float = 10.0) -> None:
        """Connect (new client); for Sparkplug with a will NDEATH of the next bdSeq."""
        prof = self.prof
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{prof.id}", protocol=paho.MQTTv5
        )
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        if prof.kind == "sparkplug_b":
            self.bd_seq = (self.bd_seq + 1) % 256
            death = spb.payload(
                [(spb.Metric("bdSeq", None, spb.INT64, self.bd_seq), spb.INT64)],
                seq=None,
                timestamp_ms=now_ms(),
            )
            client.will_set(self._node_topic("NDEATH"), death, qos=1)
        self.connected.clear()
        client.connect(self.broker.host, self.broker.port, keepalive=10)
        client.loop_start()
        if not self.connected.wait(timeout):
            client.loop_stop()
            msg = f"{prof.id}: no CONNACK from {self.broker.host}:{self.broker.port}"
            raise ConnectionError(msg)
        self.client = client
        if prof.kind == "sparkplug_b":
            client.subscribe(self._node_topic("NCMD"), qos=1)
            self.births()

    def _on_connect(
        self,
        _c: paho.Client,
        _u: Any,  # noqa: ANN401
        _f: Any,  # noqa: ANN401
        rc: ReasonCode,
        _p: Any = None,  # noqa: ANN401
    ) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:  # noqa: ANN401
        with self.lock:
            if mid in self.qos1_mids:
                self.qos1_mids.discard(mid)
                self.acked += 1

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:  # noqa: ANN401
        if spb.is_rebirth_request(bytes(msg.payload)):
            self.rebirth_requested.set()

    def _publish(self, topic: str, payload: bytes, qos: int | None = None) -> None:
        client = self.client
        if client is None:
            return
        q = self.prof.qos if qos is None else qos
        with self.lock:
            info = client.publish(topic, payload, qos=q)
            if q == 1:
                self.qos1_mids.add(info.mid)
        self.published += 1

    def die(self) -> None:
        """Drop the session so that the broker publishes the will (reason code 0x04)."""
        client, self.client = self.client, None
        if client is not None:
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            client.loop_stop()

    def close(self) -> None:
        """Clean disconnect (no will)."""
        client, self.client = self.client, None
        if client is not None:
            if self.prof.kind == "sparkplug_b":  # announce the death ourselves (R7)
                self._publish_raw(client, self._death_payload())
            client.disconnect()
            client.loop_stop()

    def _death_payload(self) -> bytes:
        return spb.payload(
            [(spb.Metric("bdSeq", None, spb.INT64, self.bd_seq), spb.INT64)],
            seq=None,
            timestamp_ms=now_ms(),
        )

    def _publish_raw(self, client: paho.Client, payload: bytes) -> None:
        info = client.publish(self._node_topic("NDEATH"), payload, qos=1)
        with contextlib.suppress(Exception):
            info.wait_for_publish(2.0)

    # -- Sparkplug --------------------------------------------------------------------------

    def _next_sp_seq(self) -> int:
        seq = self.sp_seq
        self.sp_seq = (self.sp_seq + 1) % 256
        return seq

    def _alias(self, device_index: int, point_index: int) -> int:
        return 1 + device_index * len(self.prof.points) + point_index

    def births(self) -> None:
        """NBIRTH (seq 0, bdSeq) then a DBIRTH per device, with current values."""
        prof = self.prof
        ts = now_ms()
        self.sp_seq = 0
        node_metrics: list[tuple[spb.Metric, int]] = [
            (spb.Metric("bdSeq", None, spb.INT64, self.bd_seq), spb.INT64),
            (spb.Metric("Node Control/Rebirth", None, spb.BOOLEAN, value=False), spb.BOOLEAN),
        ]
        if not prof.assets:
            node_metrics += [
                (spb.Metric(p, self._alias(0, i), spb.DOUBLE, float(self.seq[""]), ts), spb.DOUBLE)
                for i, p in enumerate(prof.points)
            ]
        self._publish(
            self._node_topic("NBIRTH"),
            spb.payload(node_metrics, seq=self._next_sp_seq(), timestamp_ms=ts),
            qos=0,
        )
        for d, device in enumerate(prof.assets):
            metrics = [
                (
                    spb.Metric(p, self._alias(d, i), spb.DOUBLE, float(self.seq[device]), ts),
                    spb.DOUBLE,
                )
                for i, p in enumerate(prof.points)
            ]
            self._publish(
                self._node_topic("DBIRTH", device),
                spb.payload(metrics, seq=self._next_sp_seq(), timestamp_ms=ts),
                qos=0,
            )

    # -- ticking ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Publish one message per asset (values = seq)."""
        prof = self.prof
        ts = now_ms()
        for d, asset in enumerate(prof.assets or [""]):
            self.seq[asset] += 1
            seq = self.seq[asset]
            if prof.kind == "json":
                body: dict[str, Any] = {"seq": seq, "ts": ts}
                body.update(dict.fromkeys(prof.points, float(seq)))
                self._publish(prof.topic.replace("{asset}", asset), json.dumps(body).encode())
            elif prof.kind == "plain":
                for point in prof.points:
                    topic = prof.topic.replace("{asset}", asset).replace("{point}", point)
                    self._publish(topic, str(float(seq)).encode())
            else:
                if self.skip_seq:
                    self.sp_seq = (self.sp_seq + self.skip_seq) % 256
                    self.skip_seq = 0
                metrics = [
                    (spb.Metric(None, self._alias(d, i), None, float(seq), ts), spb.DOUBLE)
                    for i in range(len(prof.points))
                ]
                kind = "DDATA" if asset else "NDATA"
                self._publish(
                    self._node_topic(kind, asset),
                    spb.payload(metrics, seq=self._next_sp_seq(), timestamp_ms=ts),
                )

    def inject_malformed(self, count: int) -> None:
        """Publish ``count`` invalid payloads on the first asset's topic."""
        prof = self.prof
        asset = (prof.assets or [""])[0]
        for i in range(count):
            if prof.kind == "sparkplug_b":
                kind = "DDATA" if asset else "NDATA"
                topic = self._node_topic(kind, asset)
                payload = SPARKPLUG_MALFORMED[i % len(SPARKPLUG_MALFORMED)]
            else:
                topic = prof.topic.replace("{asset}", asset).replace("{point}", prof.points[0])
                payload = MALFORMED[i % len(MALFORMED)]
            self._publish(topic, payload)
            self.malformed += 1

    def stats(self) -> dict[str, Any]:
        """Counters for the stats file."""
        return {
            "published": self.published,
            "acked": self.acked,
            "malformed": self.malformed,
            "rebirths": self.rebirths,
            "bd_seq": self.bd_seq,
            "seq": dict(self.seq),
        }

    async def run(self, t0: float, stop: asyncio.Event) -> None:
        """Tick every ``interval`` anchored to the monotonic clock; apply faults."""
        prof = self.prof
        pending = sorted(prof.faults, key=lambda f: f.start)
        active: list[tuple[MqttFault, datetime, float]] = []
        k = 0
        while not stop.is_set():
            now = time.monotonic() - t0
            while pending and pending[0].start <= now:
                fault = pending.pop(0)
                await self._begin(fault, active)
            for item in list(active):
                fault, started, until = item
                if now >= until:
                    active.remove(item)
                    await self._end(fault, started)
            if self.rebirth_requested.is_set() and self.client is not None:
                self.rebirth_requested.clear()
                self.rebirths += 1
                self.births()
            if self.client is not None and now >= self.silent_until:
                self.tick()
            k += 1
            delay = t0 + k * prof.interval - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                k += int(-delay // prof.interval)  # overrun: skip, do not burst
        for fault, started, _ in active:
            await self._end(fault, started)

    async def _begin(
        self, fault: MqttFault, active: list[tuple[MqttFault, datetime, float]]
    ) -> None:
        started = datetime.now(UTC)
        now = time.monotonic()
        if fault.kind == "silent":
            self.silent_until = float("inf")
            active.append((fault, started, fault.start + fault.duration))
        elif fault.kind == "death" and self.prof.kind == "sparkplug_b":
            self.die()
            active.append((fault, started, fault.start + fault.duration))
        elif fault.kind == "malformed":
            self.inject_malformed(fault.count)
            self._record(fault, started, started)
        elif fault.kind == "seq_gap":
            self.skip_seq = fault.count
            self._record(fault, started, started)
        del now

    async def _end(self, fault: MqttFault, started: datetime) -> None:
        if fault.kind == "silent":
            self.silent_until = 0.0
        elif fault.kind == "death":
            await asyncio.to_thread(self.connect)
        self._record(fault, started, datetime.now(UTC))

    def _record(self, fault: MqttFault, start: datetime, end: datetime) -> None:
        prof = self.prof
        self.truth.write(
            {
                "publisher": prof.id,
                "kind": fault.kind,
                "start": rfc3339(start),
                "end": rfc3339(end),
                "count": fault.count if fault.kind in ("malformed", "seq_gap") else None,
                "assets": prof.assets,
                "bd_seq": self.bd_seq if prof.kind == "sparkplug_b" else None,
            }
        )


async def serve(args: argparse.Namespace) -> int:
    """Run every publisher until SIGTERM/SIGINT."""
    try:
        profile = load_mqtt_profile(args.config)
    except MqttProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    truth = Truth(Path(args.truth) if args.truth else None)
    pubs = [Publisher(p, profile.broker, truth) for p in profile.publishers]
    try:
        for pub in pubs:
            await asyncio.to_thread(pub.connect)
    except (OSError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        for pub in pubs:
            pub.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats_path = Path(args.stats) if args.stats else None

    def write_stats() -> None:
        if stats_path is not None:
            write_json_atomic(stats_path, {"publishers": {p.prof.id: p.stats() for p in pubs}})

    if args.ready_file:
        write_json_atomic(
            Path(args.ready_file),
            {
                "broker": profile.broker.model_dump(),
                "started": rfc3339(datetime.now(UTC)),
                "publishers": {p.prof.id: {"kind": p.prof.kind} for p in pubs},
            },
        )
    t0 = time.monotonic()
    tasks = [asyncio.create_task(p.run(t0, stop)) for p in pubs]
    while not stop.is_set():
        write_stats()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    await asyncio.gather(*tasks, return_exceptions=True)
    for pub in pubs:
        pub.close()
    write_stats()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m simulator.mqtt_publisher")
    parser.add_argument("-c", "--config", required=True, help="profile YAML")
    parser.add_argument("--truth", help="ground-truth JSON Lines file")
    parser.add_argument("--stats", help="counters JSON file (rewritten every 0.5 s)")
    parser.add_argument("--ready-file", help="JSON file written once every publisher is connected")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
