"""The ingest bound: while the store stalls, uncommitted readings stay bounded (B6, R8, M4).

The runtime's real store (an SQLite file) is stalled by holding its write lock from a second
connection, as a hung disk or a long checkpoint would. Readings beyond `Runtime.ingest_max`
waiting for a commit are dropped, counted exactly (`otgw_ingest_dropped_total`) and recorded as
`buffer_overflow` gaps with exact source-time bounds; nothing already accepted is lost, and a
reading whose acknowledgement waits for the commit (MQTT QoS 1, ``ack: commit``) is never
dropped.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.config import parse_config
from gateway.runtime import Runtime
from inventory.views import GapCause
from tests.test_forwarder import T0, reading, until

pytestmark = pytest.mark.timeout(90)


def _runtime(tmp_path: Path, limit: int) -> Runtime:
    cfg = parse_config(f"gateway: {{data_dir: {tmp_path / 'data'}}}\n")
    rt = Runtime(cfg, config_dir=tmp_path)
    rt.ingest_max = limit
    return rt


def _stored(db: Path) -> list[tuple[str, int]]:
    """(point, source time in ms after T0) of every stored reading, read independently."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT p.point, r.ts_ns FROM readings r JOIN points p ON p.id = r.point_id"
        ).fetchall()
    finally:
        conn.close()
    t0 = int(T0.timestamp() * 1e9)
    return [(str(point), (int(ts) - t0) // 1_000_000) for point, ts in rows]


async def test_a_stalled_store_drops_new_readings_counts_them_and_records_exact_gaps(
    tmp_path: Path,
) -> None:
    rt = _runtime(tmp_path, limit=1000)
    await rt.start()
    try:
        assert rt.store is not None
        db = rt.store.path
        rt._submit([reading(i) for i in range(500)])
        await until(lambda: rt.counters.readings_committed == 500, what="first commit")

        lock = sqlite3.connect(db, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the store's next commit waits for this
        try:
            for start in range(500, 2500, 200):  # 10 batches of 200 while nothing commits
                rt._submit([reading(i) for i in range(start, start + 200)])
                await asyncio.sleep(0.05)
            assert rt.counters.ingest_pending == 1000  # 5 batches fit the limit
            assert rt.counters.ingest_dropped == 1000  # the other 5 were refused
            assert rt.counters.readings_committed == 500  # the stall held every commit
        finally:
            lock.rollback()
            lock.close()

        await until(lambda: rt.counters.readings_committed == 1500, what="commit after stall")
        await until(lambda: rt.inventory.gaps(open=False), what="ingest gaps")
        assert rt.counters.readings_in == rt.counters.readings_committed + rt.counters.ingest_dropped
        assert rt.counters.ingest_pending == 0

        # Readings 1500..2499 were dropped: per point p0..p6, a gap from its first to its last.
        gaps = {g.point: g for g in rt.inventory.gaps(open=False)}
        assert set(gaps) == {f"p{k}" for k in range(7)}
        for k in range(7):
            dropped = [i for i in range(1500, 2500) if i % 7 == k]
            gap = gaps[f"p{k}"]
            assert gap.cause == GapCause.BUFFER_OVERFLOW
            assert gap.id.endswith("~ingest")
            assert gap.start == T0 + timedelta(milliseconds=dropped[0])
            assert gap.end == T0 + timedelta(milliseconds=dropped[-1])

        stored = _stored(db)
        assert sorted(ms for _, ms in stored) == list(range(1500))  # nothing accepted was lost
        for point, ms in stored:  # no stored reading falls inside its point's gap
            gap = gaps[point]
            assert not (gap.start <= T0 + timedelta(milliseconds=ms) <= gap.end)

        text = generate_latest(rt.metrics_registry()).decode()
        assert "otgw_ingest_dropped_total 1000.0" in text
        assert "otgw_ingest_limit_readings 1000.0" in text

        # The gaps are durable: the store has them too.
        saved = {g.id for g in await rt.store.load_gaps()}
        assert {g.id for g in gaps.values()} <= saved

        # Once the store caught up, readings are accepted again.
        rt._submit([reading(i) for i in range(2500, 2600)])
        await until(lambda: rt.counters.readings_committed == 1600, what="commit after recovery")
        assert rt.counters.ingest_dropped == 1000
    finally:
        await rt.stop()


async def test_readings_waiting_for_an_acknowledgement_are_never_dropped(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, limit=100)
    await rt.start()
    acked: list[int] = []
    try:
        assert rt.store is not None
        lock = sqlite3.connect(rt.store.path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            rt._submit([reading(i) for i in range(100)])  # fills the limit
            await asyncio.sleep(0.05)
            rt._submit([reading(i) for i in range(100, 150)], lambda: acked.append(1))
            rt._submit([reading(i) for i in range(150, 160)])  # no acknowledgement: dropped
            await asyncio.sleep(0.05)
            assert acked == []  # nothing committed yet
        finally:
            lock.rollback()
            lock.close()
        await until(lambda: acked == [1], what="acknowledgement after the commit")
        await until(lambda: rt.counters.readings_committed == 150, what="commit")
        assert rt.counters.ingest_dropped == 10
        assert sorted(ms for _, ms in _stored(rt.store.path)) == list(range(150))
    finally:
        await rt.stop()


async def test_a_backlog_larger_than_one_commit_is_committed_in_bounded_commits(
    tmp_path: Path,
) -> None:
    # Every point reporting at once (e.g. all devices unreachable at start) queues more than
    # one commit takes (`COMMIT_BATCH_MAX`): all of it is committed, none dropped, in several
    # commits of at most that many readings, and the acknowledgement comes after the last.
    from gateway.runtime import COMMIT_BATCH_MAX

    rt = _runtime(tmp_path, limit=10 * COMMIT_BATCH_MAX)
    await rt.start()
    acked: list[int] = []
    try:
        assert rt.store is not None
        total = 3 * COMMIT_BATCH_MAX + 500
        lock = sqlite3.connect(rt.store.path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # let the backlog pile up
        try:
            for start in range(0, total, 500):
                rt._submit([reading(i) for i in range(start, start + 500)])
            rt._submit([], lambda: acked.append(1))
            await asyncio.sleep(0.05)
        finally:
            lock.rollback()
            lock.close()
        batches_before = rt.counters.commit_batches
        await until(lambda: acked == [1], what="acknowledgement after the backlog")
        assert rt.counters.readings_committed == total
        assert rt.counters.ingest_dropped == 0
        assert rt.counters.commit_batches - batches_before >= total // COMMIT_BATCH_MAX + 1
        assert len(_stored(rt.store.path)) == total
    finally:
        await rt.stop()
