"""Coverage: received usable samples versus expected samples over a window (DESIGN.md §4).

Pure functions over the configured points; the counts of received samples come from the store
(`gateway.store.Store.count_usable`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Literal

from inventory.spec import PointSpec
from inventory.views import CoverageRow

GroupBy = Literal["site", "asset", "point"]

_MICROSECOND = timedelta(microseconds=1)


def expected_samples(interval: float, start: datetime, now: datetime) -> int:
    """Samples a point with the given expected interval should have produced in [start, now).

    Args:
        interval: Expected interval [s] (> 0).
        start: Window start (aware UTC).
        now: Window end (aware UTC).

    Returns:
        ``floor((now - start) / interval)``, at least 0 [count].
    """
    return _expected(interval, (now - start) // _MICROSECOND)


def _expected(interval: float, span_us: int) -> int:
    # Integer microseconds: exact for every interval that is a whole number of µs.
    interval_us = round(interval * 1_000_000)
    if span_us <= 0 or interval_us <= 0:
        return 0
    return span_us // interval_us


def group_of(point: PointSpec, group_by: GroupBy) -> str:
    """The group key of a point: ``site``, ``site/asset`` or ``site/asset/point``."""
    if group_by == "site":
        return point.site
    if group_by == "asset":
        return f"{point.site}/{point.asset}"
    return point.key


def coverage_rows(
    points: Iterable[PointSpec],
    received: Mapping[str, int],
    *,
    window_start: datetime,
    now: datetime,
    monitored_since: datetime,
    group_by: GroupBy,
) -> list[CoverageRow]:
    """Coverage per group over the window ``[max(window_start, monitored_since), now)``.

    Per point: expected = ``floor(span / expected_interval)``; received = the point's count in
    `received` capped at expected (duplicates or faster-than-expected samples never push
    coverage above 1). Groups sum their points' expected and received counts. Cost O(points)
    with the expected count computed once per distinct interval.

    Args:
        points: Configured points.
        received: Usable (Good/Uncertain) samples per point key in the window [count].
        window_start: Start of the requested window (aware UTC).
        now: End of the window (aware UTC).
        monitored_since: When monitoring began (aware UTC); nothing is expected before it.
        group_by: ``site``, ``asset`` or ``point``.

    Returns:
        One row per group that has configured points, sorted by group key; coverage is
        received / expected in [0, 1], 1.0 when nothing was expected.
    """
    start = max(window_start, monitored_since)
    span_us = (now - start) // _MICROSECOND
    by_interval: dict[float, int] = {}  # expected samples per distinct interval
    sums: dict[str, list[int]] = {}
    for spec in points:
        interval = spec.expected_interval
        expected = by_interval.get(interval)
        if expected is None:
            expected = by_interval[interval] = _expected(interval, span_us)
        got = received.get(spec.key, 0)
        got = 0 if got < 0 else min(got, expected)
        if group_by == "site":
            group = spec.site
        elif group_by == "asset":
            group = f"{spec.site}/{spec.asset}"
        else:
            group = spec.key
        acc = sums.get(group)
        if acc is None:
            sums[group] = [expected, got]
        else:
            acc[0] += expected
            acc[1] += got
    return [
        CoverageRow(
            group=group,
            expected=exp,
            received=rec,
            coverage=(rec / exp) if exp else 1.0,
        )
        for group, (exp, rec) in sorted(sums.items())
    ]
