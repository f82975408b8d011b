"""Clocks: aware-UTC wall time for timestamps, monotonic time for intervals.

Kernel module: imports nothing else from the project.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    """Current wall-clock time as an aware UTC datetime."""
    return datetime.now(UTC)


def monotonic() -> float:
    """Monotonic seconds, for schedules and durations (never for timestamps)."""
    return time.monotonic()


def to_rfc3339(ts: datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 UTC with microseconds.

    Example: ``2026-01-02T03:04:05.123456Z``. None passes through.
    """
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_epoch_ns(ns: int) -> datetime:
    """Aware UTC datetime from integer nanoseconds since the Unix epoch (microsecond precision)."""
    return datetime.fromtimestamp(ns / 1e9, UTC)


def to_epoch_ns(ts: datetime) -> int:
    """Integer nanoseconds since the Unix epoch of an aware datetime (microsecond precision)."""
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
