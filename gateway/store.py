"""The local store: SQLite in WAL mode, all I/O off the event loop (DESIGN.md §3, §8).

What it keeps:
- ``readings``: the history, one small row per reading (the point key lives in ``points``);
- ``latest``: the newest reading per point, for the inventory's restore after a restart;
- ``gaps``: data gaps, upserted by id (M7: gaps survive restarts);
- ``meta``: small key/value state (``last_alive`` heartbeat, ``monitored_since``);
- ``sink_cursors``: per sink, how far the outbox was acknowledged (store and forward);
- ``dead_letters``: readings a sink refused (400/422/413 for one line), with the server's reason.

Outbox (store and forward, DESIGN.md §3): the ``readings`` history *is* the outbox. Row ids come
from ``AUTOINCREMENT`` (strictly increasing, never reused even after the newest rows were
purged), so a sink's position is one integer: ``acked`` = every row with ``id <= acked`` was
acknowledged with a 2xx. While a backlog drains, the forwarder also sends the newest rows; those
form one acknowledged *live segment* ``(live_lo, live_hi]`` above ``acked`` that merges into
``acked`` when the drain reaches it. A batch handed out by `Store.outbox_take` is *in flight*
until `Store.outbox_ack` / `Store.outbox_release`; purges never delete in-flight rows, so every
deleted row is either acknowledged or counted as dropped, exactly (R8: generated = stored +
dropped + in flight).

Bounds and drop-oldest (M4, R8): the store is bounded by age (``retention_hours``), size
(``max_bytes``) and optionally by the unsent readings of any sink (``max_unsent``). Purges
delete oldest first; every deleted row that a configured sink had not acknowledged is counted
(per sink and in `Store.dropped_total`) and reported per point with its exact source-time
bounds in `PurgeReport.dropped` so that the runtime records ``buffer_overflow`` gaps.

Durability (M1): the database runs with ``journal_mode=WAL`` and ``synchronous=FULL``; `append`
returns only after its transaction has committed, so "accepted" means committed and fsynced.
Concurrent `append` calls are group-committed: the writer thread takes every append queued
behind the one it is about to run into the same transaction (still all-or-nothing, and no
caller returns before the commit that holds its rows). A readings commit starts at least
`_COMMIT_SPACING_S` (5 ms) after the previous one ended; appends arriving meanwhile join it.
An isolated append after a quiet period is committed at once.

Threads: one writer thread owns the only writing connection and runs every write in FIFO order;
one reader thread with its own read-only connection answers queries (WAL readers never block the
writer). The event loop only awaits futures.

Integrity (R9): at open, ``PRAGMA quick_check`` runs on an existing file; a file that fails it,
or is not a database at all, is renamed to ``<name>.corrupt-<UTC ts>`` (its ``-wal``/``-shm``
alongside), a fresh store is created, and the event is appended to `Store.alarms`. A torn WAL
tail left by a crash is discarded by SQLite itself (frames with bad checksums are ignored).

Schema (``PRAGMA user_version = 2``; a version-1 file is migrated at open)::

    points(id INTEGER PRIMARY KEY, key TEXT UNIQUE, site, asset, point, unit, source)
    readings(id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER, point_id INTEGER, value ANY,
             vt INTEGER, quality INTEGER, gw_ns INTEGER)
        INDEX readings_ts ON readings(ts_ns)              -- the only index on the hot table
    latest(point_id INTEGER PRIMARY KEY, ts_ns, value, vt, quality, gw_ns)
    gaps(id TEXT PRIMARY KEY, site, asset, point, cause, start_ns, end_ns, last_good_ns,
         first_bad_ns, expected_interval)                 INDEX gaps_end ON gaps(end_ns)
    meta(key TEXT PRIMARY KEY, value TEXT)
    sink_cursors(sink TEXT PRIMARY KEY, acked, live_lo, live_hi, dropped)
    dead_letters(id INTEGER PRIMARY KEY, sink, at_ns, reading_id, ts_ns, point_id, status,
                 reason, line)

``ts_ns``/``gw_ns`` are source/gateway times in integer ns since the epoch. ``value`` holds
float, int, str or NULL natively; ``vt`` is NULL except 1 = bool (stored 0/1) and 2 = an int
outside int64 (stored as decimal text), so every type round-trips. One index, on ``ts_ns``:
measured here, a (point_id, ts_ns) index cuts insert throughput 2-5x (inserts land in the
middle of the b-tree, one hot page per point) against ≈5 % for the append-only ts index; the ts
index serves retention, size purge and `count_usable`, and `query_readings` for one point walks
the ts range (cost ∝ rows of all points in the range, bounded by ``limit`` matches).

Size bound: ``auto_vacuum=INCREMENTAL`` so purged pages are returned to the file system; the
size compared with ``max_bytes`` is the used pages (page_count - freelist_count) × page_size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.clock import from_epoch_ns, to_epoch_ns, utc_now
from gateway.model import Reading, Value
from inventory.views import Gap, GapCause

__all__ = [
    "DeadLetter",
    "DroppedRange",
    "OutboxBatch",
    "PurgeReport",
    "SinkCursor",
    "Store",
    "StoreClosedError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_VT_BOOL = 1
_VT_BIGINT = 2
_MAX_GROUP_ROWS = 50_000
"""Readings group-committed in one transaction at most [count]."""
_COMMIT_SPACING_S = 0.005
"""Least time between the end of one readings commit and the start of the next [s]: at most
≈ 200 commits/s, so a stream of small batches (an MQTT burst every few ms) shares commits
instead of paying a transaction and an fsync each (measured: bench/mqtt_ingest.py)."""
_PURGE_CHUNK = 50_000
"""Rows deleted per purge transaction; appends queued meanwhile run between chunks [count]."""
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
_SIZE_TARGET = 0.9
"""A size purge deletes down to this fraction of ``max_bytes`` (hysteresis)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS points(
        id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, site TEXT NOT NULL,
        asset TEXT NOT NULL, point TEXT NOT NULL, unit TEXT, source TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS readings(
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, point_id INTEGER NOT NULL,
        value, vt INTEGER, quality INTEGER NOT NULL, gw_ns INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS readings_ts ON readings(ts_ns)",
    """CREATE TABLE IF NOT EXISTS latest(
        point_id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, value, vt INTEGER,
        quality INTEGER NOT NULL, gw_ns INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS gaps(
        id TEXT PRIMARY KEY, site TEXT NOT NULL, asset TEXT NOT NULL, point TEXT NOT NULL,
        cause TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER, last_good_ns INTEGER,
        first_bad_ns INTEGER, expected_interval REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS gaps_end ON gaps(end_ns)",
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS sink_cursors(
        sink TEXT PRIMARY KEY, acked INTEGER NOT NULL DEFAULT 0,
        live_lo INTEGER NOT NULL DEFAULT 0, live_hi INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS dead_letters(
        id INTEGER PRIMARY KEY, sink TEXT NOT NULL, at_ns INTEGER NOT NULL,
        reading_id INTEGER NOT NULL, ts_ns INTEGER NOT NULL, point_id INTEGER NOT NULL,
        status INTEGER, reason TEXT NOT NULL, line TEXT NOT NULL)""",
)
_MIGRATE_V1 = (
    "ALTER TABLE readings RENAME TO readings_v1",
    """CREATE TABLE readings(
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, point_id INTEGER NOT NULL,
        value, vt INTEGER, quality INTEGER NOT NULL, gw_ns INTEGER NOT NULL)""",
    """INSERT INTO readings(ts_ns, point_id, value, vt, quality, gw_ns)
        SELECT ts_ns, point_id, value, vt, quality, gw_ns FROM readings_v1 ORDER BY rowid""",
    "DROP TABLE readings_v1",
)
_OUTBOX_COLUMNS = "id, ts_ns, point_id, value, vt, quality"
_MAX_REASON = 1000
"""Characters of a dead letter's reason kept [count]."""

_INSERT_READING = (
    "INSERT INTO readings(ts_ns, point_id, value, vt, quality, gw_ns) VALUES (?,?,?,?,?,?)"
)
_UPSERT_LATEST = """INSERT INTO latest(ts_ns, point_id, value, vt, quality, gw_ns)
    VALUES (?,?,?,?,?,?)
    ON CONFLICT(point_id) DO UPDATE SET ts_ns = excluded.ts_ns, value = excluded.value,
        vt = excluded.vt, quality = excluded.quality, gw_ns = excluded.gw_ns
    WHERE excluded.ts_ns >= latest.ts_ns"""
_UPSERT_GAP = """INSERT INTO gaps(id, site, asset, point, cause, start_ns, end_ns, last_good_ns,
        first_bad_ns, expected_interval) VALUES (?,?,?,?,?,?,?,?,?,?)
    ON CONFLICT(id) DO UPDATE SET site = excluded.site, asset = excluded.asset,
        point = excluded.point, cause = excluded.cause, start_ns = excluded.start_ns,
        end_ns = excluded.end_ns, last_good_ns = excluded.last_good_ns,
        first_bad_ns = excluded.first_bad_ns, expected_interval = excluded.expected_interval"""
_GAP_COLUMNS = (
    "id, site, asset, point, cause, start_ns, end_ns, last_good_ns, first_bad_ns, "
    "expected_interval"
)

_Row = tuple[int, int, Any, int | None, int, int]
OutboxRow = tuple[int, int, int, Any, int | None, int]
"""(id, source time [ns], point id, value, value type tag, quality): one outbox row."""


class StoreClosedError(RuntimeError):
    """The store was used after `Store.close`."""


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Readings of one point deleted before every configured sink had acknowledged them.

    Attributes:
        site, asset, point: The point.
        count: Readings dropped [count].
        first: Source time of the oldest dropped reading (aware UTC).
        last: Source time of the newest dropped reading (aware UTC).
        continues: True when no sink acknowledged anything since the previous drop of the
            dropping sinks: the range continues the previous one of this point (drops are
            oldest first), so the two can be recorded as one gap.
    """

    site: str
    asset: str
    point: str
    count: int
    first: datetime
    last: datetime
    continues: bool = False

    @property
    def key(self) -> str:
        """The point key ``site/asset/point``."""
        return f"{self.site}/{self.asset}/{self.point}"


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What the latest `Store.purge` deleted.

    Attributes:
        by_age: History rows older than the retention [count].
        by_size: History rows dropped (oldest first) to get under ``max_bytes`` [count].
        size_cutoff: Rows with source time at or before this were dropped by size (aware UTC),
            or None.
        by_unsent_cap: Rows dropped (oldest unsent first) because a sink's backlog exceeded
            ``max_unsent`` [count].
        dropped: Deleted rows that at least one configured sink had not acknowledged [count].
        dropped_by_sink: The same per sink name [count].
        dropped_ranges: Per point, the dropped readings' count and exact source-time bounds;
            the runtime records each as a `buffer_overflow` gap.
    """

    by_age: int
    by_size: int
    size_cutoff: datetime | None
    by_unsent_cap: int = 0
    dropped: int = 0
    dropped_by_sink: dict[str, int] = field(default_factory=dict)
    dropped_ranges: tuple[DroppedRange, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """Rows handed to a sink's forwarder; in flight until acked or released.

    Attributes:
        sink: Sink name.
        rows: `OutboxRow` tuples in id order (non-empty).
        lo: Exclusive lower id bound the batch covers.
        hi: Inclusive upper id bound (the last row's id).
        live: True for a batch of the newest rows taken while a backlog drains.
    """

    sink: str
    rows: list[OutboxRow]
    lo: int
    hi: int
    live: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A reading a sink refused for good, moved out of the outbox with the server's reason.

    Attributes:
        reading_id: Outbox row id.
        ts_ns: Source time [ns since epoch].
        point_id: Store point id.
        line: The line-protocol line that was refused.
        status: HTTP status of the refusal, or None.
        reason: The server's message (truncated to 1,000 characters).
    """

    reading_id: int
    ts_ns: int
    point_id: int
    line: str
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A stored dead letter, as `Store.dead_letters` returns it."""

    id: int
    sink: str
    at: datetime
    key: str
    source_time: datetime
    status: int | None
    reason: str
    line: str


@dataclass(frozen=True, slots=True)
class SinkCursor:
    """A snapshot of one sink's outbox position.

    Attributes:
        sink: Sink name.
        acked: Every row with id <= this was acknowledged.
        live_lo, live_hi: The acknowledged live segment ``(live_lo, live_hi]`` (empty when
            equal).
        backlog: Readings not yet acknowledged [count] (exact; includes the in-flight batch).
        dropped: Readings dropped before this sink acknowledged them, all time [count].
        oldest_unsent: Source time of the oldest unacknowledged reading, or None.
        in_flight: Rows of the batch being sent [count].
    """

    sink: str
    acked: int
    live_lo: int
    live_hi: int
    backlog: int
    dropped: int
    oldest_unsent: datetime | None
    in_flight: int


@dataclass(slots=True)
class _Cursor:
    """Writer-thread state of one sink (read without locks from the loop for status)."""

    acked: int = 0
    live_lo: int = 0
    live_hi: int = 0
    inflight: tuple[int, int, int] | None = None  # (lo, hi, rows)
    backlog: int = 0
    dropped: int = 0
    oldest_ns: int | None = None
    acks: int = 0
    acks_at_drop: int = -1

    @property
    def live(self) -> bool:
        return self.live_hi > self.live_lo

    def unsent(self, row_id: int) -> bool:
        return row_id > self.acked and not self.live_lo < row_id <= self.live_hi


def _encode_value(value: Value) -> tuple[Any, int | None]:
    """Map a reading value to (SQLite value, type tag); raises TypeError for other types."""
    kind = type(value)
    if kind is float or kind is str or value is None:
        return value, None
    if kind is bool:
        return int(value), _VT_BOOL
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            return value, None
        return str(value), _VT_BIGINT
    # Subclasses (numpy scalars, IntEnum): normalise to the plain type.
    if isinstance(value, bool):
        return int(value), _VT_BOOL
    if isinstance(value, int):
        return _encode_value(int(value))
    if isinstance(value, float):
        return float(value), None
    if isinstance(value, str):
        return str(value), None
    msg = f"unsupported reading value type {kind.__name__}"
    raise TypeError(msg)


def _decode_value(value: Value, vt: int | None) -> Value:
    if vt is None:
        return value
    if vt == _VT_BOOL:
        return bool(value)
    if vt == _VT_BIGINT:
        return int(str(value))
    return value


def _ns(ts: datetime | None) -> int | None:
    return None if ts is None else to_epoch_ns(ts)


def _dt(ns: int | None) -> datetime | None:
    return None if ns is None else from_epoch_ns(ns)


def _cause(text: str) -> GapCause:
    try:
        return GapCause(text)
    except ValueError:
        return GapCause.BAD_QUALITY


def _gap_from_row(row: Sequence[Any]) -> Gap:
    return Gap(
        id=row[0],
        site=row[1],
        asset=row[2],
        point=row[3],
        cause=_cause(row[4]),
        start=from_epoch_ns(row[5]),
        end=_dt(row[6]),
        last_good=_dt(row[7]),
        first_bad=_dt(row[8]),
        expected_interval=float(row[9]),
    )


_PointEntry = tuple[int, str | None, str]
"""A cached points-table row: (id, unit, source)."""


@dataclass(slots=True)
class _Job:
    """One unit of work for the writer thread: a function, or readings to append."""

    future: concurrent.futures.Future[Any]
    fn: Callable[[], Any] | None = None
    readings: Sequence[Reading] | None = None


class Store:
    """Durable local store of readings, latest values, gaps and meta state (SQLite WAL).

    Create with `Store.open`; every method is a coroutine whose SQLite work runs on the
    store's threads. Safe to use from many coroutines at once.

    Attributes:
        path: The database file.
        retention_hours: History older than this is purged [h].
        max_bytes: Used database size above which the oldest history is purged [bytes].
        max_unsent: Unacknowledged readings a sink may have before the oldest are dropped
            [count], or None for no such bound (age and size still apply).
        alarms: Human-readable records of integrity events at open (R9), oldest first.
        last_purge: What the latest `purge` deleted, or None.
        dropped_total: Readings deleted before every sink acknowledged them, since open
            [count].
    """

    def __init__(
        self,
        path: Path,
        *,
        retention_hours: float,
        max_bytes: int,
        max_unsent: int | None = None,
    ) -> None:
        """Use `Store.open`; the constructor does no I/O."""
        self.path = path
        self.retention_hours = retention_hours
        self.max_bytes = max_bytes
        self.max_unsent = max_unsent
        self.alarms: list[str] = []
        self.last_purge: PurgeReport | None = None
        self.dropped_total = 0
        self._cursors: dict[str, _Cursor] = {}
        self._drops: dict[int, list[int]] = {}  # point id -> [count, first ns, last ns]
        self._drop_sinks: dict[str, int] = {}
        self._drop_continues: dict[int, bool] = {}
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="store-read"
        )
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        # (site, asset) -> point id -> (row id, unit, source): per asset, so that a batch (one
        # device's poll, one asset) costs one outer lookup and no key tuple per reading, and
        # 100k points keep no key tuple each (≈ 6 MB, issue #8).
        self._point_ids: dict[tuple[str, str], dict[str, _PointEntry]] = {}
        self._rows = 0
        self._last_commit = 0.0  # monotonic end of the latest readings commit
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        retention_hours: float,
        max_bytes: int,
        max_unsent: int | None = None,
    ) -> Store:
        """Open (or create) the store at `path`, checking its integrity first.

        Creates the parent directory; the file gets mode 0600 (its -wal/-shm inherit it). A
        corrupt or foreign file is moved aside and recorded in `alarms` (no exception). A
        version-1 file is migrated to version 2 (row ids for the outbox) in one transaction.

        Args:
            path: Database file, e.g. ``data/gateway.db``.
            retention_hours: History kept [h] (> 0).
            max_bytes: Size cap of the used database pages [bytes] (>= 64 KiB sensible).
            max_unsent: Per-sink bound of unacknowledged readings [count], or None.

        Returns:
            The open store.

        Raises:
            OSError: The directory or file cannot be created.
            sqlite3.Error: A fresh database cannot be created at `path`.
        """
        store = cls(
            path, retention_hours=retention_hours, max_bytes=max_bytes, max_unsent=max_unsent
        )
        store._writer = threading.Thread(target=store._write_loop, name="store-write", daemon=True)
        store._writer.start()
        try:
            await store._write(store._open_sync)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Checkpoint the WAL and close; idempotent. Queued writes finish first."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._writer is not None and self._writer.is_alive():
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._queue.put(_Job(done, fn=self._close_writer_sync))
            self._queue.put(None)
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(done)
            await loop.run_in_executor(None, self._writer.join)
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._reader, self._close_reader_sync)
        self._reader.shutdown(wait=False)

    def _close_writer_sync(self) -> None:
        conn = self._wconn
        self._wconn = None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("store: checkpoint at close failed: %s", exc)
        finally:
            conn.close()

    def _close_reader_sync(self) -> None:
        if self._rconn is not None:
            self._rconn.close()
            self._rconn = None

    def _open_sync(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            # SQLite deletes a -wal/-shm it cannot use when the checking connection closes:
            # hard-link them first so a corrupt set can be kept together as evidence.
            saved = _link_side_files(path)
            try:
                problem = self._check_sync(path)
                if problem is not None:
                    self._move_aside(path, problem, saved)
            finally:
                for link in saved.values():
                    link.unlink(missing_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True, timeout=30)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new database only
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                msg = f"cannot enable WAL mode on {path} (got {mode})"
                raise sqlite3.OperationalError(msg)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.execute("BEGIN IMMEDIATE")
            columns = [r[1] for r in conn.execute("PRAGMA table_info(readings)")]
            if columns and "id" not in columns:
                log.warning("store %s: migrating readings to schema version 2", path)
                for stmt in _MIGRATE_V1:
                    conn.execute(stmt)
            for stmt in _SCHEMA:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            self._rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        self._load_point_ids()

    @staticmethod
    def _check_sync(path: Path) -> str | None:
        """Return None when `path` is a healthy store, else why not."""
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            return f"cannot open: {exc}"
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                detail = "; ".join(str(r[0]) for r in rows[:3])
                return f"quick_check failed: {detail}"
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                return f"unknown schema version {version}"
        except sqlite3.Error as exc:
            return f"quick_check failed: {exc}"
        finally:
            conn.close()
        return None

    def _move_aside(self, path: Path, problem: str, saved: dict[str, Path]) -> None:
        stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(path, target)
        for suffix in _SIDE_SUFFIXES:
            side = path.with_name(path.name + suffix)
            keep = saved.get(suffix, side)
            if keep.exists():
                os.replace(keep, target.with_name(target.name + suffix))
            side.unlink(missing_ok=True)  # never leave a stale -wal next to the fresh database
        alarm = (
            f"store {path}: {problem}; moved to {target.name} and started with an empty store"
        )
        self.alarms.append(alarm)
        log.error("%s", alarm)

    def _load_point_ids(self) -> None:
        assert self._wconn is not None  # noqa: S101 - only called after the connection is set
        ids: dict[tuple[str, str], dict[str, _PointEntry]] = {}
        intern = sys.intern  # the config's ids are interned: share their objects
        for pid, site, asset, point, unit, source in self._wconn.execute(
            "SELECT id, site, asset, point, unit, source FROM points"
        ):
            per_asset = ids.setdefault((intern(site), intern(asset)), {})
            per_asset[intern(point)] = (pid, unit, source)
        self._point_ids = ids

    # ------------------------------------------------------------------ threads

    def _write(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise StoreClosedError(str(self.path))
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Job(fut, fn=fn))
        return asyncio.wrap_future(fut)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the store's read-only reader thread and return its result.

        For query modules outside this file (e.g. the readings API). `conn` is a read-only
        sqlite3 connection in WAL mode; use parameterized SQL only. Raises StoreClosedError.
        """
        return await self._read(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreClosedError(str(self.path))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_sync, fn)

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA query_only=1")
            self._rconn = conn
        return fn(self._rconn)

    def _write_loop(self) -> None:
        """The writer thread: run jobs in FIFO order; group consecutive appends.

        A finished job is not referenced while the thread waits for the next one: an idle
        writer would otherwise keep the latest batch (up to `_MAX_GROUP_ROWS` readings, or a
        whole `save_gaps` parameter list) alive, ≈ 26 MB at 100k points (issue #8).
        """
        backlog: deque[_Job | None] = deque()
        while True:
            job = backlog.popleft() if backlog else self._queue.get()
            if job is None:
                return
            if job.readings is None:
                self._run_fn(job)
            else:
                self._run_appends(job, backlog)
            del job

    @staticmethod
    def _run_fn(job: _Job) -> None:
        if job.future.set_running_or_notify_cancel():
            try:
                result = job.fn() if job.fn is not None else None
            except BaseException as exc:  # handed to the awaiting caller
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

    def _run_appends(self, job: _Job, backlog: deque[_Job | None]) -> None:
        """Append `job` and the appends queued right behind it in one commit.

        Waits up to the commit spacing for more appends; a non-append job that arrives
        meanwhile goes to `backlog` and runs next.
        """
        assert job.readings is not None  # noqa: S101 - only called for appends
        group = [job]
        rows = len(job.readings)
        not_before = self._last_commit + _COMMIT_SPACING_S
        while rows < _MAX_GROUP_ROWS:
            wait = not_before - time.monotonic()
            try:
                nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None or nxt.readings is None:
                backlog.append(nxt)
                break
            group.append(nxt)
            rows += len(nxt.readings)
        wait = not_before - time.monotonic()
        if wait > 0 and not backlog:  # hit the row cap: still keep the spacing
            time.sleep(wait)
        self._append_group(group)
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ writes

    async def append(self, readings: Sequence[Reading]) -> None:
        """Store readings: history rows plus the latest value per point; return after commit.

        One transaction: either all of `readings` are committed or none. Concurrent calls may
        share a transaction (group commit).

        Args:
            readings: Readings of any points; values float/int/bool/str/None.

        Raises:
            TypeError: A value has another type (nothing of this call is stored).
            sqlite3.Error: The commit failed (e.g. disk full); nothing of this call is stored.
            StoreClosedError: The store is closed.
        """
        if not readings:
            return
        if self._closed:
            raise StoreClosedError(str(self.path))
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(_Job(fut, readings=readings))
        await asyncio.wrap_future(fut)

    def _encode(self, readings: Sequence[Reading]) -> tuple[list[_Row], dict[int, _Row]]:
        """Build history rows and the newest row per point id of one append call."""
        conn = self._wconn
        assert conn is not None  # noqa: S101 - the writer thread owns an open connection
        ids = self._point_ids
        rows: list[_Row] = []
        latest: dict[int, _Row] = {}
        append = rows.append
        # Readings of one poll share their datetime objects: convert each object once.
        last_src: datetime | None = None
        last_gw: datetime | None = None
        src_ns = gw_ns = 0
        site: str | None = None
        asset: str | None = None
        points: dict[str, _PointEntry] = {}
        for r in readings:
            if r.asset is not asset or r.site is not site:  # readings come grouped by asset
                site, asset = r.site, r.asset
                points = ids.get((site, asset)) or ids.setdefault((site, asset), {})
            entry = points.get(r.point)
            if entry is None or entry[2] is not r.source or entry[1] is not r.unit:
                entry = self._point_entry(conn, points, r, entry)
            value = r.value
            kind = type(value)
            vt: int | None = None
            if not (kind is float or kind is str or value is None or (
                    kind is int and _INT64_MIN <= value <= _INT64_MAX)):  # type: ignore[operator]
                value, vt = _encode_value(value)
            ts = r.source_time
            if ts is not last_src:
                last_src, src_ns = ts, to_epoch_ns(ts)
            ts = r.gateway_time
            if ts is not last_gw:
                last_gw, gw_ns = ts, to_epoch_ns(ts)
            pid = entry[0]
            row = (src_ns, pid, value, vt, r.quality, gw_ns)
            append(row)
            prev = latest.get(pid)
            if prev is None or src_ns >= prev[0]:
                latest[pid] = row
        return rows, latest

    def _point_entry(
        self,
        conn: sqlite3.Connection,
        points: dict[str, _PointEntry],
        r: Reading,
        entry: _PointEntry | None,
    ) -> _PointEntry:
        """The points-table entry of `r`'s point: inserted or updated when new or changed.

        An entry equal to `r`'s unit and source (loaded at start) takes `r`'s string objects,
        so that the cache and the pipeline share them.
        """
        unit, source = r.unit, r.source
        if entry is not None and entry[1] == unit and entry[2] == source:
            entry = (entry[0], unit, source)
            points[r.point] = entry
            return entry
        key = f"{r.site}/{r.asset}/{r.point}"
        conn.execute(
            """INSERT INTO points(key, site, asset, point, unit, source) VALUES (?,?,?,?,?,?)
               ON CONFLICT(key) DO UPDATE SET unit = excluded.unit, source = excluded.source""",
            (key, r.site, r.asset, r.point, unit, source),
        )
        pid = conn.execute("SELECT id FROM points WHERE key = ?", (key,)).fetchone()[0]
        entry = (int(pid), unit, source)
        points[r.point] = entry
        return entry

    def _append_group(self, group: list[_Job]) -> None:
        conn = self._wconn
        live = [job for job in group if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        if conn is None:
            for job in live:
                job.future.set_exception(StoreClosedError(str(self.path)))
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in live:
                job.future.set_exception(exc)
            return
        rows: list[_Row] = []
        latest: dict[int, _Row] = {}
        ok: list[_Job] = []
        try:
            for job in live:
                assert job.readings is not None  # noqa: S101 - append jobs carry readings
                try:
                    encoded, latest_job = self._encode(job.readings)
                except (TypeError, ValueError, OverflowError) as exc:
                    job.future.set_exception(exc)
                    continue
                rows.extend(encoded)
                for pid, row in latest_job.items():
                    prev = latest.get(pid)
                    if prev is None or row[0] >= prev[0]:
                        latest[pid] = row
                ok.append(job)
            if rows:
                conn.executemany(_INSERT_READING, rows)
                conn.executemany(_UPSERT_LATEST, latest.values())
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._load_point_ids()  # ids cached inside the rolled-back transaction are void
            for job in ok:
                job.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._rows += len(rows)
        if rows and self._cursors:
            first_ts = rows[0][0]
            for cur in self._cursors.values():
                cur.backlog += len(rows)
                if cur.oldest_ns is None:
                    cur.oldest_ns = first_ts
        for job in ok:
            job.future.set_result(None)

    async def save_gaps(self, gaps: Sequence[Gap]) -> None:
        """Upsert gaps by id in one transaction; return after commit.

        Args:
            gaps: Gaps (open or closed); a later call with the same id overwrites.
        """
        if not gaps:
            return
        params = (  # consumed row by row: no list of 100k rows when every point opens a gap
            (g.id, g.site, g.asset, g.point, str(g.cause), to_epoch_ns(g.start), _ns(g.end),
             _ns(g.last_good), _ns(g.first_bad), float(g.expected_interval))
            for g in gaps
        )
        await self._write(lambda: self._tx(lambda c: c.executemany(_UPSERT_GAP, params)))

    async def set_meta(self, key: str, value: str) -> None:
        """Set one meta value (e.g. ``last_alive`` as RFC 3339); return after commit."""
        await self._write(
            lambda: self._tx(
                lambda c: c.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            )
        )

    # ------------------------------------------------------------------ outbox (sinks)

    async def register_sinks(self, names: Sequence[str]) -> None:
        """Track the outbox position of these sinks (call once, before forwarding).

        A sink seen for the first time starts at the beginning of the stored history (it gets
        every retained reading). Cursors of sinks not named here stay in the file untouched
        and do not hold back purges.

        Args:
            names: Configured sink names.
        """
        await self._write(lambda: self._register_sync(list(names)))

    def _register_sync(self, names: list[str]) -> None:
        conn = self._wconn
        if conn is None:
            raise StoreClosedError(str(self.path))
        self._tx(
            lambda c: c.executemany(
                "INSERT INTO sink_cursors(sink) VALUES (?) ON CONFLICT(sink) DO NOTHING",
                [(n,) for n in names],
            )
        )
        cursors: dict[str, _Cursor] = {}
        for name in names:
            acked, lo, hi, dropped = conn.execute(
                "SELECT acked, live_lo, live_hi, dropped FROM sink_cursors WHERE sink = ?",
                (name,),
            ).fetchone()
            cur = _Cursor(acked=int(acked), live_lo=int(lo), live_hi=int(hi), dropped=int(dropped))
            if cur.live_hi <= cur.live_lo or cur.acked >= cur.live_lo:
                cur.acked = max(cur.acked, cur.live_hi if cur.live else 0)
                cur.live_lo = cur.live_hi = 0
            unsent = conn.execute(
                "SELECT count(*) FROM readings WHERE id > ?", (cur.acked,)
            ).fetchone()[0]
            if cur.live:
                unsent -= conn.execute(
                    "SELECT count(*) FROM readings WHERE id > ? AND id <= ?",
                    (cur.live_lo, cur.live_hi),
                ).fetchone()[0]
            cur.backlog = int(unsent)
            cursors[name] = cur
        self._cursors = cursors
        for cur in cursors.values():
            self._refresh_oldest(cur)

    def _refresh_oldest(self, cur: _Cursor) -> None:
        """Set `cur.oldest_ns` to the source time of its first unacknowledged row (writer)."""
        conn = self._wconn
        if conn is None or cur.backlog <= 0:
            cur.oldest_ns = None
            return
        row = conn.execute(
            "SELECT ts_ns FROM readings WHERE id > ? AND (id <= ? OR id > ?) ORDER BY id LIMIT 1",
            (cur.acked, cur.live_lo, cur.live_hi),
        ).fetchone()
        cur.oldest_ns = None if row is None else int(row[0])

    def sink_cursor(self, sink: str) -> SinkCursor:
        """A snapshot of a registered sink's outbox position (no I/O).

        Raises:
            KeyError: The sink was not registered.
        """
        cur = self._cursors[sink]
        return SinkCursor(
            sink=sink,
            acked=cur.acked,
            live_lo=cur.live_lo,
            live_hi=cur.live_hi,
            backlog=max(0, cur.backlog),
            dropped=cur.dropped,
            oldest_unsent=_dt(cur.oldest_ns),
            in_flight=cur.inflight[2] if cur.inflight is not None else 0,
        )

    def sink_backlog(self, sink: str) -> int:
        """Unacknowledged readings of a registered sink [count] (no I/O; exact)."""
        return max(0, self._cursors[sink].backlog)

    async def outbox_take(self, sink: str, limit: int, *, live: bool = False) -> OutboxBatch | None:
        """Hand out the next batch of a sink's outbox and mark it in flight.

        Args:
            sink: A registered sink with no batch in flight.
            limit: Rows at most [count, >= 1].
            live: Take the newest rows (above the live segment, or the newest `limit` rows when
                there is none) instead of the oldest unacknowledged ones. Used to keep live
                data flowing while a backlog drains.

        Returns:
            The batch (rows in id order), or None when there is nothing to send.

        Raises:
            KeyError: Unknown sink.
            RuntimeError: A batch of this sink is already in flight.
        """
        return await self._write(lambda: self._take_sync(sink, max(1, limit), live))

    def _take_sync(self, sink: str, limit: int, live: bool) -> OutboxBatch | None:
        conn = self._wconn
        if conn is None:
            raise StoreClosedError(str(self.path))
        cur = self._cursors[sink]
        if cur.inflight is not None:
            msg = f"sink {sink}: a batch is already in flight"
            raise RuntimeError(msg)
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM readings WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"  # noqa: S608 - constant
        if live:
            if cur.live:
                lo = cur.live_hi
            else:
                top = conn.execute("SELECT max(id) FROM readings").fetchone()[0] or 0
                lo = max(cur.acked, int(top) - limit)
            rows = conn.execute(sql, (lo, _INT64_MAX, limit)).fetchall()
        else:
            lo = cur.acked
            upper = cur.live_lo if cur.live else _INT64_MAX
            rows = conn.execute(sql, (lo, upper, limit)).fetchall()
            if not rows and cur.live:
                # Nothing left below the live segment: it joins the acknowledged prefix.
                cur.acked, cur.live_lo, cur.live_hi = cur.live_hi, 0, 0
                self._save_cursor(sink, cur)
                lo = cur.acked
                rows = conn.execute(sql, (lo, _INT64_MAX, limit)).fetchall()
        if not rows:
            return None
        batch = OutboxBatch(sink, rows, lo, int(rows[-1][0]), live)
        cur.inflight = (batch.lo, batch.hi, len(rows))
        return batch

    def outbox_release(self, batch: OutboxBatch) -> None:
        """Give a batch back unsent (e.g. at shutdown); its rows stay in the outbox."""
        cur = self._cursors.get(batch.sink)
        if cur is not None and cur.inflight is not None and cur.inflight[1] == batch.hi:
            cur.inflight = None

    async def outbox_ack(self, batch: OutboxBatch, dead: Sequence[DeadLetter] = ()) -> None:
        """Record that the sink acknowledged `batch` (2xx), moving refused lines to dead letters.

        One transaction: the cursor advance and the dead letters commit together. Every row
        of the batch leaves the sink's outbox (sent or dead-lettered).

        Args:
            batch: The batch from `outbox_take` (in flight).
            dead: Lines of the batch the sink refused for good, with the server's reason.
        """
        await self._write(lambda: self._ack_sync(batch, list(dead)))

    def _ack_sync(self, batch: OutboxBatch, dead: list[DeadLetter]) -> None:
        cur = self._cursors[batch.sink]
        new = _Cursor(acked=cur.acked, live_lo=cur.live_lo, live_hi=cur.live_hi)
        if batch.live:
            if new.live and batch.lo == new.live_hi:
                new.live_hi = batch.hi
            elif not new.live:
                new.live_lo, new.live_hi = batch.lo, batch.hi
            else:  # cannot happen: live batches start at live_hi
                log.error("sink %s: live batch does not continue the live segment", batch.sink)
        else:
            new.acked = max(new.acked, batch.hi)
        if new.live and new.acked >= new.live_lo:
            new.acked, new.live_lo, new.live_hi = max(new.acked, new.live_hi), 0, 0
        now_ns = to_epoch_ns(utc_now())
        letters = [
            (batch.sink, now_ns, d.reading_id, d.ts_ns, d.point_id, d.status,
             d.reason[:_MAX_REASON], d.line)
            for d in dead
        ]

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sink_cursors SET acked = ?, live_lo = ?, live_hi = ? WHERE sink = ?",
                (new.acked, new.live_lo, new.live_hi, batch.sink),
            )
            if letters:
                conn.executemany(
                    "INSERT INTO dead_letters(sink, at_ns, reading_id, ts_ns, point_id, status, "
                    "reason, line) VALUES (?,?,?,?,?,?,?,?)",
                    letters,
                )

        self._tx(body)
        cur.acked, cur.live_lo, cur.live_hi = new.acked, new.live_lo, new.live_hi
        cur.inflight = None
        cur.backlog -= len(batch.rows)
        cur.acks += 1
        self._refresh_oldest(cur)

    def _save_cursor(self, sink: str, cur: _Cursor) -> None:
        self._tx(
            lambda c: c.execute(
                "UPDATE sink_cursors SET acked = ?, live_lo = ?, live_hi = ? WHERE sink = ?",
                (cur.acked, cur.live_lo, cur.live_hi, sink),
            )
        )

    async def point_idents(self, ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
        """(site, asset, point) of store point ids; unknown ids are absent."""
        wanted = list(ids)

        def q(conn: sqlite3.Connection) -> dict[int, tuple[str, str, str]]:
            out: dict[int, tuple[str, str, str]] = {}
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for pid, site, asset, point in conn.execute(
                    f"SELECT id, site, asset, point FROM points WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                    chunk,
                ):
                    out[int(pid)] = (site, asset, point)
            return out

        return await self._read(q)

    async def dead_letters(
        self, *, sink: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        """The newest dead letters, newest first.

        Args:
            sink: Only this sink's, or all.
            limit: Records at most [count, >= 0].

        Returns:
            Dead letters with their point key and the server's reason.
        """

        def q(conn: sqlite3.Connection) -> list[DeadLetterRecord]:
            cur = conn.execute(
                "SELECT d.id, d.sink, d.at_ns, p.key, d.ts_ns, d.status, d.reason, d.line "
                "FROM dead_letters d LEFT JOIN points p ON p.id = d.point_id "
                "WHERE (? IS NULL OR d.sink = ?) ORDER BY d.id DESC LIMIT ?",
                (sink, sink, max(0, limit)),
            )
            return [
                DeadLetterRecord(
                    id=int(i),
                    sink=sk,
                    at=from_epoch_ns(at),
                    key=key or "",
                    source_time=from_epoch_ns(ts),
                    status=st,
                    reason=reason,
                    line=line,
                )
                for i, sk, at, key, ts, st, reason, line in cur
            ]

        return await self._read(q)

    def _tx(self, body: Callable[[sqlite3.Connection], object]) -> None:
        conn = self._wconn
        if conn is None:
            raise StoreClosedError(str(self.path))
        conn.execute("BEGIN IMMEDIATE")
        try:
            body(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    async def purge(self, now: datetime) -> int:
        """Delete history by age, by size, then the oldest unsent readings above ``max_unsent``.

        Age: rows with source time before ``now - retention_hours``. Size: when the used pages
        exceed ``max_bytes``, the oldest rows (by source time) are dropped until the used size
        is at most 90 % of it. Unsent cap: a sink with more than ``max_unsent`` unacknowledged
        readings loses its oldest unsent ones (by outbox order) down to exactly the cap. Rows
        in flight to a sink are never deleted. Deletes run in chunks of separate transactions
        so queued appends are not held up; freed pages are returned to the file system
        (incremental vacuum). ``latest``, ``gaps`` and ``meta`` are never purged. Every deleted
        row a configured sink had not acknowledged is counted (`dropped_total`, per sink) and
        reported per point in `last_purge`.

        Args:
            now: Current time (aware UTC).

        Returns:
            History rows deleted [count].
        """
        await self._write(self._reset_drops)
        cutoff = to_epoch_ns(now) - int(self.retention_hours * 3600 * 1_000_000_000)
        by_age = 0
        while True:
            n = await self._write(lambda: self._delete_chunk("ts_ns < ?", (cutoff,), "ts_ns"))
            by_age += n
            if n < _PURGE_CHUNK:
                break
        by_size = 0
        size_cutoff: int | None = None
        for _ in range(64):  # each round deletes >= 1 % of the rows; bounded anyway
            step = await self._write(self._size_step)
            if step is None:
                break
            deleted, ts_cut = step
            by_size += deleted
            size_cutoff = ts_cut if size_cutoff is None else max(size_cutoff, ts_cut)
            if deleted == 0:
                break
        by_cap = 0
        if self.max_unsent is not None:
            for _ in range(10_000):  # bounded; each round deletes up to one chunk
                n = await self._write(self._cap_step)
                by_cap += n
                if n == 0:
                    break
        if by_age or by_size or by_cap:
            await self._write(self._vacuum_sync)
        report = await self._write(
            lambda: self._collect_drops(by_age, by_size, _dt(size_cutoff), by_cap)
        )
        self.last_purge = report
        return by_age + by_size + by_cap

    def _reset_drops(self) -> None:
        self._drops = {}
        self._drop_sinks = {}
        self._drop_continues = {}

    def _inflight_clause(self) -> tuple[str, list[int]]:
        """SQL excluding every in-flight batch's id range, with its parameters."""
        sql = ""
        params: list[int] = []
        for cur in self._cursors.values():
            if cur.inflight is not None:
                sql += " AND NOT (id > ? AND id <= ?)"
                params += [cur.inflight[0], cur.inflight[1]]
        return sql, params

    def _delete_chunk(
        self, where: str, params: Sequence[int], order: str, limit: int = _PURGE_CHUNK
    ) -> int:
        """Delete up to `limit` rows matching `where` (never in flight), in `order`.

        Runs on the writer thread. Unsent rows among them are counted as dropped in the same
        transaction (cursor ``dropped`` persisted) and accumulated for `_collect_drops`.

        Returns:
            Rows deleted [count].
        """
        excl, excl_params = self._inflight_clause()
        found: list[tuple[int, int, int]] = []
        per_sink: dict[str, int] = {}
        drops: dict[int, list[int]] = {}

        def body(conn: sqlite3.Connection) -> None:
            nonlocal found, per_sink
            found = conn.execute(
                f"SELECT id, point_id, ts_ns FROM readings WHERE {where}{excl} "  # noqa: S608 - constant fragments
                f"ORDER BY {order} LIMIT ?",
                (*params, *excl_params, limit),
            ).fetchall()
            if not found:
                return
            per_sink = {name: 0 for name in self._cursors}
            if self._cursors:
                cursors = list(self._cursors.items())
                for row_id, pid, ts in found:
                    hit = False
                    for name, cur in cursors:
                        if cur.unsent(row_id):
                            per_sink[name] += 1
                            hit = True
                    if hit:
                        d = drops.get(pid)
                        if d is None:
                            drops[pid] = [1, ts, ts]
                        else:
                            d[0] += 1
                            if ts < d[1]:
                                d[1] = ts
                            if ts > d[2]:
                                d[2] = ts
                conn.executemany(
                    "UPDATE sink_cursors SET dropped = dropped + ? WHERE sink = ?",
                    [(n, name) for name, n in per_sink.items() if n],
                )
            conn.executemany("DELETE FROM readings WHERE id = ?", [(r[0],) for r in found])

        self._tx(body)
        self._rows -= len(found)
        self._apply_drops(per_sink, drops)
        return len(found)

    def _apply_drops(self, per_sink: dict[str, int], drops: dict[int, list[int]]) -> None:
        """After a committed delete: update cursors and accumulate the per-point drops."""
        if not drops:
            return
        involved = [self._cursors[name] for name, n in per_sink.items() if n]
        continues = all(cur.acks == cur.acks_at_drop for cur in involved)
        for cur in involved:
            cur.acks_at_drop = cur.acks
        for name, n in per_sink.items():
            if n:
                cur = self._cursors[name]
                cur.backlog -= n
                cur.dropped += n
                self._drop_sinks[name] = self._drop_sinks.get(name, 0) + n
        for pid, (count, first, last) in drops.items():
            acc = self._drops.get(pid)
            if acc is None:
                self._drops[pid] = [count, first, last]
                self._drop_continues[pid] = continues
            else:
                acc[0] += count
                acc[1] = min(acc[1], first)
                acc[2] = max(acc[2], last)
            self.dropped_total += count
        for cur in self._cursors.values():
            self._refresh_oldest(cur)

    def _collect_drops(
        self, by_age: int, by_size: int, size_cutoff: datetime | None, by_cap: int
    ) -> PurgeReport:
        idents = {
            pid: (site, asset, point)
            for (site, asset), points in self._point_ids.items()
            for point, (pid, _u, _s) in points.items()
        }
        ranges = []
        for pid, (count, first, last) in sorted(self._drops.items(), key=lambda kv: kv[1][1]):
            site, asset, point = idents.get(pid, ("?", "?", str(pid)))
            ranges.append(
                DroppedRange(
                    site,
                    asset,
                    point,
                    count,
                    from_epoch_ns(first),
                    from_epoch_ns(last),
                    self._drop_continues.get(pid, False),
                )
            )
        dropped = sum(r.count for r in ranges)
        report = PurgeReport(
            by_age, by_size, size_cutoff, by_cap, dropped, dict(self._drop_sinks), tuple(ranges)
        )
        self._reset_drops()
        return report

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((page_count - free) * size)

    def _size_step(self) -> tuple[int, int] | None:
        """One round of the size purge: None when under the cap, else (deleted, ts cutoff)."""
        conn = self._wconn
        if conn is None:
            raise StoreClosedError(str(self.path))
        used = self._used_bytes(conn)
        if used <= self.max_bytes or self._rows <= 0:
            return None
        target = self.max_bytes * _SIZE_TARGET
        fraction = min(1.0, (used - target) / used)
        n = max(1, min(self._rows, _PURGE_CHUNK, int(self._rows * fraction) + 1))
        n = max(n, min(self._rows, max(1, self._rows // 100)))
        row = conn.execute(
            "SELECT ts_ns FROM readings ORDER BY ts_ns LIMIT 1 OFFSET ?", (n - 1,)
        ).fetchone()
        if row is None:
            return None
        ts_cut = int(row[0])
        deleted = 0
        while True:
            chunk = self._delete_chunk("ts_ns <= ?", (ts_cut,), "ts_ns")
            deleted += chunk
            if chunk < _PURGE_CHUNK:
                break
        self._vacuum_sync()
        return deleted, ts_cut

    def _cap_step(self) -> int:
        """Drop up to one chunk of the oldest unsent rows of the sink furthest over the cap."""
        cap = self.max_unsent
        if cap is None or not self._cursors:
            return 0
        name, cur = max(self._cursors.items(), key=lambda kv: kv[1].backlog)
        excess = cur.backlog - cap
        if excess <= 0:
            return 0
        # The oldest unsent rows of this sink in outbox order; in-flight rows are skipped by
        # _delete_chunk, so the rows after them go.
        deleted = self._delete_chunk(
            "id > ? AND NOT (id > ? AND id <= ?)",
            (cur.acked, cur.live_lo, cur.live_hi),
            "id",
            min(excess, _PURGE_CHUNK),
        )
        if deleted == 0:
            log.warning("store: sink %s over max_unsent but nothing deletable", name)
        return deleted

    def _vacuum_sync(self) -> None:
        conn = self._wconn
        if conn is None:
            return
        conn.execute("PRAGMA incremental_vacuum").fetchall()  # each step frees pages: drain it
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # ------------------------------------------------------------------ reads

    async def load_latest(self) -> dict[str, Reading]:
        """The newest stored reading (by source time) per point key.

        Returns:
            ``{"site/asset/point": Reading}`` for every point ever stored.
        """

        def q(conn: sqlite3.Connection) -> dict[str, Reading]:
            cur = conn.execute(
                """SELECT p.key, p.site, p.asset, p.point, p.unit, p.source,
                          l.ts_ns, l.value, l.vt, l.quality, l.gw_ns
                   FROM latest l JOIN points p ON p.id = l.point_id"""
            )
            return {
                key: Reading(
                    site=site,
                    asset=asset,
                    point=point,
                    value=_decode_value(value, vt),
                    unit=unit,
                    quality=int(quality),
                    source_time=from_epoch_ns(ts),
                    gateway_time=from_epoch_ns(gw),
                    source=source,
                )
                for key, site, asset, point, unit, source, ts, value, vt, quality, gw in cur
            }

        return await self._read(q)

    async def load_gaps(self, *, limit: int = 10000) -> list[Gap]:
        """All open gaps plus the `limit` most recently closed ones, ordered by start.

        Args:
            limit: Closed gaps to return at most [count, >= 0].

        Returns:
            Gaps ordered by (start, id).
        """

        def q(conn: sqlite3.Connection) -> list[Gap]:
            rows = conn.execute(
                f"SELECT {_GAP_COLUMNS} FROM gaps WHERE end_ns IS NULL"  # noqa: S608 - constant
            ).fetchall()
            rows += conn.execute(
                f"SELECT {_GAP_COLUMNS} FROM gaps WHERE end_ns IS NOT NULL "  # noqa: S608 - constant
                "ORDER BY end_ns DESC LIMIT ?",
                (max(0, limit),),
            ).fetchall()
            gaps = [_gap_from_row(r) for r in rows]
            gaps.sort(key=lambda g: (g.start, g.id))
            return gaps

        return await self._read(q)

    async def get_meta(self, key: str) -> str | None:
        """One meta value, or None when unset."""

        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(q)

    async def count_usable(self, since: datetime) -> dict[str, int]:
        """Usable readings (quality bit 31 clear: Good/Uncertain) per point since a time.

        Args:
            since: Count readings with source time >= this (aware UTC).

        Returns:
            ``{"site/asset/point": count}``; points with no usable reading are absent.
        """
        since_ns = to_epoch_ns(since)

        def q(conn: sqlite3.Connection) -> dict[str, int]:
            # Keys of the counted points only, row by row: no list of every point per scrape
            # (at 100k points the former list of all keys cost ≈ 20 MB each time, issue #8).
            return {
                key: int(n)
                for key, n in conn.execute(
                    "SELECT p.key, c.n FROM (SELECT point_id, count(*) AS n FROM readings "
                    "WHERE ts_ns >= ? AND quality < 2147483648 GROUP BY point_id) AS c "
                    "JOIN points AS p ON p.id = c.point_id",
                    (since_ns,),
                )
            }

        return await self._read(q)

    async def query_readings(
        self,
        key: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        newest_first: bool = False,
    ) -> list[Reading]:
        """History of one point, by source time in ``[start, end)``.

        Args:
            key: Point key ``site/asset/point``.
            start: Inclusive lower bound (aware UTC), or None for the oldest.
            end: Exclusive upper bound (aware UTC), or None for the newest.
            limit: Rows at most [count, >= 0].
            newest_first: Order by source time descending (the latest `limit` rows) instead of
                ascending (the earliest `limit` rows).

        Returns:
            Readings ordered by source time; empty for an unknown key.
        """
        lo = _INT64_MIN if start is None else to_epoch_ns(start)
        hi = _INT64_MAX if end is None else to_epoch_ns(end)
        order = "DESC" if newest_first else "ASC"

        def q(conn: sqlite3.Connection) -> list[Reading]:
            point = conn.execute(
                "SELECT id, site, asset, point, unit, source FROM points WHERE key = ?", (key,)
            ).fetchone()
            if point is None or limit <= 0:
                return []
            pid, site, asset, name, unit, source = point
            cur = conn.execute(
                "SELECT ts_ns, value, vt, quality, gw_ns FROM readings "  # noqa: S608 - constant
                f"WHERE ts_ns >= ? AND ts_ns < ? AND point_id = ? ORDER BY ts_ns {order} LIMIT ?",
                (lo, hi, pid, limit),
            )
            return [
                Reading(
                    site=site,
                    asset=asset,
                    point=name,
                    value=_decode_value(value, vt),
                    unit=unit,
                    quality=int(quality),
                    source_time=from_epoch_ns(ts),
                    gateway_time=from_epoch_ns(gw),
                    source=source,
                )
                for ts, value, vt, quality, gw in cur
            ]

        return await self._read(q)

    async def stats(self) -> dict[str, int]:
        """Sizes for metrics.

        Returns:
            ``readings`` (history rows [count]), ``points`` [count], ``file_bytes`` (database
            plus WAL on disk [bytes]), ``wal_bytes`` [bytes], ``used_bytes`` (used pages
            [bytes], the figure compared with ``max_bytes``), ``max_bytes`` [bytes].
        """

        def q(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                "used_bytes": self._used_bytes(conn),
                "points": int(conn.execute("SELECT count(*) FROM points").fetchone()[0]),
            }

        sizes = await self._read(q)
        db = _file_size(self.path)
        wal = _file_size(self.path.with_name(self.path.name + "-wal"))
        return {
            "readings": self._rows,
            "points": sizes["points"],
            "file_bytes": db + wal,
            "wal_bytes": wal,
            "used_bytes": sizes["used_bytes"],
            "max_bytes": self.max_bytes,
        }


def _link_side_files(path: Path) -> dict[str, Path]:
    """Hard-link the -wal/-shm/-journal of `path` to temporary names; return suffix -> link."""
    saved: dict[str, Path] = {}
    for suffix in _SIDE_SUFFIXES:
        side = path.with_name(path.name + suffix)
        link = path.with_name(f"{path.name}{suffix}.check-{os.getpid()}")
        try:
            link.unlink(missing_ok=True)
            os.link(side, link)
        except OSError:
            continue
        saved[suffix] = link
    return saved


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0

