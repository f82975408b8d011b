"""The normalized model: Sample (what a connector yields) and Reading (what everyone else sees).

Kernel module: imports only ``gateway.quality``. See DESIGN.md §2.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.quality import Quality

Value = float | int | bool | str | None
"""A point value; None iff the quality is Bad."""


@dataclass(frozen=True, slots=True)
class Sample:
    """A decoded value from a connector, not yet in engineering units.

    Attributes:
        point_id: The point key ``site/asset/point`` the value belongs to.
        value: Decoded raw value; None iff ``quality`` is Bad.
        quality: OPC UA StatusCode (uint32).
        source_time: Device timestamp (aware UTC), or None when the device has none.
    """

    point_id: str
    value: Value
    quality: Quality
    source_time: datetime | None


@dataclass(frozen=True, slots=True)
class Reading:
    """A normalized reading: engineering units, quality, times and lineage.

    Attributes:
        site: Site id (slug).
        asset: Asset id (slug), unique within its site.
        point: Point id (slug), unique within its asset.
        value: Engineering value after scale/offset; None iff quality is Bad.
        unit: UCUM-style unit code ("Cel", "kPa", "A", "kW.h") or None.
        quality: OPC UA StatusCode (uint32).
        source_time: Device time, or gateway_time when the device has none (aware UTC).
        gateway_time: When the gateway acquired the value (aware UTC).
        source: Locator URI, e.g. ``modbus://127.0.0.1:5020/1/hr/0``.
    """

    site: str
    asset: str
    point: str
    value: Value
    unit: str | None
    quality: Quality
    source_time: datetime
    gateway_time: datetime
    source: str

    @property
    def key(self) -> str:
        """The point key ``site/asset/point``."""
        return f"{self.site}/{self.asset}/{self.point}"


def point_key(site: str, asset: str, point: str) -> str:
    """Join ids into the point key ``site/asset/point``."""
    return f"{site}/{asset}/{point}"
