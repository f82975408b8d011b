"""What is: read-only snapshots the inventory hands to the API (plain dataclasses).

All datetimes are aware UTC. States are the strings of `State`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.model import Value


class State(StrEnum):
    """Connectivity (DESIGN.md §4)."""

    ONLINE = "online"  # link up, all points fresh
    DEGRADED = "degraded"  # link up, some points stale or Bad
    OFFLINE = "offline"  # link down or nothing fresh
    UNKNOWN = "unknown"  # never seen


class GapCause(StrEnum):
    """Why a point had no usable data."""

    DEVICE_OFFLINE = "device_offline"
    TIMEOUT = "timeout"
    BAD_QUALITY = "bad_quality"
    STALE = "stale"
    SUBSCRIPTION_LOST = "subscription_lost"
    GATEWAY_DOWN = "gateway_down"
    BUFFER_OVERFLOW = "buffer_overflow"


@dataclass(slots=True)
class Gap:
    """A data gap of one point.

    Attributes:
        id: Stable id (unique per store), assigned when the gap opens.
        site, asset, point: The point.
        cause: Why.
        start: Start of missing data: the first Bad sample's time, or last good + one interval.
        end: First good sample after the gap; None while open.
        last_good: Source time of the last good sample before the gap, or None.
        first_bad: Source time of the first Bad sample of the gap, or None (stale/gateway_down).
        expected_interval: The point's expected interval [s], for samples_missed.
    """

    id: str
    site: str
    asset: str
    point: str
    cause: GapCause
    start: datetime
    end: datetime | None
    last_good: datetime | None
    first_bad: datetime | None
    expected_interval: float

    @property
    def key(self) -> str:
        """The point key ``site/asset/point``."""
        return f"{self.site}/{self.asset}/{self.point}"

    def samples_missed(self, now: datetime) -> int:
        """Expected samples in [start, end or now) [count]."""
        stop = self.end or now
        return max(0, int((stop - self.start).total_seconds() // self.expected_interval))


@dataclass(frozen=True, slots=True)
class PointView:
    """One point as the operator sees it."""

    site: str
    asset: str
    point: str
    name: str | None
    device: str
    unit: str | None
    source: str
    expected_interval: float
    state: State
    value: Value
    quality: int | None
    quality_name: str | None
    severity: str | None
    last_seen: datetime | None
    last_good: datetime | None
    open_gap: Gap | None
    since: datetime | None = None
    """When the point entered its current `state` (aware UTC), or None if unknown."""


@dataclass(frozen=True, slots=True)
class AssetView:
    """An asset and the roll-up of its points."""

    site: str
    id: str
    name: str | None
    kind: str | None
    state: State
    since: datetime | None
    last_seen: datetime | None
    points_total: int
    points_by_state: dict[str, int]
    open_gaps: int
    points: tuple[PointView, ...]


@dataclass(frozen=True, slots=True)
class SiteView:
    """A site and the roll-up of its assets."""

    id: str
    name: str | None
    state: State
    assets_total: int
    assets_by_state: dict[str, int]
    points_total: int
    open_gaps: int
    last_seen: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device's link as the runtime reports it."""

    id: str
    protocol: str
    endpoint: str
    state: State
    link_up: bool
    since: datetime | None
    last_seen: datetime | None
    last_good: datetime | None
    last_error: str | None
    reconnects: int
    poll_latency_s: float | None
    polls: int
    overruns: int
    points_total: int


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """Coverage of one group over a window.

    Attributes:
        group: ``site``, ``site/asset`` or ``site/asset/point``.
        expected: Expected samples in the window [count].
        received: Good/Uncertain samples received [count].
        coverage: received / expected in [0, 1]; 1.0 when nothing was expected.
    """

    group: str
    expected: int
    received: int
    coverage: float
