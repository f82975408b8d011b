"""Data-gap detection: exact bounds, causes, no invented gaps, invariants (M7, R25, §6)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Reading, Value
from gateway.quality import Q
from inventory.gaps import DeadlineHeap, cause_for_quality, overlaps, rollup
from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from inventory.views import Gap, GapCause, State

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GOOD = int(Q.GOOD)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_spec(n_points: int = 1, interval: float = 1.0, gap_after: float = 2.5) -> InventorySpec:
    return InventorySpec(
        sites=(SiteSpec("s1"),),
        assets=(AssetSpec("s1", "a1"),),
        points=tuple(
            PointSpec("s1", "a1", f"p{i}", device="d1", expected_interval=interval)
            for i in range(n_points)
        ),
        devices=(DeviceSpec("d1", "modbus", "127.0.0.1:5020"),),
        gap_after=gap_after,
    )


def rd(t: float, quality: int = GOOD, point: str = "p0", value: Value = 1.0) -> Reading:
    bad = bool(quality & 0x80000000)
    return Reading(
        site="s1",
        asset="a1",
        point=point,
        value=None if bad else value,
        unit=None,
        quality=quality,
        source_time=s(t),
        gateway_time=s(t),
        source="test://",
    )


# ---------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (Q.BAD_TIMEOUT, GapCause.TIMEOUT),
        (0x800A0400, GapCause.TIMEOUT),  # info bits are ignored
        (Q.BAD_NO_COMMUNICATION, GapCause.DEVICE_OFFLINE),
        (Q.BAD_COMMUNICATION_ERROR, GapCause.DEVICE_OFFLINE),
        (Q.BAD_DEVICE_FAILURE, GapCause.BAD_QUALITY),
        (Q.BAD_DECODING_ERROR, GapCause.BAD_QUALITY),
        (Q.BAD, GapCause.BAD_QUALITY),
        (0xC0000000, GapCause.BAD_QUALITY),
    ],
)
def test_cause_for_quality(code: int, cause: GapCause) -> None:
    assert cause_for_quality(code) is cause


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], State.UNKNOWN),
        ([State.UNKNOWN, State.UNKNOWN], State.UNKNOWN),
        ([State.OFFLINE, State.OFFLINE], State.OFFLINE),
        ([State.OFFLINE, State.UNKNOWN], State.OFFLINE),
        ([State.ONLINE, State.ONLINE], State.ONLINE),
        ([State.ONLINE, State.UNKNOWN], State.DEGRADED),
        ([State.ONLINE, State.OFFLINE], State.DEGRADED),
        ([State.DEGRADED], State.DEGRADED),
    ],
)
def test_rollup(states: list[State], expected: State) -> None:
    assert rollup(states) is expected


def test_overlaps_closed_interval() -> None:
    g = Gap("g", "s1", "a1", "p0", GapCause.STALE, s(10), s(20), None, None, 1.0)
    assert overlaps(g, None, None)
    assert overlaps(g, s(20), s(30))  # touching counts
    assert overlaps(g, s(0), s(10))
    assert not overlaps(g, s(21), None)
    assert not overlaps(g, None, s(9))
    g.end = None
    assert overlaps(g, s(1000), s(2000))


def test_deadline_heap_fires_strictly_after_and_moves() -> None:
    h = DeadlineHeap(3)
    h.set(0, 10.0)
    h.set(1, 20.0)
    assert h.pop_due(10.0) == []  # fires when now > deadline
    assert h.pop_due(10.05) == [(0, 10.0)]
    assert h.get(0) is None
    h.set(1, 30.0)  # moved later: not due at 25
    assert h.pop_due(25.0) == []
    h.set(2, 26.0)
    h.clear(2)
    assert h.pop_due(31.0) == [(1, 30.0)]
    assert h.pop_due(1e12) == []
    h.set(0, 5.0)  # re-armed after firing
    h.set(1, 4.0)
    assert h.pop_due(6.0) == [(1, 4.0), (0, 5.0)]


def test_deadline_heap_keeps_not_yet_due_items_of_a_straddling_bucket() -> None:
    h = DeadlineHeap(2, resolution=10.0)
    h.set(0, 101.0)
    h.set(1, 109.0)  # same bucket [100, 110)
    assert h.pop_due(105.0) == [(0, 101.0)]
    assert h.pop_due(109.0) == []
    assert h.pop_due(109.5) == [(1, 109.0)]


def test_deadline_heap_rejects_bad_resolution() -> None:
    with pytest.raises(ValueError, match="resolution"):
        DeadlineHeap(1, resolution=0)


# ---------------------------------------------------------------------------- gap bounds


def test_bad_reading_opens_gap_with_exact_start_and_last_good_and_good_closes_it() -> None:
    inv = Inventory(make_spec(), now=s(0))
    assert inv.observe([rd(1), rd(2)]) == []
    opened = inv.observe([rd(3, Q.BAD_TIMEOUT)])
    assert len(opened) == 1
    g = opened[0]
    assert (g.cause, g.start, g.first_bad, g.last_good, g.end) == (
        GapCause.TIMEOUT, s(3), s(3), s(2), None,
    )
    assert inv.open_gap_count == 1
    # more Bad readings (another code too): same gap, nothing changes
    assert inv.observe([rd(4, Q.BAD_TIMEOUT), rd(5, Q.BAD_NO_COMMUNICATION)]) == []
    assert inv.tick(s(20)) == []  # silence while a gap is open: no second gap
    closed = inv.observe([rd(21.5), rd(22.5)])
    assert len(closed) == 1
    assert closed[0].id == g.id
    assert closed[0].end == s(21.5)
    assert closed[0].samples_missed(s(100)) == 18
    assert inv.open_gap_count == 0
    assert [x.id for x in inv.gaps()] == [g.id]


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (Q.BAD_NO_COMMUNICATION, GapCause.DEVICE_OFFLINE),
        (Q.BAD_COMMUNICATION_ERROR, GapCause.DEVICE_OFFLINE),
        (Q.BAD_OUT_OF_RANGE, GapCause.BAD_QUALITY),
    ],
)
def test_cause_follows_the_first_bad_quality(code: int, cause: GapCause) -> None:
    inv = Inventory(make_spec(), now=s(0))
    inv.observe([rd(1)])
    (g,) = inv.observe([rd(2, code)])
    assert g.cause is cause


def test_stale_gap_via_tick_starts_one_interval_after_last_good() -> None:
    inv = Inventory(make_spec(interval=2.0, gap_after=3.0), now=s(0), tick_grace=0.0)
    inv.observe([rd(0.5), rd(2.5), rd(4.5)])
    assert inv.tick(s(10.5)) == []  # 10.5 - 4.5 = 6.0 = 3 × 2: not yet "older than"
    (g,) = inv.tick(s(10.6))
    assert (g.cause, g.start, g.last_good, g.first_bad, g.end) == (
        GapCause.STALE, s(6.5), s(4.5), None, None,
    )
    assert inv.tick(s(50)) == []
    (closed,) = inv.observe([rd(51.0)])
    assert (closed.id, closed.end) == (g.id, s(51.0))


def test_stale_gap_bounds_do_not_depend_on_tick_timing() -> None:
    late = Inventory(make_spec(), now=s(0))
    never = Inventory(make_spec(), now=s(0))
    for inv in (late, never):
        inv.observe([rd(1), rd(2)])
    late.tick(s(30))  # long after the deadline (4.5)
    got_late = late.observe([rd(40)])
    got_never = never.observe([rd(40)])  # no tick at all: the reading catches it up
    assert [(g.start, g.end, g.last_good, g.cause) for g in got_late] == [
        (s(3), s(40), s(2), GapCause.STALE)
    ]
    assert [(g.id, g.start, g.end) for g in got_never] == [
        (g.id, g.start, g.end) for g in got_late
    ]


def test_tick_grace_covers_readings_acquired_before_the_tick_but_observed_after() -> None:
    """A slow commit must not turn an on-time reading into an invented gap."""
    inv = Inventory(make_spec(interval=0.1), now=s(0), tick_grace=0.5)
    inv.observe([rd(1.0)])
    # acquired at 1.1 (on time), commit takes 0.4 s; the tick at 1.45 runs first
    assert inv.tick(s(1.45)) == []
    assert inv.observe([rd(1.1)]) == []
    # really silent: the tick fires once the deadline is tick_grace in the past
    assert inv.tick(s(1.84)) == []  # deadline 1.1 + 2.5 × 0.1 = 1.35, + grace = 1.85
    (g,) = inv.tick(s(1.86))
    assert (g.start, g.last_good) == (s(1.2), s(1.1))


def test_bad_reading_while_stale_gap_open_keeps_the_first_gap() -> None:
    inv = Inventory(make_spec(), now=s(0))
    inv.observe([rd(1)])
    (g,) = inv.tick(s(5))
    (upd,) = inv.observe([rd(6, Q.BAD_TIMEOUT)])
    assert (upd.id, upd.start, upd.first_bad, upd.cause) == (g.id, s(2), s(6), GapCause.STALE)
    assert inv.observe([rd(7, Q.BAD_TIMEOUT)]) == []  # first_bad stays the first
    (closed,) = inv.observe([rd(8)])
    assert (closed.start, closed.first_bad, closed.end) == (s(2), s(6), s(8))
    assert len(inv.gaps()) == 1


def test_bad_reading_after_silence_opens_stale_gap_from_last_good() -> None:
    """The same gap as if the tick had run: the silence is part of the gap."""
    inv = Inventory(make_spec(), now=s(0))
    inv.observe([rd(1)])
    (g,) = inv.observe([rd(10, Q.BAD_NO_COMMUNICATION)])
    assert (g.cause, g.start, g.first_bad, g.last_good) == (GapCause.STALE, s(2), s(10), s(1))


def test_stale_while_link_down_is_device_offline() -> None:
    inv = Inventory(make_spec(), now=s(0), tick_grace=0.0)
    inv.link_up("d1", s(0))
    inv.observe([rd(1)])
    inv.link_down("d1", s(1.5), "connection reset")
    (g,) = inv.tick(s(4))
    assert (g.cause, g.start, g.last_good) == (GapCause.DEVICE_OFFLINE, s(2), s(1))


def test_point_never_seen_gets_a_stale_gap_from_monitoring_start() -> None:
    inv = Inventory(make_spec(), now=s(100), tick_grace=0.0)
    assert inv.tick(s(102)) == []
    (g,) = inv.tick(s(103))
    assert (g.start, g.last_good, g.cause) == (s(100), None, GapCause.STALE)
    (closed,) = inv.observe([rd(110)])
    assert closed.end == s(110)


def test_late_replay_is_ignored_and_never_reopens_or_closes() -> None:
    inv = Inventory(make_spec(), now=s(0))
    inv.observe([rd(1), rd(2)])
    assert inv.observe([rd(1.5, Q.BAD_TIMEOUT)]) == []  # older than the last good
    assert inv.late_readings == 1
    assert inv.open_gap_count == 0
    view = inv.point("s1", "a1", "p0", s(2))
    assert view is not None
    assert view.last_good == s(2)


def test_unknown_keys_are_counted_and_ignored() -> None:
    inv = Inventory(make_spec(), now=s(0))
    assert inv.observe([rd(1, point="nope"), rd(1, Q.BAD, point="nope")]) == []
    assert inv.unknown_readings == 2


def test_one_hour_of_good_data_at_1s_gives_no_gaps() -> None:
    """No invented gaps: 10 points, 3600 readings each with ±0.4 s jitter, a tick each second."""
    inv = Inventory(make_spec(n_points=10), now=s(0))
    inv.link_up("d1", s(0))
    changed: list[Gap] = []
    for k in range(1, 3601):
        jitter = 0.4 if k % 7 == 0 else (-0.4 if k % 11 == 0 else 0.0)
        changed += inv.observe([rd(k + jitter, point=f"p{i}", value=float(k)) for i in range(10)])
        changed += inv.tick(s(k + 0.5))
    assert changed == []
    assert inv.gaps() == []
    assert inv.summary(s(3600))["points_online"] == 10


def test_many_flaps_give_ordered_non_overlapping_gaps_with_stable_ids() -> None:
    inv = Inventory(make_spec(), now=s(0))
    t = 0.0
    for _ in range(200):
        inv.observe([rd(t + 1), rd(t + 2)])
        inv.observe([rd(t + 3, Q.BAD_TIMEOUT), rd(t + 3, Q.BAD_TIMEOUT)])
        inv.observe([rd(t + 3)])  # zero-length gap: good at the same instant
        t += 3
    gaps = inv.gaps()
    assert len(gaps) == 200
    assert len({g.id for g in gaps}) == 200
    for a, b in itertools.pairwise(gaps):
        assert a.end is not None
        assert a.start <= a.end <= b.start


def test_closed_gaps_are_capped_in_memory() -> None:
    inv = Inventory(make_spec(), now=s(0), closed_gap_cap=5)
    for k in range(20):
        inv.observe([rd(2 * k + 1, Q.BAD), rd(2 * k + 2)])
    gaps = inv.gaps()
    assert [g.start for g in gaps] == [s(2 * k + 1) for k in range(15, 20)]


def test_gap_queries_filter_by_point_time_and_open() -> None:
    spec = make_spec(n_points=2)
    inv = Inventory(spec, now=s(0))
    inv.observe([rd(1, point="p0"), rd(1, point="p1")])
    inv.observe([rd(2, Q.BAD, point="p0"), rd(3, point="p0")])  # closed [2, 3]
    inv.observe([rd(3, Q.BAD, point="p1")])  # open from 3
    inv.observe([rd(4, point="p0"), rd(5, point="p0"), rd(6, Q.BAD, point="p0")])  # open from 6
    assert [(g.point, g.start) for g in inv.gaps()] == [
        ("p0", s(2)), ("p1", s(3)), ("p0", s(6)),
    ]
    assert [g.start for g in inv.gaps(point="p0")] == [s(2), s(6)]
    assert [g.start for g in inv.gaps(open=True)] == [s(3), s(6)]
    assert [g.start for g in inv.gaps(open=False)] == [s(2)]
    assert [g.start for g in inv.gaps(since=s(4))] == [s(3), s(6)]
    assert [g.start for g in inv.gaps(until=s(2.5))] == [s(2)]
    assert [g.start for g in inv.gaps(since=s(3), until=s(3))] == [s(2), s(3)]
    assert inv.gaps(site="other") == []
    assert inv.gaps(asset="a1", point="p1")[0].start == s(3)
    # snapshots: mutating a result does not touch the inventory
    inv.gaps(open=True)[0].end = s(99)
    assert inv.open_gap_count == 2


# ---------------------------------------------------------------------------- invariants

_step = st.one_of(
    st.tuples(st.just("good"), st.floats(0.05, 4.0)),
    st.tuples(st.just("bad"), st.floats(0.05, 4.0), st.sampled_from(list(Q)[3:])),
    st.tuples(st.just("silence"), st.floats(0.5, 20.0)),
    st.tuples(st.just("tick"), st.floats(0.0, 5.0)),
    st.tuples(st.just("link"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_step, max_size=80), interval=st.sampled_from([0.5, 1.0, 3.0]))
def test_random_good_bad_silence_sequences_keep_gap_invariants(
    steps: list[tuple[object, ...]], interval: float
) -> None:
    """R25/§6: ordered, non-overlapping gaps; exact bounds; every Bad and silence covered."""
    gap_after = 2.5
    inv = Inventory(make_spec(interval=interval, gap_after=gap_after), now=s(0))
    t = 0.0
    goods: list[float] = []
    bads: list[float] = []
    latest: dict[str, Gap] = {}
    for step in steps:
        kind = step[0]
        if kind == "good":
            t += float(step[1])  # type: ignore[arg-type]
            goods.append(t)
            changed = inv.observe([rd(t)])
        elif kind == "bad":
            t += float(step[1])  # type: ignore[arg-type]
            bads.append(t)
            changed = inv.observe([rd(t, int(step[2]))])  # type: ignore[call-overload]
        elif kind == "silence":
            t += float(step[1])  # type: ignore[arg-type]
            changed = []
        elif kind == "tick":
            t += float(step[1])  # type: ignore[arg-type]
            changed = inv.tick(s(t))
        else:
            (inv.link_up if step[1] else inv.link_down)("d1", s(t), *([] if step[1] else ["x"]))
            changed = []
        for g in changed:
            latest[g.id] = g
    gaps = inv.gaps()
    # What was returned for persisting is what the inventory holds.
    assert {g.id: (g.start, g.end, g.first_bad) for g in gaps} == {
        g.id: (g.start, g.end, g.first_bad) for g in latest.values()
    }
    # Ordered, non-overlapping, at most one open and it is the last.
    for a, b in itertools.pairwise(gaps):
        assert a.end is not None
        assert a.start <= a.end <= b.start
    assert inv.open_gap_count == sum(1 for g in gaps if g.end is None) <= 1
    good_times = {s(x) for x in goods}
    for g in gaps:
        # Closed at a good reading; opened after the last good one, which it records.
        if g.end is not None:
            assert g.end in good_times
        before = [x for x in goods if s(x) <= g.start]
        assert g.last_good == (s(max(before)) if before else None)
        if g.first_bad is not None:
            assert g.start <= g.first_bad
            assert g.end is None or g.first_bad <= g.end
    # Every Bad reading lies in a gap; no good reading lies strictly inside one.
    for b in bads:
        assert any(g.start <= s(b) and (g.end is None or s(b) <= g.end) for g in gaps)
    for x in goods:
        assert not any(g.start < s(x) and (g.end is None or s(x) < g.end) for g in gaps)
    # Silence longer than gap_after × interval between two good readings is a gap with
    # start = first + interval and end = second (also when no tick ran in between).
    for a, b in itertools.pairwise(goods):
        if b - a > gap_after * interval and not any(a < x < b for x in bads):
            assert any(
                g.start == s(a) + timedelta(seconds=interval) and g.end == s(b) for g in gaps
            ), (a, b)
