"""Pure helpers of gap detection: cause mapping, the deadline heap, state roll-ups, gap filters.

Nothing here does I/O or reads a clock; `inventory.inventory.Inventory` wires them together.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from datetime import datetime

from gateway.quality import Q, Quality
from inventory.views import Gap, GapCause, State

_CODE_MASK = 0xFFFF0000
"""StatusCode bits 16-31 (severity, sub-code); bits 0-15 are info bits and flags."""

_OFFLINE_CODES = frozenset({int(Q.BAD_NO_COMMUNICATION), int(Q.BAD_COMMUNICATION_ERROR)})


def cause_for_quality(code: Quality) -> GapCause:
    """Map the quality of a Bad reading to the cause of the gap it opens.

    Args:
        code: OPC UA StatusCode (uint32) of a Bad reading; the info bits (0-15) are ignored.

    Returns:
        `GapCause.TIMEOUT` for BadTimeout (0x800A0000); `GapCause.DEVICE_OFFLINE` for
        BadNoCommunication (0x80310000) and BadCommunicationError (0x80050000);
        `GapCause.BAD_QUALITY` for any other code.
    """
    masked = code & _CODE_MASK
    if masked == Q.BAD_TIMEOUT:
        return GapCause.TIMEOUT
    if masked in _OFFLINE_CODES:
        return GapCause.DEVICE_OFFLINE
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


def overlaps(gap: Gap, since: datetime | None, until: datetime | None) -> bool:
    """True when the gap intersects the closed interval [since, until] (None = unbounded).

    An open gap (``end is None``) extends to +infinity.
    """
    if until is not None and gap.start > until:
        return False
    return not (since is not None and gap.end is not None and gap.end < since)


class DeadlineHeap:
    """One-shot deadlines for many items, with lazy invalidation.

    Each item (an int index) has at most one *current* deadline. Moving a deadline later is an
    O(1) assignment: the queued heap entry stays where it is and is re-queued with the current
    deadline only when it reaches the top. Moving it earlier pushes a new entry; the old one is
    discarded when it surfaces. Hence `pop_due` costs O((d + r) log n), where d is the number of
    deadlines that fired and r the number of entries re-queued because their item was refreshed
    since they were queued; items whose deadline is in the future are never touched. An item
    refreshed every interval is re-queued at most once per ``gap_after × interval``.

    Deadlines are POSIX seconds (float). A deadline fires when ``now > deadline``.

    Attributes:
        examined: Heap entries popped so far, over the object's life [count] (for tests/metrics).
        last_examined: Entries popped by the latest `pop_due` call [count].
    """

    __slots__ = ("_current", "_heap", "_queued", "examined", "last_examined")

    def __init__(self, size: int) -> None:
        """Create an empty heap for items ``0 .. size-1``.

        Args:
            size: Number of items [count, >= 0].
        """
        self._heap: list[tuple[float, int]] = []
        self._current: list[float | None] = [None] * size
        self._queued: list[float | None] = [None] * size
        self.examined = 0
        self.last_examined = 0

    def __len__(self) -> int:
        """Entries in the heap, including invalidated ones [count]."""
        return len(self._heap)

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
        queued = self._queued[item]
        if queued is None or deadline < queued:
            self._queued[item] = deadline
            heapq.heappush(self._heap, (deadline, item))

    def clear(self, item: int) -> None:
        """Remove the item's deadline (its queued entry is dropped lazily)."""
        self._current[item] = None

    def pop_due(self, now: float) -> Iterator[tuple[int, float]]:
        """Yield ``(item, deadline)`` for every item whose deadline is before `now`.

        A fired item has no deadline afterwards until `set` is called again. Items are yielded in
        deadline order. The generator must be exhausted for `last_examined` to be final.

        Args:
            now: POSIX time [s].

        Yields:
            Item index and the deadline that fired [s].
        """
        heap = self._heap
        current = self._current
        queued = self._queued
        examined = 0
        self.last_examined = 0
        try:
            while heap and heap[0][0] < now:
                deadline, item = heapq.heappop(heap)
                examined += 1
                if queued[item] != deadline:
                    continue  # superseded by an earlier entry of the same item
                queued[item] = None
                cur = current[item]
                if cur is None:
                    continue
                if cur >= now:
                    queued[item] = cur  # refreshed since it was queued: re-queue, not due
                    heapq.heappush(heap, (cur, item))
                    continue
                current[item] = None
                yield item, cur
        finally:
            self.examined += examined
            self.last_examined = examined
