"""The SQLite store on real files: round trips, gaps, meta, purge, integrity (M1, M4, R6, R9)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.model import Reading, Value
from gateway.quality import Q
from gateway.store import Store, StoreClosedError
from inventory.views import Gap, GapCause

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
MiB = 1024 * 1024


def reading(
    point: str = "p1",
    value: Value = 1.5,
    *,
    t: datetime = T0,
    quality: int = Q.GOOD,
    site: str = "s1",
    asset: str = "a1",
    unit: str | None = "Cel",
) -> Reading:
    return Reading(
        site=site,
        asset=asset,
        point=point,
        value=value,
        unit=unit,
        quality=quality,
        source_time=t,
        gateway_time=t + timedelta(milliseconds=3),
        source=f"modbus://127.0.0.1:5020/1/hr/{point}",
    )


async def open_store(path: Path, *, retention_hours: float = 24.0, max_bytes: int = 64 * MiB):
    return await Store.open(path, retention_hours=retention_hours, max_bytes=max_bytes)


@pytest.fixture
async def store(tmp_path: Path):
    s = await open_store(tmp_path / "data" / "gw.db")
    yield s
    await s.close()


async def test_append_load_latest_round_trip_all_value_types(store: Store) -> None:
    values: dict[str, Value] = {
        "f": 21.25,
        "f_whole": 3.0,
        "i": -42,
        "i_big": 2**62,
        "i_huge": 2**70,
        "b_true": True,
        "b_false": False,
        "s": "RUNNING ✓",
        "empty": "",
        "none": None,
    }
    readings = [
        reading(name, v, quality=Q.BAD_TIMEOUT if v is None else Q.GOOD)
        for name, v in values.items()
    ]
    await store.append(readings)
    latest = await store.load_latest()
    assert set(latest) == {f"s1/a1/{name}" for name in values}
    for r in readings:
        got = latest[r.key]
        assert got == r
        assert type(got.value) is type(r.value)


async def test_latest_is_newest_by_source_time_and_history_keeps_all(store: Store) -> None:
    t1 = T0 + timedelta(seconds=1)
    await store.append([reading(value=1.0, t=T0), reading(value=2.0, t=t1)])
    await store.append([reading(value=0.5, t=T0 - timedelta(seconds=5))])  # late replay
    latest = await store.load_latest()
    assert latest["s1/a1/p1"].value == 2.0
    hist = await store.query_readings("s1/a1/p1", start=None, end=None, limit=10)
    assert [r.value for r in hist] == [0.5, 1.0, 2.0]
    newest = await store.query_readings(
        "s1/a1/p1", start=None, end=None, limit=2, newest_first=True
    )
    assert [r.value for r in newest] == [2.0, 1.0]
    window = await store.query_readings("s1/a1/p1", start=T0, end=t1, limit=10)
    assert [r.value for r in window] == [1.0]  # [start, end)
    assert await store.query_readings("s1/a1/nope", start=None, end=None, limit=10) == []
    assert (await store.stats())["readings"] == 3


async def test_unit_and_source_follow_the_point(store: Store) -> None:
    await store.append([reading(unit="Cel")])
    await store.append([reading(unit="K", t=T0 + timedelta(seconds=1))])
    latest = await store.load_latest()
    assert latest["s1/a1/p1"].unit == "K"


async def test_same_point_id_on_interleaved_assets_and_sites_stays_apart(store: Store) -> None:
    # The store caches point rows per asset while a batch runs: a batch that jumps between
    # assets and sites with the same point ids must still file every reading under its own.
    batch = [
        reading("p1", 1.0, asset="a1"),
        reading("p1", 2.0, asset="a2"),
        reading("p2", 3.0, asset="a1"),
        reading("p1", 4.0, site="s2", asset="a1"),
        reading("p1", 5.0, asset="a2", t=T0 + timedelta(seconds=1)),
        reading("p1", 6.0, asset="a1", t=T0 + timedelta(seconds=1)),
    ]
    await store.append(batch)
    latest = {k: r.value for k, r in (await store.load_latest()).items()}
    assert latest == {"s1/a1/p1": 6.0, "s1/a2/p1": 5.0, "s1/a1/p2": 3.0, "s2/a1/p1": 4.0}
    assert (await store.stats())["readings"] == 6


async def test_unit_change_after_reopen_updates_the_point(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    s = await open_store(path)
    await s.append([reading("p1", 1.0, unit="Cel")])
    await s.close()
    s = await open_store(path)
    try:
        await s.append([reading("p1", 2.0, unit="Cel", t=T0 + timedelta(seconds=1))])
        assert (await s.load_latest())["s1/a1/p1"].unit == "Cel"
        await s.append([reading("p1", 3.0, unit="K", t=T0 + timedelta(seconds=2))])
        latest = await s.load_latest()
        assert (latest["s1/a1/p1"].unit, latest["s1/a1/p1"].value) == ("K", 3.0)
        assert len(latest) == 1  # the same point row, not a second one
    finally:
        await s.close()


async def test_append_rejects_unsupported_value_and_stores_nothing(store: Store) -> None:
    bad = reading(value=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.append([reading("ok"), bad])
    assert await store.load_latest() == {}
    await store.append([reading("ok")])
    assert set(await store.load_latest()) == {"s1/a1/ok"}


def gap(gid: str, start: datetime, end: datetime | None, **kw: object) -> Gap:
    fields: dict[str, object] = {
        "id": gid,
        "site": "s1",
        "asset": "a1",
        "point": "p1",
        "cause": GapCause.TIMEOUT,
        "start": start,
        "end": end,
        "last_good": start - timedelta(seconds=1),
        "first_bad": start,
        "expected_interval": 1.0,
    }
    fields.update(kw)
    return Gap(**fields)  # type: ignore[arg-type]


async def test_gaps_upsert_and_load_open_plus_recent_closed(store: Store) -> None:
    g_open = gap("g-open", T0, None)
    await store.save_gaps([g_open])
    assert await store.load_gaps() == [g_open]
    g_open.end = T0 + timedelta(seconds=7)
    await store.save_gaps([g_open])
    assert await store.load_gaps() == [g_open]
    stale = gap("g-stale", T0 - timedelta(hours=1), None, cause=GapCause.STALE, first_bad=None,
                last_good=None)
    closed = [
        gap(f"c{i}", T0 + timedelta(minutes=i), T0 + timedelta(minutes=i, seconds=5))
        for i in range(1, 6)
    ]
    await store.save_gaps([stale, *closed])
    loaded = await store.load_gaps(limit=2)
    # the open one, plus the 2 most recently closed, ordered by start
    assert [g.id for g in loaded] == ["g-stale", "c4", "c5"]
    assert loaded[0] == stale
    assert len(await store.load_gaps()) == 7


async def test_meta(store: Store) -> None:
    assert await store.get_meta("last_alive") is None
    await store.set_meta("last_alive", "2026-01-02T03:04:05.000000Z")
    await store.set_meta("last_alive", "2026-01-02T03:04:10.000000Z")
    assert await store.get_meta("last_alive") == "2026-01-02T03:04:10.000000Z"


async def test_count_usable(store: Store) -> None:
    batch = []
    for i in range(10):
        t = T0 + timedelta(seconds=i)
        batch.append(reading("p1", float(i), t=t))
        q = Q.GOOD if i % 2 else Q.BAD_TIMEOUT
        batch.append(reading("p2", float(i) if q == Q.GOOD else None, t=t, quality=q))
        batch.append(reading("p3", 1, t=t, quality=Q.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED))
    await store.append(batch)
    counts = await store.count_usable(T0 + timedelta(seconds=4))
    assert counts == {"s1/a1/p1": 6, "s1/a1/p2": 3, "s1/a1/p3": 6}
    assert await store.count_usable(T0 + timedelta(hours=1)) == {}


async def test_purge_by_age(store: Store) -> None:
    now = T0 + timedelta(hours=48)
    old = [reading(f"p{i}", t=T0 + timedelta(seconds=i)) for i in range(100)]
    fresh = [reading(f"p{i}", t=now - timedelta(hours=1)) for i in range(50)]
    await store.append(old + fresh)
    deleted = await store.purge(now)  # retention 24 h
    assert deleted == 100
    assert store.last_purge is not None
    assert (store.last_purge.by_age, store.last_purge.by_size) == (100, 0)
    assert (await store.stats())["readings"] == 50
    # latest is never purged: points that went quiet keep their last value
    assert len(await store.load_latest()) == 100
    assert await store.purge(now) == 0


async def test_purge_by_size_drops_oldest_first(tmp_path: Path) -> None:
    cap = 256 * 1024
    s = await open_store(tmp_path / "gw.db", retention_hours=10_000, max_bytes=cap)
    try:
        n = 0
        for _ in range(40):
            batch = [
                reading(f"p{i % 20}", float(n + i), t=T0 + timedelta(seconds=n + i))
                for i in range(500)
            ]
            n += len(batch)
            await s.append(batch)
        before = await s.stats()
        assert before["used_bytes"] > cap
        deleted = await s.purge(T0 + timedelta(seconds=n))
        after = await s.stats()
        assert deleted > 0
        assert after["readings"] == n - deleted
        assert after["used_bytes"] <= cap
        assert s.last_purge is not None
        assert s.last_purge.by_size == deleted
        cut = s.last_purge.size_cutoff
        assert cut is not None
        # oldest first: everything left is newer than the cutoff, everything older is gone
        for i in range(20):
            rows = await s.query_readings(f"s1/a1/p{i}", start=None, end=None, limit=1)
            assert rows
            assert rows[0].source_time > cut
        assert await s.count_usable(T0) == await s.count_usable(cut + timedelta(microseconds=1))
        # freed pages go back to the file system after the checkpoint
        await s.close()
        assert (tmp_path / "gw.db").stat().st_size <= before["file_bytes"]
    finally:
        await s.close()


async def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    s = await open_store(path)
    await s.append([reading("p1", 1.0), reading("p2", True)])
    await s.save_gaps([gap("g1", T0, None)])
    await s.set_meta("monitored_since", "2026-01-01T00:00:00.000000Z")
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreClosedError):
        await s.append([reading()])
    s2 = await open_store(path)
    try:
        assert s2.alarms == []
        latest = await s2.load_latest()
        assert latest["s1/a1/p2"].value is True
        assert [g.id for g in await s2.load_gaps()] == ["g1"]
        assert await s2.get_meta("monitored_since") == "2026-01-01T00:00:00.000000Z"
        assert (await s2.stats())["readings"] == 2
        await s2.append([reading("p3", 3)])  # the point dictionary continues
        assert len(await s2.load_latest()) == 3
    finally:
        await s2.close()


async def test_crash_without_close_keeps_committed_rows(tmp_path: Path) -> None:
    """R6: what `append` returned for is in the file even if close never runs (WAL replay)."""
    path = tmp_path / "gw.db"
    s = await open_store(path)
    await s.append([reading(f"p{i}", float(i)) for i in range(100)])
    # Copy the files as a power cut would leave them: db + wal, no checkpoint.
    crash = tmp_path / "crash"
    crash.mkdir()
    for suffix in ("", "-wal"):
        src = path.with_name(path.name + suffix)
        (crash / ("gw.db" + suffix)).write_bytes(src.read_bytes())
    await s.close()
    s2 = await open_store(crash / "gw.db")
    try:
        assert s2.alarms == []
        assert len(await s2.load_latest()) == 100
    finally:
        await s2.close()


async def test_torn_wal_tail_loses_only_the_torn_transaction(tmp_path: Path) -> None:
    """R6: a crash mid-commit leaves a torn WAL tail; SQLite discards it, no alarm."""
    path = tmp_path / "gw.db"
    s = await open_store(path)
    for b in range(5):  # five separate commits
        await s.append([reading(f"p{i}", float(b), t=T0 + timedelta(seconds=b)) for i in range(50)])
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "gw.db").write_bytes(path.read_bytes())
    wal = path.with_name("gw.db-wal").read_bytes()
    (crash / "gw.db-wal").write_bytes(wal[:-100])  # the last frame is torn
    await s.close()
    s2 = await open_store(crash / "gw.db")
    try:
        assert s2.alarms == []
        rows = (await s2.stats())["readings"]
        assert 200 <= rows < 250
        assert rows % 50 == 0  # whole transactions only
    finally:
        await s2.close()


def _corrupt_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".corrupt-" in p.name)


async def _filled_store(path: Path) -> None:
    s = await open_store(path)
    for b in range(20):
        await s.append(
            [reading(f"p{i}", float(i), t=T0 + timedelta(seconds=b)) for i in range(200)]
        )
    await s.close()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip", "empty_header"])
async def test_corrupt_file_is_moved_aside_and_store_starts_fresh(
    tmp_path: Path, damage: str
) -> None:
    """R9: no exception, a fresh store, the bad file kept as <name>.corrupt-<ts>, an alarm."""
    path = tmp_path / "gw.db"
    if damage == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        await _filled_store(path)
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: len(data) - 4096]
        elif damage == "flip":
            for off in range(4096 + 100, len(data), 997):  # every page after the first
                data[off] ^= 0xFF
        else:
            data[:16] = b"definitely nope\0"
        path.write_bytes(bytes(data))
    s = await open_store(path)
    try:
        assert len(s.alarms) == 1
        assert "moved to gw.db.corrupt-" in s.alarms[0]
        assert _corrupt_names(tmp_path)[0].startswith("gw.db.corrupt-")
        assert await s.load_latest() == {}
        await s.append([reading()])
        assert len(await s.load_latest()) == 1
    finally:
        await s.close()
    s2 = await open_store(path)  # the fresh store is healthy
    try:
        assert s2.alarms == []
    finally:
        await s2.close()


async def test_corrupt_wal_and_shm_move_with_the_database(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    path.write_bytes(b"not a database" * 1000)
    path.with_name("gw.db-wal").write_bytes(b"x" * 100)
    path.with_name("gw.db-shm").write_bytes(b"y" * 100)
    s = await open_store(path)
    try:
        names = _corrupt_names(tmp_path)
        assert len(names) == 3
        base = next(n for n in names if not n.endswith(("-wal", "-shm")))
        assert set(names) == {base, base + "-wal", base + "-shm"}
    finally:
        await s.close()


async def test_file_mode_0600_and_parent_created(tmp_path: Path) -> None:
    """S12: the buffer database is readable by its owner only."""
    path = tmp_path / "a" / "b" / "gw.db"
    s = await open_store(path)
    try:
        await s.append([reading()])
        for suffix in ("", "-wal", "-shm"):
            f = path.with_name(path.name + suffix)
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        await s.close()
    path.chmod(0o644)
    s = await open_store(path)  # an existing file is tightened
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        await s.close()


async def test_wal_full_sync_and_single_ts_index(store: Store) -> None:
    """M1: WAL + synchronous=FULL; §8: one index on the hot table."""
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        idx = con.execute("PRAGMA index_list(readings)").fetchall()
        assert [row[1] for row in idx] == ["readings_ts"]
    finally:
        con.close()
    sync = await store._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert sync in (0, 1, 2, 3)  # per-connection; the writer's is checked below
    assert await store._write(
        lambda: store._wconn.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore[union-attr]
    ) == 2


async def test_concurrent_appends_from_20_coroutines_all_committed(store: Store) -> None:
    async def producer(k: int) -> None:
        for b in range(10):
            await store.append(
                [reading(f"p{k}", float(b * 5 + i), t=T0 + timedelta(seconds=b * 5 + i))
                 for i in range(5)]
            )

    await asyncio.gather(*(producer(k) for k in range(20)))
    assert (await store.stats())["readings"] == 20 * 10 * 5
    counts = await store.count_usable(T0)
    assert counts == {f"s1/a1/p{k}": 50 for k in range(20)}
    # committed means on disk: a separate connection sees every row
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("SELECT count(*) FROM readings").fetchone()[0] == 1000
    finally:
        con.close()


async def test_cancelled_append_before_it_runs_is_not_stored(tmp_path: Path) -> None:
    s = await open_store(tmp_path / "gw.db")
    try:
        release = threading.Event()
        blocker = asyncio.ensure_future(s._write(lambda: release.wait(10)))  # hold the writer
        task = asyncio.ensure_future(s.append([reading("cancelled")]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await blocker is True
        await s.append([reading("kept")])
        assert set(await s.load_latest()) == {"s1/a1/kept"}
    finally:
        await s.close()
