"""What the API needs from the running gateway: the `ApiContext` protocol.

The runtime implements it; tests implement it with a small dataclass. The API never reaches
into the runtime, the store or the connectors by any other way.

Optional members (looked up with ``getattr``, so older contexts keep working):
``sink_status() -> list[dict[str, object]]`` — state of the forwarding sinks (``/api/v1/sinks``);
``unmapped() -> list[dict[str, object]]`` — sources matching no point (``/api/v1/unmapped``);
``cfg: GatewayConfig`` — the config: ``api.auth`` tokens and roles, CORS, body limit,
``writes`` and the points (without it: no tokens, open reads, writes disabled);
``devices: Mapping[str, run]`` — per device id an object with ``connector`` (the live connector,
whose ``write(point_id, raw, dry_run=)`` is used for write-back, or None) and ``link_up`` (bool),
as `gateway.runtime.DeviceRun`. The audit log lives in the file at ``store.path``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from prometheus_client import CollectorRegistry

    from gateway.model import Reading
    from gateway.store import Store
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

    @property
    def store(self) -> Store | None:
        """The local store (readings history for ``/api/v1/readings``), or None while closed."""

    def now(self) -> datetime:
        """Current aware UTC time."""

    def add_listener(self, callback: Callable[[Sequence[Reading]], None]) -> None:
        """Call ``callback(readings)`` on the event loop after every commit (live stream).

        The callback never blocks and never raises.
        """

    def remove_listener(self, callback: Callable[[Sequence[Reading]], None]) -> None:
        """Stop calling `callback`; unknown callbacks are ignored."""

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
