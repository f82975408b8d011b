"""Fault schedule: when each fault begins and ends, and which faults are active now.

Times in a profile are seconds after the simulator's start (the moment every device listens),
on the monotonic clock. A fault with ``every`` repeats with that period, forever.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from simulator.config import ExceptionFault, Fault, FrozenFault, LatencyFault, OfflineFault

#: Identifies one fault of one device: (device index, fault index in the device's list).
FaultKey = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Transition:
    """One scheduled change: a fault occurrence begins or ends.

    Attributes:
        at: seconds after the simulator start.
        begin: True when the occurrence begins, False when it ends.
        key: which fault.
        n: occurrence number (0 for the first).
    """

    at: float
    begin: bool
    key: FaultKey
    n: int


def transitions(faults: dict[FaultKey, Fault]) -> Iterator[Transition]:
    """Yield every begin/end of every fault in time order (endless if a fault repeats).

    At equal times ends come before begins, so back-to-back occurrences never overlap.

    Args:
        faults: the faults by key.

    Yields:
        Transitions ordered by time.
    """
    heap: list[tuple[float, int, FaultKey, int]] = [
        (f.start, 1, key, 0) for key, f in faults.items()
    ]
    heapq.heapify(heap)
    while heap:
        at, kind, key, n = heapq.heappop(heap)
        fault = faults[key]
        if kind == 1:
            heapq.heappush(heap, (at + fault.duration, 0, key, n))
        elif fault.every is not None:
            heapq.heappush(heap, (fault.start + (n + 1) * fault.every, 1, key, n + 1))
        yield Transition(at=at, begin=kind == 1, key=key, n=n)


@dataclass(slots=True)
class ActiveFault:
    """An occurrence in progress.

    Attributes:
        fault: its configuration.
        started: wall-clock instant (aware UTC) it was applied.
        frozen_epoch: for ``frozen``, the epoch seconds the values stand still at.
    """

    fault: Fault
    started: datetime
    frozen_epoch: float = 0.0


@dataclass(slots=True)
class ActiveFaults:
    """The faults of one device that are in progress, and what they imply for a request."""

    active: dict[int, ActiveFault] = field(default_factory=dict)

    def offline_mode(self) -> str | None:
        """``"close"`` or ``"silent"`` while an offline fault is active (close wins), else None."""
        modes = {a.fault.mode for a in self.active.values() if isinstance(a.fault, OfflineFault)}
        if "close" in modes:
            return "close"
        return "silent" if modes else None

    def delay(self) -> float:
        """Response delay [s]: the largest active latency, 0 when none."""
        return max(
            (a.fault.delay for a in self.active.values() if isinstance(a.fault, LatencyFault)),
            default=0.0,
        )

    def exception_code(self, spans: list[tuple[str, int, int]]) -> int | None:
        """The exception to answer for a request touching ``spans``, or None.

        Args:
            spans: (table, first address, last address) touched by the request; empty for
                requests that address no table (they match only whole-device faults).

        Returns:
            The code of the first matching active exception fault.
        """
        for a in self.active.values():
            f = a.fault
            if not isinstance(f, ExceptionFault):
                continue
            whole = f.table is None and f.from_ == 0 and f.to == 65535
            if whole:
                return f.code
            for table, lo, hi in spans:
                if (f.table is None or f.table == table) and lo <= f.to and hi >= f.from_:
                    return f.code
        return None

    def frozen_epoch(self) -> float | None:
        """Epoch seconds the values are frozen at (earliest active freeze), or None."""
        frozen = [a.frozen_epoch for a in self.active.values() if isinstance(a.fault, FrozenFault)]
        return min(frozen) if frozen else None


async def run_schedule(
    faults: dict[FaultKey, Fault],
    t0: float,
    apply: Callable[[Transition], Awaitable[None]],
) -> None:
    """Apply every transition at its time, until cancelled.

    Args:
        faults: the faults by key.
        t0: ``time.monotonic()`` of the simulator start.
        apply: called for each transition, in order; awaited before the next one.
    """
    for tr in transitions(faults):
        delay = t0 + tr.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await apply(tr)
