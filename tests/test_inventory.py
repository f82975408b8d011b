"""The inventory: states, roll-ups, devices, restart (gateway_down), coverage, tick cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import to_rfc3339
from gateway.model import Reading, Value
from gateway.quality import Q
from gateway.store import Store
from inventory.gaps import rollup
from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from inventory.views import AssetView, Gap, GapCause, SiteView, State

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GOOD = int(Q.GOOD)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def plant() -> InventorySpec:
    """Site s1: asset a1 (p0, p1 on d1, 1 s), asset a2 (q0 on d2, 0.5 s); site s2 is empty."""
    return InventorySpec(
        sites=(SiteSpec("s1", "Plant 1"), SiteSpec("s2")),
        assets=(AssetSpec("s1", "a1", "Pump 1", "pump"), AssetSpec("s1", "a2")),
        points=(
            PointSpec("s1", "a1", "p0", "d1", 1.0, unit="Cel", source="modbus://h/1/hr/0"),
            PointSpec("s1", "a1", "p1", "d1", 1.0),
            PointSpec("s1", "a2", "q0", "d2", 0.5),
        ),
        devices=(DeviceSpec("d1", "modbus", "h:502"), DeviceSpec("d2", "mqtt", "broker")),
        gap_after=2.5,
    )


def rd(
    t: float,
    point: str = "p0",
    quality: int = GOOD,
    *,
    asset: str = "a1",
    value: Value = 1.0,
    gw_delay: float = 0.0,
) -> Reading:
    bad = bool(quality & 0x80000000)
    return Reading(
        site="s1",
        asset=asset,
        point=point,
        value=None if bad else value,
        unit="Cel" if point == "p0" else None,
        quality=quality,
        source_time=s(t),
        gateway_time=s(t + gw_delay),
        source="test://",
    )


def state_of(inv: Inventory, point: str, now: datetime, asset: str = "a1") -> State:
    view = inv.point("s1", asset, point, now)
    assert view is not None
    return view.state


def test_point_state_transitions_unknown_online_degraded_offline() -> None:
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)
    inv.link_up("d1", s(0))
    assert state_of(inv, "p0", s(0)) is State.UNKNOWN
    inv.observe([rd(1)])
    view = inv.point("s1", "a1", "p0", s(1))
    assert view is not None
    assert (view.state, view.since, view.value, view.quality_name, view.severity) == (
        State.ONLINE, s(1), 1.0, "Good", "good",
    )
    inv.observe([rd(2, quality=Q.BAD_DEVICE_FAILURE)])
    view = inv.point("s1", "a1", "p0", s(2))
    assert view is not None
    assert (view.state, view.since, view.value, view.quality_name, view.last_good) == (
        State.DEGRADED, s(2), None, "BadDeviceFailure", s(1),
    )
    assert view.open_gap is not None
    assert view.open_gap.cause is GapCause.BAD_QUALITY
    inv.observe([rd(3, value=7.5)])
    assert state_of(inv, "p0", s(3)) is State.ONLINE
    # stale: nothing for > 2.5 s; the view knows before the tick, the tick records it
    view = inv.point("s1", "a1", "p0", s(6))
    assert view is not None
    assert (view.state, view.since) == (State.OFFLINE, s(5.5))
    opened = {g.point: g for g in inv.tick(s(6))}  # p1, q0 never seen: stale from 0
    assert sorted(opened) == ["p0", "p1", "q0"]
    assert (opened["p0"].cause, opened["p0"].start) == (GapCause.STALE, s(4))
    assert (opened["q0"].cause, opened["q0"].start) == (GapCause.STALE, s(0))
    view = inv.point("s1", "a1", "p0", s(6))
    assert view is not None
    assert (view.state, view.since, view.value) == (State.OFFLINE, s(5.5), 7.5)
    inv.observe([rd(7)])
    assert state_of(inv, "p0", s(7)) is State.ONLINE
    inv.link_down("d1", s(8), "connection refused")
    view = inv.point("s1", "a1", "p0", s(8))
    assert view is not None
    assert (view.state, view.since) == (State.OFFLINE, s(8))
    inv.link_up("d1", s(9))
    assert state_of(inv, "p0", s(9)) is State.ONLINE  # last reading (7) is still fresh
    assert state_of(inv, "p0", s(9.6)) is State.OFFLINE


def test_asset_and_site_roll_ups() -> None:
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)

    def states(now: datetime) -> tuple[State, State, State, State]:
        a1 = inv.asset("s1", "a1", now)
        a2 = inv.asset("s1", "a2", now)
        s1 = inv.site("s1", now)
        s2 = inv.site("s2", now)
        assert a1
        assert a2
        assert s1
        assert s2
        return a1.state, a2.state, s1.state, s2.state

    assert states(s(0)) == (State.UNKNOWN, State.UNKNOWN, State.UNKNOWN, State.UNKNOWN)
    inv.link_up("d1", s(0.5))
    inv.link_up("d2", s(0.5))
    inv.observe([rd(1, "p0")])
    assert states(s(1)) == (State.DEGRADED, State.UNKNOWN, State.DEGRADED, State.UNKNOWN)
    inv.observe([rd(1.2, "p1")])
    assert states(s(1.2)) == (State.ONLINE, State.UNKNOWN, State.DEGRADED, State.UNKNOWN)
    inv.observe([rd(1.3, "q0", asset="a2")])
    assert states(s(1.3)) == (State.ONLINE, State.ONLINE, State.ONLINE, State.UNKNOWN)
    a1 = inv.asset("s1", "a1", s(1.3))
    assert a1 is not None
    assert (a1.since, a1.name, a1.kind, a1.points_total, a1.open_gaps) == (
        s(1.2), "Pump 1", "pump", 2, 0,
    )
    assert a1.points_by_state == {"online": 2, "degraded": 0, "offline": 0, "unknown": 0}
    assert a1.last_seen == s(1.2)
    inv.observe([rd(1.4, "p1", Q.BAD_TIMEOUT)])
    assert states(s(1.4))[:3] == (State.DEGRADED, State.ONLINE, State.DEGRADED)
    inv.link_down("d1", s(2), "timeout")
    assert states(s(2))[:3] == (State.OFFLINE, State.ONLINE, State.DEGRADED)
    inv.link_down("d2", s(2.1), "broker gone")
    assert states(s(2.1))[:3] == (State.OFFLINE, State.OFFLINE, State.OFFLINE)
    site = inv.site("s1", s(2.1))
    assert site is not None
    assert (site.name, site.assets_total, site.points_total, site.open_gaps) == (
        "Plant 1", 2, 3, 1,
    )
    assert site.assets_by_state["offline"] == 2
    assert site.last_seen == s(1.4)
    assert [x.id for x in inv.sites(s(2.1))] == ["s1", "s2"]
    assert inv.site("nope", s(0)) is None
    assert inv.asset("s1", "nope", s(0)) is None
    assert inv.point("s1", "a1", "nope", s(0)) is None
    assert [a.id for a in inv.assets(s(2.1), site="s1")] == ["a1", "a2"]
    assert inv.assets(s(2.1), state=State.ONLINE) == []
    assert [a.id for a in inv.assets(s(2.1), state=State.OFFLINE)] == ["a1", "a2"]
    assert inv.assets(s(2.1), site="s2") == []


def test_device_views_links_reconnects_and_poll_stats() -> None:
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)
    d1, d2 = inv.devices(s(0))
    assert (d1.id, d1.protocol, d1.endpoint, d1.state, d1.link_up, d1.points_total) == (
        "d1", "modbus", "h:502", State.UNKNOWN, False, 2,
    )
    assert d2.points_total == 1
    inv.link_down("d1", s(1), "connection refused")  # never connected: offline
    inv.link_down("d1", s(2), "connection refused again")  # a failed retry
    d1 = inv.devices(s(2))[0]
    assert (d1.state, d1.since, d1.last_error, d1.reconnects) == (
        State.OFFLINE, s(1), "connection refused again", 0,
    )
    inv.link_up("d1", s(3))
    d1 = inv.devices(s(3))[0]
    assert (d1.state, d1.link_up, d1.since, d1.reconnects) == (State.ONLINE, True, s(3), 1)
    inv.observe([rd(3.5, "p0"), rd(3.5, "p1", Q.BAD_TIMEOUT)])
    inv.poll_stats("d1", latency_s=0.012, polls=10, overruns=1)
    inv.poll_stats("d1", latency_s=None, polls=11, overruns=1)
    d1 = inv.devices(s(3.5))[0]
    assert (d1.state, d1.since, d1.last_seen, d1.last_good) == (
        State.DEGRADED, s(3.5), s(3.5), s(3.5),
    )
    assert (d1.poll_latency_s, d1.polls, d1.overruns) == (0.012, 11, 1)
    inv.link_down("d1", s(4), "reset")
    inv.link_up("d1", s(5))
    inv.link_up("d1", s(6))  # repeated up: no extra reconnect
    assert inv.devices(s(6))[0].reconnects == 2
    summary = inv.summary(s(6))
    assert summary["devices_up"] == 1
    assert summary["devices_down"] == 0
    assert summary["devices_total"] == 2


def test_summary_counts_follow_tracked_state() -> None:
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)
    assert inv.summary(s(0)) == {
        "points_total": 3, "points_online": 0, "points_degraded": 0, "points_offline": 0,
        "points_unknown": 3, "open_gaps": 0, "devices_total": 2, "devices_up": 0,
        "devices_down": 0, "unknown_readings": 0, "late_readings": 0,
    }
    inv.link_up("d1", s(0))
    inv.observe([rd(1, "p0"), rd(1, "p1", Q.BAD), rd(1, "zz")])
    summary = inv.summary(s(1))
    assert (summary["points_online"], summary["points_degraded"], summary["points_unknown"]) == (
        1, 1, 1,
    )
    assert (summary["open_gaps"], summary["unknown_readings"]) == (1, 1)
    inv.tick(s(10))  # p0 stale; q0 never seen (unknown, but its stale gap opens)
    summary = inv.summary(s(10))
    assert (summary["points_offline"], summary["points_unknown"], summary["open_gaps"]) == (
        2, 1, 3,
    )
    assert inv.open_gap_count == 3


def test_restore_opens_gateway_down_gaps_for_points_that_had_data() -> None:
    """R6/R29: the downtime becomes a gateway_down gap per point; open gaps continue."""
    spec = plant()
    g_closed = Gap("s1/a1/p0@old", "s1", "a1", "p0", GapCause.TIMEOUT, s(50), s(60), s(49),
                   s(50), 1.0)
    g_open = Gap("s1/a1/p1@90", "s1", "a1", "p1", GapCause.TIMEOUT, s(90), None, s(89), s(90),
                 1.0)
    g_other = Gap("s9/a/p@1", "s9", "a", "p", GapCause.STALE, s(1), s(2), None, None, 1.0)
    latest = {
        "s1/a1/p0": rd(100.2, "p0", gw_delay=0.01),
        "s1/a1/p1": rd(99, "p1", Q.BAD_TIMEOUT),
        "s9/a/p": rd(100, "zz"),  # no longer configured
    }
    inv = Inventory(spec, now=s(200), tick_grace=0.0)
    new = inv.restore(latest, [g_open, g_closed, g_other], last_alive=s(101), now=s(200))
    assert [(g.point, g.cause, g.start, g.last_good, g.end) for g in new] == [
        ("p0", GapCause.GATEWAY_DOWN, s(101.2), s(100.2), None),
    ]
    assert [g.id for g in inv.gaps()] == ["s9/a/p@1", "s1/a1/p0@old", "s1/a1/p1@90", new[0].id]
    p0 = inv.point("s1", "a1", "p0", s(200))
    p1 = inv.point("s1", "a1", "p1", s(200))
    q0 = inv.point("s1", "a2", "q0", s(200))
    assert p0
    assert p1
    assert q0
    assert (p0.state, p0.since, p0.value, p0.last_good, p0.unit) == (
        State.OFFLINE, s(101.2), 1.0, s(100.2), "Cel",
    )
    assert (p1.state, p1.last_good, p1.open_gap.id if p1.open_gap else None) == (
        State.OFFLINE, s(89), "s1/a1/p1@90",
    )
    assert q0.state is State.UNKNOWN
    assert inv.tick(s(200.5)) == []  # q0 was never seen: its stale gap waits for its deadline
    (q_gap,) = inv.tick(s(201.5))
    assert (q_gap.point, q_gap.start) == ("q0", s(200))
    closed = inv.observe([rd(205, "p0"), rd(205.5, "p1")])
    assert sorted((g.id, g.end) for g in closed) == sorted(
        [(new[0].id, s(205)), ("s1/a1/p1@90", s(205.5))]
    )


def test_restore_start_never_precedes_the_last_stored_reading() -> None:
    """An old heartbeat (or none) never makes the gap overlap data the store holds."""
    latest = {"s1/a1/p0": rd(100, "p0"), "s1/a1/p1": rd(100, "p1")}
    inv = Inventory(plant(), now=s(300))
    (g0, g1) = inv.restore(latest, [], last_alive=s(95), now=s(300))
    assert (g0.start, g1.start) == (s(101), s(101))
    inv2 = Inventory(plant(), now=s(300))
    (h0, _) = inv2.restore(latest, [], last_alive=None, now=s(300))
    assert h0.start == s(101)


def test_restore_repairs_what_a_crash_can_leave() -> None:
    """Two open gaps of one point: the older is closed at the newer's start. An open gap
    followed by a stored good reading is closed at that reading."""
    a = Gap("a", "s1", "a1", "p0", GapCause.TIMEOUT, s(10), None, s(9), s(10), 1.0)
    b = Gap("b", "s1", "a1", "p0", GapCause.STALE, s(20), None, s(19), None, 1.0)
    c = Gap("c", "s1", "a1", "p1", GapCause.TIMEOUT, s(30), None, s(29), s(30), 1.0)
    latest = {"s1/a1/p1": rd(35, "p1")}
    inv = Inventory(plant(), now=s(100))
    changed = inv.restore({}, [b, a, c], last_alive=s(40), now=s(100))
    by_id = {g.id: g for g in changed}
    assert by_id["a"].end == s(20)
    assert "b" not in by_id
    inv = Inventory(plant(), now=s(100))
    changed = inv.restore(latest, [b, a, c], last_alive=s(40), now=s(100))
    by_id = {g.id: g for g in changed}
    assert by_id["c"].end == s(35)
    down = [g for g in changed if g.cause is GapCause.GATEWAY_DOWN]
    assert [(g.point, g.start, g.last_good) for g in down] == [("p1", s(40), s(35))]
    assert [g.id for g in inv.gaps(open=True)] == ["b", down[0].id]


async def test_restart_round_trip_through_the_store(tmp_path: Path) -> None:
    """R6: gaps and latest values persist; the downtime shows as gateway_down; coverage works."""
    path = tmp_path / "gw.db"
    store = await Store.open(path, retention_hours=24, max_bytes=64 * 1024 * 1024)
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)
    await store.set_meta("monitored_since", to_rfc3339(s(0)) or "")
    for k in range(1, 11):
        batch = [rd(k, "p0"), rd(k, "p1", Q.BAD_TIMEOUT if k >= 6 else GOOD)]
        await store.append(batch)
        await store.save_gaps(inv.observe(batch))
        await store.save_gaps(inv.tick(s(k)))
        await store.set_meta("last_alive", to_rfc3339(s(k)) or "")
    await store.close()  # the gateway stops at 10 s and comes back at 60 s

    store = await Store.open(path, retention_hours=24, max_bytes=64 * 1024 * 1024)
    try:
        inv2 = Inventory(plant(), now=s(60), tick_grace=0.0)
        alive = await store.get_meta("last_alive")
        assert alive is not None
        last_alive = datetime.fromisoformat(alive)
        new = inv2.restore(await store.load_latest(), await store.load_gaps(), last_alive, s(60))
        await store.save_gaps(new)
        assert [(g.point, g.cause, g.start, g.last_good) for g in new] == [
            ("p0", GapCause.GATEWAY_DOWN, s(11), s(10)),
        ]
        open_gaps = {g.point: g for g in inv2.gaps(open=True)}
        assert (open_gaps["p1"].cause, open_gaps["p1"].start, open_gaps["p1"].last_good) == (
            GapCause.TIMEOUT, s(6), s(5),
        )
        batch = [rd(61, "p0"), rd(61, "p1")]
        await store.append(batch)
        await store.save_gaps(inv2.observe(batch))
        stored = {g.id: g for g in await store.load_gaps()}
        assert sorted((g.point, g.cause, g.start, g.end) for g in stored.values()) == [
            ("p0", GapCause.GATEWAY_DOWN, s(11), s(61)),
            ("p1", GapCause.TIMEOUT, s(6), s(61)),
            ("q0", GapCause.STALE, s(0), None),  # never seen since monitoring began
        ]
        rows = inv2.coverage(
            await store.count_usable(s(0)),
            window_start=s(0), now=s(62), monitored_since=s(0), group_by="point",
        )
        assert [(r.group, r.expected, r.received) for r in rows] == [
            ("s1/a1/p0", 62, 11), ("s1/a1/p1", 62, 6), ("s1/a2/q0", 124, 0),
        ]
    finally:
        await store.close()


def test_coverage_exact_by_point_asset_site() -> None:
    inv = Inventory(plant(), now=s(0))
    received = {"s1/a1/p0": 80, "s1/a1/p1": 500, "s1/a2/q0": 0, "s1/x/unknown": 5}
    kw = {"window_start": s(0), "now": s(100), "monitored_since": s(10)}
    by_point = inv.coverage(received, group_by="point", **kw)  # type: ignore[arg-type]
    assert [(r.group, r.expected, r.received, r.coverage) for r in by_point] == [
        ("s1/a1/p0", 90, 80, 80 / 90),
        ("s1/a1/p1", 90, 90, 1.0),  # capped at expected
        ("s1/a2/q0", 180, 0, 0.0),
    ]
    by_asset = inv.coverage(received, group_by="asset", **kw)  # type: ignore[arg-type]
    assert [(r.group, r.expected, r.received) for r in by_asset] == [
        ("s1/a1", 180, 170), ("s1/a2", 180, 0),
    ]
    by_site = inv.coverage(received, group_by="site", **kw)  # type: ignore[arg-type]
    assert [(r.group, r.expected, r.received, r.coverage) for r in by_site] == [
        ("s1", 360, 170, 170 / 360),
    ]
    # window after the monitoring start; a partial interval does not count
    rows = inv.coverage({}, window_start=s(50), now=s(60.9), monitored_since=s(0),
                        group_by="point")
    assert [r.expected for r in rows] == [10, 10, 21]
    # nothing expected yet: coverage 1.0
    rows = inv.coverage({}, window_start=s(0), now=s(0.4), monitored_since=s(0), group_by="site")
    assert [(r.expected, r.coverage) for r in rows] == [(0, 1.0)]


def test_tick_cost_is_independent_of_quiet_healthy_points() -> None:
    """100k healthy points at 1 s: a tick looks at a handful of entries, not at every point.

    Counts operations (`tick_examined`), never time.
    """
    n = 100_000
    spec = InventorySpec(
        sites=(SiteSpec("s1"),),
        assets=tuple(AssetSpec("s1", f"a{i}") for i in range(100)),
        points=tuple(
            PointSpec("s1", f"a{i % 100}", f"p{i}", "d1", 1.0) for i in range(n)
        ),
        devices=(DeviceSpec("d1", "modbus", "h"),),
    )
    inv = Inventory(spec, now=s(0), tick_grace=0.0)
    inv.link_up("d1", s(0))
    ids = [(f"a{i % 100}", f"p{i}") for i in range(n)]
    examined: list[int] = []
    for k in range(1, 6):
        t = s(k)
        batch = [
            Reading("s1", a, p, float(k), None, GOOD, t, t, "test://")
            for a, p in ids
            if not (k >= 3 and p == "p7")  # one point goes quiet after 2 s
        ]
        gaps = inv.observe(batch)
        assert gaps == []
        opened = inv.tick(t + timedelta(seconds=0.5))
        examined.append(inv.tick_examined)
        if k == 5:
            assert [(g.point, g.start) for g in opened] == [("p7", s(3))]
        else:
            assert opened == []
    assert max(examined) <= 25, examined
    assert inv.heap_size <= 100  # time buckets, not points
    summary = inv.summary(s(5.5))
    assert (summary["points_online"], summary["points_offline"]) == (n - 1, 1)


# -- incremental roll-ups and keep-alive parking (issue #8) -----------------------------------


def _mixed_spec() -> InventorySpec:
    """Polled and report-by-exception points over three devices, an empty asset and site."""
    return InventorySpec(
        sites=(SiteSpec("s1"), SiteSpec("s2"), SiteSpec("s3")),
        assets=(AssetSpec("s1", "a1"), AssetSpec("s1", "a2"), AssetSpec("s2", "b1"),
                AssetSpec("s2", "b2")),
        points=(
            PointSpec("s1", "a1", "p0", "d1", 1.0),
            PointSpec("s1", "a1", "r0", "d2", 1.0, report_by_exception=True),
            PointSpec("s1", "a2", "q0", "d1", 0.5),
            PointSpec("s1", "a2", "r1", "d2", 2.0, report_by_exception=True),
            PointSpec("s2", "b1", "r2", "d2", 1.0, report_by_exception=True),
            PointSpec("s2", "b1", "z0", "d3", 1.0),
        ),
        devices=(DeviceSpec("d1", "modbus", "h"), DeviceSpec("d2", "opcua", "o"),
                 DeviceSpec("d3", "mqtt", "m")),
        gap_after=2.5,
    )


_MIXED_POINTS = {"p0": "a1", "r0": "a1", "q0": "a2", "r1": "a2", "r2": "b1", "z0": "b1"}
_MIXED_SITE = {"a1": "s1", "a2": "s1", "b1": "s2"}


def _summary_fields(view: object) -> dict[str, object]:
    fields = dict(view.__dict__) if hasattr(view, "__dict__") else {
        name: getattr(view, name) for name in view.__slots__  # type: ignore[attr-defined]
    }
    fields.pop("points", None)
    return fields


def _check_views_against_full_evaluation(
    inv: Inventory, now: datetime, links: dict[str, bool]
) -> None:
    """Counter-based summaries equal what evaluating every point at `now` gives."""
    full = inv.assets(now)  # every point evaluated at `now` (O(points))
    fast = inv.assets(now, with_points=False)
    assert [_summary_fields(a) for a in fast] == [_summary_fields(a) for a in full]
    assert all(a.points == () for a in fast)
    for state in State:
        want = [(a.site, a.id) for a in full if a.state is state]
        assert [(a.site, a.id) for a in inv.assets(now, state=state, with_points=False)] == want
    by_site: dict[str, list[AssetView]] = {}
    for a in full:
        by_site.setdefault(a.site, []).append(a)
    for site in inv.sites(now):
        members = by_site.get(site.id, [])
        assert site == inv.site(site.id, now)
        assert site.state is rollup(a.state for a in members)
        assert site.assets_by_state == {
            st.value: sum(1 for a in members if a.state is st) for st in
            (State.ONLINE, State.DEGRADED, State.OFFLINE, State.UNKNOWN)
        }
        assert site.points_total == sum(a.points_total for a in members)
        assert site.open_gaps == sum(a.open_gaps for a in members)
        seen = [a.last_seen for a in members if a.last_seen is not None]
        assert site.last_seen == max(seen, default=None)
        assert [a.id for a in inv.assets(now, site=site.id, with_points=False)] == [
            a.id for a in members
        ]
    points = [p for a in full for p in a.points]
    for dev in inv.devices(now):
        mine = [p for p in points if p.device == dev.id]
        states = {p.state for p in mine}
        link = links.get(dev.id)
        if link is False:
            want = State.OFFLINE
        elif link is None:
            want = rollup(states)
        else:
            want = State.DEGRADED if states & {State.DEGRADED, State.OFFLINE} else State.ONLINE
        assert dev.state is want
        seen = [p.last_seen for p in mine if p.last_seen is not None]
        good = [p.last_good for p in mine if p.last_good is not None]
        assert (dev.last_seen, dev.last_good) == (max(seen, default=None), max(good, default=None))


_mixed_step = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(sorted(_MIXED_POINTS)), st.booleans(),
              st.floats(0.0, 3.0)),
    st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
    st.tuples(st.just("alive"), st.floats(0.0, 2.0)),
    st.tuples(st.just("link"), st.sampled_from(["d1", "d2", "d3"]), st.booleans()),
    st.tuples(st.just("look"), st.floats(-1.0, 6.0)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_mixed_step, max_size=60))
def test_counter_roll_ups_equal_full_evaluation(steps: list[tuple[object, ...]]) -> None:
    """Sites, asset summaries and devices from counters == every point evaluated at `now`.

    Also across `tick`s, keep-alives (parked RBE points), links going up and down, views
    asked between ticks (points stale but not yet ticked) and before the latest evaluation
    (a clock that stepped back); and an unchanged `summary_version` means unchanged answers.
    """
    inv = Inventory(_mixed_spec(), now=s(0))
    t = 0.0
    links: dict[str, bool] = {}
    last: tuple[int, list[SiteView], list[AssetView]] | None = None
    for step in steps:
        kind = step[0]
        if kind == "read":
            _, point, good, dt = step
            t += float(dt)  # type: ignore[arg-type]
            asset = _MIXED_POINTS[str(point)]
            quality = GOOD if good else int(Q.BAD_TIMEOUT)
            inv.observe([Reading(_MIXED_SITE[asset], asset, str(point), None if not good
                                 else 1.0, None, quality, s(t), s(t), "test://")])
        elif kind == "tick":
            t += float(step[1])  # type: ignore[arg-type]
            inv.tick(s(t))
        elif kind == "alive":
            t += float(step[1])  # type: ignore[arg-type]
            inv.device_alive("d2", s(t))
        elif kind == "link":
            dev, up = str(step[1]), bool(step[2])
            links[dev] = up
            if up:
                inv.link_up(dev, s(t))
            else:
                inv.link_down(dev, s(t), "x")
        else:
            now = s(max(0.0, t + float(step[1])))  # type: ignore[arg-type]
            _check_views_against_full_evaluation(inv, now, links)
            version = inv.summary_version(now)
            sites = inv.sites(now)
            assets = inv.assets(now, with_points=False)
            if last is not None and version is not None and version == last[0]:
                assert (sites, assets) == (last[1], last[2])
            last = (version, sites, assets) if version is not None else None
    _check_views_against_full_evaluation(inv, s(t), links)
    _check_views_against_full_evaluation(inv, s(t + 10), links)


def test_unchanged_summaries_are_reused_and_changes_bump_the_version() -> None:
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)
    inv.link_up("d1", s(0))
    inv.observe([rd(1, "p0"), rd(1, "p1")])
    v1 = inv.summary_version(s(1))
    first = inv.assets(s(1), with_points=False)
    sites = inv.sites(s(1))
    assert v1 is not None
    assert inv.summary_version(s(1.5)) == v1
    again = inv.assets(s(1.5), with_points=False)
    assert all(x is y for x, y in zip(first, again, strict=True))  # the same objects
    assert all(x is y for x, y in zip(sites, inv.sites(s(1.5)), strict=True))
    inv.observe([rd(1.5, "p0")])  # a1's last seen moves: a1 and s1 change, a2 and s2 not
    v2 = inv.summary_version(s(1.5))
    assert v2 is not None
    assert v2 != v1
    after = inv.assets(s(1.5), with_points=False)
    assert after[0] is not first[0]
    assert after[0].last_seen == s(1.5)
    assert after[1] is first[1]
    # p0 and p1 stale at 1.5 + 2.5 but no tick yet: the answer depends on `now`
    assert inv.summary_version(s(4.1)) is None
    assert inv.assets(s(4.1), with_points=False)[0].state is State.OFFLINE
    inv.tick(s(4.1))
    assert inv.summary_version(s(4.1)) is not None


def _rbe_plant(n: int) -> InventorySpec:
    return InventorySpec(
        sites=(SiteSpec("s1"),),
        assets=tuple(AssetSpec("s1", f"a{i}") for i in range(max(1, n // 1000))),
        points=tuple(
            PointSpec("s1", f"a{i % max(1, n // 1000)}", f"r{i}", "opc", 1.0,
                      report_by_exception=True)
            for i in range(n)
        ),
        devices=(DeviceSpec("opc", "opcua", "o"),),
    )


def test_keepalives_park_quiet_rbe_points_and_cost_nothing_per_point() -> None:
    """20k silent RBE points with keep-alives: after one pass they are parked on their device,
    so a keep-alive and a tick touch no point (counted operations, never time)."""
    n = 20_000
    inv = Inventory(_rbe_plant(n), now=s(0), tick_grace=0.0)
    inv.link_up("opc", s(0))
    ids = [(f"a{i % (n // 1000)}", f"r{i}") for i in range(n)]
    inv.observe([Reading("s1", a, p, 1.0, None, GOOD, s(0), s(0), "test://") for a, p in ids])
    examined: list[int] = []
    for k in range(1, 41):  # 20 s of keep-alives every 0.5 s, no value changes
        now = s(k / 2)
        inv.device_alive("opc", now)
        assert inv.tick(now) == []
        examined.append(inv.tick_examined)
    assert inv.parked_count == n
    # the first deadlines (2.5 s) pass n points once; afterwards a tick looks at ~nothing
    assert max(examined[10:]) <= 5, examined
    assert inv.summary(s(20))["points_online"] == n
    assert all(a.state is State.ONLINE for a in inv.assets(s(20), with_points=False))
    # a value change unparks one point; keep-alives then stop: every point goes stale once
    inv.observe([Reading("s1", "a0", "r0", 2.0, None, GOOD, s(20), s(20), "test://")])
    assert inv.parked_count == n - 1
    assert inv.assets(s(22.5), with_points=False)[0].state is State.ONLINE
    assert inv.assets(s(22.6), with_points=False)[0].state is State.OFFLINE  # not yet ticked
    gaps = inv.tick(s(23))
    assert len(gaps) == n
    starts = {g.start for g in gaps}
    assert starts == {s(1), s(21)}  # last good + one interval, keep-alives do not move it
    assert inv.parked_count == 0
    assert inv.summary(s(23))["points_offline"] == n


def test_parked_points_go_offline_with_their_device_and_recover() -> None:
    inv = Inventory(_rbe_plant(10), now=s(0), tick_grace=0.0)
    inv.link_up("opc", s(0))
    inv.observe([Reading("s1", "a0", f"r{i}", 1.0, None, GOOD, s(0), s(0), "test://")
                 for i in range(10)])
    for k in range(1, 7):
        inv.device_alive("opc", s(k))
        inv.tick(s(k))
    assert inv.parked_count == 10
    inv.link_down("opc", s(6.5), "lost")
    assert inv.assets(s(6.5), with_points=False)[0].state is State.OFFLINE
    inv.device_alive("opc", s(7))  # ignored while down
    gaps = inv.tick(s(9))  # last keep-alive at 6 + 2.5
    assert {(g.cause, g.start) for g in gaps} == {(GapCause.DEVICE_OFFLINE, s(1))}
    inv.link_up("opc", s(10))
    inv.observe([Reading("s1", "a0", f"r{i}", 1.0, None, GOOD, s(10), s(10), "test://")
                 for i in range(10)])
    assert inv.open_gap_count == 0
    assert inv.assets(s(10), with_points=False)[0].state is State.ONLINE


def test_heard_moves_the_silence_deadline_but_not_the_values() -> None:
    """Readings dropped before the store (`Inventory.heard`) are not silence: no stale gap."""
    inv = Inventory(plant(), now=s(0), tick_grace=0.0)
    inv.link_up("d1", s(0))
    inv.observe([rd(1, value=3.0), rd(1, "p1", value=3.0)])
    for t in (2, 3, 4, 5, 6):  # p0's readings of 2..6 s were dropped; p1 really went quiet
        inv.heard("s1/a1/p0", s(t))
    inv.heard("s1/zz/unknown", s(6))  # ignored
    opened = {g.point: g for g in inv.tick(s(7)) if g.asset == "a1"}
    assert sorted(opened) == ["p1"]  # p1: silent since 1 s + 2.5 s
    view = inv.point("s1", "a1", "p0", s(7))
    assert view is not None
    assert (view.state, view.value, view.last_seen) == (State.ONLINE, 3.0, s(1))
    assert inv.observe([rd(7.5, value=4.0)]) == []  # on time: no stale gap opened and closed
    assert view.open_gap is None
    # heard() never moves the deadline back
    inv.heard("s1/a1/p0", s(2))
    assert inv.tick(s(9.9)) == []
    assert [g.point for g in inv.tick(s(10.1)) if g.asset == "a1"] == ["p0"]
