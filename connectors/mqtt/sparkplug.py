"""Sparkplug B codec: topic parsing, payload decoding, metric values, Rebirth NCMD encoding.

Pure functions over `sparkplug_b_pb2` (generated from ``sparkplug_b.proto`` in this folder). The
session rules (birth, death, bdSeq, seq, rebirth) live in `connectors.mqtt.sparkplug_session`.
Only `SparkplugError` (a `PayloadRejected`) escapes, whatever the bytes (B10, B11).

Data types and the protobuf field that carries each (Sparkplug 3.0.0 §6.4.16):

===========================  ==============  =============================================
DataType (code)              field           decoded as
===========================  ==============  =============================================
Int8/16/32 (1-3)             ``int_value``   int; 32-bit two's complement (8/16-bit too)
Int64 (4)                    ``long_value``  int; 64-bit two's complement
UInt8/16/32 (5-7)            ``int_value``   int, range-checked
UInt64 (8)                   ``long_value``  int
Float (9), Double (10)       float/double    float; NaN/±Inf -> Bad ``non_finite``
Boolean (11)                 ``boolean``     bool
String (12), Text (14),      ``string``      str
UUID (15)
DateTime (13)                ``long_value``  int, ms since the Unix epoch
DataSet, Bytes, File,        —               rejected: ``unsupported_type``
Template, arrays (16-34)
===========================  ==============  =============================================

Source: Sparkplug 3.0.0 specification (Eclipse Sparkplug), ch. 4 "Topics and Messages"
(topic namespace ``spBv1.0/group_id/message_type/edge_node_id[/device_id]``), ch. 6
"Payloads" §6.4 (Payload, Metric, PropertySet, datatypes, bdSeq, seq).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Final, NamedTuple

from google.protobuf.message import DecodeError, EncodeError

from connectors.mqtt import sparkplug_b_pb2 as pb
from connectors.mqtt.codec import PayloadRejected
from gateway.model import Value
from gateway.quality import Q, Quality

NAMESPACE: Final = "spBv1.0"
BDSEQ_METRIC: Final = "bdSeq"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
QUALITY_PROPERTY: Final = "Quality"
"""Metric property carrying an Ignition-style quality: 192 Good, 0 Bad, 500 Stale."""


class SparkplugError(PayloadRejected):
    """A Sparkplug B message or metric that cannot be used (``reason`` is the counter key)."""


class MessageType(StrEnum):
    """Sparkplug B message types (topic level 3)."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    NDATA = "NDATA"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    DDATA = "DDATA"
    DCMD = "DCMD"
    STATE = "STATE"


class DataType(IntEnum):
    """Sparkplug B metric data types (Sparkplug 3.0.0 §6.4.16)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19


_INT_RANGE: dict[int, tuple[int, int]] = {
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT8: (0, 2**8 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
_SIGNED_SMALL: dict[int, int] = {DataType.INT8: 8, DataType.INT16: 16}
_FIELD_OF: dict[int, str] = {
    **dict.fromkeys((1, 2, 3, 5, 6, 7), "int_value"),
    **dict.fromkeys((4, 8, 13), "long_value"),
    9: "float_value",
    10: "double_value",
    11: "boolean_value",
    **dict.fromkeys((12, 14, 15), "string_value"),
}
"""DataType code -> the oneof field that must carry its value."""


class Topic(NamedTuple):
    """A parsed Sparkplug B topic.

    Attributes:
        group: Group id.
        kind: Message type.
        node: Edge node id (the host id for STATE).
        device: Device id, ``""`` for node-level messages.
    """

    group: str
    kind: MessageType
    node: str
    device: str


def parse_topic(topic: str) -> Topic | None:
    """Parse ``spBv1.0/group/TYPE/node[/device]`` (or ``spBv1.0/STATE/host``).

    Args:
        topic: An MQTT topic name.

    Returns:
        The parts, or None when the topic is not a well-formed Sparkplug B topic (wrong
        namespace, unknown type, empty ids, a device on a node-level type or none on a device
        type).

    Source: Sparkplug 3.0.0 ch. 4 "Topics and Messages" (topic namespace elements; STATE).
    """
    parts = topic.split("/")
    if parts[0] != NAMESPACE:
        return None
    if len(parts) == 3 and parts[1] == "STATE" and parts[2]:
        return Topic("", MessageType.STATE, parts[2], "")
    if len(parts) not in (4, 5) or not all(parts[1:]):
        return None
    try:
        kind = MessageType(parts[2])
    except ValueError:
        return None
    device = parts[4] if len(parts) == 5 else ""
    if (kind.value[0] == "D") != bool(device) or kind is MessageType.STATE:
        return None
    return Topic(parts[1], kind, parts[3], device)


def decode_payload(data: bytes, max_bytes: int) -> pb.Payload:
    """Parse a Sparkplug B protobuf payload.

    Args:
        data: The MQTT payload.
        max_bytes: Largest accepted payload [bytes].

    Returns:
        The parsed message (unknown fields skipped).

    Raises:
        SparkplugError: ``oversized`` or ``invalid_protobuf``.

    Source: Sparkplug 3.0.0 §6.4 (payload definition); protobuf proto2 wire format.
    """
    if len(data) > max_bytes:
        raise SparkplugError("oversized", f"{len(data)} bytes > {max_bytes}")
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError, TypeError, OverflowError) as exc:
        raise SparkplugError("invalid_protobuf", type(exc).__name__) from None
    return payload


def payload_seq(payload: pb.Payload) -> int | None:
    """The payload's ``seq`` [0..255], None when absent.

    Raises:
        SparkplugError: ``bad_seq`` when the value is above 255.
    """
    if not payload.HasField("seq"):
        return None
    if payload.seq > 255:
        raise SparkplugError("bad_seq", f"seq {payload.seq} > 255")
    return int(payload.seq)


def birth_death_seq(payload: pb.Payload) -> int | None:
    """The ``bdSeq`` metric of an NBIRTH or NDEATH [0..255], None when absent or invalid."""
    for metric in payload.metrics:
        if metric.name == BDSEQ_METRIC:
            which = metric.WhichOneof("value")
            if which in ("long_value", "int_value"):
                value = int(getattr(metric, which))
                return value if value <= 255 else None
            return None
    return None


def ms_to_datetime(ms: int) -> datetime | None:
    """Aware UTC datetime from ms since the Unix epoch; None when zero or out of range."""
    if ms <= 0 or ms >= 7_258_118_400_000:  # 2200-01-01
        return None
    seconds, rest = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest * 1000)


class MetricValue(NamedTuple):
    """A decoded metric value.

    Attributes:
        value: Decoded value; None iff ``quality`` is Bad.
        quality: Good, Uncertain (a Stale quality property) or a Bad code.
        reason: None, or a per-value reason (``non_finite``, ``null_value``, ``bad_quality``).
    """

    value: Value
    quality: Quality
    reason: str | None


def metric_quality(metric: pb.Payload.Metric) -> Quality:
    """Quality from a metric's ``Quality`` property (192 Good, 500 Stale, 0 Bad), else Good."""
    if not metric.HasField("properties"):
        return Q.GOOD
    props = metric.properties
    for key, prop in zip(props.keys, props.values, strict=False):
        if key != QUALITY_PROPERTY:
            continue
        which = prop.WhichOneof("value")
        if which not in ("int_value", "long_value"):
            return Q.GOOD
        code = int(getattr(prop, which))
        if code == 192:
            return Q.GOOD
        if code == 500:
            return Q.UNCERTAIN_LAST_USABLE_VALUE
        return Q.BAD
    return Q.GOOD


def metric_value(metric: pb.Payload.Metric, datatype: int) -> MetricValue:
    """Decode a metric's value with its datatype (from the metric or from the birth).

    Args:
        metric: The protobuf metric.
        datatype: Sparkplug DataType code.

    Returns:
        The value with its quality; ``is_null`` gives Bad ``null_value``, non-finite floats
        Bad ``non_finite``, a Bad quality property Bad ``bad_quality``.

    Raises:
        SparkplugError: ``unsupported_type`` (DataSet, Bytes, File, Template, arrays, unknown
            codes) or ``datatype_mismatch`` (the value sits in a field other than the
            datatype's, or out of the datatype's range).

    Source: Sparkplug 3.0.0 §6.4.16 (datatype encodings), §6.4.4 (metric, is_null).
    """
    field = _FIELD_OF.get(datatype)
    if field is None:
        raise SparkplugError("unsupported_type", f"datatype {datatype}")
    if metric.is_null:
        return MetricValue(None, Q.BAD, "null_value")
    which = metric.WhichOneof("value")
    if which != field:
        raise SparkplugError("datatype_mismatch", f"datatype {datatype} in {which}")
    quality = metric_quality(metric)
    if quality == Q.BAD:
        return MetricValue(None, Q.BAD, "bad_quality")
    value: Value
    if field == "int_value":
        number = int(metric.int_value)
        if datatype in _SIGNED_SMALL and number >= 2**31:
            number -= 2**32
        elif datatype in _SIGNED_SMALL and number > _INT_RANGE[datatype][1]:
            number -= 1 << _SIGNED_SMALL[datatype]  # 8/16-bit two's complement
        elif datatype == DataType.INT32 and number >= 2**31:
            number -= 2**32
        low, high = _INT_RANGE[datatype]
        if not low <= number <= high:
            raise SparkplugError("datatype_mismatch", f"{number} out of range of {datatype}")
        value = number
    elif field == "long_value":
        number = int(metric.long_value)
        if datatype == DataType.INT64 and number >= 2**63:
            number -= 2**64
        value = number
    elif field in ("float_value", "double_value"):
        real = float(getattr(metric, field))
        if not math.isfinite(real):
            return MetricValue(None, Q.BAD, "non_finite")
        value = real
    elif field == "boolean_value":
        value = bool(metric.boolean_value)
    else:
        value = str(metric.string_value)
    return MetricValue(value, quality, None)


def encode_rebirth(timestamp_ms: int) -> bytes:
    """The payload of an NCMD asking an edge node to rebirth.

    Args:
        timestamp_ms: Send time [ms since the Unix epoch].

    Returns:
        A Payload with one Boolean metric ``Node Control/Rebirth`` = true (no seq: NCMDs
        carry none).

    Source: Sparkplug 3.0.0 ch. 5 "Operational Behavior" (Rebirth request via NCMD);
        §6.4 (Node Control/Rebirth metric).
    """
    payload = pb.Payload(timestamp=timestamp_ms)
    metric = payload.metrics.add()
    metric.name = REBIRTH_METRIC
    metric.timestamp = timestamp_ms
    metric.datatype = DataType.BOOLEAN
    metric.boolean_value = True
    try:
        return payload.SerializeToString()
    except EncodeError as exc:  # pragma: no cover - all fields set above
        raise SparkplugError("encode", str(exc)) from None


def rebirth_topic(group: str, node: str) -> str:
    """Topic of a node's NCMD: ``spBv1.0/<group>/NCMD/<node>``."""
    return f"{NAMESPACE}/{group}/NCMD/{node}"
