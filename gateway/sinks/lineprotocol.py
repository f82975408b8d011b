r"""InfluxDB line protocol for readings: escaping and typed fields (DESIGN §5, RELIABILITY B3, B7).

One reading is one line::

    reading,site=<site>,asset=<asset>,point=<point> <fields> <source time, ns since epoch>

Fields by value type, so that no field ever changes type (a type change is a 422 in InfluxDB):

=========================  ===============================================================
value                      fields
=========================  ===============================================================
float (finite)             ``value=<float>``
int                        ``value=<float>`` (ints are written as floats: a point that is
                           int16 today and float32 after a config change keeps one field
                           type); when the int is not exactly representable as a float
                           (``|v| > 2**53``) the exact decimal also goes to ``text="<digits>"``
bool                       ``state=true|false``
str                        ``text="<escaped>"``
None (Bad) / NaN / ±Inf    no value field
every reading              ``quality=<uint32>i`` (OPC UA StatusCode)
=========================  ===============================================================

NaN and ±Inf are never written (InfluxDB rejects them); such a reading keeps only ``quality``.

Escaping (B7): tag values escape backslash, comma, equals sign and space with a backslash;
string field values escape backslash and double quote. Line protocol cannot carry a newline in
a tag or field value, so ``\\n`` and ``\\r`` are written as the two characters backslash-``n`` /
backslash-``r`` (read back as those two characters): a value never injects another line. An
empty tag value cannot be written (InfluxDB drops or rejects it): `LineProtocolError`.

The timestamp is the reading's source time in integer nanoseconds; it is never re-stamped, so
a replay writes identical points that overwrite instead of duplicating (M3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.clock import to_epoch_ns
from gateway.model import Reading, Value

__all__ = [
    "MEASUREMENT",
    "LineProtocolError",
    "encode_fields",
    "encode_rows",
    "escape_string",
    "escape_tag",
    "join_lines",
    "reading_line",
    "tag_prefix",
]

MEASUREMENT = "reading"
"""The measurement every reading is written to."""

VT_BOOL = 1
"""Store value tag: bool stored as 0/1 (see `gateway.store`)."""
VT_BIGINT = 2
"""Store value tag: int outside int64 stored as decimal text (see `gateway.store`)."""

_EXACT_FLOAT_INT = 2**53
_TAG_ESCAPES = str.maketrans(
    {"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\\\n", "\r": "\\\\r"}
)
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\\\n", "\r": "\\\\r"})

OutboxRow = tuple[int, int, int, Any, int | None, int]
"""A store outbox row: (id, source time [ns], point id, value, value type tag, quality)."""


class LineProtocolError(ValueError):
    """A reading cannot be represented in line protocol (e.g. an empty tag value)."""


def escape_tag(text: str) -> str:
    """Escape a tag value (or tag key) for line protocol.

    Args:
        text: Any non-empty string (non-ASCII is kept as UTF-8).

    Returns:
        The escaped text: backslash, comma, equals sign and space prefixed by a backslash;
        newline / carriage return written as backslash-n / backslash-r.

    Raises:
        LineProtocolError: `text` is empty.
    """
    if not text:
        msg = "empty tag value cannot be written in line protocol"
        raise LineProtocolError(msg)
    return text.translate(_TAG_ESCAPES)


def escape_string(text: str) -> str:
    """Escape a string field value (without the surrounding double quotes).

    Args:
        text: Any string.

    Returns:
        Backslash and double quote prefixed by a backslash; newline / carriage return written
        as backslash-n / backslash-r.
    """
    return text.translate(_STRING_ESCAPES)


def tag_prefix(site: str, asset: str, point: str) -> str:
    """The start of every line of one point: measurement and tag set, with a trailing space.

    Args:
        site: Site id.
        asset: Asset id.
        point: Point id.

    Returns:
        ``reading,site=<s>,asset=<a>,point=<p> `` (escaped).

    Raises:
        LineProtocolError: An id is empty.
    """
    tags = f"site={escape_tag(site)},asset={escape_tag(asset)},point={escape_tag(point)}"
    return f"{MEASUREMENT},{tags} "


def encode_fields(value: Any, vt: int | None, quality: int) -> str:  # noqa: ANN401 - store value
    """The field set of one reading, typed per value (see the module docstring).

    Args:
        value: The stored value: float, int, str, None, or 0/1 with ``vt`` = bool, or decimal
            text with ``vt`` = big int.
        vt: The store's value type tag (None, `VT_BOOL`, `VT_BIGINT`).
        quality: OPC UA StatusCode [uint32].

    Returns:
        E.g. ``value=21.5,quality=0i``; at least the quality field.
    """
    q = f"quality={int(quality)}i"
    if vt is not None:
        if vt == VT_BOOL:
            return f"state={'true' if value else 'false'},{q}"
        if vt == VT_BIGINT:
            exact = int(str(value))
            return f'value={float(exact)!r},text="{exact}",{q}'
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return f"value={value!r},{q}"
        return q
    if kind is int:
        if -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT:
            return f"value={float(value)!r},{q}"
        return f'value={float(value)!r},text="{value}",{q}'
    if kind is str:
        return f'text="{value.translate(_STRING_ESCAPES)}",{q}'
    if value is None:
        return q
    if isinstance(value, bool):
        return f"state={'true' if value else 'false'},{q}"
    if isinstance(value, int):
        return encode_fields(int(value), None, quality)
    if isinstance(value, float):
        return encode_fields(float(value), None, quality)
    if isinstance(value, str):
        return encode_fields(str(value), None, quality)
    msg = f"unsupported value type {kind.__name__}"
    raise LineProtocolError(msg)


def encode_rows(rows: Iterable[OutboxRow], prefixes: Mapping[int, str]) -> list[str]:
    """Line protocol for store outbox rows, one line per row, in row order (the hot path).

    Args:
        rows: ``(id, ts_ns, point_id, value, vt, quality)`` tuples as the store returns them.
        prefixes: Point id -> `tag_prefix` of that point; every row's point id must be present.

    Returns:
        One line per row, without trailing newlines.

    Raises:
        KeyError: A point id has no prefix.
    """
    out: list[str] = []
    append = out.append
    isfinite = math.isfinite
    lim = _EXACT_FLOAT_INT
    for _id, ts, pid, value, vt, quality in rows:
        if vt is None:
            kind = type(value)
            if kind is float:
                if isfinite(value):
                    append(f"{prefixes[pid]}value={value!r},quality={quality}i {ts}")
                    continue
            elif kind is int and -lim <= value <= lim:
                append(f"{prefixes[pid]}value={float(value)!r},quality={quality}i {ts}")
                continue
        append(f"{prefixes[pid]}{encode_fields(value, vt, quality)} {ts}")
    return out


def reading_line(reading: Reading) -> str:
    """Line protocol of one `Reading` (tests, tools; the forwarder encodes store rows).

    Raises:
        LineProtocolError: An id is empty.
    """
    value: Value = reading.value
    vt = VT_BOOL if isinstance(value, bool) else None
    fields = encode_fields(int(value) if isinstance(value, bool) else value, vt, reading.quality)
    prefix = tag_prefix(reading.site, reading.asset, reading.point)
    return f"{prefix}{fields} {to_epoch_ns(reading.source_time)}"


def join_lines(lines: Sequence[str]) -> bytes:
    """The request body for `lines`: newline-separated UTF-8."""
    return "\n".join(lines).encode("utf-8")
