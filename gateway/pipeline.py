"""Sample -> Reading: scale, offset, unit, engineering range and lineage (DESIGN.md §3).

The transform of each point is precomputed once (`PointTransform`) so the per-reading path is
a dict lookup, one multiply-add and one dataclass construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.model import Reading, Sample, Value
from gateway.quality import Q, is_bad


@dataclass(frozen=True, slots=True)
class PointTransform:
    """How one point's raw value becomes an engineering value.

    Attributes:
        site, asset, point: Ids of the point.
        unit: UCUM-style unit code or None.
        scale, offset: engineering = raw × scale + offset (numbers only; bool/str pass through).
        low, high: Engineering range; a value outside is Uncertain (EngineeringUnitsExceeded).
        source: Locator URI of the point.
    """

    site: str
    asset: str
    point: str
    unit: str | None
    scale: float
    offset: float
    low: float | None
    high: float | None
    source: str

    @property
    def identity(self) -> bool:
        """True when scale/offset leave the value unchanged (integers stay integers)."""
        return self.scale == 1.0 and self.offset == 0.0


class Pipeline:
    """Turns connector samples into readings.

    Args:
        transforms: Point key ``site/asset/point`` -> its transform.

    Counters: `unknown_points` (samples for keys not configured, dropped),
    `non_finite` (values that became Bad because they were NaN/±Inf after scaling),
    `out_of_range` (values flagged Uncertain by the engineering range).
    """

    def __init__(self, transforms: dict[str, PointTransform]) -> None:
        self._t = transforms
        self.unknown_points = 0
        self.non_finite = 0
        self.out_of_range = 0

    def convert(self, samples: Iterable[Sample], gateway_time: datetime) -> list[Reading]:
        """Convert a batch of samples acquired at `gateway_time`.

        Args:
            samples: Samples from one connector poll.
            gateway_time: Aware UTC time of acquisition; becomes source_time when a sample
                has none.

        Returns:
            One Reading per sample of a configured point, in input order. Bad readings carry
            value None; non-finite numbers become Bad (``Q.BAD``); out-of-range numbers with
            a Good quality become ``UncertainEngineeringUnitsExceeded``.
        """
        out: list[Reading] = []
        append = out.append
        for s in samples:
            t = self._t.get(s.point_id)
            if t is None:
                self.unknown_points += 1
                continue
            value: Value = s.value
            quality = s.quality
            if is_bad(quality):
                value = None
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if not t.identity:
                    value = value * t.scale + t.offset
                if isinstance(value, float) and not math.isfinite(value):
                    self.non_finite += 1
                    value, quality = None, Q.BAD
                elif (t.low is not None and value < t.low) or (
                    t.high is not None and value > t.high
                ):
                    self.out_of_range += 1
                    if quality == Q.GOOD:
                        quality = Q.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
            append(
                Reading(
                    t.site,
                    t.asset,
                    t.point,
                    value,
                    t.unit,
                    int(quality),
                    s.source_time or gateway_time,
                    gateway_time,
                    t.source,
                )
            )
        return out

    def bad_for(self, keys: Iterable[str], quality: int, when: datetime) -> list[Reading]:
        """Bad readings (value None) for the given points, e.g. BadNoCommunication on link loss."""
        out = []
        for k in keys:
            t = self._t.get(k)
            if t is not None:
                out.append(
                    Reading(t.site, t.asset, t.point, None, t.unit, quality, when, when, t.source)
                )
        return out
