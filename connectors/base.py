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


class WriteError(ConnectorError):
    """A write-back that did not succeed (RELIABILITY M9-M11, R17, R26).

    Attributes:
        kind: ``"encode"`` (the raw value does not fit the point's type or register width;
            nothing was sent), ``"device"`` (the device answered with an error: Modbus exception
            or OPC UA Bad StatusCode, see ``code``), ``"timeout"`` (no answer: the outcome is
            unknown and the write is never resent automatically), ``"offline"`` (no open link;
            nothing was sent), ``"unsupported"`` (the point's area or node cannot be written).
        code: The protocol's code when there is one: ``"exception_02"`` (Modbus), or the OPC UA
            StatusCode name such as ``"BadNotWritable"``; else None.
        message: Human-readable reason; never holds secrets.
        read_back: The point as read after a failed or unanswered write, when the connector
            could read it (helps an operator judge an "outcome unknown"); else None.
    """

    def __init__(
        self, kind: str, message: str, code: str | None = None, *, read_back: Sample | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.read_back = read_back


@dataclass(slots=True)
class WriteResult:
    """What a connector did for one write-back.

    Attributes:
        encoded: What went (or, for a dry run, would go) on the wire, human-readable, e.g.
            ``"FC16 unit_id=1 holding 10..11 = [0x4148, 0x0000]"`` or
            ``"Write ns=2;s=Setpoint Float 12.5"``.
        registers: Modbus: the encoded register/coil words; None for other protocols.
        confirmed: The point read back after the write (raw, not yet scaled), or None for a
            dry run.
    """

    encoded: str
    registers: list[int] | None = None
    confirmed: Sample | None = None


class WritableConnector(Protocol):
    """A connector that can write one configured point (Modbus FC 5/6/15/16, OPC UA Write).

    The write shares the device's link and is serialized with its polling.
    """

    async def write(self, point_id: str, raw: object, *, dry_run: bool = False) -> WriteResult:
        """Encode ``raw`` for the point ``point_id`` (``site/asset/point``), write, read back.

        ``raw`` is already converted from engineering units by the gateway (inverse scale/offset).

        Raises:
            WriteError: See its ``kind``; ``"encode"`` and ``"offline"`` guarantee nothing was
                sent.
        """
        ...
