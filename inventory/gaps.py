"""Pure helpers of gap detection: cause mapping, the deadline heap, state roll-ups, gap filters.

Nothing here does I/O or reads a clock; `inventory.inventory.Inventory` wires them together.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from datetime import datetime

from gateway.quality import Q, Quality
from inventory.views import Gap, GapCause, State

_CODE_MASK = 0xFFFF0000
"""StatusCode bits 16-31 (severity, sub-code); bits 0-15 are info bits and flags."""

_OFFLINE_CODES = frozenset({int(Q.BAD_NO_COMMUNICATION), int(Q.BAD_COMMUNICATION_ERROR)})
_SUBSCRIPTION_CODES = frozenset({int(Q.BAD_NO_SUBSCRIPTION), int(Q.BAD_SUBSCRIPTION_ID_INVALID)})


def cause_for_quality(code: Quality) -> GapCause:
    """Map the quality of a Bad reading to the cause of the gap it opens.

    Args:
        code: OPC UA StatusCode (uint32) of a Bad reading; the info bits (0-15) are ignored.

    Returns:
        `GapCause.TIMEOUT` for BadTimeout (0x800A0000); `GapCause.DEVICE_OFFLINE` for
        BadNoCommunication (0x80310000) and BadCommunicationError (0x80050000);
        `GapCause.SUBSCRIPTION_LOST` for BadNoSubscription (0x80790000) and
        BadSubscriptionIdInvalid (0x80280000) (OPC UA Part 4 §7.34: the runtime marks report-
        by-exception points so when their session/subscription is lost);
        `GapCause.BAD_QUALITY` for any other code.
    """
    masked = code & _CODE_MASK
    if masked == Q.BAD_TIMEOUT:
        return GapCause.TIMEOUT
    if masked in _OFFLINE_CODES:
        return GapCause.DEVICE_OFFLINE
    if masked in _SUBSCRIPTION_CODES:
        return GapCause.SUBSCRIPTION_LOST
    return GapCause.BAD_QUALITY


def rollup(states: Iterable[State]) -> State:
    """Roll member states up into the state of their parent (asset over points, site over assets).

    Args:
        states: Member states; may be empty.

    Returns:
        UNKNOWN when every member is unknown (or there are none); OFFLINE when every member is
        offline or unknown and at least one is offline; ONLINE when every member is online;
        DEGRADED otherwise.
    """
    seen: set[State] = set(states)
    if not seen or seen == {State.UNKNOWN}:
        return State.UNKNOWN
    if seen <= {State.OFFLINE, State.UNKNOWN}:
        return State.OFFLINE
    if seen == {State.ONLINE}:
        return State.ONLINE
    return State.DEGRADED


def rollup_counts(counts: Mapping[State, int]) -> State:
    """`rollup` from member counts per state instead of the member states themselves: O(1).

    Args:
        counts: Members per state [count]; every `State` is a key.

    Returns:
        The same state as ``rollup`` over the members.
    """
    online = counts[State.ONLINE]
    degraded = counts[State.DEGRADED]
    offline = counts[State.OFFLINE]
    if not (online or degraded or offline):
        return State.UNKNOWN
    if not (online or degraded):
        return State.OFFLINE
    if not (degraded or offline or counts[State.UNKNOWN]):
        return State.ONLINE
    return State.DEGRADED


def overlaps(gap: Gap, since: datetime | None, until: datetime | None) -> bool:
    """True when the gap intersects the closed interval [since, until] (None = unbounded).

    An open gap (``end is None``) extends to +infinity.
    """
    if until is not None and gap.start > until:
        return False
    return not (since is not None and gap.end is not None and gap.end < since)


class DeadlineHeap:
    """One-shot deadlines for many items: a heap of time buckets with lazy invalidation.

    Each item (an int index) has at most one current deadline, kept in the bucket
    ``floor(deadline / resolution)``. A heap orders the bucket numbers. Moving a deadline (every
    reading does) is O(1) amortised: the item moves to its new bucket, and a bucket that runs
    empty stays in the heap until it surfaces, where it is dropped (lazy invalidation). So
    `pop_due` only ever looks at buckets that begin before ``now`` and at the items in them,
    whose deadlines are all due or within one bucket of due: its cost is independent of the
    number of healthy points (their deadlines lie in the future). The cost per call is at most
    ``(elapsed / resolution + 1)`` bucket pops plus the due items plus the items of the one
    bucket that straddles ``now``.

    Deadlines are POSIX seconds (float). A deadline fires when ``now > deadline``.

    Attributes:
        resolution: Bucket width [s] (> 0); affects bookkeeping only, never when a deadline
            fires.
        examined: Heap entries popped plus items looked at, over the object's life [count].
        last_examined: The same for the latest `pop_due` call [count] (the cost metric).
    """

    __slots__ = (
        "_bucket",
        "_buckets",
        "_current",
        "_heap",
        "examined",
        "last_examined",
        "resolution",
    )

    def __init__(self, size: int, *, resolution: float = 0.1) -> None:
        """Create an empty structure for items ``0 .. size-1``.

        Args:
            size: Number of items [count, >= 0].
            resolution: Bucket width [s] (> 0).

        Raises:
            ValueError: `resolution` is not positive.
        """
        if not resolution > 0:
            msg = f"resolution must be > 0, got {resolution!r}"
            raise ValueError(msg)
        self.resolution = resolution
        self._heap: list[int] = []
        self._buckets: dict[int, set[int]] = {}
        self._current: list[float | None] = [None] * size
        self._bucket: list[int | None] = [None] * size
        self.examined = 0
        self.last_examined = 0

    def __len__(self) -> int:
        """Buckets in the heap, including emptied ones not yet dropped [count]."""
        return len(self._heap)

    def extend(self, count: int) -> int:
        """Add `count` items without deadlines; returns the index of the first new one."""
        first = len(self._current)
        self._current.extend([None] * count)
        self._bucket.extend([None] * count)
        return first

    def get(self, item: int) -> float | None:
        """The item's current deadline [s since epoch], or None."""
        return self._current[item]

    def set(self, item: int, deadline: float) -> None:
        """Set (or move) the item's deadline.

        Args:
            item: Item index.
            deadline: POSIX time [s].
        """
        self._current[item] = deadline
        bucket = int(deadline // self.resolution)
        old = self._bucket[item]
        if old == bucket:
            return
        buckets = self._buckets
        if old is not None:
            members = buckets.get(old)
            if members is not None:
                members.discard(item)
        members = buckets.get(bucket)
        if members is None:
            members = buckets[bucket] = set()
            heapq.heappush(self._heap, bucket)
        members.add(item)
        self._bucket[item] = bucket

    def clear(self, item: int) -> None:
        """Remove the item's deadline."""
        self._current[item] = None
        old = self._bucket[item]
        if old is not None:
            members = self._buckets.get(old)
            if members is not None:
                members.discard(item)
            self._bucket[item] = None

    def peek_due(self, now: float) -> list[int]:
        """Items whose deadline is before `now`, left in place (a read-only `pop_due`).

        Walks only the heap entries of buckets that begin at or before `now` (a heap's
        children are never smaller than their parent, so a subtree whose root is later is
        skipped whole): the cost is those buckets and their items, independent of the items
        whose deadlines lie further ahead. Buckets emptied since they were pushed (every
        reading moves its point's deadline out of its bucket) are dropped from the top of the
        heap first, as `pop_due` would, so while nothing is due the call is O(1) however often
        it runs (the API asks before every answer, `Inventory.summary_version`). No deadline
        changes.

        Args:
            now: POSIX time [s].

        Returns:
            Item indices, in no particular order.
        """
        heap = self._heap
        buckets = self._buckets
        while heap and not buckets.get(heap[0]):
            buckets.pop(heapq.heappop(heap), None)  # emptied since pushed (lazy invalidation)
        if not heap:
            return []
        limit = now // self.resolution
        if heap[0] > limit:
            return []
        current = self._current
        size = len(heap)
        out: list[int] = []
        seen: set[int] = set()
        stack = [0]
        while stack:
            i = stack.pop()
            bucket = heap[i]
            if bucket > limit:
                continue
            if bucket not in seen:
                seen.add(bucket)
                for item in buckets.get(bucket, ()):
                    deadline = current[item]
                    if deadline is not None and deadline < now:
                        out.append(item)
            child = 2 * i + 1
            if child < size:
                stack.append(child)
                if child + 1 < size:
                    stack.append(child + 1)
        return out

    def pop_due(self, now: float) -> list[tuple[int, float]]:
        """Remove and return every item whose deadline is before `now`.

        A returned item has no deadline afterwards until `set` is called again.

        Args:
            now: POSIX time [s].

        Returns:
            ``(item, deadline)`` pairs ordered by deadline.
        """
        heap = self._heap
        buckets = self._buckets
        current = self._current
        bucket_of = self._bucket
        width = self.resolution
        due: list[tuple[int, float]] = []
        straddling: list[tuple[int, set[int]]] = []
        examined = 0
        while heap and heap[0] * width < now:
            bucket = heapq.heappop(heap)
            examined += 1
            members = buckets.pop(bucket, None)
            if not members:
                continue  # emptied since it was pushed
            keep: set[int] = set()
            for item in members:
                examined += 1
                deadline = current[item]
                if deadline is None:
                    bucket_of[item] = None
                elif deadline < now:
                    current[item] = None
                    bucket_of[item] = None
                    due.append((item, deadline))
                else:
                    keep.add(item)  # same bucket, not due yet
            if keep:
                straddling.append((bucket, keep))
        for bucket, keep in straddling:
            buckets[bucket] = keep
            heapq.heappush(heap, bucket)
        due.sort(key=lambda pair: pair[1])
        self.examined += examined
        self.last_examined = examined
        return due
