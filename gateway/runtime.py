"""The runtime: wires config, connectors, pipeline, store, inventory and API together.

One task per device polls through its connector; only this module reconnects (capped
exponential backoff with jitter) and it logs on link state changes, not on every failure.
Readings from all devices go through one ingest queue to a writer task that commits them to the
store in one transaction per batch (a reading is *accepted* once committed), then updates the
inventory (DESIGN.md §3). Pollers never wait for the store.

Store and forward: one `gateway.sinks.forwarder.Forwarder` task per configured sink sends that
sink's outbox (the committed readings it has not acknowledged) and advances its cursor only
after a 2xx. The housekeeping task enforces the store's bounds (age, size, unsent readings) with
drop-oldest; readings dropped before a sink had them become `buffer_overflow` gaps with their
exact source-time bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Union

from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from connectors.mqtt.config import MqttPublisherConfig
    from connectors.mqtt.connector import MqttPoint
    from connectors.opcua.connector import OpcUaPoint
    from gateway.northbound import MqttNorthbound
    from gateway.sparkplug_config import SparkplugEdgeConfig
    from gateway.sparkplug_edge import SparkplugEdgeNode

from connectors.base import ConnectError, Connector, LinkLost
from connectors.modbus.config import RegisterAddress
from connectors.modbus.plan import ModbusPoint
from connectors.registry import create_connector
from gateway.clock import monotonic, to_epoch_ns, to_rfc3339, utc_now
from gateway.config import (
    AnyPoint,
    GatewayConfig,
    ModbusPointConfig,
    MqttPointConfig,
    OpcUaPointConfig,
)
from gateway.heap import release_free_heap
from gateway.metrics import build_registry
from gateway.model import Reading
from gateway.pipeline import Pipeline, PointTransform
from gateway.quality import Q
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.influx import InfluxSink
from gateway.store import DroppedRange, PurgeReport, Store, StoreClosedError
from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from inventory.views import Gap, GapCause

log = logging.getLogger("ot_gateway.runtime")

HEARTBEAT_S = 2.0
"""How often the runtime records `last_alive` in the store [s]; bounds a gateway_down gap start."""
TICK_S = 0.25
"""Period of stale-gap detection and state roll-up [s]."""
PURGE_S = 2.0
"""Period of store bound checks (retention, size, unsent readings) [s]; cheap when nothing is
over a bound (an index seek and a few pragmas), so bounds hold within seconds."""
STATS_S = 5.0
"""Period of refreshing the store size figures exposed on /metrics [s]."""
TRIM_S = 30.0
"""Period of handing freed heap memory back to the OS (`gateway.heap`) [s]."""
TRIM_STARTUP_S = (5.0, 15.0)
"""Extra trims at these offsets after start [s]: the first seconds free the most (the config's
point models, the first connect failures marking every point Bad, the first stale gaps)."""
TRIM_BURST = 20_000
"""A commit or gap change set at least this large [readings or gaps] is a burst whose freed
memory the next housekeeping tick hands back to the OS (e.g. every point of a 100k-point
gateway going Bad at once when its devices are unreachable)."""
COMMIT_BATCH_MAX = 20_000
"""Readings the writer takes into one commit at most [count]; more wait for the next one. Bounds
the commit's transient memory when every point reports at once (100k points going Bad when
their devices are unreachable: one 100k-reading commit held ≈ 20 MB of rows besides)."""
STOP_FLUSH_TIMEOUT_S = 5.0
# Room the inventory leaves between a freshness deadline and a stale gap [s] for readings
# acquired but not yet observed (loop lag); `store.commit_interval` is added to it.
TICK_GRACE_S = 0.5
# `store.commit_interval` (default 0.25 s): shortest time between two commits of polled
# readings; the writer groups the polls that arrive meanwhile into one transaction (each costs
# a WAL append and an fsync). Adds at most this much to source → commit latency; an MQTT QoS 1
# acknowledgement waiting for a commit, and a stop, end the wait at once.
# `store.max_pending_readings` (default 250,000): readings accepted from the connectors but not
# yet committed. Reached only when commits stall or fail (a hung or full disk) while devices
# keep delivering: further readings are dropped (newest first; the queued ones are committed),
# counted in `otgw_ingest_dropped_total` and recorded as `buffer_overflow` gaps with exact
# bounds, so memory stays bounded (≈ 400 B per reading) and pollers are never blocked. MQTT
# QoS 1 with `ack: commit` is never dropped here: its receive window bounds it, and an
# unacknowledged message is redelivered by the broker.
# Closing one sink's HTTP session at stop [s]; beyond, it is abandoned (the process is exiting).
STOP_CLOSE_TIMEOUT_S = 2.0
# Re-cancel tasks that survive a cancel for this long [s] (Python 3.11's `asyncio.wait_for`
# can swallow a cancellation that races with its inner future; libraries use it in connect and
# read paths), at most STOP_CANCEL_ROUNDS times, then leave them and go on stopping.
STOP_CANCEL_WAIT_S = 1.0
STOP_CANCEL_ROUNDS = 5
"""Longest wait on a graceful stop for healthy sinks to take the rest of their outbox [s]."""


@dataclass(slots=True)
class DeviceRun:
    """Live state of one device's task, for metrics and progress."""

    device_id: str
    point_keys: tuple[str, ...]
    connector: Connector | None = None
    link_up: bool = False
    ever_up: bool = False
    attempts: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class Counters:
    """Gateway-wide counters (exposed on /metrics)."""

    readings_in: int = 0
    readings_committed: int = 0
    commit_batches: int = 0
    loop_lag_s: float = 0.0
    gaps_opened: int = 0
    ingest_dropped: int = 0
    commit_failures: int = 0
    ingest_pending: int = 0
    started_monotonic: float = field(default_factory=monotonic)


def build_spec(
    cfg: GatewayConfig, sources: dict[str, str], intervals: dict[str, float] | None = None
) -> InventorySpec:
    """The inventory's view of the config: what should exist.

    Args:
        cfg: The validated config.
        sources: Point key -> source locator URI (from the connectors).
        intervals: Point key -> expected interval [s] a connector knows better than the
            config (an MQTT device mapping's `expected_interval`).
    """
    intervals = intervals or {}
    sites = tuple(SiteSpec(s.id, s.name) for s in cfg.sites)
    assets = tuple(AssetSpec(s.id, a.id, a.name, a.kind) for s in cfg.sites for a in s.assets)
    points = tuple(
        PointSpec(
            site=s.id,
            asset=a.id,
            point=p.id,
            device=p.device,
            expected_interval=_interval(cfg, p, intervals.get(f"{s.id}/{a.id}/{p.id}")),
            unit=p.unit,
            source=sources.get(f"{s.id}/{a.id}/{p.id}", ""),
            name=p.name,
            report_by_exception=cfg.report_by_exception(p),
        )
        for s, a, p in cfg.iter_points()
    )
    devices = tuple(DeviceSpec(d.id, d.protocol, d.endpoint) for d in cfg.devices)
    return InventorySpec(sites, assets, points, devices, gap_after=cfg.inventory.gap_after)


def _interval(cfg: GatewayConfig, point: AnyPoint, from_connector: float | None) -> float:
    """A point's expected interval [s]: the config's, unless only the connector knows it."""
    if (
        from_connector is not None
        and isinstance(point, MqttPointConfig)
        and point.expected_interval is None
        and (point.mqtt is None or point.mqtt.expected_interval is None)
    ):
        return from_connector
    return cfg.expected_interval(point)


ConnectorPoint = Union["ModbusPoint", "OpcUaPoint", "MqttPoint"]


def device_points(cfg: GatewayConfig) -> dict[str, list[ConnectorPoint]]:
    """Points per device id, in config order, as each protocol's connector takes them.

    A protocol's connector module (and its library) is imported only when a device uses it.
    """
    out: dict[str, list[ConnectorPoint]] = {d.id: [] for d in cfg.devices}
    protocols = {d.protocol for d in cfg.devices}
    if "opcua" in protocols:
        from connectors.opcua.connector import OpcUaPoint
    if "mqtt" in protocols:
        from connectors.mqtt.connector import MqttPoint
    # Devices of one model share their register map: equal addresses share one object
    # (≈ 90 bytes per point saved on a fleet of identical devices, nothing otherwise).
    addresses: dict[RegisterAddress, RegisterAddress] = {}
    for s, a, p in cfg.iter_points():
        key = f"{s.id}/{a.id}/{p.id}"
        if isinstance(p, ModbusPointConfig):
            address = RegisterAddress.of(p)
            address = addresses.setdefault(address, address)
            out[p.device].append(ModbusPoint(key, address, cfg.poll_interval(p)))
        elif isinstance(p, OpcUaPointConfig):
            out[p.device].append(OpcUaPoint(key, p, p.poll_interval))
        else:
            out[p.device].append(MqttPoint(key, p.mqtt, p.expected_interval))
    return out


class Runtime:
    """Runs one gateway from a validated config until `stop()`.

    Args:
        cfg: Validated configuration. The runtime keeps ``cfg.without_points()`` as
            `cfg`: every point lives on in `spec`, the pipeline and its connector in compact
            form, and the point models of writable points in `writable_points`; a caller that
            drops its own reference lets the rest be freed (≈ 55 MB at 100k points, issue #8).
        config_dir: Directory relative paths (data_dir, store path) resolve against.
        on_event: Optional callback for human-facing progress lines (state changes).
    """

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        config_dir: Path | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg.without_points()
        self.writable_points: dict[tuple[str, str, str], AnyPoint] = {
            (s.id, a.id, p.id): p for s, a, p in cfg.iter_points() if p.writable
        }
        base = config_dir or Path.cwd()
        self.data_dir = (base / cfg.gateway.data_dir).resolve()
        store_path = cfg.store.path or str(self.data_dir / "gateway.db")
        self.store_path = (base / store_path).resolve()
        self._on_event = on_event or (lambda _msg: None)
        self._points = device_points(cfg)
        sources: dict[str, str] = {}
        known_intervals: dict[str, float] = {}
        for dev in cfg.devices:
            probe = create_connector(dev, self._points[dev.id])  # no I/O until `async with`
            sources.update(probe.point_sources())
            expected = getattr(probe, "expected_intervals", None)  # MQTT device mappings
            if expected is not None:
                known_intervals.update(expected())
        self.spec = build_spec(cfg, sources, known_intervals)
        self.pipeline = Pipeline(
            {
                f"{s.id}/{a.id}/{p.id}": PointTransform(
                    s.id,
                    a.id,
                    p.id,
                    p.unit,
                    p.scale,
                    p.offset,
                    p.range[0] if p.range else None,
                    p.range[1] if p.range else None,
                    sources.get(f"{s.id}/{a.id}/{p.id}", ""),
                )
                for s, a, p in cfg.iter_points()
            }
        )
        self.devices = {
            d.id: DeviceRun(d.id, tuple(p.key for p in self._points[d.id])) for d in cfg.devices
        }
        self.counters = Counters()
        # Readings reach the inventory up to `store.commit_interval` after acquisition (grouped
        # commits); the freshness deadlines leave that much more room.
        self.inventory = Inventory(
            self.spec, now=utc_now(), tick_grace=TICK_GRACE_S + cfg.store.commit_interval
        )
        self.monitored_since = utc_now()
        self.store: Store | None = None
        self.forwarders: list[Forwarder] = []
        self.northbound: MqttNorthbound | None = None
        self.sparkplug: SparkplugEdgeNode | None = None
        self.store_stats: dict[str, int] = {}
        self._overflow_gaps: dict[str, Gap] = {}
        self._rbe_keys = frozenset(
            f"{s.id}/{a.id}/{p.id}" for s, a, p in cfg.iter_points() if cfg.report_by_exception(p)
        )
        self.alarms: list[str] = []
        self.registry: CollectorRegistry = build_registry(self)
        self._queue: asyncio.Queue[list[Reading]] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[Sequence[Reading]], None]] = []
        self._queued_seq = 0  # lists put on _queue
        self._committed_seq = 0  # lists taken off _queue and committed
        self._after_commit: deque[tuple[int, Callable[[], object]]] = deque()
        self._commit_now = asyncio.Event()  # an acknowledgement waits: end the grouping wait
        self.commit_interval = cfg.store.commit_interval
        # POSIX time each queued batch was submitted, oldest first: the inventory's freshness
        # is judged as of the oldest one not yet observed (never "late" because of the store)
        self._pending_since: deque[float] = deque()
        self.ingest_max = cfg.store.max_pending_readings
        self.store_error: str | None = None  # the failing commit's error, while commits fail
        self._next_beat = self._next_purge = self._next_stats = self._next_trim = 0.0
        self._trim_due = False  # a burst freed memory: hand it back at the next tick
        self._trim_schedule: deque[float] = deque()  # monotonic times of the startup trims
        self._ingest_drops: dict[str, _IngestDrop] = {}  # point key -> dropped since last commit

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, restore the inventory, start device, writer and housekeeping tasks.

        Raises:
            OSError: The data directory cannot be created.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await Store.open(
            self.store_path,
            retention_hours=self.cfg.store.retention_hours,
            max_bytes=self.cfg.store.max_bytes,
            max_unsent=self.cfg.store.max_unsent_readings if self.cfg.sinks else None,
        )
        self.alarms.extend(self.store.alarms)
        for alarm in self.store.alarms:
            log.error("store alarm: %s", alarm)
        now = utc_now()
        since = await self.store.get_meta("monitored_since")
        if since is None:
            await self.store.set_meta("monitored_since", to_rfc3339(now) or "")
        else:
            self.monitored_since = datetime.fromisoformat(since)
        last_alive_s = await self.store.get_meta("last_alive")
        last_alive = datetime.fromisoformat(last_alive_s) if last_alive_s else None
        latest = await self.store.load_latest()
        gaps = await self.store.load_gaps()
        down_gaps = self.inventory.restore(latest, gaps, last_alive, now)
        if down_gaps:
            await self.store.save_gaps(down_gaps)
            self._on_event(
                f"gateway was down since {to_rfc3339(last_alive)}: "
                f"{len(down_gaps)} gateway_down gap(s) opened"
            )
        await self.store.set_meta("last_alive", to_rfc3339(now) or "")
        await self.store.register_sinks([s.name for s in self.cfg.sinks])
        for sc in self.cfg.sinks:
            sink = InfluxSink(
                name=sc.name,
                url=sc.url,
                org=sc.org,
                bucket=sc.bucket,
                token=sc.token.get_secret_value() if sc.token is not None else None,
                timeout=sc.timeout,
                verify_ssl=sc.verify_ssl,
            )
            self.forwarders.append(
                Forwarder(
                    self.store,
                    sink,
                    batch_size=sc.batch_size,
                    flush_interval=sc.flush_interval,
                    max_retry_delay=sc.max_retry_delay,
                    on_event=self._on_event,
                )
            )
        if self.cfg.northbound.mqtt is not None:
            await self._start_northbound(self.cfg.northbound.mqtt)
        if self.cfg.northbound.sparkplug is not None:
            await self._start_sparkplug(self.cfg.northbound.sparkplug)
        self.store_stats = await self.store.stats()
        self._tasks.append(asyncio.create_task(self._writer(), name="writer"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        for fw in self.forwarders:
            self._tasks.append(asyncio.create_task(fw.run(), name=f"sink:{fw.name}"))
        for i, dev in enumerate(self.cfg.devices):
            self._tasks.append(
                asyncio.create_task(self._device_loop(dev.id, i), name=f"device:{dev.id}")
            )
        # Long-lived objects (config, inventory, plans) out of the GC's generations: a full
        # collection over 100k points otherwise stalls the loop for ~0.1 s.
        gc.collect()
        gc.freeze()
        # What startup freed (the config's point models) back to the OS, not kept as RSS.
        await asyncio.to_thread(release_free_heap)
        self._started.set()

    async def _start_northbound(self, cfg: MqttPublisherConfig) -> None:
        """Create and start the MQTT northbound publisher (`gateway.northbound`)."""
        from gateway.northbound import MqttNorthbound  # only when configured

        sites: dict[str, list[str]] = {}
        points = 0
        for point in self.spec.points:
            assets = sites.setdefault(point.site, [])
            if point.asset not in assets:
                assets.append(point.asset)
            points += 1
        for site_cfg in self.cfg.sites:  # assets without points are still announced
            for asset_cfg in site_cfg.assets:
                if asset_cfg.id not in sites.setdefault(site_cfg.id, []):
                    sites[site_cfg.id].append(asset_cfg.id)
        self.northbound = MqttNorthbound(cfg, self.cfg.gateway.name, self.inventory, sites, points)
        self.registry.register(self.northbound)
        self.add_listener(self.northbound.listener)
        await self.northbound.start()

    async def _start_sparkplug(self, cfg: SparkplugEdgeConfig) -> None:
        """Create and start the Sparkplug B edge node (`gateway.sparkplug_edge`)."""
        from gateway.sparkplug_edge import SparkplugEdgeNode  # only when configured

        self.sparkplug = SparkplugEdgeNode(
            cfg, self.cfg.gateway.name, self.inventory, self.spec.points, state_dir=self.data_dir
        )
        self.registry.register(self.sparkplug)
        self.add_listener(self.sparkplug.listener)
        await self.sparkplug.start()

    async def stop(self) -> None:
        """Stop polling, commit what is queued, flush the sinks, record `last_alive`, close.

        Every sink that is not degraded gets up to `STOP_FLUSH_TIMEOUT_S` to take the rest of
        its outbox; whatever is still unacknowledged then stays in the store's outbox and is
        sent after the next start.
        """
        self._stopping.set()
        self._commit_now.set()  # the writer stops grouping
        phases: list[str] = []
        mark = monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = monotonic()
            phases.append(f"{name} {now - mark:.2f} s")
            mark = now

        device_tasks = [t for t in self._tasks if t.get_name().startswith("device:")]
        sink_tasks = [t for t in self._tasks if t.get_name().startswith("sink:")]
        await cancel_and_wait(device_tasks, "device")
        phase("devices")
        await self._queue.put([])  # wake the writer so it drains and exits
        others = [t for t in self._tasks if t not in device_tasks and t not in sink_tasks]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 10)
        phase("writer")
        # A clean stop forwards what was just committed to every reachable sink (bounded).
        await asyncio.gather(*(fw.flush(STOP_FLUSH_TIMEOUT_S) for fw in self.forwarders))
        phase("flush")
        await cancel_and_wait(others + sink_tasks, "task")
        for fw in self.forwarders:
            try:
                await asyncio.wait_for(fw.close(), STOP_CLOSE_TIMEOUT_S)
            except Exception:  # closing a session must not block the store's close
                log.exception("sink %s: close failed", fw.name)
        self._tasks.clear()
        phase("sinks")
        if self.northbound is not None:
            self.remove_listener(self.northbound.listener)
            await self.northbound.stop()
        if self.sparkplug is not None:
            self.remove_listener(self.sparkplug.listener)
            await self.sparkplug.stop()  # NDEATH, then DISCONNECT
        phase("publishers")
        if self.store is not None and self._ingest_drops:
            await self._record_ingest_drops()
        if self.store is not None:
            await self.store.set_meta("last_alive", to_rfc3339(utc_now()) or "")
            await self.store.close()
        phase("store")
        took = sum(float(p.split()[-2]) for p in phases)
        log.log(logging.WARNING if took > 10 else logging.INFO, "stopped in %.1f s (%s)", took,
                ", ".join(phases))

    def has_point(self, site: str, asset: str, point: str) -> bool:
        """Whether ``site/asset/point`` is a configured point."""
        return f"{site}/{asset}/{point}" in self.pipeline

    # -- listeners -----------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Sequence[Reading]], None]) -> None:
        """Call `callback(readings)` on the event loop after every commit (accepted readings).

        The callback must not block or raise (it runs in the writer task); a live stream puts
        the batch on its own bounded queue and returns.
        """
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Sequence[Reading]], None]) -> None:
        """Stop calling `callback`; unknown callbacks are ignored."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    # -- API context ---------------------------------------------------------------------

    def now(self) -> datetime:
        """Current aware UTC time."""
        return utc_now()

    async def usable_counts(self, since: datetime) -> dict[str, int]:
        """Good/Uncertain readings per point key since `since` (for coverage)."""
        if self.store is None:
            return {}
        return await self.store.count_usable(since)

    def health(self) -> dict[str, object]:
        """Liveness details."""
        return {"status": "ok", "uptime_s": round(monotonic() - self.counters.started_monotonic, 1)}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready once the store is open and the tasks run, and while commits succeed.

        Details list devices up, alarms and every sink's status (`sink_status`); a failing
        sink is ``degraded`` (named in ``sinks_degraded``) but does not make the gateway
        unready: readings are still accepted into the store (degraded, not down). A store
        whose commits fail (disk full) does: ``store`` is ``failing: <error>`` and
        ``ingest_dropped`` counts the readings refused meanwhile.
        """
        up = sum(1 for d in self.devices.values() if d.link_up)
        ready = (
            self._started.is_set() and self.store is not None and not self._stopping.is_set()
            and self.store_error is None
        )
        sinks = self.sink_status()
        return ready, {
            "store": (
                "closed" if self.store is None
                else f"failing: {self.store_error}" if self.store_error else "ok"
            ),
            "ingest_pending": self.counters.ingest_pending,
            "ingest_dropped": self.counters.ingest_dropped,
            "devices_up": up,
            "devices_total": len(self.devices),
            "alarms": list(self.alarms),
            "sinks": sinks,
            "sinks_degraded": [s["name"] for s in sinks if s["state"] == "degraded"],
            "northbound": [
                nb.status() for nb in (self.northbound, self.sparkplug) if nb is not None
            ],
        }

    def sink_status(self) -> list[dict[str, object]]:
        """Per configured sink: state (ok/degraded/starting), backlog, oldest unsent, errors.

        Returns:
            One dict per sink in config order, see `Forwarder.status` (JSON-able: str, int,
            float, None, aware datetimes).
        """
        if self.store is None:
            return []
        try:
            return [fw.status() for fw in self.forwarders]
        except KeyError:  # store closed or sinks not registered yet
            return []

    def unmapped(self) -> list[dict[str, object]]:
        """Sources that arrive but match no configured point, newest first.

        MQTT topics and OPC UA variables found by discovery, each with its device id added
        under ``device``. The list restarts when a device reconnects (a new connector).
        """
        out: list[dict[str, object]] = []
        for run in self.devices.values():
            listing = getattr(run.connector, "unmapped", None)
            if listing is not None:
                out.extend({"device": run.device_id, **item} for item in listing())
        out.sort(key=lambda item: str(item.get("last_seen", "")), reverse=True)
        return out

    def metrics_registry(self) -> CollectorRegistry:
        """The Prometheus registry of this gateway."""
        return self.registry

    # -- tasks ---------------------------------------------------------------------------

    def _submit(
        self, readings: list[Reading], after_commit: Callable[[], object] | None = None
    ) -> None:
        """Queue readings for the writer; ``after_commit`` runs once they are committed.

        ``after_commit`` (e.g. an MQTT QoS 1 acknowledgement, ``ack: commit``) runs after the
        commit of every reading queued so far, in queue order, on the event loop.
        """
        if readings:
            self.counters.readings_in += len(readings)
            pending = self.counters.ingest_pending
            if after_commit is None and pending + len(readings) > self.ingest_max:
                self._drop_at_ingest(readings)
                return
            self.counters.ingest_pending = pending + len(readings)
            self._queue.put_nowait(readings)
            self._pending_since.append(time.time())
            self._queued_seq += 1
        if after_commit is not None:
            if self._queued_seq == self._committed_seq:
                after_commit()  # nothing of this (or earlier) is waiting for the writer
            else:
                self._after_commit.append((self._queued_seq, after_commit))
                self._commit_now.set()

    async def _writer(self) -> None:
        """Commit queued readings in batches, then feed the inventory and persist gap changes."""
        assert self.store is not None  # noqa: S101 - started by start()
        interval = self.commit_interval
        last_commit = 0.0
        while True:
            batch = await self._queue.get()
            if batch and interval > 0 and not self._after_commit and not self._stopping.is_set():
                # Group polls into fewer transactions (each costs a WAL write and an fsync),
                # unless an acknowledgement (MQTT QoS 1) waits for this commit.
                wait = last_commit + interval - monotonic()
                if wait > 0:
                    self._commit_now.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._commit_now.wait(), wait)
            last_commit = monotonic()
            taken = 1 if batch else 0  # the stop sentinel is an empty list, not counted
            more: list[Reading] = []
            while len(batch) < COMMIT_BATCH_MAX and not self._queue.empty():
                more = self._queue.get_nowait()
                batch.extend(more)
                taken += 1 if more else 0
            if batch:
                await self._commit(batch, taken)
            del batch, more  # not kept alive while idle: at 100k points ≈ 20 MB (issue #8)
            if self._stopping.is_set() and self._queue.empty():
                return

    async def _commit(self, batch: list[Reading], taken: int) -> None:
        """Commit `batch` (`taken` queued lists), then feed the sinks, inventory and listeners."""
        committed = await self._append(batch)
        if len(batch) >= TRIM_BURST:
            self._trim_due = True
        self.counters.ingest_pending -= len(batch)
        self._committed_seq += taken
        for _ in range(taken):
            self._pending_since.popleft()
        if committed:
            self.counters.readings_committed += len(batch)
            self.counters.commit_batches += 1
            for fw in self.forwarders:
                fw.notify()
            changed = self.inventory.observe(batch)
            for listener in list(self._listeners):
                try:
                    listener(batch)
                except Exception:
                    log.exception("reading listener failed; removed")
                    self.remove_listener(listener)
            self._run_after_commit()
            await self._save_gaps(changed)
            if self._ingest_drops:
                await self._record_ingest_drops()
        else:  # never acknowledge what was not committed: the broker redelivers it
            self._run_after_commit(call=False)

    async def _append(self, batch: list[Reading]) -> bool:
        """Commit `batch`, retrying while the store fails (disk full, I/O error, locked).

        While commits fail the batch stays in memory and new readings pile up to `ingest_max`,
        beyond which they are dropped and counted (`_drop_at_ingest`): memory stays bounded,
        pollers are never blocked, and the gateway recovers by itself once the store accepts
        writes again (R8: ENOSPC is handled). Retries back off from 0.1 s to 5 s.

        Returns:
            True once committed; False when the batch was given up: at stop after the store
            kept failing, or a batch the store refuses for what it contains (a bug: logged
            with its traceback), in both cases counted in `counters.ingest_dropped` and
            recorded as `buffer_overflow` gaps.
        """
        assert self.store is not None  # noqa: S101 - started by start()
        delay = 0.1
        failing = False
        while True:
            try:
                await self.store.append(batch)
            except (sqlite3.Error, OSError) as exc:
                self.counters.commit_failures += 1
                if not failing:
                    failing = True
                    self.store_error = str(exc)
                    log.error(
                        "store: commit of %d readings failed (%s); keeping them and retrying, "
                        "new readings beyond %d uncommitted are dropped meanwhile",
                        len(batch), exc, self.ingest_max,
                    )
                    self._on_event(f"store commit failing: {exc}")
                if self._stopping.is_set() and delay >= 1.0:
                    log.error("store: giving up %d uncommitted readings at stop", len(batch))
                    self._note_drops(batch)
                    return False
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)
                continue
            except StoreClosedError:
                self._note_drops(batch)
                return False
            except Exception:
                log.exception("store: refused a batch of %d readings; dropped", len(batch))
                self._note_drops(batch)
                return False
            if failing:
                self.store_error = None
                log.warning("store: commits work again")
                self._on_event("store commits work again")
            return True

    def _drop_at_ingest(self, readings: list[Reading]) -> None:
        """Count readings refused because `ingest_max` are waiting for the store."""
        if not self._ingest_drops:
            log.warning(
                "store stalled: %d readings wait for a commit (limit %d); dropping new readings "
                "until it catches up (counted, recorded as buffer_overflow gaps)",
                self.counters.ingest_pending, self.ingest_max,
            )
            self._on_event("ingest limit reached: dropping new readings while the store is stalled")
        self._note_drops(readings)

    def _note_drops(self, readings: list[Reading]) -> None:
        self.counters.ingest_dropped += len(readings)
        drops = self._ingest_drops
        heard = self.inventory.heard  # acquired, then dropped: not silence (no stale gap)
        for r in readings:
            key = f"{r.site}/{r.asset}/{r.point}"
            heard(key, r.gateway_time)
            d = drops.get(key)
            if d is None:
                drops[key] = _IngestDrop(r.site, r.asset, r.point, 1, r.source_time, r.source_time)
            else:
                d.count += 1
                d.first = min(d.first, r.source_time)
                d.last = max(d.last, r.source_time)

    async def _record_ingest_drops(self) -> None:
        """Record the readings dropped at ingest as `buffer_overflow` gaps (exact bounds)."""
        drops, self._ingest_drops = self._ingest_drops, {}
        ranges = [DroppedRange(d.site, d.asset, d.point, d.count, d.first, d.last)
                  for d in drops.values()]
        try:
            await self._overflow_gaps_for(ranges, "ingest")
        except (sqlite3.Error, OSError) as exc:  # still failing: keep them for the next commit
            log.error("store: could not save the ingest gaps (%s); retrying later", exc)
            for key, d in drops.items():
                newer = self._ingest_drops.get(key)
                if newer is not None:
                    d.count += newer.count
                    d.first, d.last = min(d.first, newer.first), max(d.last, newer.last)
                self._ingest_drops[key] = d
            return
        log.warning("store caught up: %d readings of %d points were dropped at ingest",
                    sum(d.count for d in drops.values()), len(drops))

    def _run_after_commit(self, call: bool = True) -> None:
        pending = self._after_commit
        while pending and pending[0][0] <= self._committed_seq:
            _, callback = pending.popleft()
            if not call:
                continue
            try:
                callback()
            except Exception:  # an acknowledgement must not stop the writer
                log.exception("after-commit callback failed")

    async def _save_gaps(self, gaps: Sequence[Gap]) -> None:
        if not gaps or self.store is None:
            return
        for g in gaps:
            if g.end is None:
                self.counters.gaps_opened += 1
        try:
            await self.store.save_gaps(gaps)
        except (sqlite3.Error, OSError) as exc:  # the inventory has them; the store catches up
            log.error("store: could not save %d gap changes (%s)", len(gaps), exc)
        if len(gaps) >= TRIM_BURST:
            self._trim_due = True

    async def _housekeeping(self) -> None:
        """Stale-gap ticks, heartbeat, loop-lag measurement and retention purges.

        A failing tick (the store full or unreadable) is logged once per distinct error and the
        next tick runs as usual: silence detection never stops.
        """
        assert self.store is not None  # noqa: S101 - started by start()
        self._next_beat = monotonic()
        self._next_purge = monotonic() + PURGE_S
        self._next_stats = monotonic() + STATS_S
        self._next_trim = monotonic() + TRIM_S
        self._trim_schedule = deque(monotonic() + t for t in TRIM_STARTUP_S)
        last_error = ""
        while not self._stopping.is_set():
            t0 = monotonic()
            await asyncio.sleep(TICK_S)
            self.counters.loop_lag_s = max(0.0, monotonic() - t0 - TICK_S)
            try:
                await self._tick(utc_now())
            except Exception as exc:  # housekeeping must go on
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:  # a store error is expected (disk full): no traceback
                    expected = isinstance(exc, (sqlite3.Error, OSError))
                    log.error("housekeeping tick failed: %s", error,
                              exc_info=None if expected else exc)
                last_error = error
            else:
                last_error = ""

    async def _tick(self, now: datetime) -> None:
        """One housekeeping tick (see `_housekeeping`)."""
        assert self.store is not None  # noqa: S101 - started by start()
        for run in self.devices.values():
            if run.connector is not None:
                st = run.connector.stats
                self.inventory.poll_stats(
                    run.device_id,
                    latency_s=st.last_latency_s,
                    polls=st.polls,
                    overruns=st.overruns,
                )
        # Judge freshness as of the oldest reading still waiting for its commit (a slow or
        # failing store must not make points look silent; bounds come from the readings).
        observed = now
        if self._pending_since:
            observed = min(now, datetime.fromtimestamp(self._pending_since[0], UTC))
        await self._save_gaps(self.inventory.tick(observed))
        if self.northbound is not None:
            await self.northbound.refresh_states(now)
            await self.northbound.refresh_coverage(now, self.usable_counts, self.monitored_since)
        if self.sparkplug is not None:
            await self.sparkplug.refresh_states(now)
        if monotonic() >= self._next_beat:
            self._next_beat = max(self._next_beat + HEARTBEAT_S, monotonic())
            await self.store.set_meta("last_alive", to_rfc3339(now) or "")
        if monotonic() >= self._next_purge:
            self._next_purge = monotonic() + PURGE_S
            deleted = await self.store.purge(now)
            report = self.store.last_purge
            if report is not None and report.dropped:
                await self._record_overflow(report)
            elif deleted:
                log.info("store purge removed %d readings (all acknowledged)", deleted)
        if monotonic() >= self._next_stats:
            self._next_stats = monotonic() + STATS_S
            self.store_stats = await self.store.stats()
        trim = self._trim_due or monotonic() >= self._next_trim
        while self._trim_schedule and monotonic() >= self._trim_schedule[0]:
            self._trim_schedule.popleft()
            trim = True
        if trim:
            self._trim_due = False
            self._next_trim = monotonic() + TRIM_S
            await asyncio.to_thread(release_free_heap)

    async def _record_overflow(self, report: PurgeReport) -> None:
        """Record readings dropped before a sink had them as `buffer_overflow` gaps (M4, R8).

        One closed gap per point with the dropped readings' exact source-time bounds
        (``start`` = oldest, ``end`` = newest dropped). A drop that continues the point's
        previous one (no acknowledgement in between, see `DroppedRange.continues`) extends
        that gap instead of adding another.
        """
        assert self.store is not None  # noqa: S101 - called by housekeeping only
        log.warning(
            "store bound reached: dropped %d unsent readings (oldest first; by sink: %s)",
            report.dropped,
            ", ".join(f"{k}={v}" for k, v in sorted(report.dropped_by_sink.items())),
        )
        self._on_event(f"buffer overflow: dropped {report.dropped} unsent readings")
        await self._overflow_gaps_for(report.dropped_ranges, "overflow")

    async def _overflow_gaps_for(self, ranges: Sequence[DroppedRange], suffix: str) -> None:
        """One closed `buffer_overflow` gap per dropped range (or extend the continued one).

        Args:
            ranges: Dropped readings per point with exact source-time bounds.
            suffix: Gap id suffix naming where they were dropped (``overflow``: the store's
                bounds; ``ingest``: before the store, while it stalled).
        """
        assert self.store is not None  # noqa: S101 - the store is open
        changed: list[Gap] = []
        added: list[Gap] = []
        for r in ranges:
            prev = self._overflow_gaps.get(f"{suffix}:{r.key}")
            if prev is not None and r.continues and prev.end is not None and r.first >= prev.start:
                prev.end = max(prev.end, r.last)
                changed.append(replace(prev))
                continue
            gap = Gap(
                id=f"{r.key}@{to_epoch_ns(r.first)}~{suffix}",
                site=r.site,
                asset=r.asset,
                point=r.point,
                cause=GapCause.BUFFER_OVERFLOW,
                start=r.first,
                end=r.last,
                last_good=None,
                first_bad=None,
                expected_interval=self.inventory.expected_interval(r.key) or 1.0,
            )
            self._overflow_gaps[f"{suffix}:{r.key}"] = gap
            added.append(gap)
            changed.append(replace(gap))
        # Durable first: a gap the API shows is already in the store.
        await self.store.save_gaps(changed)
        for gap in added:
            self.inventory.add_closed_gap(gap)

    async def _device_loop(self, device_id: str, index: int) -> None:
        """Connect, poll and reconnect one device forever (until cancelled)."""
        dev = self.cfg.device(device_id)
        run = self.devices[device_id]
        backoff = self.cfg.reconnect.initial
        # Stagger the first connects so devices do not poll in phase.
        await asyncio.sleep(min(0.05 * index, getattr(dev, "poll_interval", 1.0) / 2))
        while not self._stopping.is_set():
            options: dict[str, object] = {}
            if getattr(dev, "ack", None) == "commit":
                options["ack"] = "commit"
            connector = create_connector(dev, self._points[device_id], **options)
            acknowledge = getattr(connector, "acknowledge", None) if options else None
            run.connector = connector
            run.attempts += 1
            try:
                async with connector:
                    self._link_up(run)
                    backoff = self.cfg.reconnect.initial
                    async for samples in connector.samples():
                        now = utc_now()
                        if samples:
                            readings = self.pipeline.convert(samples, now)
                            if acknowledge is not None:
                                # PUBACK the batches yielded so far once they are committed.
                                self._submit(readings, partial(acknowledge, connector.batches))  # type: ignore[attr-defined]
                            else:
                                self._submit(readings)
                        else:  # a keep-alive: the subscription is alive, nothing changed
                            self.inventory.device_alive(device_id, now)
            except (ConnectError, LinkLost) as exc:
                self._link_down(run, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a connector bug must not kill the gateway
                log.exception("device %s: unexpected error in connector", device_id)
                self._link_down(run, exc)
            if self._stopping.is_set():
                return
            delay = backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, self.cfg.reconnect.max)
            await asyncio.sleep(delay)

    def _link_up(self, run: DeviceRun) -> None:
        now = utc_now()
        if not run.link_up:
            run.link_up = True
            if run.ever_up:
                log.warning("device %s: link restored", run.device_id)
                self._on_event(f"device {run.device_id}: link restored")
            else:
                log.info("device %s: connected", run.device_id)
                self._on_event(f"device {run.device_id}: connected")
            run.ever_up = True
        self.inventory.link_up(run.device_id, now)

    def _link_down(self, run: DeviceRun, exc: BaseException) -> None:
        now = utc_now()
        error = str(exc) or type(exc).__name__
        first_failure = run.attempts == 1 and not run.ever_up
        if run.link_up or first_failure:
            # A state change: log once, mark every point of the device BadNoCommunication.
            verb = "link lost" if run.link_up else "cannot connect"
            log.warning("device %s: %s: %s", run.device_id, verb, error)
            self._on_event(f"device {run.device_id}: {verb}: {error}")
            # Report-by-exception points (OPC UA subscriptions) lost their subscription with
            # the session: their gap is `subscription_lost`; polled points' `device_offline`.
            rbe = [k for k in run.point_keys if k in self._rbe_keys]
            polled = [k for k in run.point_keys if k not in self._rbe_keys] if rbe else None
            self._submit(
                self.pipeline.bad_for(
                    run.point_keys if polled is None else polled, Q.BAD_NO_COMMUNICATION, now
                )
            )
            if rbe:
                self._submit(self.pipeline.bad_for(rbe, Q.BAD_NO_SUBSCRIPTION, now))
        run.link_up = False
        run.last_error = error
        self.inventory.link_down(run.device_id, now, error)

    # -- convenience ---------------------------------------------------------------------

    async def wait_stopped(self) -> None:
        """Block until `stop()` was called."""
        await self._stopping.wait()

    def request_stop(self) -> None:
        """Ask `run_forever` to stop (signal-handler safe)."""
        self._stopping.set()


@dataclass(slots=True)
class _IngestDrop:
    """Readings of one point dropped at ingest since the last commit (count, source-time bounds)."""

    site: str
    asset: str
    point: str
    count: int
    first: datetime
    last: datetime


async def cancel_and_wait(tasks: Sequence[asyncio.Task[object]], kind: str) -> list[str]:
    """Cancel `tasks` and wait until they end, re-cancelling any that ignore a cancellation.

    A task that swallowed its cancellation (Python 3.11 `asyncio.wait_for` race,
    bpo-42130 / gh-86296) is cancelled again every `STOP_CANCEL_WAIT_S`, at most
    `STOP_CANCEL_ROUNDS` times; a stop is therefore bounded by about 5 s per call.

    Args:
        tasks: Tasks to end (finished ones are fine).
        kind: Word for the log ("device", "task").

    Returns:
        Names of the tasks still running afterwards (logged as a warning), usually empty.
    """
    pending: set[asyncio.Task[object]] = {t for t in tasks if not t.done()}
    rounds = 0
    while pending and rounds < STOP_CANCEL_ROUNDS:
        rounds += 1
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_CANCEL_WAIT_S)
        if pending:
            log.warning(
                "stop: %d %s task(s) still running after cancel round %d: %s",
                len(pending), kind, rounds, ", ".join(sorted(t.get_name() for t in pending)[:5]),
            )
    for t in tasks:  # retrieve results so asyncio does not log "exception never retrieved"
        if t.done() and not t.cancelled():
            t.exception()
    return sorted(t.get_name() for t in pending)


async def serve(
    runtime: Runtime,
    api_host: str | None,
    api_port: int | None,
    on_ready: Callable[[int | None], None] | None = None,
) -> None:
    """Start the runtime (and the API when a host and port are given), run until stop is requested.

    Args:
        runtime: The runtime to run.
        api_host: Bind address of the API, or None for no API.
        api_port: TCP port [0..65535] (0 = any free port), or None for no API.
        on_ready: Called once with the API's bound port (or None) when everything runs.
    """
    from gateway.api.app import DEFAULT_ALLOWED_HOSTS, create_app
    from gateway.api.server import ApiServer

    await runtime.start()
    server: ApiServer | None = None
    try:
        port: int | None = None
        if api_host is not None and api_port is not None:
            hosts = [*DEFAULT_ALLOWED_HOSTS, *runtime.cfg.api.allowed_hosts]
            if api_host not in ("0.0.0.0", "::", ""):
                hosts.append(f"[{api_host}]" if ":" in api_host else api_host)
            server = ApiServer(create_app(runtime, allowed_hosts=hosts), api_host, api_port)
            port = await server.start()
        if on_ready is not None:
            on_ready(port)
        await runtime.wait_stopped()
    finally:
        if server is not None:
            await server.stop()
        await runtime.stop()
