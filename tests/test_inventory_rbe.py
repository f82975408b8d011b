"""Report-by-exception points: "no change" is not "no data" while keep-alives arrive (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.model import Reading
from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _inventory() -> Inventory:
    spec = InventorySpec(
        sites=(SiteSpec("s"),),
        assets=(AssetSpec("s", "a"),),
        points=(
            PointSpec("s", "a", "rbe", "dev", 1.0, report_by_exception=True),
            PointSpec("s", "a", "polled", "dev", 1.0),
        ),
        devices=(DeviceSpec("dev", "opcua", "opc.tcp://h:4840"),),
        gap_after=2.5,
    )
    inv = Inventory(spec, now=T0)
    inv.link_up("dev", T0)
    return inv


def _reading(point: str, t: datetime) -> Reading:
    return Reading("s", "a", point, 1.0, None, 0, t, t, "x")


def test_keepalives_keep_a_silent_rbe_point_out_of_gaps() -> None:
    inv = _inventory()
    inv.observe([_reading("rbe", T0), _reading("polled", T0)])
    opened = []
    for i in range(1, 61):  # one minute of keep-alives, no value changes
        now = T0 + timedelta(seconds=i)
        inv.device_alive("dev", now)
        opened += inv.tick(now)
    assert [g.point for g in opened] == ["polled"]  # the polled point went stale, the RBE one not
    view = inv.point("s", "a", "rbe", T0 + timedelta(seconds=60))
    assert view is not None
    assert view.state.value == "online"
    assert view.last_seen == T0  # keep-alives do not fake a reading


def test_rbe_point_goes_stale_when_keepalives_stop() -> None:
    inv = _inventory()
    inv.observe([_reading("rbe", T0)])
    inv.device_alive("dev", T0 + timedelta(seconds=1))
    gaps = []
    for i in range(2, 10):
        gaps += inv.tick(T0 + timedelta(seconds=i))
    rbe = [g for g in gaps if g.point == "rbe"]
    assert len(rbe) == 1
    assert rbe[0].cause.value == "stale"


def test_keepalive_of_a_down_device_is_ignored() -> None:
    inv = _inventory()
    inv.observe([_reading("rbe", T0)])
    inv.link_down("dev", T0 + timedelta(seconds=1), "lost")
    inv.device_alive("dev", T0 + timedelta(seconds=2))
    gaps = []
    for i in range(2, 10):
        gaps += inv.tick(T0 + timedelta(seconds=i))
    assert any(g.point == "rbe" for g in gaps)
