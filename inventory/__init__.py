"""Sites > assets > points: connectivity state, data gaps and coverage (DESIGN.md §4).

Imports only the kernel (`gateway.model`, `gateway.quality`, `gateway.clock`) and `inventory.*`.
"""

from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from inventory.views import (
    AssetView,
    CoverageRow,
    DeviceView,
    Gap,
    GapCause,
    PointView,
    SiteView,
    State,
)

__all__ = [
    "AssetSpec",
    "AssetView",
    "CoverageRow",
    "DeviceSpec",
    "DeviceView",
    "Gap",
    "GapCause",
    "Inventory",
    "InventorySpec",
    "PointSpec",
    "PointView",
    "SiteSpec",
    "SiteView",
    "State",
]
