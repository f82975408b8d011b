"""The sink contract: write one request body, or raise a classified `SinkError`.

A sink does no retrying, batching or buffering of its own: durability belongs to the store and
the forwarder (RELIABILITY M1), which decide from `SinkError.kind` what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ErrorKind(StrEnum):
    """What the forwarder does about a failed write (RELIABILITY R3-R5)."""

    RETRY = "retry"
    """Connection refused, timeout, 5xx, 429: retry the same batch after a backoff."""
    REJECT = "reject"
    """400/422: the server refused some points; bisect to find and dead-letter them."""
    TOO_LARGE = "too_large"
    """413: split the batch; a single line that is too large is dead-lettered."""
    AUTH = "auth"
    """401/403/404 (credentials, permissions, org or bucket): alarm, keep buffering, back off."""


@dataclass(slots=True)
class SinkError(Exception):
    """A write that did not end in a 2xx.

    Attributes:
        kind: What to do about it.
        code: Short label for metrics: the HTTP status (``"503"``) or ``"timeout"`` /
            ``"connection_error"``.
        message: Human-readable reason (the server's message, truncated); never holds secrets.
        status: HTTP status, or None when no response came.
        retry_after: The server's ``Retry-After`` [s], or None.
    """

    kind: ErrorKind
    code: str
    message: str
    status: int | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


def classify_status(status: int) -> ErrorKind:
    """Map a non-2xx HTTP status of a write to what the forwarder does.

    Args:
        status: HTTP status code.

    Returns:
        `ErrorKind.REJECT` for 400/422, `TOO_LARGE` for 413, `AUTH` for 401/403/404, else
        `RETRY` (429, 5xx and anything unexpected: never drop data on a status we do not know).
    """
    if status in (400, 422):
        return ErrorKind.REJECT
    if status == 413:
        return ErrorKind.TOO_LARGE
    if status in (401, 403, 404):
        return ErrorKind.AUTH
    return ErrorKind.RETRY


class Sink(Protocol):
    """Where the forwarder sends line-protocol request bodies."""

    @property
    def name(self) -> str:
        """The sink's configured name (slug)."""

    @property
    def target(self) -> str:
        """Where it writes, for status pages (URL without credentials, bucket)."""

    async def write(self, body: bytes) -> str:
        """Send one request body of newline-separated lines.

        Args:
            body: UTF-8 line protocol, ns precision.

        Returns:
            The status label of the 2xx, e.g. ``"204"``.

        Raises:
            SinkError: Anything but a 2xx (including timeouts and connection errors).
        """

    async def close(self) -> None:
        """Release connections; idempotent."""
