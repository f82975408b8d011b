"""Sample -> Reading: scale, offset, unit, engineering range and lineage (DESIGN.md §3).

The transform of each point is precomputed once (`PointTransform`) so the per-reading path is
a dict lookup, one multiply-add and one dataclass construction.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.model import Reading, Sample, Value
from gateway.quality import Q

_BAD = 0x80000000
"""Severity bit of Bad quality codes (see `gateway.quality.is_bad`)."""


@dataclass(frozen=True, slots=True)
class PointTransform:
    """How one point's raw value becomes an engineering value.

    Attributes:
        site, asset, point: Ids of the point.
        unit: UCUM-style unit code or None.
        scale, offset: engineering = raw × scale + offset (numbers only; bool/str pass through).
        low, high: Engineering range; a value outside is Uncertain (EngineeringUnitsExceeded).
        source: Locator URI of the point.
        identity: True when scale/offset leave the value unchanged (integers stay integers);
            derived.
        ranged: True when an engineering range bound is set; derived.
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
    identity: bool = field(init=False, compare=False, repr=False)
    ranged: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", self.scale == 1.0 and self.offset == 0.0)
        object.__setattr__(self, "ranged", self.low is not None or self.high is not None)


class Pipeline:
    """Turns connector samples into readings.

    Args:
        transforms: Point key ``site/asset/point`` -> its transform.

    Counters: `unknown_points` (samples for keys not configured, dropped),
    `non_finite` (values that became Bad because they were NaN/±Inf after scaling),
    `out_of_range` (values flagged Uncertain by the engineering range).
    """

    def __init__(self, transforms: dict[str, PointTransform]) -> None:
        # A copy with interned keys: the connectors' point keys are interned too
        # (`connectors.modbus.plan.ModbusPoint`), so the keys are shared, not copied (issue #8).
        self._t = {sys.intern(k) if type(k) is str else k: t for k, t in transforms.items()}
        self.unknown_points = 0
        self.non_finite = 0
        self.out_of_range = 0

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` (``site/asset/point``) is a configured point."""
        return key in self._t

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
        get = self._t.get
        isfinite = math.isfinite
        for s in samples:
            t = get(s.point_id)
            if t is None:
                self.unknown_points += 1
                continue
            value: Value = s.value
            quality = s.quality
            kind = type(value)
            if quality & _BAD:  # is_bad, inlined: this loop runs once per reading
                value = None
            elif kind is float or kind is int or (
                kind is not bool and isinstance(value, int | float)
            ):
                if not t.identity:
                    value = value * t.scale + t.offset  # type: ignore[operator]
                if isinstance(value, float) and not isfinite(value):
                    self.non_finite += 1
                    value, quality = None, Q.BAD
                elif t.ranged and (
                    (t.low is not None and value < t.low) or (t.high is not None and value > t.high)  # type: ignore[operator]
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
                    quality if type(quality) is int else int(quality),
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
