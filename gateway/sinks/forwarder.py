"""The per-sink outbox loop: batches, retries, split, dead letters, status (DESIGN.md §3).

One `Forwarder` task per configured sink reads that sink's outbox from the store
(`gateway.store.Store.outbox_take`), encodes the rows as line protocol, writes them, and
acknowledges the batch in the store only after a 2xx (`Store.outbox_ack`): a reading leaves a
sink's outbox only once that sink has it (M1). What happens on failure (RELIABILITY R3-R5):

- connection refused, timeout, 5xx, 429: the same batch is retried after a capped exponential
  backoff with ±20 % jitter (``initial_retry_delay`` doubling up to ``max_retry_delay``); a
  ``Retry-After`` from the server is honoured instead (waiting 100-110 % of it);
- 401/403/404: the same, plus an error log on the state change (an alarm): data keeps
  buffering in the store and requests stay at most one per backoff interval (no hot loop);
- 413: the batch is split in halves (recursively); a single line that is still too large is
  dead-lettered;
- 400/422: some points were refused. The batch is bisected: halves that succeed are kept
  (InfluxDB writes the valid points of a partial write; re-sending them overwrites identical
  points), and a single refused line is moved to the store's dead-letter table with the
  server's reason. Only the refused points are dead-lettered, and the loop always ends.

Batches are oldest first. While a backlog of more than one batch drains, batches alternate
between the oldest rows and the newest ones (the store's *live segment*), so live data reaches
the sink within about two request round trips instead of waiting for the whole drain. Below one
batch of backlog, the forwarder waits up to ``flush_interval`` for a batch to fill.

The status (`Forwarder.status`) says ``ok`` / ``degraded`` with backlog, oldest unsent reading,
last error, and counters for the metrics (writes by status code, rejected by reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import cast

from gateway.clock import monotonic, utc_now
from gateway.sinks.base import ErrorKind, Sink, SinkError
from gateway.sinks.lineprotocol import LineProtocolError, OutboxRow, encode_rows, tag_prefix
from gateway.store import DeadLetter, OutboxBatch, Store

log = logging.getLogger("ot_gateway.sinks")

__all__ = ["Forwarder"]


class Forwarder:
    """Forwards one sink's outbox until cancelled.

    Args:
        store: The open store; the sink must be registered (`Store.register_sinks`).
        sink: Where to write.
        batch_size: Readings per request at most [count, >= 1].
        flush_interval: Longest wait for a batch to fill before sending a partial one [s].
        max_retry_delay: Cap of the retry backoff [s].
        initial_retry_delay: First retry delay [s]; default min(0.5, max_retry_delay).
        on_event: Optional callback for human-facing state-change lines.

    Attributes:
        state: ``starting`` (nothing written yet), ``ok`` (the last write succeeded) or
            ``degraded`` (the last write failed; retrying).
        last_error: Reason of the latest failed or refused write, or None.
        last_error_at: When it happened (aware UTC), or None.
        last_ok_at: When the latest 2xx came (aware UTC), or None.
        writes: Write requests by result code (``"204"``, ``"503"``, ``"timeout"``,
            ``"connection_error"`` ...) [count].
        rejected: Readings dead-lettered by reason (``http_400``, ``http_422``, ``http_413``,
            ``unencodable``) [count].
        written: Readings acknowledged by the sink [count].
        dead_lettered: Readings moved to the dead-letter table [count].
    """

    def __init__(
        self,
        store: Store,
        sink: Sink,
        *,
        batch_size: int,
        flush_interval: float,
        max_retry_delay: float,
        initial_retry_delay: float | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._sink = sink
        self.name = sink.name
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_retry_delay = max_retry_delay
        self.initial_retry_delay = min(
            initial_retry_delay if initial_retry_delay is not None else 0.5, max_retry_delay
        )
        self._on_event = on_event or (lambda _msg: None)
        self.state = "starting"
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_ok_at: datetime | None = None
        self.writes: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.written = 0
        self.dead_lettered = 0
        self._wake = asyncio.Event()
        self._prefixes: dict[int, str | None] = {}
        self._bad_points: dict[int, str] = {}
        self._last_take = -1e18
        self._alternate = False
        self._batch: OutboxBatch | None = None
        self._flushing = False

    # ------------------------------------------------------------------ control

    def notify(self) -> None:
        """Wake the loop: readings were committed (called by the runtime's writer)."""
        self._wake.set()

    async def run(self) -> None:
        """Forward batches forever (until cancelled)."""
        try:
            while True:
                batch = await self._next_batch()
                self._batch = batch
                await self._deliver(batch)
                self._batch = None
        finally:
            if self._batch is not None:
                self._store.outbox_release(self._batch)
                self._batch = None

    async def flush(self, within: float) -> bool:
        """Send partial batches at once and wait until the outbox is empty (graceful stop).

        Used by the runtime after the last readings were committed: a clean stop leaves nothing
        behind for a reachable sink. A degraded sink is not waited for (its rows stay in the
        outbox and go after the next start).

        Args:
            within: Longest wait [s, >= 0].

        Returns:
            True when the sink's backlog is 0 (nothing in flight), else False.
        """
        self._flushing = True
        self._wake.set()
        deadline = monotonic() + within
        while self._store.sink_backlog(self.name) > 0:
            if self.state == "degraded" or monotonic() >= deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        """Close the sink's connections."""
        await self._sink.close()

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        """The sink's state for readiness, the API and metrics.

        Returns:
            ``name``, ``target``, ``state`` (ok/degraded/starting), ``backlog`` [count],
            ``oldest_unsent`` (aware UTC or None), ``oldest_unsent_age_s`` [s] or None,
            ``last_error``, ``last_error_at``, ``last_ok_at``, ``written``, ``dead_lettered``,
            ``dropped`` (readings dropped unsent by the outbox bound, all time) [count],
            ``in_flight`` [count].
        """
        cur = self._store.sink_cursor(self.name)
        now = utc_now()
        oldest = cur.oldest_unsent if cur.backlog else None
        return {
            "name": self.name,
            "target": self._sink.target,
            "state": self.state,
            "backlog": cur.backlog,
            "oldest_unsent": oldest,
            "oldest_unsent_age_s": (
                round(max(0.0, (now - oldest).total_seconds()), 3) if oldest else None
            ),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_ok_at": self.last_ok_at,
            "written": self.written,
            "dead_lettered": self.dead_lettered,
            "dropped": cur.dropped,
            "in_flight": cur.in_flight,
        }

    # ------------------------------------------------------------------ batching

    async def _next_batch(self) -> OutboxBatch:
        store, name, size = self._store, self.name, self.batch_size
        while True:
            backlog = store.sink_backlog(name)
            if backlog == 0:
                self._wake.clear()
                if store.sink_backlog(name) == 0:
                    await self._wake.wait()
                continue
            if backlog < size and not self._flushing:
                remaining = self._last_take + self.flush_interval - monotonic()
                if remaining > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    if store.sink_backlog(name) < size and monotonic() < (
                        self._last_take + self.flush_interval
                    ):
                        continue
            backlogged = backlog > size
            live = backlogged and self._alternate
            self._alternate = backlogged and not self._alternate
            self._last_take = monotonic()
            batch = await store.outbox_take(name, size, live=live)
            if batch is None and live:
                batch = await store.outbox_take(name, size, live=False)
            if batch is not None:
                return batch
            # Counted but nothing to read (rows purged meanwhile): wait for news.
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)

    async def _prefixes_for(self, rows: Sequence[OutboxRow]) -> None:
        missing = {r[2] for r in rows} - self._prefixes.keys()
        if not missing:
            return
        idents = await self._store.point_idents(sorted(missing))
        for pid in missing:
            ident = idents.get(pid)
            if ident is None:
                self._prefixes[pid] = None
                self._bad_points[pid] = f"point id {pid} not in the store"
                continue
            try:
                self._prefixes[pid] = tag_prefix(*ident)
            except LineProtocolError as exc:
                self._prefixes[pid] = None
                self._bad_points[pid] = str(exc)

    async def _deliver(self, batch: OutboxBatch) -> None:
        rows = batch.rows
        await self._prefixes_for(rows)
        dead: list[DeadLetter] = []
        if self._bad_points and any(self._prefixes[r[2]] is None for r in rows):
            kept = []
            for r in rows:
                if self._prefixes[r[2]] is None:
                    dead.append(DeadLetter(r[0], r[1], r[2], "", None, self._bad_points[r[2]]))
                    self.rejected["unencodable"] = self.rejected.get("unencodable", 0) + 1
                else:
                    kept.append(r)
            rows = kept
        if rows:
            prefixes = cast(Mapping[int, str], self._prefixes)  # None entries filtered above
            loop = asyncio.get_running_loop()
            lines = await loop.run_in_executor(None, encode_rows, rows, prefixes)
            dead.extend(await self._send(rows, lines))
        await self._store.outbox_ack(batch, dead)
        self.written += len(batch.rows) - len(dead)
        self.dead_lettered += len(dead)

    # ------------------------------------------------------------------ writing

    async def _send(self, rows: Sequence[OutboxRow], lines: Sequence[str]) -> list[DeadLetter]:
        """Write `lines`; split on 413, bisect on 400/422; return the refused single lines."""
        dead: list[DeadLetter] = []
        pending: list[tuple[Sequence[OutboxRow], Sequence[str]]] = [(rows, lines)]
        while pending:
            part_rows, part_lines = pending.pop()
            try:
                await self._write_until_answered(part_lines)
            except SinkError as exc:
                if len(part_lines) == 1:
                    r = part_rows[0]
                    reason = f"http_{exc.status}" if exc.status else exc.code
                    self.rejected[reason] = self.rejected.get(reason, 0) + 1
                    line = part_lines[0]
                    dead.append(DeadLetter(r[0], r[1], r[2], line, exc.status, exc.message))
                    log.warning(
                        "sink %s: refused one reading (moved to dead letters): %s",
                        self.name,
                        exc.message,
                    )
                    continue
                mid = len(part_lines) // 2
                # Stack order keeps the oldest half first.
                pending.append((part_rows[mid:], part_lines[mid:]))
                pending.append((part_rows[:mid], part_lines[:mid]))
        return dead

    async def _write_until_answered(self, lines: Sequence[str]) -> None:
        """Write until a 2xx (return) or a refusal of the content (raise); retry the rest.

        Raises:
            SinkError: With kind `ErrorKind.REJECT` or `ErrorKind.TOO_LARGE`.
        """
        body = "\n".join(lines).encode("utf-8")
        attempt = 0
        while True:
            try:
                code = await self._sink.write(body)
            except SinkError as exc:
                self.writes[exc.code] = self.writes.get(exc.code, 0) + 1
                self.last_error = exc.message
                self.last_error_at = utc_now()
                if exc.kind in (ErrorKind.REJECT, ErrorKind.TOO_LARGE):
                    raise
                self._degraded(exc)
                if exc.retry_after is not None:
                    delay = exc.retry_after * random.uniform(1.0, 1.1)
                else:
                    delay = self.initial_retry_delay * (2.0 ** min(attempt, 30))
                    delay = min(self.max_retry_delay, delay * random.uniform(0.8, 1.2))
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self.writes[code] = self.writes.get(code, 0) + 1
            self.last_ok_at = utc_now()
            if self.state != "ok":
                if self.state == "degraded":
                    log.warning("sink %s: writes succeed again", self.name)
                    self._on_event(f"sink {self.name}: writes succeed again")
                self.state = "ok"
            return

    def _degraded(self, exc: SinkError) -> None:
        if self.state == "degraded":
            return
        self.state = "degraded"
        backlog = self._store.sink_backlog(self.name)
        if exc.kind is ErrorKind.AUTH:
            log.error(
                "sink %s: ALARM: %s (check token, org and bucket); buffering %d readings",
                self.name,
                exc.message,
                backlog,
            )
        else:
            log.warning(
                "sink %s: write failed: %s; retrying with backoff, buffering %d readings",
                self.name,
                exc.message,
                backlog,
            )
        self._on_event(f"sink {self.name}: degraded: {exc.message}")

