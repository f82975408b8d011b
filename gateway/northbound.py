"""Northbound MQTT: the runtime's live readings and asset states on a broker (issue #4).

Wires `connectors.mqtt.publisher.MqttPublisher` to the runtime:

* every committed reading is queued for publishing (a runtime listener; never blocks);
* the retained birth message carries the configured inventory (site -> assets, counts);
* each asset's connectivity state (``online``/``degraded``/``offline``/``unknown``, with
  points by state, open gaps, last seen) is published retained when it changes (checked
  every second by the runtime) and re-sent by the publisher after every reconnect;
* the gateway's open data gaps and the most recent closed ones are one retained document
  (``gaps_topic``, default ``ot/_gateway/{gateway}/gaps``), re-published when they change —
  so a fleet view (`ot-gateway fleet`) knows every site's gaps;
* coverage per site and asset over the last hour, retained on ``{state_topic}/coverage``,
  refreshed every `COVERAGE_EVERY_S`;
* the broker publishes the last will (``offline``, ``connection lost``) when the gateway
  vanishes; a clean stop publishes ``offline``, ``stopped``.

Guarantee: a live feed, not store and forward. Readings committed while the broker is away are
queued up to ``queue_max`` and the oldest beyond it are dropped and counted (``dropped``); for a
lossless history use an ``influxdb`` sink. Commands arriving on the broker are never read
(the publisher subscribes to nothing; RELIABILITY S13).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connectors.mqtt.config import MqttPublisherConfig
from connectors.mqtt.publisher import MqttPublisher
from gateway.clock import monotonic, to_rfc3339
from gateway.model import Reading
from inventory.inventory import Inventory
from inventory.views import Gap

log = logging.getLogger("ot_gateway.northbound")

COVERAGE_WINDOW_S = 3600
"""Window of the published coverage document [s]; refreshed every `COVERAGE_EVERY_S`."""
COVERAGE_EVERY_S = 30.0
"""How often the runtime refreshes the coverage document [s]."""
MAX_OPEN_GAPS = 1000
"""Open gaps listed in the retained gaps document (oldest first) [count]."""
MAX_RECENT_GAPS = 100
"""Most recently closed gaps listed in the retained gaps document [count]."""


def gap_object(gap: Gap, now: datetime) -> dict[str, object]:
    """The JSON object of one gap, as in ``GET /api/v1/gaps`` (times RFC 3339 UTC)."""
    end = gap.end or now
    return {
        "id": gap.id,
        "site": gap.site,
        "asset": gap.asset,
        "point": gap.point,
        "cause": gap.cause.value,
        "start": to_rfc3339(gap.start),
        "end": to_rfc3339(gap.end),
        "duration_s": round((end - gap.start).total_seconds(), 3),
        "samples_missed": gap.samples_missed(now),
    }


class MqttNorthbound:
    """The runtime's MQTT publisher of readings, birth/death and per-asset state.

    Args:
        cfg: Publisher config (``northbound.mqtt``).
        gateway: Gateway name (``gateway.name``), used in topics and payloads.
        inventory: The runtime's inventory (asset states are read from it).
        sites: Configured ``site id -> [asset ids]`` for the birth message.
        points: Number of configured points, for the birth message.
    """

    def __init__(
        self,
        cfg: MqttPublisherConfig,
        gateway: str,
        inventory: Inventory,
        sites: dict[str, list[str]],
        points: int,
    ) -> None:
        self.publisher = MqttPublisher(cfg, gateway=gateway)
        self._inventory = inventory
        self._birth: dict[str, object] = {
            "sites": len(sites),
            "assets": sum(len(a) for a in sites.values()),
            "points": points,
            "site_assets": {s: list(a) for s, a in sites.items()},
        }
        self._published: dict[tuple[str, str], object] = {}
        self._gaps_signature: object = None
        self._gaps_topic = cfg.gaps_topic.replace("{gateway}", gateway)
        self._next_coverage = 0.0
        self._coverage_topic = cfg.state_topic.replace("{gateway}", gateway) + "/coverage"

    @property
    def listener(self) -> Callable[[Sequence[Reading]], None]:
        """The runtime listener: queues committed readings (never blocks, never raises)."""
        return self.publisher.publish

    async def start(self) -> None:
        """Start the publisher task; it connects in the background and retries forever."""
        await self.publisher.start(self._birth)

    async def refresh_states(self, now: datetime) -> int:
        """Publish the assets whose state changed since the last call.

        Args:
            now: Current time (aware UTC), for the inventory's state evaluation.

        Returns:
            Number of asset states handed to the publisher.
        """
        changed = 0
        for view in self._inventory.assets(now, with_points=False):
            key = (view.site, view.id)
            state = view.state.value
            signature = (state, tuple(sorted(view.points_by_state.items())), view.open_gaps)
            if self._published.get(key) != signature:
                self._published[key] = signature
                details: dict[str, object] = {
                    "name": view.name,
                    "points_total": view.points_total,
                    "points_by_state": dict(view.points_by_state),
                    "open_gaps": view.open_gaps,
                    "last_seen": to_rfc3339(view.last_seen),
                    "since": to_rfc3339(view.since),
                }
                await self.publisher.set_asset_state(view.site, view.id, state, details)
                changed += 1
        await self._refresh_gaps(now)
        return changed

    async def _refresh_gaps(self, now: datetime) -> None:
        """Publish the retained gaps document when the set of gaps changed."""
        gaps = self._inventory.gaps()
        open_gaps = [g for g in gaps if g.end is None][:MAX_OPEN_GAPS]
        closed = [g for g in gaps if g.end is not None][-MAX_RECENT_GAPS:]
        signature = (
            tuple(g.id for g in open_gaps),
            tuple((g.id, g.end) for g in closed),
        )
        if signature == self._gaps_signature:
            return
        self._gaps_signature = signature
        await self.publisher.set_document(
            self._gaps_topic,
            {
                "gateway": self.publisher.gateway,
                "time": to_rfc3339(now),
                "open": [gap_object(g, now) for g in open_gaps],
                "recent": [gap_object(g, now) for g in closed],
            },
        )

    async def refresh_coverage(
        self,
        now: datetime,
        usable_counts: Callable[[datetime], Awaitable[Mapping[str, int]]],
        monitored_since: datetime,
    ) -> bool:
        """Every `COVERAGE_EVERY_S`: publish the retained coverage document (site and asset).

        Covers the last `COVERAGE_WINDOW_S` (never before ``monitored_since``).

        Args:
            now: Current time (aware UTC).
            usable_counts: Good/Uncertain readings per point key since a time
                (`Runtime.usable_counts`, a store query off the event loop).
            monitored_since: Start of monitoring.

        Returns:
            True when a document was published by this call.
        """
        if monotonic() < self._next_coverage:
            return False
        self._next_coverage = monotonic() + COVERAGE_EVERY_S
        window_start = now - timedelta(seconds=COVERAGE_WINDOW_S)
        received = await usable_counts(window_start)
        body: dict[str, object] = {
            "gateway": self.publisher.gateway,
            "time": to_rfc3339(now),
            "window_s": COVERAGE_WINDOW_S,
        }
        for group_by in ("site", "asset"):
            rows = await asyncio.to_thread(
                self._inventory.coverage,
                received,
                window_start=window_start,
                now=now,
                monitored_since=monitored_since,
                group_by=group_by,
            )
            body[group_by] = {
                r.group: {
                    "coverage": round(r.coverage, 4),
                    "expected": r.expected,
                    "received": r.received,
                }
                for r in rows
            }
        await self.publisher.set_document(self._coverage_topic, body)
        return True

    async def stop(self) -> None:
        """Flush (bounded), publish the retained ``offline``/``stopped`` state, disconnect."""
        await self.publisher.stop()

    def status(self) -> dict[str, object]:
        """State for ``/readyz`` and ``/api/v1/sinks``: endpoint, connected, counters."""
        st = self.publisher.stats
        return {
            "name": "mqtt",
            "type": "mqtt-northbound",
            "target": self.publisher.endpoint,
            "state": "ok" if st.connected else "degraded",
            "connected": st.connected,
            "queued": st.queued,
            "published": st.published,
            "dropped": st.dropped,
            "lost_in_flight": st.lost_in_flight,
            "last_error": st.last_error,
        }

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector: ``otgw_northbound_*`` series (register on the registry)."""
        st = self.publisher.stats
        up = GaugeMetricFamily(
            "otgw_northbound_up", "1 while connected to the broker", labels=["target"]
        )
        up.add_metric([self.publisher.endpoint], 1.0 if st.connected else 0.0)
        yield up
        for name, doc, value in (
            ("published", "Readings handed to the broker connection", st.published),
            ("dropped", "Readings dropped because the publish queue was full", st.dropped),
            ("lost_in_flight", "Messages unconfirmed when the link dropped", st.lost_in_flight),
        ):
            fam = CounterMetricFamily(f"otgw_northbound_{name}", doc, labels=["target"])
            fam.add_metric([self.publisher.endpoint], float(value))
            yield fam
