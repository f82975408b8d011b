"""Sparkplug B host-side session state machine (pure: no I/O, time passed in).

One `SparkplugSessions` tracks every edge node (and its devices) seen on the broker. Feed it
each message with `SparkplugSessions.handle`; call `SparkplugSessions.tick` when
`SparkplugSessions.next_deadline` passes. Both return an `Outcome`: metric values to emit,
metrics to mark Bad (death), whether to send a Rebirth NCMD, and the counters to bump.

Rules (host application view):

================================  ===========================================================
message / condition               effect
================================  ===========================================================
NBIRTH (bdSeq b, seq s)           node online with bdSeq b; aliases/datatypes learnt afresh;
                                  its devices offline until their DBIRTH; values emitted;
                                  next expected seq = s + 1
NDEATH, bdSeq = node's bdSeq      node and its devices offline; every known metric Bad
                                  (``BadNoCommunication``) at *receipt* time
NDEATH, other bdSeq               ignored (``stale_death``): the will of an older session
DBIRTH / DDEATH / NDATA / DDATA   must follow the node's NBIRTH: otherwise
                                  ``data_before_birth``, nothing emitted, Rebirth requested
seq = expected                    in order
seq ahead of expected             ``seq_gap``; the skipped seqs are *missing*; the reorder
                                  timer starts; the message is still used
a missing seq arrives             ``seq_reordered``; timer stops when none is missing
reorder timeout, still missing    one Rebirth request
unknown alias / metric name       ``unknown_metric`` (per metric), Rebirth requested
DDATA before its DBIRTH           ``data_before_birth``, Rebirth requested
NCMD / DCMD / STATE               ignored (``ignored_command`` / ``ignored_state``, S13)
================================  ===========================================================

Rebirth requests to one node are rate-limited to one per ``reorder_timeout`` (B10): further
triggers inside the window are counted as ``rebirth_suppressed``.

Source: Sparkplug 3.0.0 specification, ch. 5 "Operational Behavior" (Edge Node and Device
session establishment and termination; bdSeq matching of NDEATH; Host Application message
ordering: seq 0..255, Reorder Timeout, Rebirth request), ch. 6 §6.4 (payload, bdSeq, seq).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from connectors.mqtt import sparkplug_b_pb2 as pb
from connectors.mqtt.sparkplug import (
    BDSEQ_METRIC,
    MessageType,
    SparkplugError,
    Topic,
    birth_death_seq,
    metric_value,
    ms_to_datetime,
    payload_seq,
)
from gateway.clock import to_rfc3339
from gateway.model import Value
from gateway.quality import Quality

_CONTROL_PREFIXES = ("Node Control/", "Device Control/", "Properties/")


def _is_data(name: str) -> bool:
    """False for bdSeq and control/property metrics (never emitted as points)."""
    return name != BDSEQ_METRIC and not name.startswith(_CONTROL_PREFIXES)


class MetricDef(NamedTuple):
    """A metric announced by a birth.

    Attributes:
        name: Metric name.
        datatype: Sparkplug DataType code.
    """

    name: str
    datatype: int


class Emitted(NamedTuple):
    """A metric value produced by a message.

    Attributes:
        device: Device id, ``""`` for a node-level metric.
        name: Metric name (from the message or, for an alias, from the birth).
        value: Value; None iff ``quality`` is Bad.
        quality: OPC UA StatusCode.
        source_time: Metric timestamp, else payload timestamp, else None (aware UTC).
    """

    device: str
    name: str
    value: Value
    quality: Quality
    source_time: datetime | None


@dataclass(slots=True)
class Outcome:
    """What one message (or a timer tick) caused.

    Attributes:
        values: Metric values to emit, in message order.
        dead: (device, metric name) pairs whose points become Bad at receipt time.
        rebirth: (group, node) of nodes to send a Rebirth NCMD to now.
        counts: Counter keys to add (``seq_gap``, ``stale_death``, ``unknown_metric``...).
        event: A short description of a state change, or None.
    """

    values: list[Emitted] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)
    rebirth: list[tuple[str, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    event: str | None = None


@dataclass(slots=True)
class DeviceState:
    """A device behind an edge node."""

    online: bool = False
    metrics: dict[str, MetricDef] = field(default_factory=dict)
    birth_time: datetime | None = None
    death_time: datetime | None = None


@dataclass(slots=True)
class NodeState:
    """An edge node session as the host sees it.

    Attributes:
        online: Between a valid NBIRTH and NDEATH (or a lost link of the gateway).
        bd_seq: bdSeq of the current (or last) NBIRTH, None if it had none.
        last_seq: Last in-order seq [0..255].
        missing: Seqs skipped and not yet arrived.
        reorder_deadline: Monotonic time [s] the reorder timer fires, or None.
        last_rebirth: Monotonic time [s] of the last Rebirth request, or None.
        rebirths: Rebirth requests sent.
        aliases: alias -> metric (node and device metrics share one alias space).
        metrics: node-level metric name -> definition.
        devices: device id -> state.
    """

    online: bool = False
    bd_seq: int | None = None
    last_seq: int | None = None
    missing: set[int] = field(default_factory=set)
    reorder_deadline: float | None = None
    last_rebirth: float | None = None
    rebirths: int = 0
    aliases: dict[int, tuple[str, MetricDef]] = field(default_factory=dict)
    metrics: dict[str, MetricDef] = field(default_factory=dict)
    devices: dict[str, DeviceState] = field(default_factory=dict)
    birth_time: datetime | None = None
    death_time: datetime | None = None


class SparkplugSessions:
    """Host-side state of all edge nodes on one broker connection.

    Args:
        reorder_timeout: Seconds to wait for a missing seq before a Rebirth request; also the
            minimum spacing of Rebirth requests to one node [s], > 0.
        rebirth: False: never ask for a rebirth (``rebirth_disabled`` counted instead).
    """

    def __init__(self, reorder_timeout: float = 5.0, *, rebirth: bool = True) -> None:
        self.reorder_timeout = reorder_timeout
        self.rebirth_enabled = rebirth
        self.nodes: dict[tuple[str, str], NodeState] = {}

    # -- queries ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """Earliest pending reorder deadline (monotonic [s]), or None."""
        deadlines = [n.reorder_deadline for n in self.nodes.values() if n.reorder_deadline]
        return min(deadlines) if deadlines else None

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Link state per edge node, ``"group/node"`` -> a JSON-able dict.

        Keys of each entry: ``online``, ``bd_seq``, ``seq``, ``birth_time``, ``death_time``
        (RFC 3339 or None), ``rebirth_requests``, ``missing_seq`` (sorted list), ``metrics``
        (count incl. devices) and ``devices`` (id -> ``online``, ``birth_time``,
        ``death_time``, ``metrics``).
        """
        out: dict[str, dict[str, object]] = {}
        for (group, node), st in sorted(self.nodes.items()):
            out[f"{group}/{node}"] = {
                "online": st.online,
                "bd_seq": st.bd_seq,
                "seq": st.last_seq,
                "birth_time": to_rfc3339(st.birth_time),
                "death_time": to_rfc3339(st.death_time),
                "rebirth_requests": st.rebirths,
                "missing_seq": sorted(st.missing),
                "metrics": len(st.metrics) + sum(len(d.metrics) for d in st.devices.values()),
                "devices": {
                    dev: {
                        "online": d.online,
                        "birth_time": to_rfc3339(d.birth_time),
                        "death_time": to_rfc3339(d.death_time),
                        "metrics": len(d.metrics),
                    }
                    for dev, d in sorted(st.devices.items())
                },
            }
        return out

    # -- transitions ------------------------------------------------------------------------

    def handle(
        self, topic: Topic, payload: pb.Payload | None, now: float, received: datetime
    ) -> Outcome:
        """Apply one message.

        Args:
            topic: The parsed topic.
            payload: The decoded payload, or None when it did not decode (counted by the
                caller): it still counts as a message of the node for seq purposes only if
                it carried a seq, so None is ignored here except for STATE/commands.
            now: Monotonic time [s].
            received: Aware UTC receipt time (death marks points Bad at this time).

        Returns:
            The `Outcome`.
        """
        out = Outcome()
        kind = topic.kind
        if kind in (MessageType.NCMD, MessageType.DCMD):
            out.counts["ignored_command"] += 1
            return out
        if kind is MessageType.STATE:
            out.counts["ignored_state"] += 1
            return out
        if payload is None:
            return out
        key = (topic.group, topic.node)
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = NodeState()
        if kind is MessageType.NBIRTH:
            self._nbirth(topic, node, payload, received, out)
        elif kind is MessageType.NDEATH:
            self._ndeath(topic, node, payload, received, out)
        elif not node.online:
            out.counts["data_before_birth"] += 1
            self._request_rebirth(key, node, now, out)
        else:
            self._after_birth(topic, node, payload, now, received, out)
        return out

    def tick(self, now: float) -> Outcome:
        """Fire reorder timers that are due.

        Args:
            now: Monotonic time [s].

        Returns:
            An `Outcome` whose ``rebirth`` lists the nodes still missing seqs.
        """
        out = Outcome()
        for key, node in self.nodes.items():
            deadline = node.reorder_deadline
            if deadline is None or deadline > now:
                continue
            node.reorder_deadline = None
            if node.missing:
                out.counts["reorder_timeout"] += 1
                node.missing.clear()
                self._request_rebirth(key, node, now, out)
        return out

    def link_lost(self, received: datetime) -> Outcome:
        """The gateway's own broker link dropped: every online node is unknown again.

        Its metrics are marked Bad by the caller for the whole device anyway; here the nodes
        go offline so that data after the reconnect is only used after a new birth (the
        caller should then request rebirths, or wait for the edge nodes' next births).

        Args:
            received: Aware UTC time of the loss.

        Returns:
            An `Outcome` listing every metric of the nodes that were online in ``dead``.
        """
        out = Outcome()
        for node in self.nodes.values():
            if node.online:
                self._kill_node(node, received, out)
        return out

    # -- internals --------------------------------------------------------------------------

    def _request_rebirth(
        self, key: tuple[str, str], node: NodeState, now: float, out: Outcome
    ) -> None:
        if not self.rebirth_enabled:
            out.counts["rebirth_disabled"] += 1
            return
        last = node.last_rebirth
        if last is not None and now - last < self.reorder_timeout:
            out.counts["rebirth_suppressed"] += 1
            return
        node.last_rebirth = now
        node.rebirths += 1
        out.rebirth.append(key)
        out.counts["rebirth_requested"] += 1

    def _learn(
        self,
        node: NodeState,
        device: str,
        payload: pb.Payload,
        received: datetime,
        out: Outcome,
    ) -> dict[str, MetricDef]:
        """Record a birth's metrics and emit their values."""
        defs: dict[str, MetricDef] = {}
        default_time = ms_to_datetime(payload.timestamp) if payload.HasField("timestamp") else None
        for metric in payload.metrics:
            name = metric.name
            if not name:
                out.counts["birth_metric_without_name"] += 1
                continue
            if not metric.HasField("datatype"):
                out.counts["birth_metric_without_datatype"] += 1
                continue
            definition = MetricDef(name, int(metric.datatype))
            defs[name] = definition
            if metric.HasField("alias"):
                node.aliases[int(metric.alias)] = (device, definition)
            if not _is_data(name):
                continue
            self._emit(device, definition, metric, default_time, received, out)
        return defs

    @staticmethod
    def _emit(
        device: str,
        definition: MetricDef,
        metric: pb.Payload.Metric,
        default_time: datetime | None,
        received: datetime,
        out: Outcome,
    ) -> None:
        datatype = int(metric.datatype) if metric.HasField("datatype") else definition.datatype
        if datatype != definition.datatype:
            out.counts["datatype_mismatch"] += 1
            return
        try:
            decoded = metric_value(metric, datatype)
        except SparkplugError as exc:
            out.counts[exc.reason] += 1
            return
        if decoded.reason is not None:
            out.counts[decoded.reason] += 1
        when = ms_to_datetime(metric.timestamp) if metric.HasField("timestamp") else None
        out.values.append(
            Emitted(device, definition.name, decoded.value, decoded.quality, when or default_time)
        )
        del received  # receipt time is the caller's fallback (gateway time)

    def _nbirth(
        self, topic: Topic, node: NodeState, payload: pb.Payload, received: datetime, out: Outcome
    ) -> None:
        try:
            seq = payload_seq(payload)
        except SparkplugError as exc:
            out.counts[exc.reason] += 1
            seq = None
        bd_seq = birth_death_seq(payload)
        if bd_seq is None:
            out.counts["birth_without_bdseq"] += 1
        if seq is None:
            out.counts["missing_seq"] += 1
        node.online = True
        node.bd_seq = bd_seq
        node.last_seq = seq
        node.missing.clear()
        node.reorder_deadline = None
        node.aliases = {}
        node.birth_time = received
        for dev in node.devices.values():
            dev.online = False
            dev.metrics = {}
        node.metrics = self._learn(node, "", payload, received, out)
        out.counts["nbirth"] += 1
        out.event = f"{topic.group}/{topic.node}: NBIRTH bdSeq={bd_seq}"

    def _ndeath(
        self, topic: Topic, node: NodeState, payload: pb.Payload, received: datetime, out: Outcome
    ) -> None:
        bd_seq = birth_death_seq(payload)
        if not node.online:
            out.counts["death_while_offline"] += 1
            return
        if node.bd_seq is not None and bd_seq != node.bd_seq:
            out.counts["stale_death"] += 1
            out.event = (
                f"{topic.group}/{topic.node}: NDEATH bdSeq={bd_seq} ignored "
                f"(current bdSeq={node.bd_seq})"
            )
            return
        self._kill_node(node, received, out)
        out.counts["ndeath"] += 1
        out.event = f"{topic.group}/{topic.node}: NDEATH bdSeq={bd_seq}"

    @staticmethod
    def _kill_node(node: NodeState, received: datetime, out: Outcome) -> None:
        node.online = False
        node.death_time = received
        node.missing.clear()
        node.reorder_deadline = None
        out.dead.extend(("", name) for name in node.metrics if _is_data(name))
        for dev_id, dev in node.devices.items():
            if dev.online:
                dev.online = False
                dev.death_time = received
                out.dead.extend((dev_id, name) for name in dev.metrics if _is_data(name))

    def _check_seq(self, node: NodeState, seq: int | None, now: float, out: Outcome) -> None:
        if seq is None:
            out.counts["missing_seq"] += 1
            return
        last = node.last_seq
        if last is None:
            node.last_seq = seq
            return
        expected = (last + 1) % 256
        if seq == expected:
            node.last_seq = seq
            return
        if seq in node.missing:
            node.missing.discard(seq)
            out.counts["seq_reordered"] += 1
            if not node.missing:
                node.reorder_deadline = None
            return
        ahead = (seq - expected) % 256
        if ahead > 128:
            out.counts["seq_duplicate"] += 1
            return
        out.counts["seq_gap"] += 1
        node.missing.update((expected + i) % 256 for i in range(ahead))
        node.last_seq = seq
        if node.reorder_deadline is None:
            node.reorder_deadline = now + self.reorder_timeout

    def _after_birth(
        self,
        topic: Topic,
        node: NodeState,
        payload: pb.Payload,
        now: float,
        received: datetime,
        out: Outcome,
    ) -> None:
        key = (topic.group, topic.node)
        try:
            seq = payload_seq(payload)
        except SparkplugError as exc:
            out.counts[exc.reason] += 1
            seq = None
        self._check_seq(node, seq, now, out)
        kind = topic.kind
        if kind is MessageType.DBIRTH:
            dev = node.devices.setdefault(topic.device, DeviceState())
            dev.online = True
            dev.birth_time = received
            dev.metrics = self._learn(node, topic.device, payload, received, out)
            out.counts["dbirth"] += 1
            out.event = f"{topic.group}/{topic.node}/{topic.device}: DBIRTH"
            return
        if kind is MessageType.DDEATH:
            dev_state = node.devices.get(topic.device)
            if dev_state is None or not dev_state.online:
                out.counts["death_while_offline"] += 1
                return
            dev_state.online = False
            dev_state.death_time = received
            out.dead.extend((topic.device, name) for name in dev_state.metrics if _is_data(name))
            out.counts["ddeath"] += 1
            out.event = f"{topic.group}/{topic.node}/{topic.device}: DDEATH"
            return
        # NDATA / DDATA
        if kind is MessageType.DDATA:
            dev_state = node.devices.get(topic.device)
            if dev_state is None or not dev_state.online:
                out.counts["data_before_birth"] += 1
                self._request_rebirth(key, node, now, out)
                return
            names = dev_state.metrics
        else:
            names = node.metrics
        default_time = ms_to_datetime(payload.timestamp) if payload.HasField("timestamp") else None
        unknown = False
        for metric in payload.metrics:
            definition: MetricDef | None = None
            if metric.HasField("alias"):
                owner = node.aliases.get(int(metric.alias))
                if owner is not None and owner[0] == topic.device:
                    definition = owner[1]
            elif metric.name:
                definition = names.get(metric.name)
            if definition is None:
                out.counts["unknown_metric"] += 1
                unknown = True
                continue
            if not _is_data(definition.name):
                continue
            self._emit(topic.device, definition, metric, default_time, received, out)
        if unknown:
            self._request_rebirth(key, node, now, out)
