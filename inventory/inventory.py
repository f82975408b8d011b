"""The asset inventory: expected versus observed, connectivity state and data gaps (DESIGN.md §4).

`Inventory` is pure in-memory logic with synchronous methods, called from the event loop. It
never does I/O: the runtime persists what `restore`, `observe` and `tick` return (gaps that
opened, changed or closed) through `gateway.store.Store.save_gaps`.

Time bases:
- Gap bounds (`start`, `end`, `last_good`, `first_bad`) are **source times** of readings
  (RELIABILITY.md §6 "Gap correctness": ``last_good_ts`` / ``first_good_ts`` equal the stored
  samples' timestamps).
- Freshness ("nothing usable for ``gap_after × expected_interval``") is measured on the
  **gateway clock**: a reading's `gateway_time` against the ``now`` given to `tick` and the
  views, so a device clock that runs late never makes a healthy point look stale.

Gap rules (M7, R6, R25): the gaps of one point never overlap and are ordered by start; a point has
at most one open gap; an open gap closes at the first usable (Good/Uncertain) reading, with
``end`` = that reading's source time; a Bad reading while a gap is open only fills in
``first_bad``. A stale gap opened late (the tick ran after the deadline, or a reading arrived
first) gets the same bounds it would have had with an exact tick, so detected gaps do not depend
on how often `tick` runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal

from gateway.clock import to_epoch_ns
from gateway.model import Reading, Value
from gateway.quality import quality_name, severity
from inventory.coverage import coverage_rows
from inventory.gaps import DeadlineHeap, cause_for_quality, overlaps, rollup
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from inventory.views import (
    AssetView,
    CoverageRow,
    DeviceView,
    Gap,
    GapCause,
    PointView,
    SiteView,
    State,
)

_BAD_BIT = 0x80000000
_STATE_KEYS = (State.ONLINE, State.DEGRADED, State.OFFLINE, State.UNKNOWN)


def _at(ts: float) -> datetime:
    """Aware UTC datetime from POSIX seconds."""
    return datetime.fromtimestamp(ts, UTC)


@dataclass(eq=False, slots=True)
class _Site:
    spec: SiteSpec
    assets: list[_Asset] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Asset:
    spec: AssetSpec
    points: list[_Point] = field(default_factory=list)
    state: State = State.UNKNOWN
    since: datetime | None = None


@dataclass(eq=False, slots=True)
class _Device:
    spec: DeviceSpec
    points: list[_Point] = field(default_factory=list)
    link: bool | None = None  # None: no link event yet
    went_down: bool = False  # a link_down happened since the last link_up
    state: State = State.UNKNOWN
    since: datetime | None = None
    last_error: str | None = None
    reconnects: int = 0
    latency_s: float | None = None
    polls: int = 0
    overruns: int = 0


@dataclass(eq=False, slots=True)
class _Point:
    idx: int
    spec: PointSpec
    key: str
    asset: _Asset
    device: _Device
    interval: timedelta
    threshold: float  # gap_after × expected_interval [s]
    unit: str | None
    value: Value = None
    quality: int | None = None
    last_seen: datetime | None = None  # newest source time of any reading
    last_rx: float | None = None  # gateway time of the latest reading [POSIX s]
    last_good: datetime | None = None  # source time of the latest usable reading
    open_gap: Gap | None = None
    last_gap_start: datetime | None = None
    last_gap_end: datetime | None = None
    same_start: int = 0  # gaps so far that started at last_gap_start (for unique ids)
    state: State = State.UNKNOWN
    since: datetime | None = None


class Inventory:
    """Connectivity state, last values and data gaps of every configured point.

    Args:
        spec: What is configured: sites, assets, points (with expected intervals), devices and
            the gap rule ``gap_after``.
        now: Start of monitoring (aware UTC); a point never seen gets a `stale` gap starting here
            once ``gap_after × expected_interval`` has passed.
        closed_gap_cap: Closed gaps kept in memory (oldest evicted first; they stay in the
            store) [count, >= 0].
        tick_grace: `tick` fires a deadline only once it is this much in the past [s, >= 0]:
            room for readings already acquired but not yet observed (store commit, loop lag),
            so a slow commit never makes an on-time reading look late. It delays detection
            only; gap bounds come from the readings, not from when the tick ran.

    Attributes:
        unknown_readings: Readings observed whose key is not configured [count].
        late_readings: Readings ignored because their source time is older than the point's
            last usable reading (replays, retained messages) [count].
    """

    def __init__(
        self,
        spec: InventorySpec,
        *,
        now: datetime,
        closed_gap_cap: int = 10_000,
        tick_grace: float = 0.5,
    ) -> None:
        self._spec = spec
        self._tick_grace = max(0.0, tick_grace)
        self._gap_after = spec.gap_after
        self._started = now
        self._sites: dict[str, _Site] = {}
        self._assets: dict[tuple[str, str], _Asset] = {}
        self._devices: dict[str, _Device] = {}
        self._points: list[_Point] = []
        self._by_key: dict[str, _Point] = {}
        for site_spec in spec.sites:
            self._sites.setdefault(site_spec.id, _Site(site_spec))
        for asset_spec in spec.assets:
            self._asset_of(asset_spec.site, asset_spec.id, asset_spec)
        for dev_spec in spec.devices:
            self._devices.setdefault(dev_spec.id, _Device(dev_spec))
        for point_spec in spec.points:
            if point_spec.key in self._by_key:
                continue
            asset = self._asset_of(point_spec.site, point_spec.asset, None)
            device = self._device_of(point_spec.device)
            point = _Point(
                idx=len(self._points),
                spec=point_spec,
                key=point_spec.key,
                asset=asset,
                device=device,
                interval=timedelta(seconds=point_spec.expected_interval),
                threshold=self._gap_after * point_spec.expected_interval,
                unit=point_spec.unit,
            )
            self._points.append(point)
            self._by_key[point.key] = point
            asset.points.append(point)
            device.points.append(point)
        self._heap = DeadlineHeap(len(self._points))
        start_ts = now.timestamp()
        for point in self._points:
            self._heap.set(point.idx, start_ts + point.threshold)
        self._counts: dict[State, int] = dict.fromkeys(_STATE_KEYS, 0)
        self._counts[State.UNKNOWN] = len(self._points)
        self._open_count = 0
        self._closed: deque[Gap] = deque(maxlen=max(0, closed_gap_cap))
        self._dirty_assets: dict[_Asset, datetime] = {}
        self._dirty_devices: dict[_Device, datetime] = {}
        self.unknown_readings = 0
        self.late_readings = 0

    # ------------------------------------------------------------------ structure helpers

    def _asset_of(self, site: str, asset: str, spec: AssetSpec | None) -> _Asset:
        found = self._assets.get((site, asset))
        if found is None:
            found = _Asset(spec or AssetSpec(site=site, id=asset))
            self._assets[(site, asset)] = found
            site_obj = self._sites.get(site)
            if site_obj is None:
                site_obj = _Site(SiteSpec(id=site))
                self._sites[site] = site_obj
            site_obj.assets.append(found)
        return found

    def _device_of(self, device: str) -> _Device:
        found = self._devices.get(device)
        if found is None:
            found = _Device(DeviceSpec(id=device, protocol="", endpoint=""))
            self._devices[device] = found
        return found

    @property
    def open_gap_count(self) -> int:
        """Points that have an open gap now [count]."""
        return self._open_count

    @property
    def tick_examined(self) -> int:
        """Heap entries popped plus points looked at by the latest `tick` [count] (cost)."""
        return self._heap.last_examined

    @property
    def heap_size(self) -> int:
        """Time buckets in the deadline heap, including emptied ones not yet dropped [count]."""
        return len(self._heap)

    # ------------------------------------------------------------------ state machine

    @staticmethod
    def _eval(p: _Point, now_ts: float) -> State:
        """State of a point at `now_ts` [POSIX s] from the facts observed so far."""
        if p.device.link is False:
            return State.OFFLINE
        if p.last_rx is None:
            return State.UNKNOWN
        if now_ts > p.last_rx + p.threshold:
            return State.OFFLINE
        if p.quality is not None and p.quality & _BAD_BIT:
            return State.DEGRADED
        return State.ONLINE

    def _transition(self, p: _Point, new: State, at: datetime) -> None:
        counts = self._counts
        counts[p.state] -= 1
        counts[new] += 1
        p.state = new
        p.since = at
        self._dirty_assets[p.asset] = at
        self._dirty_devices[p.device] = at

    @staticmethod
    def _device_state(d: _Device, point_states: Iterable[State]) -> State:
        if d.link is False:
            return State.OFFLINE
        states = set(point_states)
        if d.link is None:
            return rollup(states)
        if states & {State.DEGRADED, State.OFFLINE}:
            return State.DEGRADED
        return State.ONLINE

    def _flush_dirty(self) -> None:
        """Recompute the tracked state of assets/devices whose points changed state."""
        for asset, at in self._dirty_assets.items():
            new = rollup(p.state for p in asset.points)
            if new is not asset.state:
                asset.state = new
                asset.since = at
        self._dirty_assets.clear()
        for device, at in self._dirty_devices.items():
            new = self._device_state(device, (p.state for p in device.points))
            if new is not device.state:
                device.state = new
                device.since = at
        self._dirty_devices.clear()

    # ------------------------------------------------------------------ gap bookkeeping

    def _open_gap(
        self,
        p: _Point,
        cause: GapCause,
        start: datetime,
        first_bad: datetime | None,
        changed: dict[str, Gap],
    ) -> Gap:
        # Never before the previous gap's end nor the last usable sample: gaps never overlap.
        if p.last_gap_end is not None and start < p.last_gap_end:
            start = p.last_gap_end
        if p.last_good is not None and start < p.last_good:
            start = p.last_good
        if start == p.last_gap_start:
            p.same_start += 1
            gap_id = f"{p.key}@{to_epoch_ns(start)}~{p.same_start}"
        else:
            p.same_start = 0
            gap_id = f"{p.key}@{to_epoch_ns(start)}"
        gap = Gap(
            id=gap_id,
            site=p.spec.site,
            asset=p.spec.asset,
            point=p.spec.point,
            cause=cause,
            start=start,
            end=None,
            last_good=p.last_good,
            first_bad=first_bad,
            expected_interval=p.spec.expected_interval,
        )
        p.open_gap = gap
        p.last_gap_start = start
        self._open_count += 1
        changed[gap.id] = gap
        return gap

    def _open_stale(self, p: _Point, changed: dict[str, Gap]) -> None:
        """Open the gap of a point that stayed silent past its deadline."""
        base = p.last_good or p.last_seen
        start = base + p.interval if base is not None else self._started
        cause = GapCause.DEVICE_OFFLINE if p.device.link is False else GapCause.STALE
        self._open_gap(p, cause, start, None, changed)

    def _close_gap(self, p: _Point, end: datetime, changed: dict[str, Gap]) -> None:
        gap = p.open_gap
        if gap is None:
            return
        gap.end = max(end, gap.start)
        p.open_gap = None
        p.last_gap_end = gap.end
        self._open_count -= 1
        self._closed.append(gap)
        changed[gap.id] = gap

    @staticmethod
    def _snapshots(changed: dict[str, Gap]) -> list[Gap]:
        return [replace(g) for g in changed.values()]

    # ------------------------------------------------------------------ inputs

    def restore(
        self,
        latest: Mapping[str, Reading],
        gaps: Iterable[Gap],
        last_alive: datetime | None,
        now: datetime,
    ) -> list[Gap]:
        """Load what the store kept from the previous run; record the downtime as gaps (R6, R29).

        Call once at start, before `observe`. Gaps of points that are no longer configured are
        kept only if closed. Repairs what a crash can leave: of several open gaps of one point,
        all but the latest are closed at the next one's start; an open gap followed by a stored
        usable reading is closed at that reading's time.

        Every configured point that had data before and has no open gap then gets a
        `gateway_down` gap: ``start = max(last_alive, last reading + expected_interval)`` (the
        max keeps the gap after the point's last stored reading: the heartbeat may be a few
        seconds older than the last commit); ``last_good`` = the point's last usable source time.

        Args:
            latest: The last stored reading per point key.
            gaps: Persisted gaps, open and closed, any order.
            last_alive: The gateway's last heartbeat before it stopped (aware UTC), or None.
            now: Current time (aware UTC).

        Returns:
            Gaps to persist (new `gateway_down` gaps and repaired ones), as snapshots.
        """
        changed: dict[str, Gap] = {}
        known_ids = {g.id for g in self._closed}
        known_ids.update(p.open_gap.id for p in self._points if p.open_gap is not None)
        open_by_point: dict[int, list[Gap]] = {}
        for gap in sorted(gaps, key=lambda g: g.start):
            if gap.id in known_ids:
                continue
            known_ids.add(gap.id)
            p = self._by_key.get(gap.key)
            if gap.end is not None:
                self._closed.append(replace(gap))
                if p is not None and (p.last_gap_end is None or gap.end >= p.last_gap_end):
                    p.last_gap_end = gap.end
                    p.last_gap_start = gap.start
            elif p is not None:
                open_by_point.setdefault(p.idx, []).append(replace(gap))
        for idx, opens in open_by_point.items():
            p = self._points[idx]
            for older, newer in pairwise(opens):
                older.end = max(newer.start, older.start)
                self._closed.append(older)
                changed[older.id] = older
            keep = opens[-1]
            if p.open_gap is None:
                p.open_gap = keep
                self._open_count += 1
                p.last_gap_start = keep.start
        for key, reading in latest.items():
            p = self._by_key.get(key)
            if p is None:
                continue
            st = reading.source_time
            p.value = reading.value
            p.quality = reading.quality
            p.unit = reading.unit or p.unit
            p.last_seen = st
            p.last_rx = reading.gateway_time.timestamp()
            if not reading.quality & _BAD_BIT:
                p.last_good = st
            else:
                candidates = [p.last_gap_end]
                if p.open_gap is not None:
                    candidates.append(p.open_gap.last_good)
                p.last_good = max((c for c in candidates if c is not None), default=None)
            usable = not reading.quality & _BAD_BIT
            if usable and p.open_gap is not None and st >= p.open_gap.start:
                self._close_gap(p, st, changed)  # the crash came between commit and save_gaps
            self._heap.set(p.idx, p.last_rx + p.threshold)
        for p in self._points:
            if p.last_seen is None or p.open_gap is not None:
                continue
            start = p.last_seen + p.interval
            if last_alive is not None and last_alive > start:
                start = last_alive
            self._open_gap(p, GapCause.GATEWAY_DOWN, start, None, changed)
        now_ts = now.timestamp()
        for p in self._points:
            new = self._eval(p, now_ts)
            if new is not p.state:
                at = p.open_gap.start if (new is State.OFFLINE and p.open_gap) else now
                self._transition(p, new, at)
        self._flush_dirty()
        return self._snapshots(changed)

    def observe(self, readings: Sequence[Reading]) -> list[Gap]:
        """Take in readings: update last seen/good/value/quality, open and close gaps.

        A usable (Good/Uncertain) reading closes the point's open gap with ``end`` = its source
        time. A Bad reading with no open gap opens one with ``start = first_bad`` = its source
        time and a cause from its quality (`inventory.gaps.cause_for_quality`); with a gap
        already open it only fills in ``first_bad`` if still empty. Readings of unknown keys are
        counted in `unknown_readings`; readings older than the point's last usable one in
        `late_readings` (both otherwise ignored). Cost O(len(readings)).

        Args:
            readings: Readings in arrival order.

        Returns:
            Gaps that opened, changed or closed, as snapshots, each once (its latest state).
        """
        changed: dict[str, Gap] = {}
        by_key = self._by_key
        heap = self._heap
        for r in readings:
            p = by_key.get(f"{r.site}/{r.asset}/{r.point}")
            if p is None:
                self.unknown_readings += 1
                continue
            st = r.source_time
            if p.last_good is not None and st < p.last_good:
                self.late_readings += 1
                continue
            rx = r.gateway_time.timestamp()
            if p.open_gap is None:
                deadline = heap.get(p.idx)
                if deadline is not None and rx > deadline:
                    self._open_stale(p, changed)  # the tick has not caught it yet
            quality = r.quality
            p.value = r.value
            p.quality = quality
            if r.unit is not None:
                p.unit = r.unit
            if p.last_seen is None or st > p.last_seen:
                p.last_seen = st
            if p.last_rx is None or rx > p.last_rx:
                p.last_rx = rx
            gap = p.open_gap
            if not quality & _BAD_BIT:
                p.last_good = st
                if gap is not None:
                    self._close_gap(p, st, changed)
                new = State.ONLINE
            else:
                if gap is None:
                    self._open_gap(p, cause_for_quality(quality), st, st, changed)
                elif gap.first_bad is None and st >= gap.start:
                    gap.first_bad = st
                    changed[gap.id] = gap
                new = State.DEGRADED
            heap.set(p.idx, p.last_rx + p.threshold)
            if p.device.link is False:
                new = State.OFFLINE
            if new is not p.state:
                self._transition(p, new, r.gateway_time)
        if self._dirty_assets or self._dirty_devices:
            self._flush_dirty()
        return self._snapshots(changed)

    def link_up(self, device: str, now: datetime) -> None:
        """Record that the runtime connected to a device.

        Counts a reconnect when the link was reported down before. Repeated calls are no-ops.

        Args:
            device: Device id.
            now: Event time (aware UTC).
        """
        d = self._device_of(device)
        if d.link is True:
            return
        if d.went_down:
            d.reconnects += 1
        d.went_down = False
        d.link = True
        self._relink(d, now)

    def link_down(self, device: str, now: datetime, error: str) -> None:
        """Record that a device's link is down (its points turn offline).

        Repeated calls (failed reconnect attempts) only update `last_error`.

        Args:
            device: Device id.
            now: Event time (aware UTC).
            error: Short reason, shown as the device's `last_error`.
        """
        d = self._device_of(device)
        d.last_error = error
        if d.link is False:
            return
        d.link = False
        d.went_down = True
        self._relink(d, now)

    def _relink(self, d: _Device, now: datetime) -> None:
        now_ts = now.timestamp()
        for p in d.points:
            new = self._eval(p, now_ts)
            if new is not p.state:
                self._transition(p, new, now)
        self._dirty_devices.setdefault(d, now)
        self._flush_dirty()

    def add_closed_gap(self, gap: Gap) -> None:
        """Record a gap found outside `observe`/`tick`, already closed (e.g. `buffer_overflow`).

        The gap is listed by `gaps()`; it does not change any point's state. The caller
        persists it. A gap with the same id recorded earlier is kept as well (the newest
        snapshot wins in the store).

        Args:
            gap: A closed gap (``end`` set).

        Raises:
            ValueError: The gap is open.
        """
        if gap.end is None:
            msg = f"gap {gap.id} is open; only closed gaps can be added"
            raise ValueError(msg)
        self._closed.append(gap)

    def device_alive(self, device: str, now: datetime) -> None:
        """A keep-alive proved the device's subscription alive: silent points are not a gap.

        Refreshes the freshness deadline of the device's report-by-exception points (their
        last reading stays as it was); polled points are unaffected. Cost O(points of the
        device); called once per keep-alive, not per reading.

        Args:
            device: Device id.
            now: Time the keep-alive arrived (aware UTC, gateway clock).
        """
        d = self._devices.get(device)
        if d is None or d.link is False:
            return
        now_ts = now.timestamp()
        for p in d.points:
            rbe = p.spec.report_by_exception and p.open_gap is None
            if rbe and p.last_rx is not None and now_ts > p.last_rx:
                p.last_rx = now_ts
                self._heap.set(p.idx, now_ts + p.threshold)

    def poll_stats(
        self, device: str, *, latency_s: float | None, polls: int, overruns: int
    ) -> None:
        """Record a device's polling statistics (shown in `DeviceView`).

        Args:
            device: Device id.
            latency_s: Latest poll round-trip [s], or None to keep the previous value.
            polls: Polls done since start [count, cumulative].
            overruns: Polls skipped because the previous one overran its period [count,
                cumulative].
        """
        d = self._device_of(device)
        if latency_s is not None:
            d.latency_s = latency_s
        d.polls = polls
        d.overruns = overruns

    def tick(self, now: datetime) -> list[Gap]:
        """Fire due freshness deadlines: open `stale` gaps and update states.

        A point with no open gap whose last reading (or the monitoring start, if never seen)
        is older than ``gap_after × expected_interval`` (+ ``tick_grace``) on the gateway
        clock opens a gap with ``start = last_good + expected_interval`` (or the monitoring
        start) and cause `stale` (`device_offline` if its device's link is down). Cost: the due
        points plus the time buckets that elapsed since the last tick, independent of the
        number of quiet, healthy points (see `inventory.gaps.DeadlineHeap`; the count is in
        `tick_examined`).

        Args:
            now: Current time (aware UTC).

        Returns:
            Gaps that opened, as snapshots.
        """
        changed: dict[str, Gap] = {}
        now_ts = now.timestamp()
        for idx, deadline in self._heap.pop_due(now_ts - self._tick_grace):
            p = self._points[idx]
            if p.open_gap is None:
                self._open_stale(p, changed)
            new = self._eval(p, now_ts)
            if new is not p.state:
                self._transition(p, new, _at(deadline))
        if self._dirty_assets or self._dirty_devices:
            self._flush_dirty()
        return self._snapshots(changed)

    # ------------------------------------------------------------------ views

    def _point_view(self, p: _Point, now_ts: float, now: datetime) -> PointView:
        state = self._eval(p, now_ts)
        if state is p.state:
            since = p.since
        elif state is State.OFFLINE and p.last_rx is not None and p.device.link is not False:
            since = _at(p.last_rx + p.threshold)  # went stale; the tick has not run yet
        else:
            since = now
        q = p.quality
        return PointView(
            site=p.spec.site,
            asset=p.spec.asset,
            point=p.spec.point,
            name=p.spec.name,
            device=p.spec.device,
            unit=p.unit,
            source=p.spec.source,
            expected_interval=p.spec.expected_interval,
            state=state,
            value=p.value,
            quality=q,
            quality_name=quality_name(q) if q is not None else None,
            severity=severity(q).value if q is not None else None,
            last_seen=p.last_seen,
            last_good=p.last_good,
            open_gap=replace(p.open_gap) if p.open_gap is not None else None,
            since=since,
        )

    def _asset_view(self, a: _Asset, now_ts: float, now: datetime) -> AssetView:
        points = tuple(self._point_view(p, now_ts, now) for p in a.points)
        state = rollup(pv.state for pv in points)
        by_state = dict.fromkeys((s.value for s in _STATE_KEYS), 0)
        for pv in points:
            by_state[pv.state.value] += 1
        seen = [pv.last_seen for pv in points if pv.last_seen is not None]
        return AssetView(
            site=a.spec.site,
            id=a.spec.id,
            name=a.spec.name,
            kind=a.spec.kind,
            state=state,
            since=a.since if state is a.state else now,
            last_seen=max(seen, default=None),
            points_total=len(points),
            points_by_state=by_state,
            open_gaps=sum(1 for p in a.points if p.open_gap is not None),
            points=points,
        )

    def sites(self, now: datetime) -> list[SiteView]:
        """All sites (configured order) with the roll-up of their assets at `now`.

        Args:
            now: Current time (aware UTC).

        Returns:
            One `SiteView` per site.
        """
        return [self._site_view(s, now) for s in self._sites.values()]

    def site(self, site_id: str, now: datetime) -> SiteView | None:
        """One site at `now`, or None if it is not configured."""
        s = self._sites.get(site_id)
        return self._site_view(s, now) if s is not None else None

    def _site_view(self, s: _Site, now: datetime) -> SiteView:
        now_ts = now.timestamp()
        assets = [self._asset_view(a, now_ts, now) for a in s.assets]
        by_state = dict.fromkeys((st.value for st in _STATE_KEYS), 0)
        for av in assets:
            by_state[av.state.value] += 1
        seen = [av.last_seen for av in assets if av.last_seen is not None]
        return SiteView(
            id=s.spec.id,
            name=s.spec.name,
            state=rollup(av.state for av in assets),
            assets_total=len(assets),
            assets_by_state=by_state,
            points_total=sum(av.points_total for av in assets),
            open_gaps=sum(av.open_gaps for av in assets),
            last_seen=max(seen, default=None),
        )

    def assets(
        self, now: datetime, *, site: str | None = None, state: State | None = None
    ) -> list[AssetView]:
        """Assets (configured order) with their points at `now`, optionally filtered.

        Args:
            now: Current time (aware UTC).
            site: Only this site's assets.
            state: Only assets in this state.

        Returns:
            Matching `AssetView`s.
        """
        now_ts = now.timestamp()
        out: list[AssetView] = []
        for (site_id, _), a in self._assets.items():
            if site is not None and site_id != site:
                continue
            view = self._asset_view(a, now_ts, now)
            if state is None or view.state is state:
                out.append(view)
        return out

    def asset(self, site: str, asset: str, now: datetime) -> AssetView | None:
        """One asset with its points at `now`, or None if it is not configured."""
        a = self._assets.get((site, asset))
        return self._asset_view(a, now.timestamp(), now) if a is not None else None

    def point(self, site: str, asset: str, point: str, now: datetime) -> PointView | None:
        """One point at `now`, or None if it is not configured."""
        p = self._by_key.get(f"{site}/{asset}/{point}")
        return self._point_view(p, now.timestamp(), now) if p is not None else None

    def devices(self, now: datetime) -> list[DeviceView]:
        """All devices (configured order) with link state and polling statistics at `now`.

        Args:
            now: Current time (aware UTC).

        Returns:
            One `DeviceView` per device.
        """
        now_ts = now.timestamp()
        out: list[DeviceView] = []
        for d in self._devices.values():
            states = [self._eval(p, now_ts) for p in d.points]
            state = self._device_state(d, states)
            seen = [p.last_seen for p in d.points if p.last_seen is not None]
            good = [p.last_good for p in d.points if p.last_good is not None]
            out.append(
                DeviceView(
                    id=d.spec.id,
                    protocol=d.spec.protocol,
                    endpoint=d.spec.endpoint,
                    state=state,
                    link_up=d.link is True,
                    since=d.since if state is d.state else now,
                    last_seen=max(seen, default=None),
                    last_good=max(good, default=None),
                    last_error=d.last_error,
                    reconnects=d.reconnects,
                    poll_latency_s=d.latency_s,
                    polls=d.polls,
                    overruns=d.overruns,
                    points_total=len(d.points),
                )
            )
        return out

    def gaps(
        self,
        *,
        site: str | None = None,
        asset: str | None = None,
        point: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        open: bool | None = None,
    ) -> list[Gap]:
        """Gaps held in memory (all open ones and the most recent closed ones), filtered.

        Args:
            site: Only this site.
            asset: Only this asset id.
            point: Only this point id.
            since: Only gaps that end at or after this time (open gaps always qualify).
            until: Only gaps that start at or before this time.
            open: True: only open gaps; False: only closed ones; None: both.

        Returns:
            Snapshots of the matching gaps ordered by start (then point key).
        """
        candidates: list[Gap] = []
        if open is not False:
            candidates.extend(p.open_gap for p in self._points if p.open_gap is not None)
        if open is not True:
            candidates.extend(self._closed)
        out = [
            replace(g)
            for g in candidates
            if (site is None or g.site == site)
            and (asset is None or g.asset == asset)
            and (point is None or g.point == point)
            and overlaps(g, since, until)
        ]
        out.sort(key=lambda g: (g.start, g.key))
        return out

    def coverage(
        self,
        received: Mapping[str, int],
        *,
        window_start: datetime,
        now: datetime,
        monitored_since: datetime,
        group_by: Literal["site", "asset", "point"],
    ) -> list[CoverageRow]:
        """Coverage of the configured points over ``[max(window_start, monitored_since), now)``.

        See `inventory.coverage.coverage_rows`.

        Args:
            received: Usable samples per point key in the window [count]
                (`gateway.store.Store.count_usable`).
            window_start: Start of the window (aware UTC).
            now: End of the window (aware UTC).
            monitored_since: When monitoring began (aware UTC).
            group_by: ``site``, ``asset`` or ``point``.

        Returns:
            One `CoverageRow` per group, sorted by group key.
        """
        return coverage_rows(
            (p.spec for p in self._points),
            received,
            window_start=window_start,
            now=now,
            monitored_since=monitored_since,
            group_by=group_by,
        )

    def summary(self, now: datetime) -> dict[str, int]:
        """Counts for progress lines and metrics, from the state tracked at the last event/tick.

        Args:
            now: Current time (aware UTC); unused by the counts of tracked state, kept so
                callers need not care how the numbers are derived.

        Returns:
            ``points_total``, ``points_online``, ``points_degraded``, ``points_offline``,
            ``points_unknown``, ``open_gaps``, ``devices_total``, ``devices_up``,
            ``devices_down``, ``unknown_readings``, ``late_readings`` [count].
        """
        del now
        counts = self._counts
        return {
            "points_total": len(self._points),
            "points_online": counts[State.ONLINE],
            "points_degraded": counts[State.DEGRADED],
            "points_offline": counts[State.OFFLINE],
            "points_unknown": counts[State.UNKNOWN],
            "open_gaps": self._open_count,
            "devices_total": len(self._devices),
            "devices_up": sum(1 for d in self._devices.values() if d.link is True),
            "devices_down": sum(1 for d in self._devices.values() if d.link is False),
            "unknown_readings": self.unknown_readings,
            "late_readings": self.late_readings,
        }
