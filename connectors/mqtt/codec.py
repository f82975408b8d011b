"""Pure MQTT payload decoding: topic templates, plain and JSON payloads, timestamps.

No I/O. Every function either returns a decoded value or raises `PayloadRejected` with a
short machine-readable ``reason`` (the key counted in ``stats.errors``); no other exception
escapes, whatever the bytes (B1-B5, B11).

Whole-message rejections (the message yields no sample):

=================  ==========================================================================
reason             cause
=================  ==========================================================================
``oversized``      payload longer than the configured limit (checked before decoding)
``empty``          zero-length payload
``invalid_utf8``   not UTF-8 (JSON and string values)
``bom``            JSON text starting with a UTF-8 byte order mark (RFC 8259 §8.1)
``truncated_json`` the JSON text ends early (unterminated string, missing bracket)
``invalid_json``   any other JSON syntax error
``too_deep``       nesting deeper than `MAX_JSON_DEPTH` (Python's parser would recurse)
=================  ==========================================================================

Per-value outcomes (one point of a message; the others still decode):

=================  ==========================  ===============================================
reason             sample                      cause
=================  ==========================  ===============================================
``missing_field``  none                        the JSON pointer does not resolve
``wrong_type``     ``BadTypeMismatch``         value of another type than ``value_type``
``huge_number``    ``BadOutOfRange``           integer beyond ±2**63 (or > 19 digits)
``non_finite``     ``Bad``                     NaN, ±Infinity, or a float overflowing (1e400)
``null_value``     ``Bad``                     JSON ``null``
=================  ==========================  ===============================================

Source: RFC 8259 (JSON; §8.1 byte order mark), RFC 6901 (JSON Pointer), RFC 3339 (date-time);
MQTT 3.1.1 §4.7 and MQTT 5.0 §4.7 (topic names, filters, wildcards).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

from connectors.mqtt.config import TimestampUnit, ValueType
from gateway.model import Value
from gateway.quality import Q, Quality

MAX_JSON_DEPTH: Final = 64
"""Deepest JSON nesting accepted ([...] and {...} levels)."""
MAX_INT_DIGITS: Final = 19
"""Longest JSON integer literal parsed as a number (digits, sign excluded)."""
_INT64 = 2**63
_UTF8_BOM = b"\xef\xbb\xbf"


class PayloadRejected(ValueError):
    """A payload or value cannot be used.

    Attributes:
        reason: Counter key, e.g. ``invalid_json`` (see the module tables).
        detail: Human-readable detail (no payload bytes beyond a short excerpt).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Field(NamedTuple):
    """One decoded value of a message.

    Attributes:
        name: The point id template it belongs to (a key of the mapping's ``fields``, or the
            mapping's ``point`` template).
        value: Decoded value; None iff ``quality`` is Bad.
        quality: Good, or the Bad code of a per-value failure.
        reason: None, or the per-value reason counted (``wrong_type`` ...).
    """

    name: str
    value: Value
    quality: Quality
    reason: str | None


# -- topics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A compiled topic template: literal levels, ``+``, ``#`` and ``{name}`` captures.

    Attributes:
        levels: Levels of the template.
        names: Per level, the variable it captures, or None.
    """

    levels: tuple[str, ...]
    names: tuple[str | None, ...]

    @classmethod
    def compile(cls, template: str) -> TopicTemplate:
        """Compile a template already checked by `config.check_topic_filter`."""
        levels = tuple(template.split("/"))
        names = tuple(
            level[1:-1] if level.startswith("{") and level.endswith("}") else None
            for level in levels
        )
        return cls(levels, names)

    def match(self, topic: str) -> dict[str, str] | None:
        """Match a topic name.

        Args:
            topic: A topic name (no wildcards).

        Returns:
            The captured variables (name -> level text), or None when the topic does not
            match. A topic starting with ``$`` matches no template starting with a wildcard.

        Source: MQTT 3.1.1 §4.7.1.2-4.7.1.3 (``#``, ``+``), §4.7.2 (``$`` topics).
        """
        parts = topic.split("/")
        levels = self.levels
        names = self.names
        captured: dict[str, str] = {}
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if level == "#" and i == last:
                if i == 0 and topic.startswith("$"):
                    return None
                return captured
            if i >= len(parts):
                return None
            part = parts[i]
            name = names[i]
            if name is not None or level == "+":
                if i == 0 and part.startswith("$"):
                    return None
                if name is not None:
                    captured[name] = part
            elif level != part:
                return None
        return captured if len(parts) == len(levels) else None


_VAR = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def render(template: str, variables: dict[str, str]) -> str:
    """Substitute ``{name}`` variables; a missing variable renders as an empty string."""
    if "{" not in template:
        return template
    return _VAR.sub(lambda m: variables.get(m.group(1), ""), template)


_SLUG_BAD = re.compile(r"[^a-z0-9_.-]+")


def slugify(text: str) -> str:
    """A metric name as a point id: lower case, runs of other characters become ``_``.

    Example: ``"Pump 7/Flow Rate"`` -> ``"pump_7_flow_rate"``. At most 63 characters.
    """
    slug = _SLUG_BAD.sub("_", text.lower()).strip("_.-")
    return slug[:63] or "_"


# -- JSON -----------------------------------------------------------------------------------


class _Huge:
    """Marker of an integer literal too long to convert.

    Keeps Python's 4300-digit limit and the quadratic ``int()`` out of the decoder.
    """

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


class _NonFinite(float):
    """A NaN/Infinity JSON constant (JSON has none; Python's parser accepts them)."""

    __slots__ = ()


def _parse_int(text: str) -> int | _Huge:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        return _Huge(digits)
    return int(text)


def _parse_constant(text: str) -> float:
    return _NonFinite(float(text))


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)


def _depth_ok(text: str) -> bool:
    """True when brackets outside strings nest at most `MAX_JSON_DEPTH` deep (linear scan).

    Only called for texts with many brackets, so the common small message skips it.
    """
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(payload: bytes, max_bytes: int) -> object:
    """Parse a JSON payload with limits.

    Args:
        payload: The MQTT payload.
        max_bytes: Largest accepted payload [bytes].

    Returns:
        The document: dict, list, str, int, float, bool or None; integer literals longer
        than `MAX_INT_DIGITS` and NaN/Infinity constants are kept as markers that
        `coerce_value` reports as ``huge_number`` / ``non_finite``.

    Raises:
        PayloadRejected: ``oversized``, ``empty``, ``bom``, ``invalid_utf8``, ``too_deep``,
            ``truncated_json`` or ``invalid_json``.

    Source: RFC 8259 §2 (grammar), §8.1 (UTF-8, no BOM), §9 (parsers may limit depth and
        number range).
    """
    size = len(payload)
    if size > max_bytes:
        raise PayloadRejected("oversized", f"{size} bytes > {max_bytes}")
    if size == 0:
        raise PayloadRejected("empty")
    if payload.startswith(_UTF8_BOM):
        raise PayloadRejected("bom", "UTF-8 byte order mark")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected("invalid_utf8", f"byte {exc.start}") from None
    brackets = text.count("[") + text.count("{") if size > 2 * MAX_JSON_DEPTH else 0
    if brackets > MAX_JSON_DEPTH and not _depth_ok(text):
        raise PayloadRejected("too_deep", f"nesting > {MAX_JSON_DEPTH}")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        tail = text[exc.pos :].strip()
        reason = "truncated_json" if not tail or exc.msg.startswith("Unterminated") else ""
        raise PayloadRejected(reason or "invalid_json", f"{exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise PayloadRejected("too_deep", "recursion limit") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadRejected("invalid_json", type(exc).__name__) from None


def compile_pointer(pointer: str) -> tuple[str, ...]:
    """Split an RFC 6901 pointer into unescaped reference tokens (``""`` -> ``()``)."""
    if pointer == "":
        return ()
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


_MISSING = object()


def resolve(document: object, tokens: Sequence[str]) -> object:
    """Evaluate a compiled JSON pointer.

    Args:
        document: A parsed JSON document.
        tokens: From `compile_pointer`.

    Returns:
        The referenced value.

    Raises:
        PayloadRejected: ``missing_field`` when a member or index does not exist (array
            indexes are decimal without leading zeros; ``-`` never exists).

    Source: RFC 6901 §4 (evaluation).
    """
    node = document
    for token in tokens:
        if isinstance(node, dict):
            node = node.get(token, _MISSING)
            if node is _MISSING:
                raise PayloadRejected("missing_field", f"no member {token[:40]!r}")
        elif isinstance(node, list):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                raise PayloadRejected("missing_field", f"bad index {token[:40]!r}")
            index = int(token) if len(token) < 10 else len(node)
            if index >= len(node):
                raise PayloadRejected("missing_field", f"index {token[:40]} out of range")
            node = node[index]
        else:
            raise PayloadRejected("missing_field", f"{token[:40]!r} below a scalar")
    return node


def coerce_value(raw: object, value_type: ValueType, name: str = "") -> Field:
    """Check a JSON value against the point's type.

    Args:
        raw: A value from `parse_json` / `resolve`.
        value_type: The accepted type (strict: no string-to-number coercion).
        name: Point id template the field belongs to (copied into the result).

    Returns:
        A `Field`: Good with the value, or Bad with a per-value reason (``wrong_type``,
        ``huge_number``, ``non_finite``, ``null_value``).
    """
    if raw is None:
        return Field(name, None, Q.BAD, "null_value")
    if isinstance(raw, _Huge):
        if value_type in (ValueType.NUMBER, ValueType.INTEGER, ValueType.ANY):
            return Field(name, None, Q.BAD_OUT_OF_RANGE, "huge_number")
        return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    if isinstance(raw, bool):
        if value_type in (ValueType.BOOL, ValueType.ANY):
            return Field(name, raw, Q.GOOD, None)
        return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    if isinstance(raw, int):
        if value_type in (ValueType.NUMBER, ValueType.INTEGER, ValueType.ANY):
            if -_INT64 <= raw < _INT64:
                return Field(name, raw, Q.GOOD, None)
            return Field(name, None, Q.BAD_OUT_OF_RANGE, "huge_number")
        return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    if isinstance(raw, float):
        if value_type in (ValueType.NUMBER, ValueType.ANY):
            if math.isfinite(raw):
                return Field(name, float(raw), Q.GOOD, None)
            return Field(name, None, Q.BAD, "non_finite")
        return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    if isinstance(raw, str):
        if value_type in (ValueType.STRING, ValueType.ANY):
            return Field(name, raw, Q.GOOD, None)
        return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")  # list or dict


# -- timestamps -----------------------------------------------------------------------------

_EPOCH_DIVISOR = {
    TimestampUnit.S: 1,
    TimestampUnit.MS: 1_000,
    TimestampUnit.US: 1_000_000,
    TimestampUnit.NS: 1_000_000_000,
}
_MIN_TS = datetime(1990, 1, 1, tzinfo=UTC)
_MAX_TS = datetime(2200, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _auto_unit(number: float) -> TimestampUnit:
    size = abs(number)
    if size < 1e11:
        return TimestampUnit.S
    if size < 1e14:
        return TimestampUnit.MS
    if size < 1e17:
        return TimestampUnit.US
    return TimestampUnit.NS


_last_timestamp: tuple[type, object, TimestampUnit, datetime] | None = None
"""The latest numeric timestamp parsed: messages of one burst often share it."""


def parse_timestamp(raw: object, unit: TimestampUnit) -> datetime:
    """Turn a payload timestamp into an aware UTC datetime (microsecond precision).

    Args:
        raw: A number (s/ms/µs/ns since the Unix epoch) or an RFC 3339 string.
        unit: The field's unit; ``auto`` picks RFC 3339 for strings and the unit by magnitude
            for numbers (see `TimestampUnit`).

    Returns:
        The instant, aware UTC, between 1990-01-01 and 2200-01-01.

    Raises:
        PayloadRejected: ``bad_timestamp`` (wrong type, syntax, no UTC offset, out of range).

    Source: RFC 3339 §5.6 (date-time; an offset is mandatory).
    """
    global _last_timestamp  # a one-entry cache of immutable values
    last = _last_timestamp
    kind = type(raw)
    if last is not None and last[0] is kind and last[1] == raw and last[2] is unit:
        return last[3]
    ts = _parse_timestamp(raw, unit)
    if kind is int or kind is float:
        _last_timestamp = (kind, raw, unit, ts)
    return ts


def _parse_timestamp(raw: object, unit: TimestampUnit) -> datetime:
    if isinstance(raw, str) and unit in (TimestampUnit.RFC3339, TimestampUnit.AUTO):
        if len(raw) > 40 or not _RFC3339.match(raw):
            raise PayloadRejected("bad_timestamp", "not RFC 3339 with an offset")
        text = raw.replace("z", "Z").replace("t", "T").replace(" ", "T")
        frac = re.search(r"\.(\d+)", text)
        if frac and len(frac.group(1)) > 6:
            text = text.replace(frac.group(0), "." + frac.group(1)[:6])
        try:
            ts = datetime.fromisoformat(text).astimezone(UTC)
        except (ValueError, OverflowError):
            raise PayloadRejected("bad_timestamp", "invalid date") from None
    elif (
        isinstance(raw, int | float)
        and not isinstance(raw, bool | _NonFinite)
        and unit is not TimestampUnit.RFC3339
    ):
        if not math.isfinite(raw):
            raise PayloadRejected("bad_timestamp", "non-finite")
        chosen = _auto_unit(raw) if unit is TimestampUnit.AUTO else unit
        divisor = _EPOCH_DIVISOR[chosen]
        try:
            if isinstance(raw, int):
                seconds, rest = divmod(raw, divisor)
                micros = rest * 1_000_000 // divisor
                ts = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
            else:
                ts = datetime.fromtimestamp(raw / divisor, UTC)
        except (ValueError, OverflowError, OSError):
            raise PayloadRejected("bad_timestamp", "out of range") from None
    else:
        raise PayloadRejected("bad_timestamp", f"{type(raw).__name__} for unit {unit.value}")
    if not _MIN_TS <= ts < _MAX_TS:
        raise PayloadRejected("bad_timestamp", "before 1990 or after 2200")
    return ts


# -- decoders -------------------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "on"})
_FALSE = frozenset({"false", "0", "off"})


def decode_plain(payload: bytes, value_type: ValueType, max_bytes: int, name: str = "") -> Field:
    """Decode a plain-text payload (``21.5``, ``true``, ``RUNNING``).

    Args:
        payload: The MQTT payload (UTF-8 text; surrounding whitespace ignored).
        value_type: ``number``/``integer`` parse a decimal number, ``bool`` accepts
            true/false/1/0/on/off (any case), ``string`` keeps the text, ``any`` tries number,
            then bool, then string.
        max_bytes: Largest accepted payload [bytes].
        name: Point id template (copied into the result).

    Returns:
        A Good field, or a Bad one with reason ``wrong_type`` / ``non_finite`` /
        ``huge_number``.

    Raises:
        PayloadRejected: ``oversized``, ``empty``, ``invalid_utf8``.
    """
    size = len(payload)
    if size > max_bytes:
        raise PayloadRejected("oversized", f"{size} bytes > {max_bytes}")
    if size == 0:
        raise PayloadRejected("empty")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise PayloadRejected("invalid_utf8", f"byte {exc.start}") from None
    if value_type is ValueType.STRING:
        return Field(name, text, Q.GOOD, None)
    if value_type is ValueType.BOOL:
        low = text.lower()
        if low in _TRUE:
            return Field(name, True, Q.GOOD, None)
        if low in _FALSE:
            return Field(name, False, Q.GOOD, None)
        return Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    number = _plain_number(text, integer=value_type is ValueType.INTEGER)
    if number is not None or value_type is not ValueType.ANY:
        return number or Field(name, None, Q.BAD_TYPE_MISMATCH, "wrong_type")
    low = text.lower()
    if low in ("true", "false"):
        return Field(name, low == "true", Q.GOOD, None)
    return Field(name, text, Q.GOOD, None)


_PLAIN_INT = re.compile(r"^[+-]?\d+$")
_PLAIN_FLOAT = re.compile(
    r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$", re.IGNORECASE
)


def _plain_number(text: str, *, integer: bool) -> Field | None:
    """A number field from text, or None when the text is not a number."""
    if _PLAIN_INT.match(text):
        digits = len(text.lstrip("+-"))
        if digits > MAX_INT_DIGITS:
            return Field("", None, Q.BAD_OUT_OF_RANGE, "huge_number")
        value = int(text)
        if not -_INT64 <= value < _INT64:
            return Field("", None, Q.BAD_OUT_OF_RANGE, "huge_number")
        return Field("", value, Q.GOOD, None)
    if integer or len(text) > 64 or not _PLAIN_FLOAT.match(text):
        return None
    number = float(text)
    if not math.isfinite(number):
        return Field("", None, Q.BAD, "non_finite")
    return Field("", number, Q.GOOD, None)


@dataclass(frozen=True, slots=True)
class JsonLayout:
    """Where the values and the timestamp sit in a JSON payload (a compiled mapping).

    Attributes:
        fields: (point id template, compiled pointer) per value.
        timestamp: Compiled pointer of the source time, or None.
        timestamp_unit: Its unit.
        value_type: Accepted type of every value.
    """

    fields: tuple[tuple[str, tuple[str, ...]], ...]
    timestamp: tuple[str, ...] | None
    timestamp_unit: TimestampUnit
    value_type: ValueType


class JsonResult(NamedTuple):
    """Decoded JSON message.

    Attributes:
        fields: One `Field` per value found (missing ones are in ``missing``).
        source_time: Payload timestamp (aware UTC), or None.
        missing: Names of fields whose pointer did not resolve.
        timestamp_error: None, or ``missing_timestamp`` / ``bad_timestamp``.
    """

    fields: list[Field]
    source_time: datetime | None
    missing: list[str]
    timestamp_error: str | None


def decode_json(payload: bytes, layout: JsonLayout, max_bytes: int) -> JsonResult:
    """Decode a JSON payload into per-point fields and a source time.

    Args:
        payload: The MQTT payload.
        layout: Compiled pointers and types of the mapping.
        max_bytes: Largest accepted payload [bytes].

    Returns:
        A `JsonResult`; per-value problems are inside it, never raised.

    Raises:
        PayloadRejected: The whole payload is unusable (see `parse_json`).
    """
    document = parse_json(payload, max_bytes)
    fields: list[Field] = []
    missing: list[str] = []
    value_type = layout.value_type
    for name, tokens in layout.fields:
        try:
            raw = resolve(document, tokens)
        except PayloadRejected:
            missing.append(name)
            continue
        fields.append(coerce_value(raw, value_type, name))
    source_time: datetime | None = None
    ts_error: str | None = None
    if layout.timestamp is not None:
        try:
            raw_ts = resolve(document, layout.timestamp)
        except PayloadRejected:
            ts_error = "missing_timestamp"
        else:
            try:
                source_time = parse_timestamp(raw_ts, layout.timestamp_unit)
            except PayloadRejected:
                ts_error = "bad_timestamp"
    return JsonResult(fields, source_time, missing, ts_error)
