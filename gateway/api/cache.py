"""Reuse of encoded inventory views: versioned bodies, per-item fragments, adaptive reuse.

The site and asset lists are served from encodings kept in `ViewCache` and rebuilt only when
the inventory says something in them changed (`inventory.Inventory.summary_version`):
- `ViewCache.versioned` keeps one encoded body per key (e.g. ``assets?site=north``) with the
  version it was built at, and returns it while the version is unchanged;
- `ViewCache.fragment` keeps the encoded JSON of each item (one asset, one site) for as long as
  the inventory hands out the very same view object, so a rebuilt list re-encodes only the
  items that changed and joins the rest (`join_json`).
So a request costs O(1) while nothing changed, and O(items) dictionary look-ups plus the changed
items' encoding after a change, whatever the number of points.

`ViewCache.get`/`derive` keep the older adaptive reuse for views without a version (devices): a
view that cost ``c`` seconds to build is reused for ``min(max_age, factor × c)`` seconds, never
when it is cheaper than ``min_cost``, so small answers are always fresh.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
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
"""Derived values and versioned bodies kept at most (one per filter combination) [count]."""
MAX_FRAGMENTS = 1_000_000
"""Encoded items kept at most (one per site or asset) [count]."""


def join_json(fragments: Iterable[bytes]) -> bytes:
    """A JSON array from already encoded JSON values (no whitespace, like pydantic's output)."""
    return b"[" + b",".join(fragments) + b"]"


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
        self._versioned: dict[str, tuple[int, bytes]] = {}
        self._fragments: dict[Hashable, tuple[object, bytes]] = {}
        self.hits = 0
        self.builds = 0
        self.fragment_builds = 0

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

    def versioned(self, key: str, version: int | None, build: Callable[[], bytes]) -> bytes:
        """The body built for `key` at `version`, or a fresh one.

        Args:
            key: What is encoded, including its filters, e.g. ``"assets?site=north"``.
            version: The source's version (`inventory.Inventory.summary_version`); None means
                the answer depends on the moment: built every time, never kept.
            build: Encodes the body.

        Returns:
            The encoded body.
        """
        if version is not None:
            entry = self._versioned.get(key)
            if entry is not None and entry[0] == version:
                self.hits += 1
                return entry[1]
        body = build()
        self.builds += 1
        if version is not None:
            if len(self._versioned) >= MAX_DERIVED:
                self._versioned.clear()
            self._versioned[key] = (version, body)
        return body

    def fragment(self, key: Hashable, view: object, encode: Callable[[], bytes]) -> bytes:
        """The encoding of one item, reused while `view` is the very same object.

        Args:
            key: The item, e.g. ``("asset", "north", "boiler-1")``.
            view: The item's view as the source handed it out (identity is compared).
            encode: Encodes the item.

        Returns:
            The encoded item.
        """
        entry = self._fragments.get(key)
        if entry is not None and entry[0] is view:
            return entry[1]
        body = encode()
        self.fragment_builds += 1
        if len(self._fragments) >= MAX_FRAGMENTS:
            self._fragments.clear()
        self._fragments[key] = (view, body)
        return body

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._derived.clear()
        self._versioned.clear()
        self._fragments.clear()
