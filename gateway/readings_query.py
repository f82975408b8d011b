"""Readings history for data teams: glob-selected points, raw or time-bucketed, streamed.

A query selects points by fnmatch-style globs over their keys ``site/asset/point``, a source-time
range ``[start, end)``, optionally a bucket width and an aggregate, and a quality filter. It runs
on the store's read thread (`Store.read`) one page at a time, so a large export never holds the
reader (or memory) for long, and it is encoded page by page as JSON, CSV or Parquet.

Columns (the same in every format, and the same split of value types as the InfluxDB schema of
DESIGN.md §5, so no column ever changes type):

- raw: ``time`` (source time), ``site``, ``asset``, ``point``, ``value`` (numbers, float; ints
  beyond ±2**53 also as exact decimal ``text``), ``state`` (booleans), ``text`` (strings),
  ``unit``, ``quality`` (OPC UA StatusCode), ``quality_name``, ``severity``, ``gateway_time``,
  ``source``;
- bucketed: ``time`` (bucket start, aligned to the Unix epoch), ``site``, ``asset``, ``point``,
  ``unit``, ``value`` (the aggregate, float), ``count`` (readings in the bucket that passed the
  quality filter). Booleans aggregate as 0/1 (``mean`` = fraction of time true); strings have
  no numeric aggregate (``value`` null) but are counted. Buckets without readings are absent.

Quality filter: ``good`` keeps usable readings (Good and Uncertain, bit 31 clear), ``all`` keeps
Bad ones too (their value is null, so numeric aggregates skip them; ``count`` includes them).

Consistency and limits: the query is pinned to the rows that existed when it was prepared (a
rowid snapshot), and `ReadingsReader.prepare` rejects a result of more than ``limit`` rows with
`RowLimitExceededError` before anything is sent.
"""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import io
import json
import math
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from gateway.quality import quality_name, severity

if TYPE_CHECKING:
    # pyarrow (with numpy, ≈ 40 MB resident) is imported on the first Parquet export only.
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

__all__ = [
    "BUCKET_COLUMNS",
    "MAX_LIMIT",
    "PATTERNS_SCHEMA_RE",
    "RAW_COLUMNS",
    "Agg",
    "Format",
    "QualityFilter",
    "ReadableStore",
    "ReadingsQuery",
    "ReadingsReader",
    "RowLimitExceededError",
    "encoder_for",
    "parse_patterns",
    "stream_readings",
]

T = TypeVar("T")

Agg = Literal["mean", "min", "max", "last", "count"]
QualityFilter = Literal["good", "all"]
Format = Literal["json", "csv", "parquet"]

RAW_COLUMNS: tuple[str, ...] = (
    "time",
    "site",
    "asset",
    "point",
    "value",
    "state",
    "text",
    "unit",
    "quality",
    "quality_name",
    "severity",
    "gateway_time",
    "source",
)
"""Columns of raw readings, in output order."""

BUCKET_COLUMNS: tuple[str, ...] = ("time", "site", "asset", "point", "unit", "value", "count")
"""Columns of time-bucketed aggregates, in output order."""

DEFAULT_LIMIT = 100_000
"""Rows a query may return unless the caller asks for another limit [count]."""
MAX_LIMIT = 1_000_000
"""Largest row limit a caller may ask for [count]."""
MAX_PATTERNS = 64
"""Globs in one ``points`` parameter at most [count]."""
PAGE_ROWS = 10_000
"""Rows per page (one store read, one encoded chunk, one Parquet row group) [count]."""
WINDOW_SCAN_ROWS = 200_000
"""Stored rows (all points) scanned per aggregation window at most, bucket-aligned [count]."""

PATTERN_RE = re.compile(r"^[a-z0-9_.\-/*?\[\]!]{1,256}$")
"""One glob: the slug characters of keys, ``/`` and the fnmatch metacharacters ``*?[]!``."""
PATTERNS_SCHEMA_RE = r"^[a-z0-9_.\-/*?\[\]!]{1,256}(,[a-z0-9_.\-/*?\[\]!]{1,256})*$"
"""The ``points`` parameter as documented in OpenAPI (`parse_patterns` also caps the count)."""

_USABLE = 2**31
"""Quality codes below this are Good or Uncertain (bit 31 clear)."""
_EXACT_FLOAT_INT = 2**53
_VT_BOOL = 1
_VT_BIGINT = 2
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_NUM = (
    "CASE WHEN vt = 2 THEN CAST(value AS REAL) "
    "WHEN typeof(value) IN ('integer', 'real') THEN value END"
)
"""SQL: the numeric value of a stored reading (bools are 0/1), NULL for strings and Bad."""

_AGG_SQL: dict[str, str] = {
    "mean": f"avg({_NUM})",
    "min": f"min({_NUM})",
    "max": f"max({_NUM})",
    "count": "count(*)",
    # A single max() makes SQLite take bare columns from the row holding the maximum.
    "last": f"max(ts_ns), {_NUM}",
}


class ReadableStore(Protocol):
    """What a query needs from the store: run a function on its read-only connection."""

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the store's reader thread and return its result."""
        ...


class RowLimitExceededError(Exception):
    """The result would have more rows than the query's limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the result has more than {limit:,} rows (the row limit): narrow `start`/`end` or "
            f"`points`, aggregate with `every` and `agg`, or raise `limit` (at most {MAX_LIMIT:,})"
        )


def parse_patterns(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of globs and validate each.

    Args:
        text: E.g. ``north/*/supply_temp,south/meter-*/*``.

    Returns:
        The globs, duplicates removed, order kept.

    Raises:
        ValueError: Empty, too many, or a glob with characters keys never contain.
    """
    parts = text.split(",")
    if not text or len(parts) > MAX_PATTERNS:
        msg = f"give 1 to {MAX_PATTERNS} comma-separated globs"
        raise ValueError(msg)
    for p in parts:
        if not PATTERN_RE.match(p):
            msg = (
                f"invalid glob {p[:40]!r}: use lower-case key characters `a-z0-9_.-`, `/` and "
                "the wildcards `* ? [seq] [!seq]` (at most 256 characters)"
            )
            raise ValueError(msg)
    return tuple(dict.fromkeys(parts))


def _ns(ts: datetime) -> int:
    """Aware datetime → integer ns since the epoch (exact to the µs), clamped to int64."""
    delta = ts - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return max(_INT64_MIN, min(_INT64_MAX, ns))


def rfc3339_ns(ns: int) -> str:
    """Integer ns since the epoch → RFC 3339 UTC with microseconds (truncated), ending in Z."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ReadingsQuery:
    """What to read.

    Attributes:
        patterns: fnmatch globs over point keys ``site/asset/point`` (any may match).
        start: Inclusive lower bound of source time (aware).
        end: Exclusive upper bound of source time (aware), after `start`.
        every: Bucket width [s], or None for raw readings.
        agg: Aggregate per bucket (ignored for raw readings).
        quality: ``good`` (Good and Uncertain) or ``all``.
        limit: Rows the result may have at most [count, 1..MAX_LIMIT].
    """

    patterns: tuple[str, ...]
    start: datetime
    end: datetime
    every: float | None = None
    agg: Agg = "mean"
    quality: QualityFilter = "good"
    limit: int = DEFAULT_LIMIT

    @property
    def bucketed(self) -> bool:
        """True for time-bucketed aggregates, False for raw readings."""
        return self.every is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """Output columns."""
        return BUCKET_COLUMNS if self.bucketed else RAW_COLUMNS


@dataclass(frozen=True, slots=True)
class _Point:
    site: str
    asset: str
    point: str
    unit: str | None
    source: str


Row = tuple[Any, ...]
"""Raw: (ts_ns, site, asset, point, value, state, text, unit, quality, gw_ns, source).
Bucketed: (bucket_ns, site, asset, point, unit, value, count)."""


def _split_value(value: Any, vt: int | None) -> tuple[float | int | None, bool | None, str | None]:  # noqa: ANN401 - SQLite value
    """Stored (value, vt) → the (value, state, text) columns."""
    if value is None:
        return None, None, None
    if vt == _VT_BOOL:
        return None, bool(value), None
    if vt == _VT_BIGINT:
        big = int(str(value))
        return float(big), None, str(big)
    if isinstance(value, int):
        if -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT:
            return value, None, None
        return float(value), None, str(value)
    if isinstance(value, float):
        return (value if math.isfinite(value) else None), None, None
    return None, None, str(value)


def _finite(value: Any) -> float | None:  # noqa: ANN401 - SQLite value
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


class ReadingsReader:
    """Runs one `ReadingsQuery` against a store: `prepare` (row-limit check), then `pages`.

    Args:
        store: The store (its read thread runs every query).
        query: What to read.
    """

    def __init__(self, store: ReadableStore, query: ReadingsQuery) -> None:
        self._store = store
        self.query = query
        self._lo = _ns(query.start)
        self._hi = _ns(query.end)
        self._every = None if query.every is None else max(1, round(query.every * 1e9))
        self._points: dict[int, _Point] = {}
        self._filter: str | None = None  # JSON array of point ids, None = every point
        self._snapshot = 0
        self._first: list[Row] = []
        self._first_done = False
        self._prepared = False

    # -- SQL pieces ------------------------------------------------------------------------

    def _where(self) -> tuple[str, list[Any]]:
        """Conditions shared by every statement, after the time range."""
        sql = " AND rowid <= ?"
        args: list[Any] = [self._snapshot]
        if self._filter is not None:
            sql += " AND point_id IN (SELECT value FROM json_each(?))"
            args.append(self._filter)
        if self.query.quality == "good":
            sql += f" AND quality < {_USABLE}"
        return sql, args

    def _bucket_sql(self) -> str:
        e = self._every
        return f"ts_ns - (((ts_ns % {e}) + {e}) % {e})"

    # -- prepare ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Resolve the globs, pin the snapshot, read the first page and check the row limit.

        Raises:
            RowLimitExceededError: More than ``limit`` rows would be returned.
        """
        await self._store.read(self._resolve)
        if self._snapshot == 0 or not self._points or self._lo >= self._hi:
            self._first_done = True
        elif self.query.bucketed:
            if await self._store.read(self._bucket_count_exceeds):
                raise RowLimitExceededError(self.query.limit)
        else:
            size = min(PAGE_ROWS, self.query.limit + 1)
            rows, done = await self._store.read(
                partial(self._raw_page, after_ts=self._lo, after_rowid=-1, size=size)
            )
            if len(rows) > self.query.limit:
                raise RowLimitExceededError(self.query.limit)
            if not done and await self._store.read(self._raw_count_exceeds):
                raise RowLimitExceededError(self.query.limit)
            self._first, self._first_done = rows, done
        self._prepared = True

    def _resolve(self, conn: sqlite3.Connection) -> None:
        """Point ids matching the globs; the rowid snapshot."""
        pats = self.query.patterns
        matched: dict[int, _Point] = {}
        total = 0
        for pid, key, site, asset, point, unit, source in conn.execute(
            "SELECT id, key, site, asset, point, unit, source FROM points"
        ):
            total += 1
            if any(fnmatch.fnmatchcase(key, p) for p in pats):
                matched[int(pid)] = _Point(site, asset, point, unit, source or "")
        self._points = matched
        self._filter = None if len(matched) == total else json.dumps(sorted(matched))
        row = conn.execute("SELECT max(rowid) FROM readings").fetchone()
        self._snapshot = int(row[0]) if row and row[0] is not None else 0

    def _raw_count_exceeds(self, conn: sqlite3.Connection) -> bool:
        where, args = self._where()
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM readings "  # noqa: S608 - constant SQL pieces
            f"WHERE ts_ns >= ? AND ts_ns < ?{where} LIMIT ?)",
            (self._lo, self._hi, *args, self.query.limit + 1),
        ).fetchone()
        return int(row[0]) > self.query.limit

    def _bucket_count_exceeds(self, conn: sqlite3.Connection) -> bool:
        """True when more than ``limit`` (point, bucket) groups have readings."""
        assert self._every is not None  # noqa: S101 - bucketed only
        where, args = self._where()
        lo_hi = conn.execute(
            f"SELECT min(ts_ns), max(ts_ns) FROM readings WHERE ts_ns >= ? AND ts_ns < ?{where}",  # noqa: S608
            (self._lo, self._hi, *args),
        ).fetchone()
        if lo_hi is None or lo_hi[0] is None:
            return False
        first, last = int(lo_hi[0]), int(lo_hi[1])
        buckets = (last - (first - first % self._every)) // self._every + 1
        if buckets * len(self._points) <= self.query.limit:
            return False  # the upper bound already fits
        row = conn.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT point_id, {self._bucket_sql()} "  # noqa: S608
            f"FROM readings WHERE ts_ns >= ? AND ts_ns < ?{where} LIMIT ?)",
            (self._lo, self._hi, *args, self.query.limit + 1),
        ).fetchone()
        return int(row[0]) > self.query.limit

    # -- pages -----------------------------------------------------------------------------

    def _raw_page(
        self, conn: sqlite3.Connection, after_ts: int, after_rowid: int, size: int
    ) -> tuple[list[Row], bool]:
        """Up to `size` raw rows after the keyset cursor (ts_ns, rowid); (rows, last page?)."""
        where, args = self._where()
        cur = conn.execute(
            "SELECT rowid, ts_ns, point_id, value, vt, quality, gw_ns FROM readings "  # noqa: S608
            f"WHERE ts_ns >= ? AND ts_ns < ? AND (ts_ns > ? OR rowid > ?){where} "
            "ORDER BY ts_ns, rowid LIMIT ?",
            (after_ts, self._hi, after_ts, after_rowid, *args, size),
        )
        points = self._points
        rows: list[Row] = []
        for rowid, ts, pid, value, vt, quality, gw in cur:
            p = points[pid]
            v, state, text = _split_value(value, vt)
            rows.append(
                (ts, p.site, p.asset, p.point, v, state, text, p.unit, quality, gw, p.source, rowid)
            )
        return rows, len(rows) < size

    def _bucket_window(self, conn: sqlite3.Connection, lo: int) -> tuple[list[Row], int]:
        """Aggregate one bucket-aligned window starting at `lo`; (rows, next lo)."""
        assert self._every is not None  # noqa: S101 - bucketed only
        e = self._every
        row = conn.execute(
            "SELECT ts_ns FROM readings WHERE ts_ns >= ? AND ts_ns < ? AND rowid <= ? "
            "ORDER BY ts_ns LIMIT 1 OFFSET ?",
            (lo, self._hi, self._snapshot, WINDOW_SCAN_ROWS),
        ).fetchone()
        hi = self._hi if row is None else min(self._hi, int(row[0]) - int(row[0]) % e + e)
        where, args = self._where()
        agg = self.query.agg
        cur = conn.execute(
            f"SELECT point_id, {self._bucket_sql()} AS b, count(*), {_AGG_SQL[agg]} "  # noqa: S608
            f"FROM readings WHERE ts_ns >= ? AND ts_ns < ?{where} GROUP BY point_id, b",
            (lo, hi, *args),
        )
        points = self._points
        rows: list[Row] = []
        for rec in cur:
            pid, bucket, count = rec[0], rec[1], rec[2]
            p = points[pid]
            value: float | None = float(count) if agg == "count" else _finite(rec[-1])
            rows.append((int(bucket), p.site, p.asset, p.point, p.unit, value, int(count)))
        rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        return rows, hi

    async def pages(self) -> AsyncIterator[list[Row]]:
        """Yield the result page by page (ordered by time, then point key for buckets).

        Raises:
            RuntimeError: `prepare` was not awaited first.
        """
        if not self._prepared:
            msg = "prepare() first"
            raise RuntimeError(msg)
        if self.query.bucketed:
            if self._first_done:
                return
            lo = self._lo
            while lo < self._hi:
                rows, lo = await self._store.read(partial(self._bucket_window, lo=lo))
                for i in range(0, len(rows), PAGE_ROWS):
                    yield rows[i : i + PAGE_ROWS]
            return
        rows, done = self._first, self._first_done
        self._first = []
        while True:
            if rows:
                yield [r[:-1] for r in rows]  # drop the rowid cursor column
            if done or not rows:
                return
            ts, rowid = rows[-1][0], rows[-1][-1]
            rows, done = await self._store.read(
                partial(self._raw_page, after_ts=ts, after_rowid=rowid, size=PAGE_ROWS)
            )


# -- encoders -------------------------------------------------------------------------------


class Encoder:
    """Turns pages of rows into bytes of one format; `begin`, `page`..., `end` in order."""

    media_type = "application/octet-stream"
    extension = "bin"

    def __init__(self, bucketed: bool) -> None:
        self.bucketed = bucketed
        self.columns = BUCKET_COLUMNS if bucketed else RAW_COLUMNS

    def begin(self) -> bytes:
        """Bytes before the first page."""
        return b""

    def page(self, rows: Sequence[Row]) -> bytes:
        """Bytes of one page."""
        raise NotImplementedError

    def end(self) -> bytes:
        """Bytes after the last page."""
        return b""


def _raw_record(r: Row) -> list[Any]:
    """A raw row as output values in `RAW_COLUMNS` order (times as RFC 3339 strings)."""
    q = r[8]
    return [
        rfc3339_ns(r[0]),
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        q,
        quality_name(q),
        severity(q).value,
        rfc3339_ns(r[9]),
        r[10],
    ]


def _bucket_record(r: Row) -> list[Any]:
    return [rfc3339_ns(r[0]), *r[1:]]


class JsonEncoder(Encoder):
    """A JSON array of objects (strict JSON: no NaN)."""

    media_type = "application/json"
    extension = "json"

    def __init__(self, bucketed: bool) -> None:
        super().__init__(bucketed)
        self._first = True
        self._dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode

    def begin(self) -> bytes:
        """Open the array."""
        return b"["

    def page(self, rows: Sequence[Row]) -> bytes:
        """Objects of one page, comma-separated."""
        record = _bucket_record if self.bucketed else _raw_record
        cols = self.columns
        text = ",".join(self._dumps(dict(zip(cols, record(r), strict=True))) for r in rows)
        if not text:
            return b""
        if not self._first:
            text = "," + text
        self._first = False
        return text.encode()

    def end(self) -> bytes:
        """Close the array."""
        return b"]\n"


class CsvEncoder(Encoder):
    """RFC 4180 CSV with a header row; null is empty, booleans are ``true``/``false``."""

    media_type = "text/csv; charset=utf-8"
    extension = "csv"

    def _lines(self, records: Sequence[Sequence[Any]]) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        for rec in records:
            w.writerow(
                [
                    ("true" if v else "false")
                    if isinstance(v, bool)
                    else (repr(v) if isinstance(v, float) else v)
                    for v in rec
                ]
            )
        return buf.getvalue().encode()

    def begin(self) -> bytes:
        """The header row."""
        return self._lines([self.columns])

    def page(self, rows: Sequence[Row]) -> bytes:
        """One CSV line per row."""
        record = _bucket_record if self.bucketed else _raw_record
        return self._lines([record(r) for r in rows])


@cache
def _schemas() -> tuple[pa.Schema, pa.Schema]:
    """The Arrow/Parquet schemas (raw, bucketed); imports pyarrow on the first call."""
    import pyarrow as pa  # lazy: only Parquet needs pyarrow

    ts = pa.timestamp("ns", tz="UTC")
    raw = pa.schema(
        [
            pa.field("time", ts, nullable=False),
            pa.field("site", pa.string(), nullable=False),
            pa.field("asset", pa.string(), nullable=False),
            pa.field("point", pa.string(), nullable=False),
            pa.field("value", pa.float64()),
            pa.field("state", pa.bool_()),
            pa.field("text", pa.string()),
            pa.field("unit", pa.string()),
            pa.field("quality", pa.uint32(), nullable=False),
            pa.field("quality_name", pa.string(), nullable=False),
            pa.field("severity", pa.string(), nullable=False),
            pa.field("gateway_time", ts, nullable=False),
            pa.field("source", pa.string(), nullable=False),
        ]
    )
    bucket = pa.schema(
        [
            pa.field("time", ts, nullable=False),
            pa.field("site", pa.string(), nullable=False),
            pa.field("asset", pa.string(), nullable=False),
            pa.field("point", pa.string(), nullable=False),
            pa.field("unit", pa.string()),
            pa.field("value", pa.float64()),
            pa.field("count", pa.int64(), nullable=False),
        ]
    )
    return raw, bucket


def __getattr__(name: str) -> Any:  # noqa: ANN401 - module attribute hook
    """``RAW_SCHEMA`` (raw readings) and ``BUCKET_SCHEMA`` (bucketed aggregates), built lazily.

    They are the Arrow/Parquet schemas of the export; building them imports pyarrow, so the
    module itself can be imported without it.
    """
    if name == "RAW_SCHEMA":
        return _schemas()[0]
    if name == "BUCKET_SCHEMA":
        return _schemas()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Sink(io.RawIOBase):
    """A write-only file that hands out what was written since the last `take`."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # noqa: ANN401 - buffer protocol
        b = bytes(data)
        self._chunks.append(b)
        return len(b)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class ParquetEncoder(Encoder):
    """Apache Parquet (zstd), one row group per page; the footer comes with `end`."""

    media_type = "application/vnd.apache.parquet"
    extension = "parquet"

    def __init__(self, bucketed: bool) -> None:
        super().__init__(bucketed)
        self._sink = _Sink()
        self._writer: pq.ParquetWriter | None = None

    @property
    def schema(self) -> pa.Schema:
        """`BUCKET_SCHEMA` or `RAW_SCHEMA` (the first access imports pyarrow)."""
        raw, bucket = _schemas()
        return bucket if self.bucketed else raw

    def _ensure(self) -> pq.ParquetWriter:
        if self._writer is None:
            import pyarrow.parquet as pq  # lazy, see `_schemas`

            self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        return self._writer

    def page(self, rows: Sequence[Row]) -> bytes:
        """Write one row group; return the bytes the writer produced so far."""
        if not rows:
            return b""
        import pyarrow as pa  # lazy, see `_schemas`

        cols = list(zip(*rows, strict=True))
        if self.bucketed:
            arrays = [pa.array(c, type=f.type) for c, f in zip(cols, self.schema, strict=True)]
        else:
            q = cols[8]
            names = [quality_name(c) for c in q]
            sev = [severity(c).value for c in q]
            data = [*cols[:9], names, sev, cols[9], cols[10]]
            arrays = [pa.array(c, type=f.type) for c, f in zip(data, self.schema, strict=True)]
        self._ensure().write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        return self._sink.take()

    def end(self) -> bytes:
        """Close the file (an empty result is a valid file with the schema and no rows)."""
        self._ensure().close()
        return self._sink.take()


_ENCODERS: dict[str, type[Encoder]] = {
    "json": JsonEncoder,
    "csv": CsvEncoder,
    "parquet": ParquetEncoder,
}


def encoder_for(fmt: Format, bucketed: bool) -> Encoder:
    """A fresh encoder for one response."""
    return _ENCODERS[fmt](bucketed)


async def stream_readings(reader: ReadingsReader, encoder: Encoder) -> AsyncIterator[bytes]:
    """Encoded bytes of a prepared reader's result; encoding runs in a worker thread.

    Args:
        reader: A reader whose `prepare` succeeded.
        encoder: A fresh encoder matching the reader's query.

    Yields:
        Non-empty chunks of the response body.
    """
    head = encoder.begin()
    if head:
        yield head
    async for rows in reader.pages():
        chunk = await asyncio.to_thread(encoder.page, rows)
        if chunk:
            yield chunk
    tail = await asyncio.to_thread(encoder.end)
    if tail:
        yield tail
