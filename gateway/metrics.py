"""Prometheus self-metrics of the gateway (RELIABILITY.md M12, §8; issue #6), read at scrape time.

`RuntimeCollector` reads the runtime's counters when `/metrics` is scraped, so the hot path only
increments plain integers. Every figure of RELIABILITY §8 is here:

- readings: ``otgw_readings_in_total`` (from connectors), ``otgw_readings_committed_total``
  (into the local store), ``otgw_commit_batches_total``, ``otgw_ingest_pending_readings``,
  ``otgw_ingest_limit_readings`` and ``otgw_ingest_dropped_total`` (dropped while the store
  stalled); per sink ``otgw_sink_written_total``
  (out), and the live stream's and MQTT northbound's own ``otgw_stream_*``/``otgw_northbound_*``;
- rejected by reason: ``otgw_rejected_total{source,reason}`` (the pipeline's ``non_finite``,
  ``out_of_range``, ``unknown_point``; source ``pipeline``);
- per device: ``otgw_device_state`` (0 unknown, 1 offline, 2 degraded, 3 online),
  ``otgw_device_link_up``, ``otgw_device_reconnects_total``, ``otgw_poll_latency_seconds``,
  ``otgw_polls_total``, ``otgw_requests_total``, ``otgw_overruns_total``,
  ``otgw_protocol_errors_total{device,kind}`` and ``otgw_ts_adjusted_total`` (source times
  replaced by the gateway's because implausible; not a protocol error, so not in the former);
- inventory: ``otgw_points{state}``, ``otgw_open_gaps``, ``otgw_open_gaps_by_cause{cause}``,
  ``otgw_gaps_opened_total``, ``otgw_inventory_unknown_readings_total``,
  ``otgw_inventory_late_readings_total``;
- event loop: ``otgw_loop_lag_seconds``; process: ``process_*`` (CPU, RSS, open fds);
- store and forward: ``otgw_buffer_records``/``_bytes``/``_limit_*``/``_dropped_total``,
  ``otgw_store_readings``, per sink ``otgw_sink_write_total{sink,code}``,
  ``otgw_sink_rejected_total``, ``otgw_sink_dropped_total``, ``otgw_sink_backlog_records``,
  ``otgw_sink_oldest_unsent_age_seconds``, ``otgw_sink_up``.

`CoverageCollector` adds coverage per site and per asset (never per point by default: one
series per point would multiply the series by the plant's size). Coverage needs the store's
count of usable readings, an async query, so the `/metrics` route refreshes it before each
scrape (`CoverageCollector.refresh`); the figures are exactly those of
``/api/v1/coverage?window=<window>&group_by=site|asset`` at the moment of the refresh.
``audit_events_total`` (RELIABILITY §8) waits for the write path: nothing is audited yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.clock import monotonic

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from inventory.inventory import Inventory
    from inventory.views import CoverageRow

_STATE_VALUE = {"unknown": 0, "offline": 1, "degraded": 2, "online": 3}
"""`otgw_device_state` values (also in the metric's help text)."""

TS_ADJUSTED = "ts_adjusted"
"""Connector error kind of a replaced source time: exported as ``otgw_ts_adjusted_total``."""

Family = GaugeMetricFamily | CounterMetricFamily


class RuntimeCollector(Collector):
    """Exposes runtime, connector and inventory figures as Prometheus metrics.

    Args:
        runtime: The running gateway; read at each scrape, never written.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def collect(self) -> Iterator[Family]:
        """Yield the metric families (called by prometheus_client on each scrape).

        Cost O(devices + sinks + open gaps); independent of the number of points.
        """
        rt = self._rt
        c = rt.counters
        info = GaugeMetricFamily("otgw_build_info", "Gateway version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "otgw_uptime_seconds",
            "Time since the runtime started [s]",
            value=max(0.0, monotonic() - c.started_monotonic),
        )
        yield CounterMetricFamily(
            "otgw_readings_in", "Readings produced by connectors", value=c.readings_in
        )
        yield CounterMetricFamily(
            "otgw_readings_committed",
            "Readings committed to the local store",
            value=c.readings_committed,
        )
        yield CounterMetricFamily(
            "otgw_commit_batches", "Store transactions that committed readings",
            value=c.commit_batches,
        )
        yield GaugeMetricFamily(
            "otgw_ingest_queue_batches",
            "Reading batches waiting for the store writer",
            value=rt._queue.qsize(),
        )
        yield GaugeMetricFamily(
            "otgw_ingest_pending_readings",
            "Readings accepted from connectors and not yet committed (limit: "
            "otgw_ingest_limit_readings)",
            value=c.ingest_pending,
        )
        yield GaugeMetricFamily(
            "otgw_ingest_limit_readings",
            "Uncommitted readings beyond which new readings are dropped while the store stalls",
            value=rt.ingest_max,
        )
        yield CounterMetricFamily(
            "otgw_ingest_dropped",
            "Readings dropped before the store because it stalled (recorded as buffer_overflow "
            "gaps)",
            value=c.ingest_dropped,
        )
        yield GaugeMetricFamily(
            "otgw_loop_lag_seconds",
            "Event-loop lag at the last housekeeping tick [s]",
            value=c.loop_lag_s,
        )
        yield from _devices(rt)
        yield from _inventory(rt.inventory, rt.now(), c.gaps_opened)
        rejected = CounterMetricFamily(
            "otgw_rejected",
            "Values rejected or flagged by the pipeline, by source and reason",
            labels=["source", "reason"],
        )
        rejected.add_metric(["pipeline", "non_finite"], rt.pipeline.non_finite)
        rejected.add_metric(["pipeline", "out_of_range"], rt.pipeline.out_of_range)
        rejected.add_metric(["pipeline", "unknown_point"], rt.pipeline.unknown_points)
        yield rejected
        yield from _buffer_and_sinks(rt)


def _devices(rt: Runtime) -> Iterator[Family]:
    """Per device: state, link, reconnects, polling figures, protocol errors by kind."""
    state = GaugeMetricFamily(
        "otgw_device_state",
        "Device state: 0 unknown, 1 offline, 2 degraded, 3 online",
        labels=["device"],
    )
    link = GaugeMetricFamily(
        "otgw_device_link_up", "1 while the device's connection is up, else 0", labels=["device"]
    )
    reconnects = CounterMetricFamily(
        "otgw_device_reconnects", "Links restored after a loss", labels=["device"]
    )
    polls = CounterMetricFamily("otgw_polls", "Poll cycles completed", labels=["device"])
    requests = CounterMetricFamily(
        "otgw_requests", "Protocol requests sent", labels=["device"]
    )
    overruns = CounterMetricFamily(
        "otgw_overruns",
        "Poll cycles skipped because the previous one overran",
        labels=["device"],
    )
    latency = GaugeMetricFamily(
        "otgw_poll_latency_seconds", "Duration of the last poll cycle [s]", labels=["device"]
    )
    errors = CounterMetricFamily(
        "otgw_protocol_errors", "Protocol errors by kind", labels=["device", "kind"]
    )
    adjusted = CounterMetricFamily(
        "otgw_ts_adjusted",
        "Readings whose implausible source time was replaced by the gateway's",
        labels=["device"],
    )
    for dv in rt.inventory.devices(rt.now()):
        state.add_metric([dv.id], _STATE_VALUE.get(dv.state.value, 0))
        link.add_metric([dv.id], 1 if dv.link_up else 0)
        reconnects.add_metric([dv.id], dv.reconnects)
        run = rt.devices.get(dv.id)
        conn = run.connector if run else None
        if conn is None:
            continue
        stats = conn.stats
        polls.add_metric([dv.id], stats.polls)
        requests.add_metric([dv.id], stats.requests)
        overruns.add_metric([dv.id], stats.overruns)
        if stats.last_latency_s is not None:
            latency.add_metric([dv.id], stats.last_latency_s)
        adjusted.add_metric([dv.id], stats.errors.get(TS_ADJUSTED, 0))
        for kind, n in sorted(stats.errors.items()):
            if kind != TS_ADJUSTED:
                errors.add_metric([dv.id, kind], n)
    yield from (state, link, reconnects, polls, requests, overruns, latency, errors, adjusted)


def _inventory(inventory: Inventory, now: datetime, gaps_opened: int) -> Iterator[Family]:
    """Points by state, open gaps (by cause), gaps opened, readings the inventory ignored."""
    summary = inventory.summary(now)
    yield GaugeMetricFamily("otgw_open_gaps", "Open data gaps", value=inventory.open_gap_count)
    by_cause = GaugeMetricFamily("otgw_open_gaps_by_cause", "Open data gaps", labels=["cause"])
    for cause, n in inventory.open_gaps_by_cause().items():
        by_cause.add_metric([cause], n)
    yield by_cause
    yield CounterMetricFamily(
        "otgw_gaps_opened", "Data gaps opened since start (persisted)", value=gaps_opened
    )
    points = GaugeMetricFamily("otgw_points", "Configured points by state", labels=["state"])
    for key, n in summary.items():
        if key.startswith("points_") and key != "points_total":
            points.add_metric([key.removeprefix("points_")], n)
    yield points
    yield CounterMetricFamily(
        "otgw_inventory_unknown_readings",
        "Readings for keys the inventory does not know (ignored)",
        value=summary["unknown_readings"],
    )
    yield CounterMetricFamily(
        "otgw_inventory_late_readings",
        "Readings older than their point's last usable one (replays; ignored by the inventory)",
        value=summary["late_readings"],
    )


def _buffer_and_sinks(rt: Runtime) -> Iterator[Family]:
    """Store-and-forward figures (M12): the outbox bound and drops, per-sink writes and state."""
    store = rt.store
    stats = rt.store_stats
    backlogs = [store.sink_backlog(fw.name) for fw in rt.forwarders] if store else []
    yield GaugeMetricFamily(
        "otgw_buffer_records",
        "Readings not yet acknowledged by the slowest sink (the outbox) [count]",
        value=max(backlogs, default=0),
    )
    yield GaugeMetricFamily(
        "otgw_buffer_bytes",
        "Used size of the local store holding history and outbox [bytes]",
        value=stats.get("used_bytes", 0),
    )
    yield GaugeMetricFamily(
        "otgw_buffer_limit_bytes",
        "Size bound of the local store (store.max_bytes) [bytes]",
        value=rt.cfg.store.max_bytes,
    )
    if rt.cfg.store.max_unsent_readings is not None:
        yield GaugeMetricFamily(
            "otgw_buffer_limit_records",
            "Unacknowledged readings a sink may have (store.max_unsent_readings) [count]",
            value=rt.cfg.store.max_unsent_readings,
        )
    yield GaugeMetricFamily(
        "otgw_store_readings", "History rows in the local store [count]",
        value=stats.get("readings", 0),
    )
    yield CounterMetricFamily(
        "otgw_buffer_dropped",
        "Readings dropped (oldest first) before every sink acknowledged them",
        value=store.dropped_total if store else 0,
    )
    labels = ["sink"]
    writes = CounterMetricFamily(
        "otgw_sink_write", "Write requests by result code", labels=["sink", "code"]
    )
    rejected = CounterMetricFamily(
        "otgw_sink_rejected",
        "Readings a sink refused, moved to dead letters, by reason",
        labels=["sink", "reason"],
    )
    written = CounterMetricFamily(
        "otgw_sink_written", "Readings acknowledged by the sink", labels=labels
    )
    dropped = CounterMetricFamily(
        "otgw_sink_dropped",
        "Readings dropped before this sink acknowledged them (all time)",
        labels=labels,
    )
    backlog = GaugeMetricFamily(
        "otgw_sink_backlog_records", "Readings not yet acknowledged [count]", labels=labels
    )
    oldest = GaugeMetricFamily(
        "otgw_sink_oldest_unsent_age_seconds",
        "Age of the oldest unacknowledged reading by source time [s] (0 when none)",
        labels=labels,
    )
    up = GaugeMetricFamily(
        "otgw_sink_up", "1 while the last write succeeded (or none failed yet), else 0",
        labels=labels,
    )
    now = rt.now()
    pairs = [(fw, store.sink_cursor(fw.name)) for fw in rt.forwarders] if store else []
    for fw, cur in pairs:
        for code, n in sorted(fw.writes.items()):
            writes.add_metric([fw.name, code], n)
        for reason, n in sorted(fw.rejected.items()):
            rejected.add_metric([fw.name, reason], n)
        written.add_metric([fw.name], fw.written)
        dropped.add_metric([fw.name], cur.dropped)
        backlog.add_metric([fw.name], cur.backlog)
        age = (now - cur.oldest_unsent).total_seconds() if cur.oldest_unsent and cur.backlog else 0
        oldest.add_metric([fw.name], max(0.0, age))
        up.add_metric([fw.name], 0 if fw.state == "degraded" else 1)
    yield from (writes, rejected, written, dropped, backlog, oldest, up)


def build_registry(runtime: Runtime) -> CollectorRegistry:
    """A fresh registry with this gateway's collector and the process's own figures.

    No process-global state: the default registry of prometheus_client is not used.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# -- coverage ---------------------------------------------------------------------------------


COVERAGE_WINDOW_S = 3600
"""Coverage window of the metrics [s]: the default window of ``/api/v1/coverage``."""


class CoverageSource(Protocol):
    """What `CoverageCollector` reads (an `gateway.api.context.ApiContext` provides it)."""

    @property
    def inventory(self) -> Inventory:
        """The live inventory."""

    @property
    def monitored_since(self) -> datetime:
        """When monitoring began (aware UTC)."""

    def now(self) -> datetime:
        """Current aware UTC time."""

    async def usable_counts(self, since: datetime) -> dict[str, int]:
        """Good/Uncertain readings per point key since `since` [count]."""


@dataclass(frozen=True, slots=True)
class CoverageSnapshot:
    """Coverage computed at one moment.

    Attributes:
        window_end: The moment (aware UTC).
        window_start: Effective start ``max(window_end - window, monitored_since)``.
        sites: One row per site (``group`` = site id).
        assets: One row per asset (``group`` = ``site/asset``).
    """

    window_end: datetime
    window_start: datetime
    sites: tuple[CoverageRow, ...]
    assets: tuple[CoverageRow, ...]


class CoverageCollector(Collector):
    """Coverage per site and asset over the last `window_s` seconds, for `/metrics`.

    `refresh` computes it like ``/api/v1/coverage`` (the store's count of usable readings, in
    the store's reader thread, then `Inventory.coverage` in a worker thread: ≈ 0.1 s for both
    groupings at 100k points). A refresh that cost ``c`` seconds
    (≥ `min_cost`) is reused for ``min(max_age, factor × c)`` seconds, so a large store is not
    counted on every scrape; a small one always is.

    Args:
        window_s: Window length [s, > 0].
        min_cost: Refreshes cheaper than this are never reused [s].
        factor: An expensive refresh is reused for this many times its cost.
        max_age: Longest reuse [s].
        clock: Monotonic clock [s].

    Series (labels: ``site``, and ``asset`` for the asset ones): ``otgw_site_coverage_ratio``,
    ``otgw_site_expected_samples``, ``otgw_site_received_samples`` and the same with
    ``asset``; ``otgw_coverage_window_seconds`` (the configured length),
    ``otgw_coverage_window_start_timestamp_seconds`` / ``..._end_...`` (the effective window
    of the figures, Unix time). Nothing before the first refresh.
    """

    def __init__(
        self,
        *,
        window_s: float = COVERAGE_WINDOW_S,
        min_cost: float = 0.05,
        factor: float = 30.0,
        max_age: float = 300.0,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._clock = clock
        self.window_s = window_s
        self.min_cost = min_cost
        self.factor = factor
        self.max_age = max_age
        self.snapshot: CoverageSnapshot | None = None
        self.refreshes = 0
        self.failing = False  # the latest refresh raised (set by the caller, for logging)
        self._built = -float("inf")
        self._cost = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, source: CoverageSource) -> CoverageSnapshot:
        """Recompute the figures unless the last ones are still young enough; return them.

        Raises:
            Whatever ``source.usable_counts`` raises (e.g. the store is closed); the previous
            figures are kept.
        """
        async with self._lock:
            ttl = min(self.max_age, self.factor * self._cost) if self._cost >= self.min_cost else 0
            if self.snapshot is not None and self._clock() - self._built < ttl:
                return self.snapshot
            t0 = self._clock()
            now = source.now()
            window_start = now - timedelta(seconds=self.window_s)
            received = await source.usable_counts(window_start)
            snapshot = await asyncio.to_thread(  # O(points): off the event loop
                coverage_snapshot,
                source.inventory,
                received,
                now,
                window_start,
                source.monitored_since,
            )
            self._built = self._clock()
            self._cost = self._built - t0
            self.snapshot = snapshot
            self.refreshes += 1
            return snapshot

    def collect(self) -> Iterator[Family]:
        """Yield the coverage families of the latest refresh."""
        snap = self.snapshot
        if snap is None:
            return
        yield GaugeMetricFamily(
            "otgw_coverage_window_seconds", "Coverage window length [s]", value=self.window_s
        )
        yield GaugeMetricFamily(
            "otgw_coverage_window_start_timestamp_seconds",
            "Effective start of the coverage window: max(end - window, monitoring start) [Unix s]",
            value=snap.window_start.timestamp(),
        )
        yield GaugeMetricFamily(
            "otgw_coverage_window_end_timestamp_seconds",
            "End of the coverage window: when the figures were computed [Unix s]",
            value=snap.window_end.timestamp(),
        )
        yield from _coverage_families("site", ["site"], snap.sites)
        yield from _coverage_families("asset", ["site", "asset"], snap.assets)


def coverage_snapshot(
    inventory: Inventory,
    received: Mapping[str, int],
    now: datetime,
    window_start: datetime,
    monitored_since: datetime,
) -> CoverageSnapshot:
    """Site and asset coverage rows at `now` (as ``/api/v1/coverage`` computes them)."""
    rows = {
        group: tuple(
            inventory.coverage(
                received,
                window_start=window_start,
                now=now,
                monitored_since=monitored_since,
                group_by=group,
            )
        )
        for group in ("site", "asset")
    }
    return CoverageSnapshot(
        window_end=now,
        window_start=max(window_start, monitored_since),
        sites=rows["site"],
        assets=rows["asset"],
    )


def _coverage_families(
    level: str, labels: list[str], rows: tuple[CoverageRow, ...]
) -> Iterator[Family]:
    ratio = GaugeMetricFamily(
        f"otgw_{level}_coverage_ratio",
        f"Usable samples received / expected per {level} over the coverage window [0..1]",
        labels=labels,
    )
    expected = GaugeMetricFamily(
        f"otgw_{level}_expected_samples",
        f"Samples expected per {level} over the coverage window [count]",
        labels=labels,
    )
    received = GaugeMetricFamily(
        f"otgw_{level}_received_samples",
        f"Usable samples received per {level} over the coverage window, at most the expected "
        "per point [count]",
        labels=labels,
    )
    for row in rows:
        values = row.group.split("/")
        ratio.add_metric(values, row.coverage)
        expected.add_metric(values, row.expected)
        received.add_metric(values, row.received)
    yield from (ratio, expected, received)
