"""Live fan-out of committed readings to stream subscribers (the API's Server-Sent Events).

`StreamHub.publish` is registered with the runtime (``runtime.add_listener``) while at least one
subscriber exists and runs in the writer task after every commit, so it must never block: it
appends the matching readings of each subscriber to that subscriber's bounded buffer and
returns. A subscriber whose buffer would overflow (a consumer slower than the data) is dropped
at once — its buffer is freed, it is told why, and `StreamStats.dropped` counts it — so a slow
consumer costs neither the gateway's latency nor unbounded memory.

Everything here runs on the event loop thread; nothing is locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.model import Reading

__all__ = [
    "ListenerSource",
    "StreamHub",
    "StreamStats",
    "StreamUnavailableError",
    "SubscriberDroppedError",
    "Subscription",
]

DEFAULT_BUFFER = 10_000
"""Readings a subscriber may have pending before it is dropped [count]."""
DEFAULT_MAX_SUBSCRIBERS = 100
"""Concurrent subscribers at most [count]."""
_MATCH_CACHE_MAX = 200_000
"""Point keys whose glob match a subscriber remembers [count]."""

Listener = Callable[[Sequence[Reading]], None]


class ListenerSource(Protocol):
    """Where committed readings come from (the runtime)."""

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(readings)` after every commit."""

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling `callback`."""


class StreamUnavailableError(RuntimeError):
    """No new subscription now: the hub serves its maximum, or it is closed."""


class SubscriberDroppedError(RuntimeError):
    """The subscriber fell behind by more than its buffer and was dropped."""


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Hub figures (exposed on ``/metrics``).

    Attributes:
        subscribers: Current subscribers [count].
        subscribed: Subscriptions since start [count].
        dropped: Subscribers dropped as too slow since start [count].
        published: Readings offered to the hub since start [count].
        delivered: Readings handed to subscribers since start [count].
    """

    subscribers: int
    subscribed: int
    dropped: int
    published: int
    delivered: int


class Subscription:
    """One consumer's filtered, bounded view of the live readings.

    Get one from `StreamHub.subscribe`; read with `next_batch`; always `close` (or use
    ``with``) so the hub forgets it.
    """

    def __init__(self, hub: StreamHub, patterns: tuple[str, ...], capacity: int) -> None:
        self.patterns = patterns
        self.capacity = capacity
        self.dropped = False
        self.delivered = 0
        self._hub = hub
        self._all = "*" in patterns
        self._matches: dict[str, bool] = {}
        self._pending: deque[Reading] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def matches(self, key: str) -> bool:
        """True when the point key ``site/asset/point`` matches one of the globs."""
        if self._all:
            return True
        hit = self._matches.get(key)
        if hit is None:
            hit = any(fnmatch.fnmatchcase(key, p) for p in self.patterns)
            if len(self._matches) < _MATCH_CACHE_MAX:
                self._matches[key] = hit
        return hit

    @property
    def pending(self) -> int:
        """Readings waiting to be taken [count]."""
        return len(self._pending)

    def _offer(self, readings: Sequence[Reading]) -> bool:
        """Queue the matching readings; False when they do not fit (the caller drops us)."""
        if self._all:
            matched: Sequence[Reading] = readings
        else:
            matched = [r for r in readings if self.matches(f"{r.site}/{r.asset}/{r.point}")]
        if not matched:
            return True
        if len(self._pending) + len(matched) > self.capacity:
            return False
        self._pending.extend(matched)
        self._wake.set()
        return True

    def _drop(self) -> None:
        self.dropped = True
        self._pending.clear()
        self._wake.set()

    @property
    def closed(self) -> bool:
        """True once closed (by the consumer, or by the hub when the API shuts down)."""
        return self._closed

    async def next_batch(self, wait: float | None = None) -> list[Reading] | None:
        """Every pending reading, waiting up to `wait` seconds for at least one.

        Args:
            wait: Longest wait [s]; None waits forever.

        Returns:
            The pending readings in commit order; empty when the wait timed out; None once the
            subscription is closed (end of stream).

        Raises:
            SubscriberDroppedError: The subscriber was dropped as too slow.
        """
        if not self._pending and not self.dropped and not self._closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        if self.dropped:
            raise SubscriberDroppedError(
                f"fell behind by more than {self.capacity} readings and was dropped"
            )
        if self._closed:
            return None
        out = list(self._pending)
        self._pending.clear()
        self.delivered += len(out)
        self._hub._delivered += len(out)
        return out

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._wake.set()
            self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamHub:
    """Fans committed readings out to subscribers, each with its own bounded buffer.

    Args:
        source: The runtime; the hub listens to it only while it has subscribers. None for a
            hub fed by calling `publish` directly (tests).
        buffer: Readings a subscriber may have pending before it is dropped [count, >= 1].
        max_subscribers: Concurrent subscribers at most [count, >= 1].
    """

    def __init__(
        self,
        source: ListenerSource | None,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
    ) -> None:
        self._source = source
        self.buffer = max(1, buffer)
        self.max_subscribers = max(1, max_subscribers)
        self._subs: list[Subscription] = []
        self._listening = False
        self._closed = False
        self._subscribed = 0
        self._dropped = 0
        self._published = 0
        self._delivered = 0

    def subscribe(self, patterns: tuple[str, ...]) -> Subscription:
        """Start receiving readings whose key matches any glob in `patterns`.

        Raises:
            StreamUnavailableError: `max_subscribers` are already subscribed, or the hub is
                closed.
        """
        if self._closed:
            msg = "the gateway is shutting down"
            raise StreamUnavailableError(msg)
        if len(self._subs) >= self.max_subscribers:
            msg = f"at most {self.max_subscribers} live streams at a time"
            raise StreamUnavailableError(msg)
        sub = Subscription(self, patterns, self.buffer)
        self._subs.append(sub)
        self._subscribed += 1
        if not self._listening and self._source is not None:
            self._source.add_listener(self.publish)
            self._listening = True
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        if not self._subs and self._listening and self._source is not None:
            self._source.remove_listener(self.publish)
            self._listening = False

    def publish(self, readings: Sequence[Reading]) -> None:
        """Offer committed readings to every subscriber; never blocks, never raises."""
        self._published += len(readings)
        for sub in list(self._subs):
            if not sub._offer(readings):
                sub._drop()
                self._dropped += 1
                self._remove(sub)

    def stats(self) -> StreamStats:
        """Current figures."""
        return StreamStats(
            subscribers=len(self._subs),
            subscribed=self._subscribed,
            dropped=self._dropped,
            published=self._published,
            delivered=self._delivered,
        )

    def close(self) -> None:
        """End every subscription and refuse new ones (the API is shutting down)."""
        self._closed = True
        for sub in list(self._subs):
            sub.close()
