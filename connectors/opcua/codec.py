"""Pure decoding of OPC UA DataValues into sample parts: no I/O, inputs never mutated.

Rules (`decode`):

- **Quality** is the DataValue's StatusCode, all 32 bits unchanged (a missing StatusCode is
  Good). Only when the value cannot be used does the codec substitute a Bad code:

  ====================================  =====================  ==========================
  DataValue                             quality                ``error`` (stats key)
  ====================================  =====================  ==========================
  Bad status (any value)                the status, unchanged  —
  Good/Uncertain, no value (Null)       ``BadNoData``          ``no_value``
  array, matrix, ExtensionObject,       ``BadTypeMismatch``    ``type_mismatch``
  ByteString, NodeId…; a type the
  point does not expect (B9)
  Float/Double NaN or ±Inf              ``Bad`` (0x80000000)   ``non_finite``
  ====================================  =====================  ==========================

  A Bad sample never carries a value (``value is None``).
- **Values**: Boolean → bool; the integer types → int; Float/Double → float; String → str;
  LocalizedText → its text; DateTime → RFC 3339 text (``string`` points only). What a point
  accepts is its `ValueKind`, from its configured ``value_type`` or its node's DataType.
- **Timestamps**: the SourceTimestamp when it is plausible: not before 2000-01-01, not later
  than ``now + max_future_skew`` and, if ``max_source_age`` is set, not older than
  ``now − max_source_age``. Otherwise (implausible, missing, or MinDateTime) it is replaced by
  the ServerTimestamp if that one is plausible, else by ``now`` (the gateway's acquisition time),
  and the result says ``ts_adjusted`` (RELIABILITY R23).

Source: OPC UA Part 4 §7.11 (DataValue), §7.39 (StatusCode: severity bits 30-31, info bits),
Part 6 §5.2.2.17 (DataValue encoding: absent fields), Part 3 §8.29.x (built-in DataTypes),
§5.6.2 (ValueRank); status code values from Part 6 Annex A.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from asyncua import ua
from asyncua.ua import status_codes

from gateway.model import Value
from gateway.quality import Q, Quality

BAD_NO_DATA: Quality = 0x809B0000
"""``BadNoData``: a Good/Uncertain DataValue without a value (status-only with a good status)."""

MIN_SOURCE_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""Source timestamps before this instant are implausible (e.g. MinDateTime 1601-01-01)."""

_BAD_MASK = 0x80000000


class ValueKind(StrEnum):
    """What values a point accepts."""

    NUMBER = "number"
    BOOL = "bool"
    STRING = "string"
    ANY = "any"  # any scalar number, bool or string
    UNSUPPORTED = "unsupported"  # arrays, structures, ByteString...: always BadTypeMismatch


class Decoded(NamedTuple):
    """One decoded DataValue.

    Attributes:
        value: Decoded value; None iff ``quality`` is Bad.
        quality: OPC UA StatusCode (uint32).
        source_time: Plausible device time (aware UTC), or None only if ``now`` is None.
        ts_adjusted: True when ``source_time`` is not the DataValue's SourceTimestamp.
        error: Counter key of a substituted quality (``no_value``, ``type_mismatch``,
            ``non_finite``), or None.
    """

    value: Value
    quality: Quality
    source_time: datetime | None
    ts_adjusted: bool
    error: str | None


_NUMERIC_VARIANTS = frozenset(
    {
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Float,
        ua.VariantType.Double,
    }
)
_FLOAT_VARIANTS = frozenset({ua.VariantType.Float, ua.VariantType.Double})
_TEXT_VARIANTS = frozenset({ua.VariantType.String, ua.VariantType.LocalizedText})

_ACCEPTS: dict[ValueKind, frozenset[ua.VariantType]] = {
    ValueKind.NUMBER: _NUMERIC_VARIANTS,
    ValueKind.BOOL: frozenset({ua.VariantType.Boolean}),
    ValueKind.STRING: _TEXT_VARIANTS | {ua.VariantType.DateTime},
    ValueKind.ANY: _NUMERIC_VARIANTS | _TEXT_VARIANTS | {ua.VariantType.Boolean},
    ValueKind.UNSUPPORTED: frozenset(),
}

# Standard DataType node ids (namespace 0) -> kind. Source: OPC UA Part 6 Annex A (NodeIds.csv).
_DATA_TYPE_KINDS: dict[int, ValueKind] = {
    1: ValueKind.BOOL,  # Boolean
    **dict.fromkeys(range(2, 12), ValueKind.NUMBER),  # SByte .. Double
    12: ValueKind.STRING,  # String
    13: ValueKind.STRING,  # DateTime
    21: ValueKind.STRING,  # LocalizedText
    24: ValueKind.ANY,  # BaseDataType
    26: ValueKind.NUMBER,  # Number
    27: ValueKind.NUMBER,  # Integer
    28: ValueKind.NUMBER,  # UInteger
    29: ValueKind.NUMBER,  # Enumeration (encoded as Int32)
    288: ValueKind.NUMBER,  # IntegerId
    289: ValueKind.NUMBER,  # Counter
    290: ValueKind.NUMBER,  # Duration
    292: ValueKind.STRING,  # Time
    294: ValueKind.STRING,  # UtcTime
    295: ValueKind.STRING,  # LocaleId
}


def kind_of(data_type: ua.NodeId | None, value_rank: int | None) -> ValueKind:
    """The `ValueKind` of a variable from its DataType and ValueRank attributes.

    Args:
        data_type: The DataType attribute (a DataType node id), or None if unreadable.
        value_rank: The ValueRank attribute: −1 scalar, −2 any, −3 scalar or 1-D, 0 one or
            more dimensions, n ≥ 1 n dimensions; None if unreadable.

    Returns:
        UNSUPPORTED for array ranks (0 or ≥ 1) and non-scalar DataTypes (structures,
        ByteString, Guid, NodeId…); ANY for unknown or vendor types; else NUMBER, BOOL or STRING.

    Source: OPC UA Part 3 §5.6.2 (ValueRank), Part 6 Annex A (DataType NodeIds).
    """
    if value_rank is not None and value_rank >= 0:
        return ValueKind.UNSUPPORTED
    if data_type is None:
        return ValueKind.ANY
    if data_type.NamespaceIndex != 0 or not isinstance(data_type.Identifier, int):
        return ValueKind.ANY  # vendor type: check each value
    kind = _DATA_TYPE_KINDS.get(data_type.Identifier)
    if kind is not None:
        return kind
    if data_type.Identifier in (14, 15, 16, 17, 18, 19, 20, 22, 23, 25):
        return ValueKind.UNSUPPORTED  # Guid, ByteString, XmlElement, NodeId, ..., Structure
    return ValueKind.ANY


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def plausible(
    ts: datetime | None, now: datetime, max_future_skew: float, max_age: float | None
) -> bool:
    """True when ``ts`` is within [2000-01-01 (or now − max_age), now + max_future_skew].

    Args:
        ts: A timestamp (naive means UTC), or None.
        now: The gateway's current time (aware UTC).
        max_future_skew: Tolerated lead of the device clock [s], >= 0.
        max_age: Oldest accepted age [s], or None for no limit besides 2000-01-01.

    Returns:
        False for None and for timestamps outside the window.
    """
    if ts is None:
        return False
    ts = _aware(ts)
    if ts < MIN_SOURCE_TIME or ts > now + timedelta(seconds=max_future_skew):
        return False
    return max_age is None or ts >= now - timedelta(seconds=max_age)


def source_time(
    source: datetime | None,
    server: datetime | None,
    now: datetime,
    max_future_skew: float = 300.0,
    max_age: float | None = None,
) -> tuple[datetime, bool]:
    """Choose a sample's timestamp.

    Args:
        source: SourceTimestamp of the DataValue, or None when absent.
        server: ServerTimestamp, or None.
        now: Gateway acquisition time (aware UTC).
        max_future_skew: See `plausible` [s].
        max_age: See `plausible` [s].

    Returns:
        ``(timestamp, adjusted)``: the SourceTimestamp and False when plausible; else the
        ServerTimestamp (if plausible) or ``now``, and True.

    Source: OPC UA Part 4 §7.11 (SourceTimestamp, ServerTimestamp); RELIABILITY R23.
    """
    if plausible(source, now, max_future_skew, max_age):
        return _aware(source), False  # type: ignore[arg-type]  # plausible() implies not None
    if plausible(server, now, max_future_skew, max_age):
        return _aware(server), True  # type: ignore[arg-type]
    return now, True


def _value_of(variant: ua.Variant | None) -> tuple[object, ua.VariantType | None, bool]:
    if variant is None:
        return None, None, False
    raw = variant.Value
    is_array = bool(variant.is_array) or isinstance(raw, list | tuple)
    return raw, variant.VariantType, is_array


def decode(
    dv: ua.DataValue,
    kind: ValueKind,
    now: datetime,
    max_future_skew: float = 300.0,
    max_age: float | None = None,
) -> Decoded:
    """Decode one DataValue for a point expecting ``kind``.

    Args:
        dv: A DataValue from a Read or a data change notification (not mutated).
        kind: What the point accepts.
        now: Gateway acquisition time (aware UTC), used when no timestamp is plausible.
        max_future_skew: Tolerated lead of the source clock [s].
        max_age: Oldest accepted SourceTimestamp age [s], or None.

    Returns:
        Value, quality, timestamp and flags; see the module docstring for the rules.

    Source: OPC UA Part 4 §7.11 (DataValue), §7.39 (StatusCode).
    """
    status = dv.StatusCode
    code: int = status.value if status is not None else 0
    when, adjusted = source_time(
        dv.SourceTimestamp, dv.ServerTimestamp, now, max_future_skew, max_age
    )
    if code & _BAD_MASK:
        return Decoded(None, code, when, adjusted, None)
    raw, vtype, is_array = _value_of(dv.Value)
    if raw is None or vtype is None or vtype == ua.VariantType.Null:
        return Decoded(None, BAD_NO_DATA, when, adjusted, "no_value")
    if is_array or vtype not in _ACCEPTS[kind]:
        return Decoded(None, Q.BAD_TYPE_MISMATCH, when, adjusted, "type_mismatch")
    value: Value
    if vtype == ua.VariantType.Boolean:
        if not isinstance(raw, bool):
            return Decoded(None, Q.BAD_TYPE_MISMATCH, when, adjusted, "type_mismatch")
        value = raw
    elif vtype in _FLOAT_VARIANTS:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            return Decoded(None, Q.BAD_TYPE_MISMATCH, when, adjusted, "type_mismatch")
        number = float(raw)
        if not math.isfinite(number):
            return Decoded(None, Q.BAD, when, adjusted, "non_finite")
        value = number
    elif vtype in _NUMERIC_VARIANTS:
        if not isinstance(raw, int) or isinstance(raw, bool):
            return Decoded(None, Q.BAD_TYPE_MISMATCH, when, adjusted, "type_mismatch")
        value = raw
    elif vtype == ua.VariantType.LocalizedText:
        text = getattr(raw, "Text", None)
        value = text if isinstance(text, str) else ""
    elif vtype == ua.VariantType.DateTime:
        if not isinstance(raw, datetime):
            return Decoded(None, Q.BAD_TYPE_MISMATCH, when, adjusted, "type_mismatch")
        value = _aware(raw).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    else:  # String
        if not isinstance(raw, str):
            return Decoded(None, Q.BAD_TYPE_MISMATCH, when, adjusted, "type_mismatch")
        value = raw
    return Decoded(value, code, when, adjusted, None)


def status_name(code: int) -> str:
    """Symbolic name of an OPC UA StatusCode (``BadNodeIdUnknown``), or ``0x…`` when unknown.

    The info bits (low 16 bits) are ignored for the lookup.
    """
    entry = status_codes.code_to_name_doc.get(code & 0xFFFF0000)
    return entry[0] if entry is not None else f"0x{code:08X}"


# ---------------------------------------------------------------------------------------------
# Encoding (write-back).


class EncodeError(ValueError):
    """A value does not fit the node's type; nothing may be sent."""


FLOAT32_MAX = 3.4028234663852886e38
"""Largest finite IEEE 754 single-precision value (OPC UA Float)."""

INTEGER_TOLERANCE = 1e-6
"""A float within this [relative, at least absolute 1e-6] of an integer counts as that integer
for an integer node (inverse scaling leaves noise such as 13.000000000000002)."""

_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
ENCODABLE: frozenset[ua.VariantType] = frozenset(
    {
        ua.VariantType.Boolean,
        *_INT_RANGES,
        ua.VariantType.Float,
        ua.VariantType.Double,
        ua.VariantType.String,
        ua.VariantType.LocalizedText,
        ua.VariantType.DateTime,
    }
)
"""Built-in types `encode` can write (scalars)."""


def _integer(raw: object, vtype: ua.VariantType) -> int:
    low, high = _INT_RANGES[vtype]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        msg = f"{type(raw).__name__} {raw!r} is not a number ({vtype.name})"
        raise EncodeError(msg)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            msg = f"{raw!r} is not finite ({vtype.name})"
            raise EncodeError(msg)
        nearest = round(raw)
        if abs(raw - nearest) > INTEGER_TOLERANCE * max(1.0, abs(raw)):
            msg = f"{raw!r} is not an integer ({vtype.name})"
            raise EncodeError(msg)
        raw = int(nearest)
    if not low <= raw <= high:
        msg = f"{raw} is outside {vtype.name} [{low}..{high}]"
        raise EncodeError(msg)
    return raw


def _floating(raw: object, vtype: ua.VariantType) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        msg = f"{type(raw).__name__} {raw!r} is not a number ({vtype.name})"
        raise EncodeError(msg)
    number = float(raw)
    if not math.isfinite(number):
        msg = f"{raw!r} is not finite ({vtype.name})"
        raise EncodeError(msg)
    if vtype == ua.VariantType.Float and abs(number) > FLOAT32_MAX:
        msg = f"{raw!r} is outside the Float range (±{FLOAT32_MAX:.7g})"
        raise EncodeError(msg)
    return number


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    msg = f"{type(raw).__name__} {raw!r} is not a Boolean (true/false, 0/1)"
    raise EncodeError(msg)


def _datetime(raw: object) -> datetime:
    if isinstance(raw, datetime):
        when = raw
    elif isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            msg = f"{raw!r} is not an RFC 3339 date-time (DateTime)"
            raise EncodeError(msg) from None
    else:
        msg = f"{type(raw).__name__} {raw!r} is not a date-time (DateTime)"
        raise EncodeError(msg)
    if when.tzinfo is None:
        msg = f"{raw!r} has no UTC offset (DateTime needs one, e.g. Z)"
        raise EncodeError(msg)
    return when.astimezone(UTC)


def encode(raw: object, vtype: ua.VariantType) -> ua.Variant:
    """Build the scalar Variant of type ``vtype`` for ``raw``, or refuse it.

    Args:
        raw: The value to write, already in the device's units: bool, int, float or str
            (an RFC 3339 text or aware datetime for DateTime).
        vtype: The built-in type of the node's DataType (see `ENCODABLE`).

    Returns:
        ``Variant(value, vtype)``; integers from floats within `INTEGER_TOLERANCE` are rounded.

    Raises:
        EncodeError: ``raw`` does not fit: wrong kind (a string for a number, a bool for an
            integer), not an integer, out of the type's range, NaN/±Inf, a Float beyond
            ±3.4e38, a naive date-time; or ``vtype`` is not encodable.

    Source: OPC UA Part 6 §5.1.2 (built-in types and their ranges), §5.2.2.16 (Variant).
    """
    value: object
    if vtype == ua.VariantType.Boolean:
        value = _boolean(raw)
    elif vtype in _INT_RANGES:
        value = _integer(raw, vtype)
    elif vtype in _FLOAT_VARIANTS:
        value = _floating(raw, vtype)
    elif vtype == ua.VariantType.String:
        if not isinstance(raw, str):
            msg = f"{type(raw).__name__} {raw!r} is not a string (String)"
            raise EncodeError(msg)
        value = raw
    elif vtype == ua.VariantType.LocalizedText:
        if not isinstance(raw, str):
            msg = f"{type(raw).__name__} {raw!r} is not a string (LocalizedText)"
            raise EncodeError(msg)
        value = ua.LocalizedText(raw)
    elif vtype == ua.VariantType.DateTime:
        value = _datetime(raw)
    else:
        msg = f"writing {vtype.name} values is not supported"
        raise EncodeError(msg)
    return ua.Variant(value, vtype)


def variant_text(variant: ua.Variant) -> str:
    """``Float 12.5``, ``String "on"``, ``Boolean true``: a Variant as a human reads it."""
    value = variant.Value
    if isinstance(value, ua.LocalizedText):
        value = value.Text or ""
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    else:
        text = repr(value)
    return f"{variant.VariantType.name} {text}"
