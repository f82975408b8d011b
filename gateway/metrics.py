"""Prometheus self-metrics of the gateway (RELIABILITY.md M12, §8), read at scrape time.

A custom collector reads the runtime's counters when `/metrics` is scraped, so the hot path
only increments plain integers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.runtime import Runtime

_STATE_VALUE = {"unknown": 0, "offline": 1, "degraded": 2, "online": 3}


class RuntimeCollector(Collector):
    """Exposes runtime, connector and inventory figures as Prometheus metrics."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Yield the metric families (called by prometheus_client on each scrape)."""
        rt = self._rt
        c = rt.counters
        yield CounterMetricFamily(
            "otgw_readings_in", "Readings produced by connectors", value=c.readings_in
        )
        yield CounterMetricFamily(
            "otgw_readings_committed",
            "Readings committed to the local store",
            value=c.readings_committed,
        )
        yield GaugeMetricFamily(
            "otgw_ingest_queue_batches",
            "Reading batches waiting for the store writer",
            value=rt._queue.qsize(),
        )
        yield GaugeMetricFamily(
            "otgw_loop_lag_seconds",
            "Event-loop lag at the last housekeeping tick [s]",
            value=c.loop_lag_s,
        )
        now = rt.now()
        state = GaugeMetricFamily(
            "otgw_device_state",
            "Device state: 0 unknown, 1 offline, 2 degraded, 3 online",
            labels=["device"],
        )
        polls = CounterMetricFamily("otgw_polls", "Poll cycles completed", labels=["device"])
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
        for dv in rt.inventory.devices(now):
            state.add_metric([dv.id], _STATE_VALUE.get(dv.state.value, 0))
            run = rt.devices.get(dv.id)
            conn = run.connector if run else None
            if conn is not None:
                polls.add_metric([dv.id], conn.stats.polls)
                overruns.add_metric([dv.id], conn.stats.overruns)
                if conn.stats.last_latency_s is not None:
                    latency.add_metric([dv.id], conn.stats.last_latency_s)
                for kind, n in conn.stats.errors.items():
                    errors.add_metric([dv.id, kind], n)
        yield from (state, polls, overruns, latency, errors)
        summary = rt.inventory.summary(now)
        gaps = GaugeMetricFamily(
            "otgw_open_gaps", "Open data gaps", value=rt.inventory.open_gap_count
        )
        yield gaps
        points = GaugeMetricFamily("otgw_points", "Configured points by state", labels=["state"])
        for key, n in summary.items():
            if key.startswith("points_"):
                points.add_metric([key.removeprefix("points_")], n)
        yield points
        rejected = CounterMetricFamily(
            "otgw_rejected", "Values rejected or flagged by the pipeline", labels=["reason"]
        )
        rejected.add_metric(["non_finite"], rt.pipeline.non_finite)
        rejected.add_metric(["out_of_range"], rt.pipeline.out_of_range)
        rejected.add_metric(["unknown_point"], rt.pipeline.unknown_points)
        yield rejected
        yield from _buffer_and_sinks(rt)


def _buffer_and_sinks(rt: Runtime) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
    """A fresh registry holding only this gateway's collector (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry
