"""Response schemas (Out models) and their construction from inventory views.

Conventions: times are RFC 3339 UTC strings ending in ``Z`` (microsecond precision); durations
and intervals are seconds; a float that is not finite (NaN, ±Infinity) is rendered as null, so
every body is strict JSON.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from gateway.clock import to_rfc3339
from gateway.quality import Severity, quality_name, severity
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

Timestamp = Annotated[
    str,
    WithJsonSchema(
        {"type": "string", "format": "date-time", "examples": ["2026-01-02T03:04:05.123456Z"]}
    ),
]
"""An RFC 3339 UTC time string ending in ``Z``."""

PointValue = float | int | bool | str | None
"""A point value in engineering units; null when the quality is Bad."""

GroupBy = Literal["site", "asset", "point"]


def ts(value: datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 UTC (``...Z``); None stays None."""
    return to_rfc3339(value)


def finite(value: float | None) -> float | None:
    """The float itself, or None when it is None, NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return value


def finite_value(value: PointValue) -> PointValue:
    """A point value with non-finite floats replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def jsonable(value: object) -> Any:  # noqa: ANN401 - free-form details by design
    """Turn free-form details (health, readiness) into strict-JSON-safe data.

    Datetimes become RFC 3339 strings, non-finite floats None, enums their value, mappings
    and sequences are converted recursively; anything else becomes its ``str``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, datetime):
        return ts(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorOut(_Out):
    """An error with a human-readable message."""

    detail: str = Field(description="What went wrong, e.g. `unknown site 'x'`")


class GapOut(_Out):
    """A data gap of one point."""

    id: str = Field(description="Stable gap id")
    site: str = Field(description="Site id")
    asset: str = Field(description="Asset id")
    point: str = Field(description="Point id")
    cause: GapCause = Field(description="Why the point had no usable data")
    start: Timestamp = Field(description="Start of missing data (RFC 3339 UTC)")
    end: Timestamp | None = Field(
        description="First good sample after the gap (RFC 3339 UTC); null while open"
    )
    open: bool = Field(description="True while the gap is open (no good sample yet)")
    duration_s: float | None = Field(description="end − start, or now − start while open [s]")
    last_good: Timestamp | None = Field(
        description="Source time of the last good sample before the gap (RFC 3339 UTC)"
    )
    first_bad: Timestamp | None = Field(
        description="Source time of the first Bad sample of the gap (RFC 3339 UTC)"
    )
    expected_interval_s: float | None = Field(description="Expected interval of the point [s]")
    samples_missed: int = Field(description="Expected samples in [start, end or now) [count]")

    @classmethod
    def from_gap(cls, gap: Gap, now: datetime) -> GapOut:
        """Build from an inventory `Gap`; open gaps are measured up to `now`."""
        stop = gap.end or now
        return cls(
            id=gap.id,
            site=gap.site,
            asset=gap.asset,
            point=gap.point,
            cause=gap.cause,
            start=ts(gap.start) or "",
            end=ts(gap.end),
            open=gap.end is None,
            duration_s=finite(max(0.0, (stop - gap.start).total_seconds())),
            last_good=ts(gap.last_good),
            first_bad=ts(gap.first_bad),
            expected_interval_s=finite(gap.expected_interval),
            samples_missed=gap.samples_missed(now),
        )


class SiteOut(_Out):
    """A site and the roll-up of its assets."""

    id: str = Field(description="Site id (slug)")
    name: str | None = Field(description="Display name")
    state: State = Field(description="Connectivity roll-up of the site")
    assets_total: int = Field(description="Configured assets [count]")
    assets_by_state: dict[str, int] = Field(description="Assets per state [count]")
    points_total: int = Field(description="Configured points [count]")
    open_gaps: int = Field(description="Open data gaps [count]")
    last_seen: Timestamp | None = Field(description="Last reading of any point (RFC 3339 UTC)")

    @classmethod
    def from_view(cls, view: SiteView) -> SiteOut:
        """Build from an inventory `SiteView`."""
        return cls(
            id=view.id,
            name=view.name,
            state=view.state,
            assets_total=view.assets_total,
            assets_by_state=dict(view.assets_by_state),
            points_total=view.points_total,
            open_gaps=view.open_gaps,
            last_seen=ts(view.last_seen),
        )


class AssetOut(_Out):
    """An asset and the roll-up of its points (summary, without the points)."""

    site: str = Field(description="Site id")
    id: str = Field(description="Asset id (slug), unique within its site")
    name: str | None = Field(description="Display name")
    kind: str | None = Field(description="Asset kind, e.g. `pump`")
    state: State = Field(description="Connectivity roll-up of the asset")
    since: Timestamp | None = Field(description="When the asset entered `state` (RFC 3339 UTC)")
    last_seen: Timestamp | None = Field(description="Last reading of any point (RFC 3339 UTC)")
    points_total: int = Field(description="Configured points [count]")
    points_by_state: dict[str, int] = Field(description="Points per state [count]")
    open_gaps: int = Field(description="Open data gaps [count]")

    @classmethod
    def fields_of(cls, view: AssetView) -> dict[str, Any]:
        """The summary fields of an inventory `AssetView`."""
        return {
            "site": view.site,
            "id": view.id,
            "name": view.name,
            "kind": view.kind,
            "state": view.state,
            "since": ts(view.since),
            "last_seen": ts(view.last_seen),
            "points_total": view.points_total,
            "points_by_state": dict(view.points_by_state),
            "open_gaps": view.open_gaps,
        }

    @classmethod
    def from_view(cls, view: AssetView) -> AssetOut:
        """Build from an inventory `AssetView`."""
        return cls(**cls.fields_of(view))


class PointOut(_Out):
    """One point: configuration, last value and status."""

    id: str = Field(description="Point id (slug), unique within its asset")
    site: str = Field(description="Site id")
    asset: str = Field(description="Asset id")
    name: str | None = Field(description="Display name")
    device: str = Field(description="Id of the device serving the point")
    source: str = Field(description="Locator URI, e.g. `modbus://127.0.0.1:502/1/hr/0`")
    unit: str | None = Field(description="UCUM-style unit code of `value`, e.g. `Cel`, `kPa`")
    expected_interval_s: float | None = Field(description="Expected interval between samples [s]")
    state: State = Field(description="Connectivity of the point")
    value: PointValue = Field(
        description="Last value in engineering units [`unit`]; null when Bad or never seen"
    )
    quality: int | None = Field(
        description="OPC UA StatusCode of the last value (uint32); null when never seen"
    )
    quality_name: str | None = Field(description="Name of the StatusCode, e.g. `BadTimeout`")
    severity: Severity | None = Field(description="Severity of the StatusCode (bits 30-31)")
    last_seen: Timestamp | None = Field(description="Last reading of any quality (RFC 3339 UTC)")
    last_good: Timestamp | None = Field(description="Last Good/Uncertain reading (RFC 3339 UTC)")
    open_gap: GapOut | None = Field(description="The point's open data gap, if any")

    @classmethod
    def from_view(cls, view: PointView, now: datetime) -> PointOut:
        """Build from an inventory `PointView`; quality name and severity derive from the code."""
        code = view.quality
        return cls(
            id=view.point,
            site=view.site,
            asset=view.asset,
            name=view.name,
            device=view.device,
            source=view.source,
            unit=view.unit,
            expected_interval_s=finite(view.expected_interval),
            state=view.state,
            value=finite_value(view.value),
            quality=code,
            quality_name=None if code is None else quality_name(code),
            severity=None if code is None else severity(code),
            last_seen=ts(view.last_seen),
            last_good=ts(view.last_good),
            open_gap=None if view.open_gap is None else GapOut.from_gap(view.open_gap, now),
        )


class AssetDetailOut(AssetOut):
    """An asset with its points."""

    points: list[PointOut] = Field(description="The asset's configured points")

    @classmethod
    def from_detail(cls, view: AssetView, now: datetime) -> AssetDetailOut:
        """Build from an inventory `AssetView` including its points."""
        return cls(
            **AssetOut.fields_of(view),
            points=[PointOut.from_view(p, now) for p in view.points],
        )


class SiteDetailOut(SiteOut):
    """A site with summaries of its assets."""

    assets: list[AssetOut] = Field(description="The site's assets (summaries)")


class DeviceOut(_Out):
    """A device's link and polling statistics."""

    id: str = Field(description="Device id (slug)")
    protocol: str = Field(description="Protocol, e.g. `modbus`, `opcua`, `mqtt`")
    endpoint: str = Field(description="Endpoint, e.g. `127.0.0.1:502`")
    state: State = Field(description="Connectivity of the device")
    link_up: bool = Field(description="True while the connection is established")
    since: Timestamp | None = Field(description="When the link entered its state (RFC 3339 UTC)")
    last_seen: Timestamp | None = Field(description="Last reading of any quality (RFC 3339 UTC)")
    last_good: Timestamp | None = Field(description="Last Good/Uncertain reading (RFC 3339 UTC)")
    last_error: str | None = Field(description="Last connection or protocol error message")
    reconnects: int = Field(description="Reconnections since start [count]")
    poll_latency_s: float | None = Field(description="Latency of the last poll cycle [s]")
    polls: int = Field(description="Completed poll cycles [count]")
    overruns: int = Field(description="Poll cycles that overran their interval [count]")
    points_total: int = Field(description="Configured points served by the device [count]")

    @classmethod
    def from_view(cls, view: DeviceView) -> DeviceOut:
        """Build from an inventory `DeviceView`."""
        return cls(
            id=view.id,
            protocol=view.protocol,
            endpoint=view.endpoint,
            state=view.state,
            link_up=view.link_up,
            since=ts(view.since),
            last_seen=ts(view.last_seen),
            last_good=ts(view.last_good),
            last_error=view.last_error,
            reconnects=view.reconnects,
            poll_latency_s=finite(view.poll_latency_s),
            polls=view.polls,
            overruns=view.overruns,
            points_total=view.points_total,
        )


class CoverageRowOut(_Out):
    """Coverage of one group over the window."""

    group: str = Field(description="`site`, `site/asset` or `site/asset/point`")
    expected: int = Field(description="Expected samples in the window [count]")
    received: int = Field(description="Good/Uncertain samples received in the window [count]")
    coverage: float | None = Field(
        description="received / expected [ratio, 0..1]; 1.0 when nothing was expected"
    )

    @classmethod
    def from_row(cls, row: CoverageRow) -> CoverageRowOut:
        """Build from an inventory `CoverageRow`."""
        return cls(
            group=row.group,
            expected=row.expected,
            received=row.received,
            coverage=finite(row.coverage),
        )


class CoverageOut(_Out):
    """Coverage report over a window ending now."""

    window_s: int = Field(description="Window length [s]")
    window_start: Timestamp = Field(description="Start of the window (RFC 3339 UTC)")
    window_end: Timestamp = Field(description="End of the window, i.e. now (RFC 3339 UTC)")
    monitored_since: Timestamp = Field(
        description="Monitoring start; nothing is expected before it (RFC 3339 UTC)"
    )
    group_by: GroupBy = Field(description="Grouping of the rows")
    rows: list[CoverageRowOut] = Field(description="One row per group")


class HealthOut(_Out):
    """Liveness: the process runs and serves requests."""

    status: Literal["ok"] = Field(description="Always `ok` when the process answers")
    details: dict[str, Any] = Field(description="Liveness details from the runtime")


class ReadyOut(_Out):
    """Readiness: whether the gateway can do its job."""

    ready: bool = Field(description="True when ready (HTTP 200), false otherwise (HTTP 503)")
    status: Literal["ready", "not_ready"] = Field(description="`ready` or `not_ready`")
    details: dict[str, Any] = Field(description="Store state, devices up/total, alarms")


class ReadingRowOut(_Out):
    """One raw reading (``/api/v1/readings`` without ``every``); the CSV/Parquet columns too."""

    time: Timestamp = Field(description="Source time (RFC 3339 UTC; ns in Parquet)")
    site: str = Field(description="Site id")
    asset: str = Field(description="Asset id")
    point: str = Field(description="Point id")
    value: float | None = Field(
        description="Numeric value in engineering units [`unit`]; null for booleans, strings "
        "and Bad readings"
    )
    state: bool | None = Field(description="Boolean value; null for other types")
    text: str | None = Field(
        description="String value; also the exact decimal of an integer beyond ±2^53"
    )
    unit: str | None = Field(description="UCUM-style unit code, e.g. `Cel`")
    quality: int = Field(description="OPC UA StatusCode (uint32)")
    quality_name: str = Field(description="Name of the StatusCode, e.g. `Good`, `BadTimeout`")
    severity: Severity = Field(description="Severity of the StatusCode (bits 30-31)")
    gateway_time: Timestamp = Field(description="When the gateway acquired it (RFC 3339 UTC)")
    source: str = Field(description="Locator URI, e.g. `modbus://127.0.0.1:502/1/hr/0`")


class BucketRowOut(_Out):
    """One time bucket of one point (``/api/v1/readings`` with ``every`` and ``agg``)."""

    time: Timestamp = Field(description="Bucket start, aligned to the Unix epoch (RFC 3339 UTC)")
    site: str = Field(description="Site id")
    asset: str = Field(description="Asset id")
    point: str = Field(description="Point id")
    unit: str | None = Field(description="UCUM-style unit code of `value`")
    value: float | None = Field(
        description="The aggregate over the bucket [`unit`; count for `agg=count`]; booleans "
        "count as 0/1; null when no reading in the bucket is numeric"
    )
    count: int = Field(description="Readings in the bucket that passed the quality filter")


class StreamEventOut(_Out):
    """The data of one ``reading`` event of ``/api/v1/stream`` (a normalized reading)."""

    site: str = Field(description="Site id")
    asset: str = Field(description="Asset id")
    point: str = Field(description="Point id")
    value: PointValue = Field(description="Value in engineering units [`unit`]; null when Bad")
    unit: str | None = Field(description="UCUM-style unit code")
    quality: int = Field(description="OPC UA StatusCode (uint32)")
    quality_name: str = Field(description="Name of the StatusCode")
    severity: Severity = Field(description="Severity of the StatusCode")
    source_time: Timestamp = Field(description="Device time, or acquisition time (RFC 3339 UTC)")
    gateway_time: Timestamp = Field(description="When the gateway acquired it (RFC 3339 UTC)")
    source: str = Field(description="Locator URI")
