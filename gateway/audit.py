"""Append-only audit log of write attempts (RELIABILITY M9, S4), in the store's SQLite file.

Where: table ``audit`` in the same SQLite file as the readings store (``store.path``, normally
``data/gateway.db``), written through this module's **own** connection on its own thread
(WAL mode, ``synchronous=FULL``: a record is on disk when `AuditLog.append` returns). The
store's purges, bounds and outbox never touch the table; a store file that fails its integrity
check at start is moved aside whole (``*.corrupt-<ts>``), audit included, as evidence.

Append-only, enforced three ways:

1. The code has no UPDATE or DELETE path (`AuditLog` only inserts and selects; the API route is
   GET only, so PUT/PATCH/DELETE/POST get 405).
2. SQLite triggers abort any ``UPDATE`` or ``DELETE`` on the table, from any connection.
3. Each record carries ``prev_hash`` and ``hash`` = SHA-256 of the previous record's hash and
   this record's canonical JSON, so an edit made behind SQLite's back (a raw file edit, dropped
   triggers) breaks the chain that `AuditLog.verify` walks.

What a record holds (`AuditRecord`): UTC time, request id, principal and role (None when the
token was missing or invalid), client address, site/asset/point, the old value (the point's
last reading in engineering units, and its quality), the requested value, the raw value after
the inverse of scale/offset, the encoded request (e.g. ``FC6 unit_id=1 holding 3 = 0x00D7``),
dry run or not, the result, the HTTP status, the protocol/error code, a message, and the value
read back. Never a token.

Results: ``written`` (answered and read back), ``dry_run``, ``denied`` (401/403 of
authentication or role), ``rate_limited`` (429, the first one per client and window),
``refused`` (writes disabled, point not writable or unknown), ``invalid`` (422: type, range,
encoding), ``failed`` (offline 503, device exception 502, unsupported 409; nothing written),
``unknown`` (504: timeout, the outcome is unknown and nothing is resent).

Size: one row per attempt, a few hundred bytes. There is no rotation (rows are never deleted);
the row count is exposed as a metric so growth can be watched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

AuditResult = Literal[
    "written", "dry_run", "denied", "rate_limited", "refused", "invalid", "failed", "unknown"
]
RESULTS: tuple[str, ...] = (
    "written",
    "dry_run",
    "denied",
    "rate_limited",
    "refused",
    "invalid",
    "failed",
    "unknown",
)
GENESIS = "0" * 64
"""``prev_hash`` of the first record."""
MAX_TEXT = 500
"""Longest text kept in a free-form field (message, requested value) [characters]."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        request_id TEXT NOT NULL,
        principal TEXT,
        role TEXT,
        client TEXT,
        site TEXT,
        asset TEXT,
        point TEXT,
        old_value TEXT,
        old_quality INTEGER,
        requested TEXT,
        raw TEXT,
        encoded TEXT,
        registers TEXT,
        dry_run INTEGER NOT NULL,
        result TEXT NOT NULL,
        status INTEGER NOT NULL,
        code TEXT,
        message TEXT,
        confirmed_value TEXT,
        confirmed_quality INTEGER,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One write attempt, as recorded.

    Attributes:
        at: RFC 3339 UTC time of the attempt (``...Z``).
        request_id: Id of the HTTP request (also in its ``X-Request-ID`` header).
        principal: Token name, or None when unauthenticated.
        role: The principal's role, or None.
        client: Client address (TCP peer).
        site: Site id from the URL (as given; the route only accepts slugs).
        asset: Asset id from the URL.
        point: Point id from the URL.
        old_value: The point's last reading before the attempt (engineering units), or None.
        old_quality: Its quality (OPC UA StatusCode), or None.
        requested: The requested value as sent (JSON scalar; a malformed body is kept as text,
            truncated to `MAX_TEXT` characters).
        raw: The raw value after the inverse of scale/offset, or None when not computed.
        encoded: The protocol request, e.g. ``FC16 unit_id=1 holding 10..11 = [...]``, or None.
        registers: The encoded words (Modbus), or None.
        dry_run: True for a dry run (nothing sent).
        result: See the module docstring.
        status: HTTP status answered.
        code: Protocol or refusal code (``exception_02``, ``timeout``, ``invalid_token``,
            ``writes_disabled``, ...), or None.
        message: Human-readable detail (no secrets), truncated to `MAX_TEXT` characters.
        confirmed_value: The value read back after the write (engineering units), or None.
        confirmed_quality: Its quality, or None.
    """

    at: str
    request_id: str
    principal: str | None
    role: str | None
    client: str | None
    site: str | None
    asset: str | None
    point: str | None
    old_value: Any
    old_quality: int | None
    requested: Any
    raw: Any
    encoded: str | None
    registers: list[int] | None
    dry_run: bool
    result: AuditResult
    status: int
    code: str | None
    message: str | None
    confirmed_value: Any
    confirmed_quality: int | None


_JSON_FIELDS = frozenset({"old_value", "requested", "raw", "registers", "confirmed_value"})
_COLUMNS = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A stored record with its id and chain hashes.

    Attributes:
        id: Row id, strictly increasing in the order of the attempts.
        record: The record.
        prev_hash: Hash of the previous entry (`GENESIS` for the first).
        hash: SHA-256 (hex) over ``prev_hash`` and the record's canonical JSON.
    """

    id: int
    record: AuditRecord
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """Result of `AuditLog.verify`.

    Attributes:
        ok: Every entry's hash matches its content and links to the previous entry.
        entries: Entries checked [count].
        first_bad_id: Id of the first entry that does not verify, or None.
    """

    ok: bool
    entries: int
    first_bad_id: int | None


def _canonical(record: AuditRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def chain_hash(prev_hash: str, record: AuditRecord) -> str:
    """SHA-256 hex of ``prev_hash``, a newline and the record's canonical JSON."""
    return hashlib.sha256(f"{prev_hash}\n{_canonical(record)}".encode()).hexdigest()


def _clip(value: Any) -> Any:  # noqa: ANN401 - any JSON scalar
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "…"
    return value


def _to_row(record: AuditRecord) -> list[Any]:
    row: list[Any] = []
    for name in _COLUMNS:
        value = getattr(record, name)
        if name in _JSON_FIELDS:
            row.append(None if value is None else json.dumps(value, allow_nan=False))
        elif name == "dry_run":
            row.append(1 if value else 0)
        else:
            row.append(value)
    return row


def _from_row(row: Sequence[Any]) -> AuditEntry:
    entry_id, *values, prev_hash, digest = row
    data: dict[str, Any] = {}
    for name, value in zip(_COLUMNS, values, strict=True):
        if name in _JSON_FIELDS:
            data[name] = None if value is None else json.loads(value)
        elif name == "dry_run":
            data[name] = bool(value)
        else:
            data[name] = value
    return AuditEntry(int(entry_id), AuditRecord(**data), str(prev_hash), str(digest))


# Column names come from `AuditRecord`'s fields, never from input; values are always bound.
_SELECT = f"SELECT id, {', '.join(_COLUMNS)}, prev_hash, hash FROM audit"  # noqa: S608  # nosec B608
_INSERT = (
    f"INSERT INTO audit ({', '.join(_COLUMNS)}, prev_hash, hash) "  # noqa: S608  # nosec B608
    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})"
)


class AuditLog:
    """The audit table, with its own SQLite connection on one dedicated thread.

    The database is opened at the first call (the store creates the file before the API
    runs). All I/O happens on the audit thread; the event loop only awaits.

    Args:
        path: The SQLite file (the store's, e.g. ``data/gateway.db``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="audit"
        )
        self._conn: sqlite3.Connection | None = None
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        """Records appended since start, by result (for metrics)."""

    # -- thread side ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # normally the store made it; same mode as the store's
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    msg = f"cannot enable WAL mode on {self.path} (got {mode})"
                    raise sqlite3.OperationalError(msg)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _append_sync(self, record: AuditRecord) -> AuditEntry:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev = str(last[0]) if last else GENESIS
            digest = chain_hash(prev, record)
            cur = conn.execute(_INSERT, [*_to_row(record), prev, digest])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return AuditEntry(int(cur.lastrowid or 0), record, prev, digest)

    def _page_sync(
        self, limit: int, before: int | None, result: str | None
    ) -> tuple[list[AuditEntry], int]:
        conn = self._connection()
        where: list[str] = []
        args: list[Any] = []
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if result is not None:
            where.append("result = ?")
            args.append(result)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = conn.execute(f"{_SELECT}{clause} ORDER BY id DESC LIMIT ?", [*args, limit])
        entries = [_from_row(r) for r in rows]
        total = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
        return entries, total

    def _verify_sync(self) -> ChainCheck:
        conn = self._connection()
        prev = GENESIS
        count = 0
        for row in conn.execute(f"{_SELECT} ORDER BY id"):
            entry = _from_row(row)
            count += 1
            if entry.prev_hash != prev or chain_hash(prev, entry.record) != entry.hash:
                return ChainCheck(False, count, entry.id)
            prev = entry.hash
        return ChainCheck(True, count, None)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- event-loop side ------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    async def ready(self) -> None:
        """Open the database (creating the table) now; a write is refused if this fails.

        Raises:
            sqlite3.Error: The database cannot be opened or written.
        """
        await self._run(self._connection)

    async def append(self, record: AuditRecord) -> AuditEntry:
        """Insert one record and commit (fsynced) before returning.

        Free-form text fields are truncated to `MAX_TEXT` characters.

        Returns:
            The stored entry with its id and hashes.

        Raises:
            sqlite3.Error: The database cannot be written.
        """
        clipped = AuditRecord(
            **{
                name: _clip(getattr(record, name))
                if name in ("requested", "message")
                else getattr(record, name)
                for name in _COLUMNS
            }
        )
        entry = await self._run(lambda: self._append_sync(clipped))
        self.counts[record.result] = self.counts.get(record.result, 0) + 1
        return entry

    async def page(
        self, *, limit: int = 100, before: int | None = None, result: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        """Entries newest first.

        Args:
            limit: Entries at most [1..].
            before: Only entries with an id below this (the cursor of the next page).
            result: Only entries with this result.

        Returns:
            ``(entries, total)``: the page and the number of entries in the whole log.

        Raises:
            sqlite3.Error: The database cannot be read.
        """
        return await self._run(lambda: self._page_sync(limit, before, result))

    async def verify(self) -> ChainCheck:
        """Walk the whole log and check every hash and link (O(entries)).

        Raises:
            sqlite3.Error: The database cannot be read.
        """
        return await self._run(self._verify_sync)

    async def close(self) -> None:
        """Close the database connection (idempotent); a later call opens it again.

        The app closes it when its lifespan ends; an app served again (tests start and stop
        the ASGI lifespan per client) reopens it at the next call.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
