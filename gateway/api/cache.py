"""Adaptive reuse of expensive inventory views under load.

Building the views of every site or asset costs O(points) on the event loop (≈0.5 s for 100k
points, measured in ``bench/api_latency.py``). `ViewCache` recomputes a view on every request
while that is cheap, and reuses the last result for a short time when it is not: an entry that
cost ``c`` seconds to build is reused for ``min(max_age, factor × c)`` seconds. So a small plant
always gets fresh answers, and a large one spends at most about ``1 / factor`` of the loop on
these views however many clients poll, at the price of answers up to that age.
`ViewCache.derive` also keeps the encoded JSON of each filtered answer for as long as its view
is reused, so a polled list is serialized once per view, not once per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from gateway.clock import monotonic

T = TypeVar("T")

MIN_COST_S = 0.01
"""Views cheaper than this are never reused [s]."""
FACTOR = 10.0
"""An expensive view is reused for this many times its build cost."""
MAX_AGE_S = 5.0
"""Longest reuse of a view [s]."""
MAX_DERIVED = 1024
"""Derived values kept at most (one per filter combination) [count]."""


@dataclass(slots=True)
class _Entry:
    value: Any
    built: float
    cost: float


class ViewCache:
    """Memoizes view builders by key with a cost-proportional lifetime.

    Args:
        min_cost: Build cost below which a result is not reused [s].
        factor: Reuse an expensive result for ``factor × cost`` seconds.
        max_age: Reuse a result for at most this long [s].
        clock: Monotonic clock [s] (tests).
    """

    def __init__(
        self,
        *,
        min_cost: float = MIN_COST_S,
        factor: float = FACTOR,
        max_age: float = MAX_AGE_S,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.min_cost = min_cost
        self.factor = factor
        self.max_age = max_age
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._derived: dict[str, tuple[object, Any]] = {}
        self.hits = 0
        self.builds = 0

    def get(self, key: str, build: Callable[[], T]) -> T:
        """The cached result of `build` for `key`, or a fresh one.

        Args:
            key: What is built, e.g. ``"assets"``.
            build: Builds the view (runs on the event loop).

        Returns:
            The view.
        """
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry.cost >= self.min_cost:
            ttl = min(self.max_age, self.factor * entry.cost)
            if now - entry.built < ttl:
                self.hits += 1
                return cast("T", entry.value)
        value = build()
        done = self._clock()
        self._entries[key] = _Entry(value, done, done - now)
        self.builds += 1
        return value

    def derive(self, key: str, base: object, build: Callable[[], T]) -> T:
        """A value computed from `base`, reused while `base` is the very same object.

        E.g. the encoded body of a filtered view: kept for as long as `get` returns that view.

        Args:
            key: What is derived, e.g. ``"assets?site=north"``.
            base: The object it is derived from.
            build: Computes the value.

        Returns:
            The derived value.
        """
        entry = self._derived.get(key)
        if entry is not None and entry[0] is base:
            return cast("T", entry[1])
        value = build()
        if len(self._derived) >= MAX_DERIVED:
            self._derived.clear()
        self._derived[key] = (base, value)
        return value

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._derived.clear()
