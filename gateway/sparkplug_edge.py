"""Sparkplug B edge node: the gateway's assets as Sparkplug devices for SCADA hosts (issue #9).

The gateway is one Sparkplug *edge node* (``group_id``/``edge_node_id``); every configured
asset with at least one point is one Sparkplug *device* (id ``{site}:{asset}`` by default,
``device_id`` template); every point is one *metric* named ``{point}``.

Topics (Sparkplug 3.0.0 §4.1, §4.2)::

    spBv1.0/{group}/NBIRTH/{edge_node}            node birth: bdSeq, Node Control/Rebirth
    spBv1.0/{group}/NDEATH/{edge_node}            the MQTT will (and a clean stop)
    spBv1.0/{group}/NCMD/{edge_node}              subscribed (QoS 1); only Rebirth is acted on
    spBv1.0/{group}/DBIRTH/{edge_node}/{device}   every metric: name, alias, datatype, value
    spBv1.0/{group}/DDATA/{edge_node}/{device}    readings, by alias only
    spBv1.0/{group}/DDEATH/{edge_node}/{device}   the asset went offline

Session (Sparkplug 3.0.0 §5.4-5.7, §5.17):

* CONNECT with a clean session (3.1.1) or clean start and session expiry 0 (5.0), and the
  will NDEATH (QoS 1, not retained) carrying ``bdSeq`` (Int64). ``bdSeq`` advances by one
  (mod 256) before every connection attempt and is persisted in ``state_dir`` (file
  `BDSEQ_FILE`), so a restarted gateway never reuses the bdSeq of its previous session: a
  host ignores the late will of an old session because its bdSeq differs from the current
  NBIRTH's. Without a ``state_dir`` it starts at 0 on every start.
* After CONNACK: SUBSCRIBE to the node's NCMD topic, then NBIRTH (seq 0, the same bdSeq as
  the will, ``Node Control/Rebirth`` = false without alias), then one DBIRTH per *alive*
  device. ``seq`` then increases by one per message (DBIRTH, DDATA, DDEATH), 255 -> 0.
* A device is alive while its asset is ``online`` or ``degraded`` in the inventory;
  `SparkplugEdgeNode.refresh_states` (every second) publishes DDEATH when an asset turns
  ``offline`` (or ``unknown``) and DBIRTH again when it comes back. Readings of a device
  that is not alive are not sent (counted as ``held``): their latest value is carried by the
  next DBIRTH.
* A point of an alive device that goes stale (inventory ``offline``) is re-sent once with
  its last value and quality STALE (500); the next reading clears it.
* NCMD ``Node Control/Rebirth`` = true: DATA stops at once, then NBIRTH (seq 0, same bdSeq)
  and every DBIRTH are re-sent; requests closer than ``rebirth_min_interval`` to the previous
  birth wait for it (a command flood cannot turn into a birth storm). Every other NCMD
  metric, and every DCMD (never subscribed), is ignored: no writes (RELIABILITY S13).
* Clean stop: flush the queue (bounded), publish NDEATH with the current bdSeq (QoS 1,
  PUBACK awaited), DISCONNECT.

Metrics: aliases 1..n in the order of the configured points (node-wide unique, stable while
the configuration is unchanged). The datatype is declared at the first DBIRTH from the
point's value then (bool -> Boolean, int -> Int64, float -> Double, str -> String; unknown ->
Double); an int sent for a Double metric is sent as a double; a value that does not fit the
declared datatype (a float for an Int64 metric, a string for a number...) re-declares the
metric in a new DBIRTH of its device. The unit is the ``engUnit`` property (the
Ignition/Cirrus Link tag property name; the specification defines no unit property).

Quality (Sparkplug 3.0.0 §6.4.9.1 "Quality Codes", property ``Quality``, Int32):

============================  ======================================================
reading quality (OPC UA)      Sparkplug metric
============================  ======================================================
Good                          value, no ``Quality`` property (absent means GOOD, 192)
Uncertain (and stale points)  value + ``Quality`` = 500 (STALE)
Bad, or no value              ``is_null`` = true, no value, ``Quality`` = 0 (BAD)
============================  ======================================================

Guarantee: a live feed, not store and forward (like `gateway.northbound`). Readings committed
while the broker is away wait in a bounded queue (``queue_max``; the oldest beyond it are
dropped and counted); after a reconnect the births carry the latest sent values and the queue
follows as DDATA. Messages handed to the client library but not confirmed when the link drops
are counted (``lost_in_flight``). For a lossless history use an ``influxdb`` sink.

Source: Sparkplug 3.0.0 specification (Eclipse Sparkplug): §2.5 (clean session), §4.1.2,
§4.1.4, §4.1.5 (id characters), §4.2.1-4.2.2 (message types, QoS 0, not retained), §5.4
(edge node session establishment, will, NCMD subscription QoS 1), §5.5 (intentional
disconnect: NDEATH then DISCONNECT), §5.6-5.7 (device sessions, DDEATH), §5.16 (current
values in births, is_null), §5.17 (Rebirth), §6.4.5 (payload timestamp, seq), §6.4.6 (metric
alias, timestamp, datatype), §6.4.9.1 (quality codes), §6.4.16 (datatypes), §6.4.19 (NBIRTH).
MQTT 3.1.1 §3.1.2.4-3.1.2.7 (clean session, will); MQTT 5.0 §3.1.2.4 (clean start),
§3.1.2.11.2 (session expiry interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connectors.base import ConnectError
from connectors.mqtt import sparkplug_b_pb2 as pb
from connectors.mqtt.connector import build_tls_context
from connectors.mqtt.sparkplug import (
    BDSEQ_METRIC,
    NAMESPACE,
    QUALITY_PROPERTY,
    REBIRTH_METRIC,
    DataType,
    SparkplugError,
    decode_payload,
)
from gateway.clock import monotonic, to_epoch_ns, utc_now
from gateway.model import Reading, Value
from gateway.quality import Q, Quality, Severity, is_usable, severity
from gateway.sparkplug_config import SparkplugEdgeConfig, check_sparkplug_id
from inventory.inventory import Inventory
from inventory.views import AssetView, State

log = logging.getLogger("ot_gateway.sparkplug_edge")

SP_GOOD = 192
"""Sparkplug quality code GOOD (§6.4.9.1); never sent: an absent property means GOOD."""
SP_STALE = 500
"""Sparkplug quality code STALE (§6.4.9.1)."""
SP_BAD = 0
"""Sparkplug quality code BAD (§6.4.9.1)."""
UNIT_PROPERTY = "engUnit"
"""Metric property carrying the unit in births (Ignition's tag property name)."""
BDSEQ_FILE = "sparkplug-bdseq.json"
"""File in ``state_dir`` holding the last bdSeq used: ``{"group_id", "edge_node_id",
"bd_seq"}``."""
CHUNK = 1000
"""Readings taken from the queue between two yields to the event loop [count]."""
MAX_OUTSTANDING = 1000
"""Messages handed to paho and not yet written (QoS 0) or acknowledged (QoS 1) [count]."""
MAX_COMMAND_BYTES = 65536
"""Largest NCMD payload decoded [bytes]; larger ones are counted as invalid."""
NDEATH_TIMEOUT = 2.0
"""Wait for the PUBACK of the NDEATH at a clean stop [s]."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MASK = 2**64 - 1
_ALIVE = frozenset({State.ONLINE, State.DEGRADED})


# -- points, metrics, payloads ---------------------------------------------------------------


class PointSpecLike(Protocol):
    """What the edge node needs of a configured point (`inventory.spec.PointSpec` fits)."""

    @property
    def site(self) -> str:
        """Site id."""

    @property
    def asset(self) -> str:
        """Asset id (one Sparkplug device per asset)."""

    @property
    def point(self) -> str:
        """Point id (the metric name)."""

    @property
    def unit(self) -> str | None:
        """UCUM-style unit code, or None."""


@dataclass(frozen=True, slots=True)
class EdgePoint:
    """A configured point as the edge node sees it (one Sparkplug metric).

    Attributes:
        site: Site id.
        asset: Asset id; the asset is a Sparkplug device.
        point: Point id; the metric name.
        unit: UCUM-style unit code (``engUnit`` property of the metric), or None.
    """

    site: str
    asset: str
    point: str
    unit: str | None = None


def sparkplug_quality(quality: Quality) -> int:
    """Map an OPC UA StatusCode to a Sparkplug quality code.

    Args:
        quality: OPC UA StatusCode (uint32).

    Returns:
        192 (GOOD) for Good, 500 (STALE) for Uncertain, 0 (BAD) for Bad.

    Source: Sparkplug 3.0.0 §6.4.9.1 (quality codes 0, 192, 500); RELIABILITY M6.
    """
    sev = severity(quality)
    if sev is Severity.GOOD:
        return SP_GOOD
    if sev is Severity.UNCERTAIN:
        return SP_STALE
    return SP_BAD


def datatype_of(value: Value) -> DataType | None:
    """The Sparkplug datatype a value is declared with, None for a null value.

    bool -> Boolean (11), int -> Int64 (4) within its range else Double (10), float ->
    Double, str -> String (12). Source: Sparkplug 3.0.0 §6.4.16.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return DataType.BOOLEAN
    if isinstance(value, int):
        return DataType.INT64 if _INT64_MIN <= value <= _INT64_MAX else DataType.DOUBLE
    if isinstance(value, float):
        return DataType.DOUBLE
    return DataType.STRING


def fits(datatype: int, value: Value) -> bool:
    """True when ``value`` can be sent as a metric of ``datatype`` without re-declaring it.

    A null always fits; an int fits Int64 (in range) and Double; a float fits Double only.
    """
    if value is None:
        return True
    if isinstance(value, bool):
        return datatype == DataType.BOOLEAN
    if isinstance(value, int):
        if datatype == DataType.DOUBLE:
            return True
        return datatype == DataType.INT64 and _INT64_MIN <= value <= _INT64_MAX
    if isinstance(value, float):
        return datatype == DataType.DOUBLE
    return datatype == DataType.STRING


def _redeclared(datatype: int, value: Value) -> DataType:
    """The datatype to re-declare a metric with when ``value`` does not fit ``datatype``."""
    if isinstance(value, float) and datatype == DataType.INT64:
        return DataType.DOUBLE  # widen: the point carries fractions
    new = datatype_of(value)
    return DataType.DOUBLE if new is None else new


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch (UTC) of an aware datetime (§6.4.5, §6.4.6)."""
    return to_epoch_ns(ts) // 1_000_000


def fill_metric(metric: pb.Payload.Metric, datatype: int, value: Value, quality: Quality) -> None:
    """Set a metric's value (or ``is_null``) and its ``Quality`` property.

    Args:
        metric: The protobuf metric to fill (name/alias/timestamp are set by the caller).
        datatype: The metric's declared Sparkplug datatype (Boolean, Int64, Double, String).
        value: The value; it must fit ``datatype`` (see `fits`).
        quality: OPC UA StatusCode of the value.

    A Bad quality, a None value or a non-finite float gives ``is_null`` and ``Quality`` = 0
    (BAD); Uncertain gives the value and ``Quality`` = 500 (STALE); Good gives the value
    and no property. Int64 is sent as its 64-bit two's complement in ``long_value``.

    Source: Sparkplug 3.0.0 §6.4.6 (is_null, value), §6.4.9.1 (Quality property: type 3
    Int32, ``int_value``), §6.4.16 (datatype encodings).
    """
    code = sparkplug_quality(quality)
    if value is None or code == SP_BAD or (isinstance(value, float) and not math.isfinite(value)):
        metric.is_null = True
        code = SP_BAD
    elif datatype == DataType.BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == DataType.INT64:
        metric.long_value = int(value) & _UINT64_MASK
    elif datatype == DataType.DOUBLE:
        metric.double_value = float(value)
    else:
        metric.string_value = str(value)
    if code != SP_GOOD:
        props = metric.properties
        props.keys.append(QUALITY_PROPERTY)
        prop = props.values.add()
        prop.type = DataType.INT32
        prop.int_value = code


def node_death_payload(bd_seq: int, timestamp_ms: int) -> bytes:
    """The NDEATH payload: a timestamp and the single metric ``bdSeq`` (Int64), no seq.

    Source: Sparkplug 3.0.0 §4.2.1.3 (NDEATH payload: only the bdSeq metric, no seq), §5.4
    (will payload bdSeq of datatype Int64).
    """
    payload = pb.Payload(timestamp=timestamp_ms)
    metric = payload.metrics.add()
    metric.name = BDSEQ_METRIC
    metric.timestamp = timestamp_ms
    metric.datatype = DataType.INT64
    metric.long_value = bd_seq
    return payload.SerializeToString()


@dataclass(slots=True)
class _Metric:
    """One point as a Sparkplug metric, with what was last taken from the queue."""

    point: str
    alias: int
    unit: str | None
    device: _Device
    datatype: int | None = None
    value: Value = None
    quality: Quality | None = None  # None: never seen
    ts: datetime | None = None
    stale: bool = False  # marked STALE for the current stale episode of the point


@dataclass(frozen=True, slots=True)
class _StaleMark:
    """Queue entry: the metric's point went stale at ``at`` (sent as its value + STALE)."""

    metric: _Metric
    at: datetime


@dataclass(eq=False, slots=True)
class _Device:
    """One asset as a Sparkplug device."""

    site: str
    asset: str
    device_id: str
    topics: dict[str, str]
    metrics: dict[str, _Metric] = field(default_factory=dict)
    alive: bool = False  # wanted: the asset is online/degraded (set by refresh_states)
    born: bool = False  # DBIRTH sent in the current MQTT session (and no DDEATH since)
    signature: object = None  # asset state and points by state at the last refresh


@dataclass(slots=True)
class EdgeStats:
    """Counters of the edge node.

    Attributes:
        queued: Readings accepted by the listener.
        published: Readings sent as DDATA metrics.
        held: Readings of devices not alive (their latest value goes into the next DBIRTH).
        unknown: Readings of points that are not configured.
        dropped: Readings dropped because the queue was full (oldest first).
        stale_marks: Points re-sent with quality STALE because they went stale.
        type_changes: Metrics re-declared with another datatype (each in a new DBIRTH).
        messages: MQTT messages handed to paho, by Sparkplug message type.
        lost_in_flight: Messages unconfirmed when a link dropped.
        rebirths: Rebirth requests served (NBIRTH + DBIRTHs re-sent).
        commands: NCMD messages received.
        commands_ignored: NCMD messages without a Rebirth = true metric (S13).
        commands_invalid: NCMD payloads that are not Sparkplug B.
        connects: Successful connections.
        connect_failures: Failed connection attempts.
        connected: Link state now.
        bd_seq: bdSeq of the current (or last) session, None before the first attempt.
        last_error: Last connection error text, or None.
    """

    queued: int = 0
    published: int = 0
    held: int = 0
    unknown: int = 0
    dropped: int = 0
    stale_marks: int = 0
    type_changes: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    lost_in_flight: int = 0
    rebirths: int = 0
    commands: int = 0
    commands_ignored: int = 0
    commands_invalid: int = 0
    connects: int = 0
    connect_failures: int = 0
    connected: bool = False
    bd_seq: int | None = None
    last_error: str | None = None


# -- the edge node ---------------------------------------------------------------------------


class SparkplugEdgeNode:
    """The gateway as a Sparkplug B edge node: same interface as `MqttNorthbound`.

    Args:
        cfg: Broker, Sparkplug ids, QoS, queue and timing (``northbound.sparkplug``).
        gateway: Gateway name; the default edge node id.
        inventory: The runtime's inventory (asset and point states, last values).
        points: Configured points (`EdgePoint`, `inventory.spec.PointSpec` or alike); each
            asset with points is a device, each point a metric. Duplicate keys are ignored.
        state_dir: Directory for `BDSEQ_FILE` (created if missing); None = bdSeq not
            persisted (starts at 0 on every start).

    Raises:
        ValueError: A device id built from ``cfg.device_id`` is invalid (§4.1.5) or two
            assets give the same device id.

    Attributes:
        stats: `EdgeStats`.
        endpoint: Broker locator ``mqtt://host:port`` (``mqtts`` with TLS).
        group_id: Sparkplug group id.
        edge_node_id: Sparkplug edge node id.
    """

    def __init__(
        self,
        cfg: SparkplugEdgeConfig,
        gateway: str,
        inventory: Inventory,
        points: Sequence[PointSpecLike],
        *,
        state_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.group_id = cfg.group_id
        self.edge_node_id = check_sparkplug_id(cfg.edge_node_id or gateway, "edge_node_id")
        self.stats = EdgeStats()
        scheme = "mqtts" if cfg.tls is not None else "mqtt"
        self.endpoint = f"{scheme}://{cfg.host}:{cfg.effective_port}"
        self._inventory = inventory
        self._state_file = state_dir / BDSEQ_FILE if state_dir is not None else None
        prefix = f"{NAMESPACE}/{self.group_id}"
        self._node_topics = {
            kind: f"{prefix}/{kind}/{self.edge_node_id}" for kind in ("NBIRTH", "NDEATH", "NCMD")
        }
        self._devices: dict[tuple[str, str], _Device] = {}
        self._metrics: dict[tuple[str, str, str], _Metric] = {}
        seen_ids: dict[str, tuple[str, str]] = {}
        for p in points:
            key = (p.site, p.asset, p.point)
            if key in self._metrics:
                continue
            dev = self._devices.get((p.site, p.asset))
            if dev is None:
                dev_id = cfg.device_id.replace("{site}", p.site).replace("{asset}", p.asset)
                check_sparkplug_id(dev_id, f"device id of {p.site}/{p.asset}")
                other = seen_ids.get(dev_id.lower())
                if other is not None:
                    msg = f"device id {dev_id!r} of {p.site}/{p.asset} clashes with {other}"
                    raise ValueError(msg)
                seen_ids[dev_id.lower()] = (p.site, p.asset)  # §5.2: case-insensitively unique
                dev = _Device(
                    p.site,
                    p.asset,
                    dev_id,
                    {
                        kind: f"{prefix}/{kind}/{self.edge_node_id}/{dev_id}"
                        for kind in ("DBIRTH", "DDATA", "DDEATH")
                    },
                )
                self._devices[(p.site, p.asset)] = dev
            metric = _Metric(p.point, len(self._metrics) + 1, p.unit, dev)
            dev.metrics[p.point] = metric
            self._metrics[key] = metric
        self._queue: deque[Reading | _StaleMark] = deque()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._stop_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._paho: paho.Client | None = None
        self._outstanding = 0
        self._drained = asyncio.Event()
        self._seq = 0
        self._bd_seq: int | None = None
        self._dirty: set[_Device] = set()
        self._rebirth_pending = False
        self._last_birth = -math.inf

    # -- API -----------------------------------------------------------------------------------

    @property
    def listener(self) -> Callable[[Sequence[Reading]], None]:
        """The runtime listener: queues committed readings (never blocks, never raises)."""
        return self.publish

    def publish(self, readings: Sequence[Reading]) -> None:
        """Queue readings for DDATA; never blocks (drops the oldest beyond ``queue_max``).

        Args:
            readings: Committed readings, in commit order (the inventory has observed them).
        """
        queue = self._queue
        before = len(queue)
        queue.extend(readings)
        added = len(queue) - before
        self.stats.queued += added
        overflow = len(queue) - self.cfg.queue_max
        if overflow > 0:
            for _ in range(overflow):
                queue.popleft()
            self.stats.dropped += overflow
        if added:
            self._wake.set()

    async def start(self, *, wait: float | None = None) -> None:
        """Start the session task: it connects in the background and retries forever.

        Args:
            wait: Seconds to wait for the first connection (NBIRTH sent); None = do not wait.

        Raises:
            ConnectError: ``wait`` given and no connection within it (the task keeps
                retrying in the background).
        """
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="sparkplug-edge")
            self._task.add_done_callback(self._task_done)
        if wait is not None:
            try:
                await asyncio.wait_for(self._connected.wait(), wait)
            except TimeoutError:
                msg = f"{self.endpoint}: not connected after {wait} s: {self.stats.last_error}"
                raise ConnectError(msg) from None

    async def refresh_states(self, now: datetime) -> int:
        """Follow the inventory: DDEATH for assets gone offline, DBIRTH for those back.

        Called every second by the runtime. A device is wanted alive while its asset is
        ``online`` or ``degraded``. For alive devices whose points changed state, each point
        that turned stale (``offline``) with a usable last value is queued for one DDATA
        metric with that value and quality STALE (500). Births and deaths are published by
        the session task, after the readings queued before this call.

        Args:
            now: Current time (aware UTC), for the inventory's state evaluation.

        Returns:
            Number of devices whose wanted state (alive or dead) changed.

        Source: Sparkplug 3.0.0 §5.6 (device session establishment), §5.7 (DDEATH when the
            edge node loses the device).
        """
        changed = 0
        marks: list[_StaleMark] = []
        for view in self._inventory.assets(now, with_points=False):
            dev = self._devices.get((view.site, view.id))
            if dev is None:
                continue
            alive = view.state in _ALIVE
            signature = (view.state, tuple(sorted(view.points_by_state.items())))
            if alive != dev.alive:
                dev.alive = alive
                self._dirty.add(dev)
                changed += 1
            if signature != dev.signature:
                dev.signature = signature
                full = self._inventory.asset(view.site, view.id, now)
                if full is not None:
                    self._follow_points(dev, full, now, marks)
        if marks:
            self._queue.extend(marks)
            self._wake.set()
        if changed:
            self._wake.set()
        return changed

    async def stop(self, flush_s: float = 5.0) -> None:
        """Flush (bounded), publish NDEATH with the current bdSeq, DISCONNECT.

        Args:
            flush_s: Upper bound of the flush [s]; the NDEATH then gets up to
                `NDEATH_TIMEOUT` more. What is still queued is not published.

        Source: Sparkplug 3.0.0 §5.5 (an intentional disconnect publishes NDEATH, then
            DISCONNECT).
        """
        self._stop_deadline = monotonic() + flush_s
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), flush_s + NDEATH_TIMEOUT + 1.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def status(self) -> dict[str, object]:
        """State for ``/readyz`` and ``/api/v1/sinks``: endpoint, ids, connected, counters."""
        st = self.stats
        return {
            "name": "sparkplug",
            "type": "sparkplug-edge",
            "target": self.endpoint,
            "state": "ok" if st.connected else "degraded",
            "connected": st.connected,
            "group_id": self.group_id,
            "edge_node_id": self.edge_node_id,
            "bd_seq": st.bd_seq,
            "devices_total": len(self._devices),
            "devices_alive": sum(1 for d in self._devices.values() if d.born),
            "metrics_total": len(self._metrics),
            "queued": st.queued,
            "backlog": len(self._queue),
            "published": st.published,
            "held": st.held,
            "dropped": st.dropped,
            "lost_in_flight": st.lost_in_flight,
            "rebirths": st.rebirths,
            "commands_ignored": st.commands_ignored,
            "messages": dict(st.messages),
            "last_error": st.last_error,
        }

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector: ``otgw_sparkplug_*`` series (register on the registry)."""
        st = self.stats
        target = [self.endpoint]
        for name, doc, value in (
            ("up", "1 while the edge node is connected to the broker", float(st.connected)),
            ("bdseq", "bdSeq of the current Sparkplug session", float(st.bd_seq or 0)),
            ("backlog", "Readings waiting in the publish queue", float(len(self._queue))),
            (
                "devices_alive",
                "Sparkplug devices born (DBIRTH sent, no DDEATH since)",
                float(sum(1 for d in self._devices.values() if d.born)),
            ),
        ):
            gauge = GaugeMetricFamily(f"otgw_sparkplug_{name}", doc, labels=["target"])
            gauge.add_metric(target, value)
            yield gauge
        messages = CounterMetricFamily(
            "otgw_sparkplug_messages",
            "Sparkplug messages handed to the broker connection, by type",
            labels=["target", "type"],
        )
        for kind in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH", "NDEATH"):
            messages.add_metric([self.endpoint, kind], float(st.messages[kind]))
        yield messages
        for name, doc, count in (
            ("published", "Readings sent as DDATA metrics", st.published),
            ("held", "Readings of devices not alive (carried by the next DBIRTH)", st.held),
            ("dropped", "Readings dropped because the publish queue was full", st.dropped),
            ("lost_in_flight", "Messages unconfirmed when the link dropped", st.lost_in_flight),
            ("rebirths", "Rebirth requests served", st.rebirths),
            ("commands_ignored", "NCMD messages ignored (no Rebirth; S13)", st.commands_ignored),
            ("connects", "Successful broker connections", st.connects),
        ):
            fam = CounterMetricFamily(f"otgw_sparkplug_{name}", doc, labels=["target"])
            fam.add_metric(target, float(count))
            yield fam

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Log (once) a session task that died of an unexpected error; stats show it."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.stats.connected = False
        self.stats.last_error = f"session task failed: {exc!r}"
        log.error("%s: Sparkplug edge node stopped: %r", self.endpoint, exc, exc_info=exc)

    # -- state following (refresh_states) ------------------------------------------------------

    def _follow_points(
        self, dev: _Device, view: AssetView, now: datetime, marks: list[_StaleMark]
    ) -> None:
        """Seed unseen metrics from the inventory; queue a STALE mark per newly stale point.

        A point's stale episode is marked once, while its device is alive; it ends when the
        inventory no longer shows the point ``offline``.
        """
        for pv in view.points:
            metric = dev.metrics.get(pv.point)
            if metric is None:
                continue
            if metric.quality is None and pv.quality is not None and pv.last_seen is not None:
                metric.value, metric.quality, metric.ts = pv.value, pv.quality, pv.last_seen
            if pv.state is not State.OFFLINE:
                metric.stale = False
            elif dev.alive and not metric.stale:
                metric.stale = True
                marks.append(_StaleMark(metric, pv.since or now))

    # -- bdSeq ---------------------------------------------------------------------------------

    def _load_bd_seq(self) -> int | None:
        """The last bdSeq used (from `BDSEQ_FILE`), None when unknown."""
        if self._state_file is None:
            return None
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
            value = int(data["bd_seq"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable, bdSeq starts at 0: %s", self._state_file, exc)
            return None
        return value % 256

    def _save_bd_seq(self, value: int) -> None:
        """Write `BDSEQ_FILE` atomically (temp file, fsync, rename)."""
        path = self._state_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        body = {"group_id": self.group_id, "edge_node_id": self.edge_node_id, "bd_seq": value}
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(body, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    async def _next_bd_seq(self) -> int:
        """Advance bdSeq for a new CONNECT (mod 256) and persist it before connecting.

        Source: Sparkplug 3.0.0 §4.2.1.1 (bdSeq starts at 0, +1 per MQTT CONNECT), §5.4
            (255 is followed by 0).
        """
        last = self._bd_seq
        if last is None:
            last = await asyncio.to_thread(self._load_bd_seq)
        value = 0 if last is None else (last + 1) % 256
        try:
            await asyncio.to_thread(self._save_bd_seq, value)
        except OSError as exc:
            log.warning("%s: cannot persist bdSeq %d: %s", self._state_file, value, exc)
        self._bd_seq = value
        self.stats.bd_seq = value
        return value

    # -- the session task ----------------------------------------------------------------------

    def _make_client(self, bd_seq: int) -> aiomqtt.Client:
        cfg = self.cfg
        v5 = cfg.mqtt_version == "5"
        will = aiomqtt.Will(
            self._node_topics["NDEATH"],
            node_death_payload(bd_seq, epoch_ms(utc_now())),
            qos=1,
            retain=False,
        )
        client = aiomqtt.Client(
            cfg.host,
            cfg.effective_port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=cfg.client_id or f"otgw-spb-{self.edge_node_id}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else True,
            # MQTT 5: clean start, and no Session Expiry Interval property (= 0); paho
            # refuses the argument for 3.1.1
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=cfg.keepalive,
            will=will,
            tls_context=build_tls_context(cfg.tls, self.endpoint),
            max_inflight_messages=MAX_OUTSTANDING,
        )
        inner: paho.Client = client._client
        aio_on_publish = inner.on_publish

        def on_publish(*args: Any) -> None:  # noqa: ANN401
            if aio_on_publish is not None:
                aio_on_publish(*args)
            self._outstanding -= 1
            if self._outstanding <= MAX_OUTSTANDING // 2:
                self._drained.set()

        inner.on_publish = on_publish
        self._paho = inner
        return client

    async def _run(self) -> None:
        backoff = self.cfg.reconnect_initial
        while not self._stopping.is_set():
            bd_seq = await self._next_bd_seq()
            try:
                client = self._make_client(bd_seq)
                await client.__aenter__()
            except (aiomqtt.MqttError, ConnectError) as exc:
                self.stats.connect_failures += 1
                if self.stats.last_error != str(exc):
                    log.warning("%s: cannot connect: %s", self.endpoint, exc)
                self.stats.last_error = str(exc)
                await self._sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.cfg.reconnect_max)
                continue
            backoff = self.cfg.reconnect_initial
            self._outstanding = 0
            self.stats.connects += 1
            self.stats.connected = True
            self.stats.last_error = None
            log.info(
                "%s: Sparkplug edge node %s/%s connected (bdSeq %d)",
                self.endpoint,
                self.group_id,
                self.edge_node_id,
                bd_seq,
            )
            try:
                await self._session(client, bd_seq)
                return  # stopped cleanly
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.warning("%s: link lost: %s", self.endpoint, exc)
            finally:
                self.stats.connected = False
                self._connected.clear()
                for dev in self._devices.values():
                    dev.born = False
                self.stats.lost_in_flight += max(0, self._outstanding)
                self._outstanding = 0
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)
            await self._sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.cfg.reconnect_max)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _session(self, client: aiomqtt.Client, bd_seq: int) -> None:
        """NCMD subscription, births, then data until stopped. Raises MqttError on link loss."""
        inner = self._paho
        assert inner is not None  # noqa: S101 - set with the client
        disconnected: asyncio.Future[None] = client._disconnected
        granted = await client.subscribe(self._node_topics["NCMD"], qos=1)
        if any(
            code.is_failure if isinstance(code, ReasonCode) else code >= 0x80 for code in granted
        ):
            log.warning(  # Rebirth requests will not arrive; data still flows
                "%s: subscription to %s refused", self.endpoint, self._node_topics["NCMD"]
            )
        reader = asyncio.create_task(self._read_commands(client), name="sparkplug-ncmd")
        try:
            self._rebirth_pending = False
            self._births(inner, bd_seq)
            self._connected.set()
            while True:
                self._wake.clear()
                if disconnected.done():
                    raise aiomqtt.MqttError("disconnected") from _exception(disconnected)
                timeout: float | None = None
                if self._rebirth_pending and not self._stopping.is_set():
                    wait = self._last_birth + self.cfg.rebirth_min_interval - monotonic()
                    if wait <= 0:
                        self._rebirth_pending = False
                        self.stats.rebirths += 1
                        log.info("%s/%s: rebirth", self.group_id, self.edge_node_id)
                        self._births(inner, bd_seq)
                        continue
                    timeout = wait  # DATA is held until the birth sequence (§5.17)
                else:
                    # queue first: readings of a device about to be born go into its DBIRTH;
                    # readings of a device about to die are sent before its DDEATH
                    sent = (
                        bool(self._queue)
                        and not self._rebirth_pending  # stopping: no DATA before a rebirth
                        and (not self._stopping.is_set() or monotonic() < self._stop_deadline)
                    )
                    if sent:
                        await self._send_some(inner, disconnected)
                    if not self._reconcile(inner):
                        raise aiomqtt.MqttError("publish failed: not connected")
                    if sent:
                        continue
                    if self._stopping.is_set():
                        await self._flush(disconnected)
                        await self._publish_death(client, bd_seq)
                        return
                wake = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait(
                        (wake, disconnected), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    wake.cancel()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader

    async def _read_commands(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                if message.topic.value != self._node_topics["NCMD"]:
                    continue
                body = message.payload
                self._on_command(bytes(body) if isinstance(body, bytes | bytearray) else b"")

    def _on_command(self, data: bytes) -> None:
        """Act on an NCMD: only ``Node Control/Rebirth`` = true (S13: no writes).

        Source: Sparkplug 3.0.0 §5.17 (Rebirth request: NCMD, metric name
            ``Node Control/Rebirth``, Boolean value true).
        """
        self.stats.commands += 1
        try:
            payload = decode_payload(data, MAX_COMMAND_BYTES)
        except SparkplugError:
            self.stats.commands_invalid += 1
            return
        rebirth = any(
            m.name == REBIRTH_METRIC
            and m.WhichOneof("value") == "boolean_value"
            and m.boolean_value
            for m in payload.metrics
        )
        if not rebirth:
            self.stats.commands_ignored += 1
            return
        if not self._rebirth_pending:
            log.info("%s/%s: rebirth requested", self.group_id, self.edge_node_id)
        self._rebirth_pending = True
        self._wake.set()

    # -- publishing (synchronous: seq order = order handed to paho) ----------------------------

    def _send(self, inner: paho.Client, kind: str, topic: str, payload: pb.Payload) -> bool:
        """Stamp the next seq, hand the message to paho; False when the link is gone."""
        payload.seq = self._seq
        info = inner.publish(topic, payload.SerializeToString(), self.cfg.qos, False)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        self._seq = (self._seq + 1) % 256
        self._outstanding += 1
        self.stats.messages[kind] += 1
        return True

    def _births(self, inner: paho.Client, bd_seq: int) -> None:
        """NBIRTH (seq 0) and a DBIRTH per alive device.

        Source: Sparkplug 3.0.0 §4.2.1.1 (NBIRTH: seq 0, bdSeq as in the will, Rebirth
            metric), §6.4.19, §5.17 (Rebirth metric without alias, Boolean false).
        """
        now = utc_now()
        now_ms = epoch_ms(now)
        payload = pb.Payload(timestamp=now_ms)
        bd = payload.metrics.add()
        bd.name = BDSEQ_METRIC
        bd.timestamp = now_ms
        bd.datatype = DataType.INT64
        bd.long_value = bd_seq
        rebirth = payload.metrics.add()
        rebirth.name = REBIRTH_METRIC
        rebirth.timestamp = now_ms
        rebirth.datatype = DataType.BOOLEAN
        rebirth.boolean_value = False
        self._seq = 0
        self._dirty.clear()
        for dev in self._devices.values():
            dev.born = False
        self._last_birth = monotonic()
        if not self._send(inner, "NBIRTH", self._node_topics["NBIRTH"], payload):
            return
        for dev in self._devices.values():
            if dev.alive and not self._device_birth(inner, dev, now_ms):
                return

    def _device_birth(self, inner: paho.Client, dev: _Device, now_ms: int) -> bool:
        """DBIRTH: every metric with name, alias, timestamp, datatype, value and properties.

        Source: Sparkplug 3.0.0 §4.2.2.1 (DBIRTH), §5.16 (current value or is_null),
            §6.4.6 (name and alias in births).
        """
        payload = pb.Payload(timestamp=now_ms)
        for m in dev.metrics.values():
            metric = payload.metrics.add()
            metric.name = m.point
            metric.alias = m.alias
            metric.timestamp = epoch_ms(m.ts) if m.ts is not None else now_ms
            if m.datatype is None:
                m.datatype = datatype_of(m.value) or DataType.DOUBLE
            elif not fits(m.datatype, m.value):
                m.datatype = _redeclared(m.datatype, m.value)
                self.stats.type_changes += 1
            metric.datatype = m.datatype
            quality = m.quality if m.quality is not None else Q.BAD_WAITING_FOR_INITIAL_DATA
            if m.unit is not None:
                props = metric.properties
                props.keys.append(UNIT_PROPERTY)
                prop = props.values.add()
                prop.type = DataType.STRING
                prop.string_value = m.unit
            fill_metric(metric, m.datatype, m.value, quality)
        if not self._send(inner, "DBIRTH", dev.topics["DBIRTH"], payload):
            return False
        dev.born = True
        return True

    def _reconcile(self, inner: paho.Client) -> bool:
        """DBIRTH/DDEATH for the devices whose wanted state changed; False on link loss."""
        if not self._dirty:
            return True
        now_ms = epoch_ms(utc_now())
        dirty, self._dirty = self._dirty, set()
        for dev in self._devices.values():  # configured order, for stable output
            if dev not in dirty:
                continue
            if dev.alive and not dev.born:
                if not self._device_birth(inner, dev, now_ms):
                    return False
            elif dev.born and not dev.alive:
                if not self._send(
                    inner, "DDEATH", dev.topics["DDEATH"], pb.Payload(timestamp=now_ms)
                ):
                    return False
                dev.born = False
        return True

    def _device_data(
        self,
        inner: paho.Client,
        dev: _Device,
        items: list[tuple[_Metric, Value, Quality, datetime]],
    ) -> bool:
        """DDATA messages (aliases only, no names, no datatypes) for one device's readings.

        Source: Sparkplug 3.0.0 §4.2.2.2 (DDATA), §6.4.6 (alias only in DATA; timestamp
            with every metric; datatype not included).
        """
        step = self.cfg.max_metrics_per_message
        for start in range(0, len(items), step):
            payload = pb.Payload(timestamp=epoch_ms(utc_now()))
            for m, value, quality, ts in items[start : start + step]:
                metric = payload.metrics.add()
                metric.alias = m.alias
                metric.timestamp = epoch_ms(ts)
                fill_metric(metric, m.datatype or DataType.DOUBLE, value, quality)
            if not self._send(inner, "DDATA", dev.topics["DDATA"], payload):
                self.stats.lost_in_flight += len(items) - start
                return False
            self.stats.published += min(step, len(items) - start)
        return True

    async def _send_some(self, inner: paho.Client, disconnected: asyncio.Future[None]) -> None:
        """Turn up to `CHUNK` queued readings into DDATA (one message per device and step)."""
        while self._outstanding >= MAX_OUTSTANDING and not disconnected.done():
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)
        if disconnected.done():
            return
        queue = self._queue
        metrics = self._metrics
        stats = self.stats
        pending: dict[_Device, list[tuple[_Metric, Value, Quality, datetime]]] = {}
        for _ in range(min(len(queue), CHUNK)):
            r = queue.popleft()
            if isinstance(r, _StaleMark):
                m = r.metric
                if m.quality is None or not is_usable(m.quality) or m.value is None:
                    continue  # nothing usable to call stale (a Bad value stays Bad)
                m.quality, m.ts = Q.UNCERTAIN_LAST_USABLE_VALUE, r.at
                stats.stale_marks += 1
            else:
                m_or_none = metrics.get((r.site, r.asset, r.point))
                if m_or_none is None:
                    stats.unknown += 1
                    continue
                m = m_or_none
                m.value, m.quality, m.ts = r.value, r.quality, r.source_time
            dev = m.device
            if not dev.born:
                stats.held += not isinstance(r, _StaleMark)
                continue
            if m.datatype is None or not fits(m.datatype, m.value):
                # re-declare: what was collected for this device goes first, then a DBIRTH
                # that carries this value with the new datatype
                if not self._device_data(inner, dev, pending.pop(dev, [])):
                    return
                if not self._device_birth(inner, dev, epoch_ms(utc_now())):
                    return
                continue
            pending.setdefault(dev, []).append((m, m.value, m.quality, m.ts))
        for dev, items in pending.items():
            if not self._device_data(inner, dev, items):
                return
        await asyncio.sleep(0)

    async def _flush(self, disconnected: asyncio.Future[None]) -> None:
        """Wait until paho confirmed what it was handed (bounded by the stop deadline)."""
        while (
            self._outstanding > 0 and not disconnected.done() and monotonic() < self._stop_deadline
        ):
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 0.05)

    async def _publish_death(self, client: aiomqtt.Client, bd_seq: int) -> None:
        """Publish NDEATH (QoS 1, not retained, PUBACK awaited) before the DISCONNECT."""
        self._outstanding += 1
        self.stats.messages["NDEATH"] += 1
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(
                self._node_topics["NDEATH"],
                node_death_payload(bd_seq, epoch_ms(utc_now())),
                qos=1,
                retain=False,
                timeout=NDEATH_TIMEOUT,
            )
        for dev in self._devices.values():
            dev.born = False


def _exception(fut: asyncio.Future[None]) -> BaseException | None:
    if fut.cancelled():
        return None
    return fut.exception()
