"""Simulated MQTT field publishers: JSON, plain and a Sparkplug B edge node, with faults.

Run: ``python -m simulator.mqtt_publisher -c profile.yaml [--truth T.jsonl] [--stats S.json]
[--ready-file R.json] [--broker-port N] [--parent-pid PID]`` (profile format:
`simulator.mqtt_profile`). Exit codes: 0 after SIGTERM/SIGINT (truth and stats flushed) or
when the parent process given by ``--parent-pid`` is gone, 1 when the broker cannot be
reached, 2 for an invalid profile.

Oracle: every value is the message's ``seq`` (float); JSON payloads carry ``seq`` and ``ts``
(source time, ms since the Unix epoch). The stats file lists, per publisher, messages
published, the highest seq per asset and how many QoS 1 messages the broker acknowledged
(PUBACK), which defines "broker-accepted" (RELIABILITY §6). Ground truth (JSON Lines): one
record per fault occurrence with wall-clock ``start``/``end`` (faults with ``every`` repeat;
each occurrence is one record).

Like the Modbus simulator, it imports nothing from gateway/, connectors/ or inventory/.

Source: MQTT 5.0 §3.14.2.1 (DISCONNECT reason 0x04 "Disconnect with Will Message"), §3.1.2.5
(will); MQTT 3.1.1 §3.1.2.5 (the will is published when the network connection closes without
DISCONNECT); Sparkplug 3.0.0 ch. 5 (NBIRTH/NDEATH bdSeq, DBIRTH, seq, Rebirth NCMD).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
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
from simulator.signals import SignalFn, make_signal

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


RECONNECT_S = 1.0
"""Seconds between reconnect attempts after a ``death`` when the broker cannot be reached."""


class Publisher:
    """One simulated MQTT client publishing per its profile.

    Args:
        prof: The publisher's profile entry.
        broker: Where to connect (host, port, MQTT version, keepalive).
        truth: Ground-truth writer shared by all publishers.
        seed: Profile seed (``random_walk`` signals).
    """

    def __init__(
        self, prof: MqttPublisherProfile, broker: MqttBroker, truth: Truth, seed: int = 0
    ) -> None:
        self.prof = prof
        self.broker = broker
        self.truth = truth
        self.signals: dict[str, SignalFn] = {
            name: make_signal(cfg, seed, f"{prof.id}:{name}") for name, cfg in prof.signals.items()
        }
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
        # QoS 1 messages not yet seen acknowledged. Counted from `MQTTMessageInfo.is_published`
        # (set on PUBACK) rather than in an on_publish callback: paho runs that callback
        # holding its outgoing-message lock, which `publish` also takes, so any lock of ours
        # held around `publish` and taken in the callback deadlocks (seen with amqtt).
        self.qos1_pending: deque[paho.MQTTMessageInfo] = deque()
        self.lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------

    def _node_topic(self, kind: str, device: str = "") -> str:
        tail = f"/{device}" if device else ""
        return f"spBv1.0/{self.prof.group}/{kind}/{self.prof.node}{tail}"

    def connect(self, timeout: float = 10.0) -> None:
        """Connect (new client); for Sparkplug with a will NDEATH of the next bdSeq.

        Args:
            timeout: Seconds to wait for CONNACK.

        Raises:
            OSError: The TCP connection failed.
            ConnectionError: No successful CONNACK within ``timeout``.
        """
        prof = self.prof
        protocol = paho.MQTTv5 if self.broker.mqtt_version == "5" else paho.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{prof.id}", protocol=protocol
        )
        client.on_connect = self._on_connect
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
        client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive)
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

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:  # noqa: ANN401
        if spb.is_rebirth_request(bytes(msg.payload)):
            self.rebirth_requested.set()

    def _publish(self, topic: str, payload: bytes, qos: int | None = None) -> None:
        client = self.client
        if client is None:
            return
        q = self.prof.qos if qos is None else qos
        info = client.publish(topic, payload, qos=q)  # never under self.lock (see __init__)
        if q == 1:
            with self.lock:
                self.qos1_pending.append(info)
        self.published += 1

    def count_acks(self) -> int:
        """Move acknowledged QoS 1 messages into ``acked``; returns ``acked``.

        Messages that paho could not send (not connected) are dropped uncounted; messages of
        a session that died unacknowledged stay pending (never counted).
        """
        with self.lock:
            keep: deque[paho.MQTTMessageInfo] = deque()
            for info in self.qos1_pending:
                try:
                    if info.is_published():
                        self.acked += 1
                    else:
                        keep.append(info)
                except (RuntimeError, ValueError):  # paho: publish failed, never acked
                    continue
            self.qos1_pending = keep
            return self.acked

    def die(self) -> None:
        """Drop the session so that the broker publishes the will.

        MQTT 5: DISCONNECT with reason code 0x04. MQTT 3.1.1 has no such reason: the network
        thread is stopped and the TCP connection closed without DISCONNECT.
        """
        client, self.client = self.client, None
        if client is None:
            return
        if self.broker.mqtt_version == "5":
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            client.loop_stop()
            return
        client.loop_stop()  # no automatic reconnect, no DISCONNECT
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

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

    def value(self, point: str, seq: int, ts_ms: int) -> float:
        """A point's value: its signal at ``ts_ms`` [ms since the epoch], else ``seq``."""
        fn = self.signals.get(point)
        return float(seq) if fn is None else float(fn(ts_ms / 1000))

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
                (
                    spb.Metric(
                        p, self._alias(0, i), spb.DOUBLE, self.value(p, self.seq[""], ts), ts
                    ),
                    spb.DOUBLE,
                )
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
                    spb.Metric(
                        p, self._alias(d, i), spb.DOUBLE, self.value(p, self.seq[device], ts), ts
                    ),
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
        """Publish one message per asset (values = seq, or the point's signal)."""
        prof = self.prof
        ts = now_ms()
        for d, asset in enumerate(prof.assets or [""]):
            self.seq[asset] += 1
            seq = self.seq[asset]
            if prof.kind == "json":
                body: dict[str, Any] = {"seq": seq, "ts": ts}
                body.update({p: self.value(p, seq, ts) for p in prof.points})
                self._publish(prof.topic.replace("{asset}", asset), json.dumps(body).encode())
            elif prof.kind == "plain":
                for point in prof.points:
                    topic = prof.topic.replace("{asset}", asset).replace("{point}", point)
                    self._publish(topic, str(self.value(point, seq, ts)).encode())
            else:
                if self.skip_seq:
                    self.sp_seq = (self.sp_seq + self.skip_seq) % 256
                    self.skip_seq = 0
                metrics = [
                    (
                        spb.Metric(None, self._alias(d, i), None, self.value(p, seq, ts), ts),
                        spb.DOUBLE,
                    )
                    for i, p in enumerate(prof.points)
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
            "acked": self.count_acks(),
            "malformed": self.malformed,
            "rebirths": self.rebirths,
            "bd_seq": self.bd_seq,
            "seq": dict(self.seq),
        }

    async def run(self, t0: float, stop: asyncio.Event) -> None:
        """Tick every ``interval`` anchored to the monotonic clock; apply faults.

        Args:
            t0: Monotonic time [s] of fault schedule t = 0.
            stop: Set to stop; faults in progress are ended and recorded.
        """
        prof = self.prof
        # (due [s after t0], fault index): repeating faults are pushed back after each start.
        pending = [(f.start, i) for i, f in enumerate(prof.faults)]
        heapq.heapify(pending)
        active: list[tuple[MqttFault, datetime, float]] = []
        k = 0
        while not stop.is_set():
            now = time.monotonic() - t0
            for item in list(active):
                fault, started, until = item
                if now >= until:
                    active.remove(item)
                    await self._end(fault, started, stop)
            while pending and pending[0][0] <= now:
                due, index = heapq.heappop(pending)
                fault = prof.faults[index]
                if fault.every is not None:
                    heapq.heappush(pending, (due + fault.every, index))
                await self._begin(fault, due, active)
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
            await self._end(fault, started, None)

    async def _begin(
        self, fault: MqttFault, due: float, active: list[tuple[MqttFault, datetime, float]]
    ) -> None:
        started = datetime.now(UTC)
        if fault.kind == "silent":
            self.silent_until = float("inf")
            active.append((fault, started, due + fault.duration))
        elif fault.kind == "death" and self.prof.kind == "sparkplug_b":
            self.die()
            active.append((fault, started, due + fault.duration))
        elif fault.kind == "malformed":
            self.inject_malformed(fault.count)
            self._record(fault, started, started)
        elif fault.kind == "seq_gap":
            self.skip_seq = fault.count
            self._record(fault, started, started)

    async def _end(self, fault: MqttFault, started: datetime, stop: asyncio.Event | None) -> None:
        """End a fault; after a death, reconnect (retrying every `RECONNECT_S` until ``stop``)."""
        if fault.kind == "silent":
            self.silent_until = 0.0
        elif fault.kind == "death" and self.prof.kind == "sparkplug_b" and stop is not None:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.connect)
                    break
                except (OSError, ConnectionError) as exc:
                    log.warning("%s: reconnect after death failed: %s", self.prof.id, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), RECONNECT_S)
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
    broker = profile.broker
    if args.broker_port is not None:
        broker = broker.model_copy(update={"port": args.broker_port})
    truth = Truth(Path(args.truth) if args.truth else None)
    pubs = [Publisher(p, broker, truth, profile.seed) for p in profile.publishers]
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
                "pid": os.getpid(),
                "broker": broker.model_dump(),
                "started": rfc3339(datetime.now(UTC)),
                "publishers": {p.prof.id: {"kind": p.prof.kind} for p in pubs},
            },
        )
    t0 = time.monotonic()
    tasks = [asyncio.create_task(p.run(t0, stop)) for p in pubs]
    while not stop.is_set():
        write_stats()
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            log.warning("parent process %d is gone: stopping", args.parent_pid)
            stop.set()
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
    parser.add_argument(
        "--broker-port", type=int, default=None, help="broker port (overrides the profile)"
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="stop when this process is no longer the parent (it exited)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
