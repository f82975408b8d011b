"""What should exist: the configured sites, assets, points and devices, as the inventory sees them.

The runtime builds an `InventorySpec` from the gateway config; the inventory never reads config
files itself (it imports only the kernel, DESIGN.md §1).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """A configured site."""

    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class AssetSpec:
    """A configured asset of a site."""

    site: str
    id: str
    name: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class PointSpec:
    """A configured point.

    Attributes:
        site, asset, point: Ids; the key is ``site/asset/point``.
        device: Id of the device serving it.
        expected_interval: Seconds between expected samples (the poll interval) [s] (> 0).
        unit: UCUM-style unit code or None.
        source: Locator URI, e.g. ``modbus://127.0.0.1:502/1/hr/0``.
        name: Display name or None.
        report_by_exception: The point reports only on change (OPC UA subscription, MQTT);
            `Inventory.device_alive` keeps it fresh while its device proves the link alive,
            and `expected_interval` is then its maximum report interval (heartbeat).
        key: ``site/asset/point`` (derived, interned).
    """

    site: str
    asset: str
    point: str
    device: str
    expected_interval: float
    unit: str | None = None
    source: str = ""
    name: str | None = None
    report_by_exception: bool = False
    key: str = field(init=False, compare=False, repr=False)
    """The point key ``site/asset/point``; derived."""

    def __post_init__(self) -> None:
        # Built once and interned: the inventory, the runtime and the connectors hold the key
        # of every point; one shared string instead of a copy each (issue #8).
        object.__setattr__(self, "key", sys.intern(f"{self.site}/{self.asset}/{self.point}"))


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A configured device (protocol endpoint)."""

    id: str
    protocol: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class InventorySpec:
    """Everything configured, plus the gap rule.

    Attributes:
        gap_after: A point with no usable data for ``gap_after × expected_interval`` seconds
            opens a `stale` gap [factor, 1..100].
    """

    sites: tuple[SiteSpec, ...]
    assets: tuple[AssetSpec, ...]
    points: tuple[PointSpec, ...]
    devices: tuple[DeviceSpec, ...]
    gap_after: float = 2.5
    extra: dict[str, str] = field(default_factory=dict)
