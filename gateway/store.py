"""The local store: SQLite in WAL mode, all I/O off the event loop (DESIGN.md §3, §8).

What it keeps:
- ``readings``: the history, one small row per reading (the point key lives in ``points``);
- ``latest``: the newest reading per point, for the inventory's restore after a restart;
- ``gaps``: data gaps, upserted by id (M7: gaps survive restarts);
- ``meta``: small key/value state (``last_alive`` heartbeat, ``monitored_since``).

Durability (M1): the database runs with ``journal_mode=WAL`` and ``synchronous=FULL``; `append`
returns only after its transaction has committed, so "accepted" means committed and fsynced.
Concurrent `append` calls are group-committed: the writer thread takes every append queued
behind the one it is about to run into the same transaction (still all-or-nothing, and no
caller returns before the commit that holds its rows).

Threads: one writer thread owns the only writing connection and runs every write in FIFO order;
one reader thread with its own read-only connection answers queries (WAL readers never block the
writer). The event loop only awaits futures.

Integrity (R9): at open, ``PRAGMA quick_check`` runs on an existing file; a file that fails it,
or is not a database at all, is renamed to ``<name>.corrupt-<UTC ts>`` (its ``-wal``/``-shm``
alongside), a fresh store is created, and the event is appended to `Store.alarms`. A torn WAL
tail left by a crash is discarded by SQLite itself (frames with bad checksums are ignored).

Schema (``PRAGMA user_version = 1``)::

    points(id INTEGER PRIMARY KEY, key TEXT UNIQUE, site, asset, point, unit, source)
    readings(ts_ns INTEGER, point_id INTEGER, value ANY, vt INTEGER, quality INTEGER, gw_ns INTEGER)
        INDEX readings_ts ON readings(ts_ns)              -- the only index on the hot table
    latest(point_id INTEGER PRIMARY KEY, ts_ns, value, vt, quality, gw_ns)
    gaps(id TEXT PRIMARY KEY, site, asset, point, cause, start_ns, end_ns, last_good_ns,
         first_bad_ns, expected_interval)                 INDEX gaps_end ON gaps(end_ns)
    meta(key TEXT PRIMARY KEY, value TEXT)

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
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.clock import from_epoch_ns, to_epoch_ns, utc_now
from gateway.model import Reading, Value
from inventory.views import Gap, GapCause

__all__ = ["PurgeReport", "Store", "StoreClosedError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_VT_BOOL = 1
_VT_BIGINT = 2
_MAX_GROUP_ROWS = 50_000
"""Readings group-committed in one transaction at most [count]."""
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
        ts_ns INTEGER NOT NULL, point_id INTEGER NOT NULL, value, vt INTEGER,
        quality INTEGER NOT NULL, gw_ns INTEGER NOT NULL)""",
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
)

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


class StoreClosedError(RuntimeError):
    """The store was used after `Store.close`."""


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What the latest `Store.purge` deleted.

    Attributes:
        by_age: History rows older than the retention [count].
        by_size: History rows dropped (oldest first) to get under ``max_bytes`` [count].
        size_cutoff: Rows with source time at or before this were dropped by size (aware UTC),
            or None; the runtime records the dropped range as a `buffer_overflow` gap.
    """

    by_age: int
    by_size: int
    size_cutoff: datetime | None


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
        alarms: Human-readable records of integrity events at open (R9), oldest first.
        last_purge: What the latest `purge` deleted, or None.
    """

    def __init__(self, path: Path, *, retention_hours: float, max_bytes: int) -> None:
        """Use `Store.open`; the constructor does no I/O."""
        self.path = path
        self.retention_hours = retention_hours
        self.max_bytes = max_bytes
        self.alarms: list[str] = []
        self.last_purge: PurgeReport | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="store-read"
        )
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._point_ids: dict[tuple[str, str, str], tuple[int, str | None, str]] = {}
        self._rows = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: Path, *, retention_hours: float, max_bytes: int) -> Store:
        """Open (or create) the store at `path`, checking its integrity first.

        Creates the parent directory; the file gets mode 0600 (its -wal/-shm inherit it). A
        corrupt or foreign file is moved aside and recorded in `alarms` (no exception).

        Args:
            path: Database file, e.g. ``data/gateway.db``.
            retention_hours: History kept [h] (> 0).
            max_bytes: Size cap of the used database pages [bytes] (>= 64 KiB sensible).

        Returns:
            The open store.

        Raises:
            OSError: The directory or file cannot be created.
            sqlite3.Error: A fresh database cannot be created at `path`.
        """
        store = cls(path, retention_hours=retention_hours, max_bytes=max_bytes)
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
            if version not in (0, SCHEMA_VERSION):
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
        self._point_ids = {
            (site, asset, point): (pid, unit, source)
            for pid, site, asset, point, unit, source in self._wconn.execute(
                "SELECT id, site, asset, point, unit, source FROM points"
            )
        }

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
        """The writer thread: run jobs in FIFO order; group consecutive appends."""
        backlog: deque[_Job | None] = deque()
        while True:
            job = backlog.popleft() if backlog else self._queue.get()
            if job is None:
                return
            if job.readings is None:
                if job.future.set_running_or_notify_cancel():
                    try:
                        result = job.fn() if job.fn is not None else None
                    except BaseException as exc:  # handed to the awaiting caller
                        job.future.set_exception(exc)
                    else:
                        job.future.set_result(result)
                continue
            group = [job]
            rows = len(job.readings)
            while rows < _MAX_GROUP_ROWS:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt.readings is None:
                    backlog.append(nxt)
                    break
                group.append(nxt)
                rows += len(nxt.readings)
            self._append_group(group)

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
        for r in readings:
            ident = (r.site, r.asset, r.point)
            entry = ids.get(ident)
            if entry is None or entry[1] != r.unit or entry[2] != r.source:
                entry = self._upsert_point(conn, ident, r.unit, r.source)
            value, vt = _encode_value(r.value)
            row = (to_epoch_ns(r.source_time), entry[0], value, vt, r.quality,
                   to_epoch_ns(r.gateway_time))
            append(row)
            prev = latest.get(entry[0])
            if prev is None or row[0] >= prev[0]:
                latest[entry[0]] = row
        return rows, latest

    def _upsert_point(
        self, conn: sqlite3.Connection, ident: tuple[str, str, str], unit: str | None, source: str
    ) -> tuple[int, str | None, str]:
        key = "/".join(ident)
        conn.execute(
            """INSERT INTO points(key, site, asset, point, unit, source) VALUES (?,?,?,?,?,?)
               ON CONFLICT(key) DO UPDATE SET unit = excluded.unit, source = excluded.source""",
            (key, *ident, unit, source),
        )
        pid = conn.execute("SELECT id FROM points WHERE key = ?", (key,)).fetchone()[0]
        entry = (int(pid), unit, source)
        self._point_ids[ident] = entry
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
        for job in ok:
            job.future.set_result(None)

    async def save_gaps(self, gaps: Sequence[Gap]) -> None:
        """Upsert gaps by id in one transaction; return after commit.

        Args:
            gaps: Gaps (open or closed); a later call with the same id overwrites.
        """
        if not gaps:
            return
        params = [
            (g.id, g.site, g.asset, g.point, str(g.cause), to_epoch_ns(g.start), _ns(g.end),
             _ns(g.last_good), _ns(g.first_bad), float(g.expected_interval))
            for g in gaps
        ]
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
        """Delete history by age (``retention_hours``), then by size (``max_bytes``).

        Age: rows with source time before ``now - retention_hours``. Size: when the used pages
        exceed ``max_bytes``, the oldest rows (by source time) are dropped until the used size
        is at most 90 % of it. Deletes run in chunks of separate transactions so queued appends
        are not held up; freed pages are returned to the file system (incremental vacuum).
        ``latest``, ``gaps`` and ``meta`` are never purged. Details land in `last_purge`.

        Args:
            now: Current time (aware UTC).

        Returns:
            History rows deleted [count].
        """
        cutoff = to_epoch_ns(now) - int(self.retention_hours * 3600 * 1_000_000_000)
        by_age = 0
        while True:
            n = await self._write(lambda: self._delete_before(cutoff, inclusive=False))
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
        if by_age or by_size:
            await self._write(self._vacuum_sync)
        self.last_purge = PurgeReport(by_age, by_size, _dt(size_cutoff))
        return by_age + by_size

    def _delete_before(self, cutoff_ns: int, *, inclusive: bool) -> int:
        """Delete up to one chunk of rows with ts_ns < (or <=) cutoff; return rows deleted."""
        op = "<=" if inclusive else "<"
        deleted = 0

        def body(conn: sqlite3.Connection) -> None:
            nonlocal deleted
            cur = conn.execute(
                "DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings "  # noqa: S608 - op is a constant
                f"WHERE ts_ns {op} ? ORDER BY ts_ns LIMIT ?)",
                (cutoff_ns, _PURGE_CHUNK),
            )
            deleted = cur.rowcount

        self._tx(body)
        self._rows -= deleted
        return deleted

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
            chunk = self._delete_before(ts_cut, inclusive=True)
            deleted += chunk
            if chunk < _PURGE_CHUNK:
                break
        self._vacuum_sync()
        return deleted, ts_cut

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
            counts = conn.execute(
                "SELECT point_id, count(*) FROM readings "
                "WHERE ts_ns >= ? AND quality < 2147483648 GROUP BY point_id",
                (since_ns,),
            ).fetchall()
            keys = dict(conn.execute("SELECT id, key FROM points").fetchall())
            return {keys[pid]: int(n) for pid, n in counts if pid in keys}

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

