"""Forwarder error paths against the failure-injecting STUB (RELIABILITY R3-R5, R8, M1, M4, M12).

The real store (SQLite file) and the real InfluxDB sink (influxdb-client over HTTP) run
in-process; only the server is the stub (tests/influx_stub.py), for failures a real server
will not produce on demand. The normal path runs against victoria-metrics in
tests/test_influx_e2e.py. Every wait is bounded by a deadline; timing is only asserted as a
lower bound (a slow machine can only make waits longer).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.config import parse_config
from gateway.model import Reading
from gateway.runtime import Runtime
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.influx import InfluxSink, parse_retry_after, redact_url
from gateway.store import Store
from inventory.views import GapCause
from tests.influx_stub import InfluxStub
from tests.vm_helpers import free_port

pytestmark = pytest.mark.timeout(90)

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
SENTINEL = "SENTINEL-token-5f1c"
_VALUE = re.compile(r" value=([^, ]+)")


def reading(i: int, *, point: str | None = None, asset: str = "a1", value: object = None) -> Reading:
    """Reading number `i`: value float(i) unless given, source time T0 + i ms."""
    return Reading(
        site="s1", asset=asset, point=point or f"p{i % 7}",
        value=float(i) if value is None else value,  # type: ignore[arg-type]
        unit=None, quality=0, source_time=T0 + timedelta(milliseconds=i),
        gateway_time=T0 + timedelta(milliseconds=i), source="test://",
    )


def values(lines: list[str]) -> list[int]:
    return [int(float(m.group(1))) for ln in lines if (m := _VALUE.search(ln))]


async def until(pred: Callable[[], object], limit: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.02)


class Rig:
    """A store plus forwarders to stubs, cleaned up by the fixture."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store: Store | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.forwarders: list[Forwarder] = []
        self.stubs: list[InfluxStub] = []

    async def open(self, sinks: list[str], **kw: object) -> Store:
        self.store = await Store.open(self.tmp / "gw.db", retention_hours=1e4,
                                      max_bytes=2**34, **kw)  # type: ignore[arg-type]
        await self.store.register_sinks(sinks)
        return self.store

    async def stub(self, **kw: object) -> InfluxStub:
        stub = await InfluxStub(**kw).start()  # type: ignore[arg-type]
        self.stubs.append(stub)
        return stub

    def forwarder(self, name: str, url: str, *, timeout: float = 10.0, token: str | None = None,
                  start: bool = True, **kw: object) -> Forwarder:
        assert self.store is not None
        sink = InfluxSink(name=name, url=url, org="org", bucket="bucket", token=token,
                          timeout=timeout)
        settings: dict[str, object] = {"batch_size": 1000, "flush_interval": 0.05,
                                       "max_retry_delay": 0.2, **kw}
        fw = Forwarder(self.store, sink, **settings)  # type: ignore[arg-type]
        self.forwarders.append(fw)
        if start:
            self.tasks.append(asyncio.create_task(fw.run()))
        return fw

    async def append(self, readings: list[Reading]) -> None:
        assert self.store is not None
        await self.store.append(readings)
        for fw in self.forwarders:
            fw.notify()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for fw in self.forwarders:
            await fw.close()
        for stub in self.stubs:
            await stub.stop()
        if self.store is not None:
            await self.store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    yield r
    await r.close()


# ---------------------------------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("99999") == 3600.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:07 GMT", now) == pytest.approx(7.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


def test_redact_url() -> None:
    assert redact_url("http://user:pw@host:8086/x") == "http://host:8086/x"
    assert redact_url("https://influx:8086") == "https://influx:8086"


async def test_r4_503_retry_after_is_honoured(rig: Rig) -> None:
    stub = await rig.stub()
    stub.script.append((503, {"Retry-After": "1"}, "busy"))
    await rig.open(["a"])
    fw = rig.forwarder("a", stub.url, max_retry_delay=0.1)  # our own backoff alone: <= 0.1 s
    await rig.append([reading(i) for i in range(10)])
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    assert stub.codes() == [503, 204]
    waited = stub.requests[1].start - stub.requests[0].end
    assert waited >= 0.95, waited  # the server's 1 s, not the 0.1 s cap
    assert sorted(values(stub.accepted)) == list(range(10))
    assert fw.writes == {"503": 1, "204": 1}
    assert fw.state == "ok"


async def test_r4_429_and_5xx_are_retried_without_loss(rig: Rig) -> None:
    stub = await rig.stub()
    stub.script.extend([(429, {}, "slow down"), (500, {}, "oops"), (502, {}, "bad gateway")])
    await rig.open(["a"])
    fw = rig.forwarder("a", stub.url)
    await rig.append([reading(i) for i in range(50)])
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    assert stub.codes() == [429, 500, 502, 204]
    assert sorted(values(stub.accepted)) == list(range(50))
    assert fw.writes == {"429": 1, "500": 1, "502": 1, "204": 1}


async def test_r3_connection_refused_degraded_then_drained(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    await rig.open(["a"])
    fw = rig.forwarder("a", f"http://127.0.0.1:{port}")
    await rig.append([reading(i) for i in range(100)])
    await until(lambda: fw.writes.get("connection_error", 0) >= 3, what="failed attempts")
    st = fw.status()
    assert st["state"] == "degraded"
    assert st["backlog"] == 100
    assert st["oldest_unsent"] == T0
    assert "connection error" in str(st["last_error"])
    await rig.append([reading(i) for i in range(100, 150)])  # keeps buffering meanwhile
    stub = await rig.stub(port=port)
    await until(lambda: fw.status()["backlog"] == 0, what="drain after the server came up")
    assert sorted(values(stub.accepted)) == list(range(150))
    assert fw.status()["state"] == "ok"
    assert fw.status()["oldest_unsent"] is None
    # One warning on the way down, one line on the way up: no log per failed attempt.
    assert len([r for r in caplog.records if "write failed" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "succeed again" in r.getMessage()]) == 1


async def test_r4_413_splits_the_batch(rig: Rig) -> None:
    stub = await rig.stub(max_lines=30)
    await rig.open(["a"])
    fw = rig.forwarder("a", stub.url, batch_size=100)
    await rig.append([reading(i) for i in range(100)])
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    assert values(stub.accepted) == list(range(100))  # every line once, oldest first
    assert fw.dead_lettered == 0
    assert fw.writes["413"] >= 3
    assert all(r.lines <= 30 for r in stub.requests if r.status == 204)


async def test_r4_413_single_line_too_large_is_dead_lettered(rig: Rig) -> None:
    stub = await rig.stub(max_bytes=2000)
    await rig.open(["a"])
    fw = rig.forwarder("a", stub.url, batch_size=10)
    batch = [reading(i) for i in range(10)]
    batch[4] = reading(4, point="huge", value="x" * 5000)
    await rig.append(batch)
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    assert sorted(values(stub.accepted)) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert fw.rejected == {"http_413": 1}
    assert rig.store is not None
    dead = await rig.store.dead_letters(sink="a")
    assert [(d.key, d.status) for d in dead] == [("s1/a1/huge", 413)]
    assert "request too large" in dead[0].reason


@pytest.mark.parametrize(("status", "partial"), [(400, False), (422, True), (400, True)])
async def test_r4_poisoned_point_only_it_is_dead_lettered(rig: Rig, status: int, partial: bool) -> None:
    stub = await rig.stub(poison="point=poison", poison_status=status, partial=partial)
    await rig.open(["a"])
    fw = rig.forwarder("a", stub.url, batch_size=500)
    batch = [reading(i) for i in range(400)]
    batch[123] = reading(123, point="poison")
    await rig.append(batch)
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    good = set(range(400)) - {123}
    assert set(values(stub.accepted)) == good  # every good point kept
    assert 123 not in values(stub.accepted)
    assert fw.rejected == {f"http_{status}": 1}  # exactly the injected count
    assert fw.dead_lettered == 1
    assert fw.written == 399
    assert rig.store is not None
    dead = await rig.store.dead_letters()
    assert len(dead) == 1
    assert dead[0].key == "s1/a1/poison"
    assert dead[0].status == status
    assert "unable to parse" in dead[0].reason  # the server's own reason
    assert "point=poison" in dead[0].line
    assert dead[0].source_time == T0 + timedelta(milliseconds=123)
    # The loop ended: bisection is bounded (about 2·log2(n) requests).
    assert len(stub.requests) <= 2 * 9 + 2


async def test_r4_401_alarms_keeps_buffering_and_backs_off(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stub = await rig.stub(default_status=401)
    await rig.open(["a"])
    initial, cap = 0.05, 0.4
    fw = rig.forwarder("a", stub.url, token=SENTINEL, initial_retry_delay=initial,
                       max_retry_delay=cap)
    await rig.append([reading(i) for i in range(20)])
    await until(lambda: len(stub.requests) >= 7, what="7 refused attempts")
    reqs = list(stub.requests)
    for i, (a, b) in enumerate(itertools.pairwise(reqs)):
        floor = 0.8 * min(cap, initial * 2**i)
        assert b.start - a.end >= floor * 0.99, (i, b.start - a.end)  # no hot loop
    assert all(r.auth == f"Token {SENTINEL}" for r in reqs)
    st = fw.status()
    assert st["state"] == "degraded"
    assert st["backlog"] == 20
    assert "HTTP 401" in str(st["last_error"])
    alarms = [r for r in caplog.records if "ALARM" in r.getMessage()]
    assert len(alarms) == 1
    assert alarms[0].levelno == logging.ERROR
    await rig.append([reading(i) for i in range(20, 30)])  # still accepted into the store
    assert rig.store is not None
    assert rig.store.sink_backlog("a") == 30
    stub.default_status = 204  # token fixed on the server
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    assert sorted(values(stub.accepted)) == list(range(30))
    # S12: the token never appears in logs or status.
    assert SENTINEL not in caplog.text
    assert SENTINEL not in repr(fw.status())


async def test_r5_hung_server_times_out_and_tasks_stay_bounded(rig: Rig) -> None:
    stub = await rig.stub(hang_next=3)
    await rig.open(["a"])
    fw = rig.forwarder("a", stub.url, timeout=0.3, max_retry_delay=0.05)
    await rig.append([reading(i) for i in range(10)])

    def ours() -> int:  # tasks of the gateway side (the stub's request handlers excluded)
        return sum(1 for t in asyncio.all_tasks()
                   if not t.get_coro().__qualname__.startswith("RequestHandler"))  # type: ignore[union-attr]

    baseline = ours()
    counts = []
    while fw.writes.get("timeout", 0) < 3:
        counts.append(ours())
        await asyncio.sleep(0.05)
        assert len(counts) < 2000, "no timeouts counted"
    assert max(counts) <= baseline + 2  # transient client tasks only: no growth per attempt
    await until(lambda: rig.store and rig.store.sink_backlog("a") == 0, what="drain")
    assert fw.writes["timeout"] == 3
    assert sorted(values(stub.accepted)) == list(range(10))


async def test_two_sinks_each_have_their_own_cursor(rig: Rig) -> None:
    up = await rig.stub()
    down = await rig.stub(default_status=503)
    store = await rig.open(["up", "down"])
    rig.forwarder("up", up.url)
    rig.forwarder("down", down.url)
    await rig.append([reading(i) for i in range(300)])
    await until(lambda: store.sink_backlog("up") == 0, what="healthy sink drained")
    assert sorted(values(up.accepted)) == list(range(300))
    await until(lambda: len(down.requests) >= 2, what="failing sink retried")
    assert store.sink_backlog("down") == 300
    assert store.sink_cursor("up").acked > store.sink_cursor("down").acked
    down.default_status = 204
    await until(lambda: store.sink_backlog("down") == 0, what="second sink drained")
    assert sorted(values(down.accepted)) == list(range(300))
    assert len(up.accepted) == 300  # the healthy sink was not re-sent anything


async def test_live_data_is_not_starved_by_a_backlog(rig: Rig) -> None:
    stub = await rig.stub(delay=0.03)
    store = await rig.open(["a"])
    await store.append([reading(i, point="old") for i in range(30_000)])
    rig.forwarder("a", stub.url, batch_size=1000)
    await until(lambda: len(stub.accepted) >= 2000, what="drain started")
    await rig.append([reading(i, point="live") for i in range(100_000, 100_010)])
    await until(lambda: store.sink_backlog("a") == 0, what="drain")
    order = values(stub.accepted)
    assert sorted(order) == [*range(30_000), *range(100_000, 100_010)]
    position = {v: i for i, v in enumerate(order)}
    last_live = max(position[v] for v in range(100_000, 100_010))
    last_old = max(position[v] for v in range(30_000))
    assert last_live < last_old - 10_000, (last_live, last_old)  # live went out mid-drain
    # The backlog drains oldest first; the first live batch took the newest 1000 rows.
    rest = [v for v in order if v < 29_000]
    assert rest == sorted(rest)
    assert position[29_000] < position[5_000]


async def test_r8_unsent_cap_drops_oldest_exactly(rig: Rig) -> None:
    stub = await rig.stub(default_status=503)
    store = await rig.open(["a"], max_unsent=1000)
    fw = rig.forwarder("a", stub.url, batch_size=100)
    generated = [reading(i, point=f"q{i % 5}") for i in range(5000)]
    await rig.append(generated)
    await until(lambda: store.sink_cursor("a").in_flight == 100, what="a batch in flight")
    deleted = await store.purge(datetime.now(UTC))
    report = store.last_purge
    assert report is not None
    cur = store.sink_cursor("a")
    # generated = stored (unsent, incl. the in-flight batch) + dropped, exactly.
    assert (cur.backlog, report.dropped, deleted) == (1000, 4000, 4000)
    assert report.by_unsent_cap == 4000
    assert report.dropped_by_sink == {"a": 4000}
    assert len(generated) == cur.backlog + report.dropped
    assert store.dropped_total == 4000
    assert cur.dropped == 4000
    # Drop-oldest, but never the batch in flight (ids 1..100 = readings 0..99).
    dropped = list(range(100, 4100))
    assert len(report.dropped_ranges) == 5
    for rng in report.dropped_ranges:
        mine = [i for i in dropped if f"q{i % 5}" == rng.point]
        assert rng.count == len(mine)
        assert rng.first == T0 + timedelta(milliseconds=mine[0])
        assert rng.last == T0 + timedelta(milliseconds=mine[-1])
        assert not rng.continues
    stub.default_status = 204
    await until(lambda: store.sink_backlog("a") == 0, what="drain")
    assert sorted(values(stub.accepted)) == [*range(100), *range(4100, 5000)]
    assert fw.written == 1000
    # A second drop with no acknowledgement in between continues the first.
    stub.default_status = 503
    await rig.append([reading(i, point="q0") for i in range(10_000, 12_000)])
    await until(lambda: store.sink_cursor("a").in_flight > 0, what="in flight")
    await store.purge(datetime.now(UTC))
    first = store.last_purge
    await rig.append([reading(i, point="q0") for i in range(12_000, 12_500)])
    await store.purge(datetime.now(UTC))
    second = store.last_purge
    assert first is not None
    assert second is not None
    assert first.dropped == 1000
    assert second.dropped == 500
    assert [r.continues for r in first.dropped_ranges] == [False]
    assert [r.continues for r in second.dropped_ranges] == [True]


async def test_cursor_and_dead_letters_survive_reopen(tmp_path: Path) -> None:
    stub = await InfluxStub(poison="point=poison").start()
    store = await Store.open(tmp_path / "gw.db", retention_hours=1e4, max_bytes=2**34)
    try:
        await store.register_sinks(["a"])
        batch = [reading(i) for i in range(250)]
        batch[7] = reading(7, point="poison")
        await store.append(batch)
        fw = Forwarder(store, InfluxSink(name="a", url=stub.url, org="o", bucket="b",
                                         token=None, timeout=5),
                       batch_size=100, flush_interval=0.01, max_retry_delay=0.1)
        task = asyncio.create_task(fw.run())
        await until(lambda: store.sink_backlog("a") == 0, what="drain")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fw.close()
        await store.append([reading(i) for i in range(250, 260)])
        await store.close()
        store = await Store.open(tmp_path / "gw.db", retention_hours=1e4, max_bytes=2**34)
        await store.register_sinks(["a", "new"])
        assert store.sink_backlog("a") == 10
        assert store.sink_backlog("new") == 260  # a new sink gets the retained history
        taken = await store.outbox_take("a", 1000)
        assert taken is not None
        assert [int(r[3]) for r in taken.rows] == list(range(250, 260))
        dead = await store.dead_letters()
        assert [d.key for d in dead] == ["s1/a1/poison"]
    finally:
        await store.close()
        await stub.stop()


async def test_runtime_sink_status_metrics_and_overflow_gaps(tmp_path: Path) -> None:
    """M12 + R8 through the runtime: degraded status, metrics, buffer_overflow gaps."""
    stub = await InfluxStub(default_status=503).start()
    cfg = parse_config(
        f"""
gateway: {{data_dir: {tmp_path / "data"}}}
store: {{max_unsent_readings: 1000}}
sinks:
  - {{type: influxdb, name: hist, url: "{stub.url}", org: o, bucket: b, token: "{SENTINEL}",
     batch_size: 100, flush_interval: 0.05, max_retry_delay: 0.2}}
"""
    )
    rt = Runtime(cfg, config_dir=tmp_path)
    await rt.start()
    try:
        rt._submit([reading(i, point=f"q{i % 2}") for i in range(3000)])
        await until(lambda: rt.counters.readings_committed == 3000, what="commit")
        await until(lambda: rt.sink_status()[0]["state"] == "degraded", what="degraded")
        ready, details = rt.readiness()
        assert ready  # degraded, not down: readings are still accepted
        assert details["sinks_degraded"] == ["hist"]
        await until(lambda: rt.inventory.gaps(open=False), limit=30, what="overflow gaps")
        gaps = rt.inventory.gaps(open=False)
        assert {g.cause for g in gaps} == {GapCause.BUFFER_OVERFLOW}
        assert {g.point for g in gaps} == {"q0", "q1"}
        # Readings 100..2099 dropped (0..99 in flight, the newest 900 kept): exact bounds.
        by_point = {g.point: g for g in gaps}
        assert by_point["q0"].start == T0 + timedelta(milliseconds=100)
        assert by_point["q0"].end == T0 + timedelta(milliseconds=2098)
        assert by_point["q1"].start == T0 + timedelta(milliseconds=101)
        assert by_point["q1"].end == T0 + timedelta(milliseconds=2099)
        status = rt.sink_status()[0]
        assert status["backlog"] == 1000
        assert status["dropped"] == 2000
        text = generate_latest(rt.metrics_registry()).decode()
        assert 'otgw_sink_write_total{code="503",sink="hist"}' in text
        assert "otgw_buffer_dropped_total 2000.0" in text
        assert "otgw_buffer_records 1000.0" in text
        assert 'otgw_sink_up{sink="hist"} 0.0' in text
        assert rt.store is not None
        assert {g.id for g in await rt.store.load_gaps()} >= {g.id for g in gaps}
        stub.default_status = 204
        await until(lambda: rt.sink_status()[0]["backlog"] == 0, what="drain")
        assert rt.sink_status()[0]["state"] == "ok"
        assert sorted(values(stub.accepted)) == [*range(100), *range(2100, 3000)]
        assert SENTINEL not in repr(rt.readiness()) + text
    finally:
        await rt.stop()
        await stub.stop()


def test_stub_script_type() -> None:
    # The stub's script is a deque of (status, headers, message).
    assert isinstance(InfluxStub().script, deque)


async def test_schema_v1_store_is_migrated_with_outbox_ids(tmp_path: Path) -> None:
    """A store written before the outbox existed (rowid table) opens with every reading."""
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE points(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, site TEXT NOT NULL,
            asset TEXT NOT NULL, point TEXT NOT NULL, unit TEXT, source TEXT NOT NULL DEFAULT '');
        CREATE TABLE readings(ts_ns INTEGER NOT NULL, point_id INTEGER NOT NULL, value,
            vt INTEGER, quality INTEGER NOT NULL, gw_ns INTEGER NOT NULL);
        CREATE INDEX readings_ts ON readings(ts_ns);
        INSERT INTO points VALUES (1, 's/a/p', 's', 'a', 'p', NULL, '');
        INSERT INTO readings VALUES (10, 1, 1.5, NULL, 0, 11), (20, 1, 2.5, NULL, 0, 21);
        PRAGMA user_version = 1;
        """
    )
    conn.close()
    store = await Store.open(path, retention_hours=1e6, max_bytes=2**34)
    try:
        assert store.alarms == []
        await store.register_sinks(["a"])
        assert store.sink_backlog("a") == 2
        batch = await store.outbox_take("a", 10)
        assert batch is not None
        assert [(r[0], r[1], r[3]) for r in batch.rows] == [(1, 10, 1.5), (2, 20, 2.5)]
        await store.outbox_ack(batch)
        await store.append([reading(1)])
        assert store.sink_backlog("a") == 1
        rows = await store.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert rows == 2
    finally:
        await store.close()
