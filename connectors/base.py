"""The connector contract shared by every protocol (DESIGN.md §3).

A connector is an async context manager that opens its link (raising `ConnectError`) and offers
`samples()`, an endless async iterator of sample batches that raises `LinkLost` when the link
drops. A per-point failure is a Bad sample, never an exception. Connectors never sleep on errors
and never reconnect: only the runtime reconnects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from gateway.model import Sample


class ConnectorError(Exception):
    """Base of the errors a connector raises to the runtime."""


class ConnectError(ConnectorError):
    """Opening the link failed (refused, unreachable, timed out); the runtime retries."""


class LinkLost(ConnectorError):
    """An open link dropped; the runtime marks the device's points Bad and reconnects."""


@dataclass(slots=True)
class ConnectorStats:
    """Counters a connector keeps for the inventory and metrics.

    Attributes:
        polls: Poll cycles completed.
        overruns: Poll cycles skipped because the previous one was still running.
        requests: Protocol requests sent.
        errors: Protocol errors by kind (``timeout``, ``exception_02``, ``decode``...).
        last_latency_s: Duration of the last poll cycle [s].
    """

    polls: int = 0
    overruns: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_latency_s: float | None = None


class Connector(Protocol):
    """What the runtime needs from a protocol connector."""

    device_id: str
    stats: ConnectorStats

    async def __aenter__(self) -> Self:
        """Open the link. Raises ConnectError."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the link; never raises."""
        ...

    def samples(self) -> AsyncIterator[list[Sample]]:
        """Yield one batch of samples per poll cycle, forever. Raises LinkLost."""
        ...

    def point_sources(self) -> dict[str, str]:
        """Map point key -> source locator URI."""
        ...
