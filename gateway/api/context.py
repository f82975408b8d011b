"""What the API needs from the running gateway: the `ApiContext` protocol.

The runtime implements it; tests implement it with a small dataclass. The API never reaches
into the runtime, the store or the connectors by any other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from prometheus_client import CollectorRegistry

    from inventory.inventory import Inventory


class ApiContext(Protocol):
    """The gateway as the API sees it.

    All methods are called on the event loop thread (route handlers are ``async def``), so they
    may read in-memory state that the runtime mutates on the same loop without locks.
    """

    @property
    def inventory(self) -> Inventory:
        """The live inventory (expected vs observed, gaps, coverage)."""

    @property
    def monitored_since(self) -> datetime:
        """Aware UTC time from which the gateway has been monitoring (coverage lower bound)."""

    def now(self) -> datetime:
        """Current aware UTC time."""

    async def usable_counts(self, since: datetime) -> dict[str, int]:
        """Good/Uncertain readings per point key ``site/asset/point`` since `since` [count].

        The runtime forwards to ``Store.count_usable``.
        """

    def health(self) -> dict[str, object]:
        """Liveness details (JSON-able: str, int, float, bool, None, datetime, lists, dicts)."""

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Readiness and its details (store ok, devices up/total, alarms)."""

    def metrics_registry(self) -> CollectorRegistry | None:
        """The Prometheus registry to expose at ``/metrics``, or None to disable it."""
