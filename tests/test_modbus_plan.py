"""Modbus request coalescing (build_plan, describe_plan)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.modbus.config import ModbusAddress, ModbusDeviceConfig, RegisterType
from connectors.modbus.plan import ModbusPoint, ReadRequest, build_plan, describe_plan


def device(**kw: object) -> ModbusDeviceConfig:
    return ModbusDeviceConfig.model_validate({"id": "plc1", "host": "127.0.0.1", **kw})


def point(
    address: int,
    dtype: str = "uint16",
    table: str = "holding",
    interval: float = 1.0,
    key: str | None = None,
    **kw: object,
) -> ModbusPoint:
    addr = ModbusAddress.model_validate(
        {"register": table, "address": address, "type": dtype, **kw}
    )
    return ModbusPoint(key or f"s/a/{table}{address}{dtype}{kw}", addr, interval)


def requests(dev: ModbusDeviceConfig, points: list[ModbusPoint]) -> list[ReadRequest]:
    return [r for group in build_plan(dev, points) for r in group.requests]


def spans(reqs: list[ReadRequest]) -> list[tuple[int, int]]:
    return [(r.start, r.count) for r in reqs]


def test_contiguous_points_make_one_request() -> None:
    pts = [point(0), point(1, "float32"), point(3, "int64"), point(7)]
    reqs = requests(device(), pts)
    assert spans(reqs) == [(0, 8)]
    assert reqs[0].function_code == 3
    assert len(reqs[0].points) == 4


def test_gap_larger_than_max_gap_splits() -> None:
    pts = [point(0), point(5)]
    assert spans(requests(device(max_gap=3), pts)) == [(0, 1), (5, 1)]
    assert spans(requests(device(max_gap=4), pts)) == [(0, 6)]
    assert spans(requests(device(), [point(0), point(1)])) == [(0, 2)]


def test_register_limit_splits_without_straddling() -> None:
    pts = [point(i, "float32") for i in range(0, 130, 2)]  # 65 floats, 130 registers
    reqs = requests(device(), pts)
    assert spans(reqs) == [(0, 124), (124, 6)]  # 125 would cut the float at 124
    assert sum(len(r.points) for r in reqs) == 65
    reqs = requests(device(max_registers=10), [point(i) for i in range(25)])
    assert spans(reqs) == [(0, 10), (10, 10), (20, 5)]


def test_bit_limit_2000() -> None:
    pts = [point(i, "bool", "coil") for i in range(2500)]
    reqs = requests(device(), pts)
    assert spans(reqs) == [(0, 2000), (2000, 500)]
    assert {r.function_code for r in reqs} == {1}
    reqs = requests(device(max_bits=100), [point(i, "bool", "discrete") for i in range(150)])
    assert spans(reqs) == [(0, 100), (100, 50)]
    assert reqs[0].function_code == 2


def test_bits_of_one_register_share_it() -> None:
    pts = [point(4, "bool", bit=b) for b in range(16)] + [point(4, "uint16")]
    reqs = requests(device(), pts)
    assert spans(reqs) == [(4, 1)]
    assert len(reqs[0].points) == 17


def test_mixed_intervals_make_separate_groups() -> None:
    pts = [point(0, interval=1.0), point(1, interval=5.0), point(2, interval=1.0)]
    groups = build_plan(device(max_gap=2), pts)
    assert [g.poll_interval for g in groups] == [1.0, 5.0]
    assert spans(list(groups[0].requests)) == [(0, 3)]
    assert spans(list(groups[1].requests)) == [(1, 1)]


def test_units_and_tables_separate() -> None:
    pts = [
        point(0),
        point(1, unit_id=2),
        point(2, table="input"),
        point(3, "bool", "coil"),
        point(4, "bool", "discrete"),
        point(1),
    ]
    reqs = requests(device(max_gap=10), pts)
    assert [(r.unit_id, r.function_code, r.start, r.count) for r in reqs] == [
        (1, 1, 3, 1),
        (1, 2, 4, 1),
        (1, 3, 0, 2),
        (1, 4, 2, 1),
        (2, 3, 1, 1),
    ]


def test_point_wider_than_limit_is_rejected() -> None:
    pts = [point(0, "string", length=20), point(30)]
    groups = build_plan(device(max_registers=10), pts)
    assert spans(list(groups[0].requests)) == [(30, 1)]
    assert [p.address.address for p in groups[0].rejected] == [0]


def test_deterministic_order() -> None:
    pts = [point(i * 3, interval=1.0 + i % 2) for i in range(20)]
    assert build_plan(device(), pts) == build_plan(device(), list(reversed(pts)))


def test_describe_plan() -> None:
    dev = device(max_gap=0)
    pts = [point(0), point(1), point(10, interval=2.0), point(0, "string", length=30)]
    info = describe_plan(dev, build_plan(dev.model_copy(update={"max_registers": 20}), pts))
    assert info["device"] == "plc1"
    assert info["endpoint"] == "modbus://127.0.0.1:502"
    assert info["points"] == 4
    assert info["requests"] == 2
    assert info["registers"] == 3
    assert info["requests_per_s"] == 1.0 + 0.5
    assert info["samples_per_s"] == 3.0 + 0.5
    assert info["groups"][0]["requests"][0] == {
        "unit_id": 1,
        "function_code": 3,
        "table": "holding",
        "start": 0,
        "count": 2,
        "points": 2,
    }
    assert len(info["groups"][0]["rejected"]) == 1


# -- property ------------------------------------------------------------------------------

TYPES = ["uint16", "float32", "int64", "bool", "string"]


@st.composite
def random_points(draw: st.DrawFn) -> list[ModbusPoint]:
    n = draw(st.integers(1, 60))
    pts = []
    for i in range(n):
        table = draw(st.sampled_from(list(RegisterType)))
        dtype = "bool" if table.is_bit else draw(st.sampled_from(TYPES))
        kw: dict[str, object] = {}
        if dtype == "string":
            kw["length"] = draw(st.integers(1, 12))
        if dtype == "bool" and not table.is_bit:
            kw["bit"] = draw(st.none() | st.integers(0, 15))
        if draw(st.booleans()):
            kw["unit_id"] = draw(st.integers(1, 3))
        address = draw(st.integers(0, 300))
        interval = draw(st.sampled_from([0.5, 1.0, 10.0]))
        pts.append(point(address, dtype, table.value, interval, key=f"s/a/p{i}", **kw))
    return pts


@settings(max_examples=300)
@given(
    random_points(),
    st.integers(0, 20),
    st.integers(1, 125),
    st.integers(1, 2000),
)
def test_every_point_in_exactly_one_request(
    pts: list[ModbusPoint], max_gap: int, max_registers: int, max_bits: int
) -> None:
    dev = device(max_gap=max_gap, max_registers=max_registers, max_bits=max_bits)
    groups = build_plan(dev, pts)
    seen: dict[str, int] = {}
    for group in groups:
        for p in group.rejected:
            seen[p.key] = seen.get(p.key, 0) + 1
            assert p.address.width > max_registers
        by_lane: dict[tuple[int, int], list[ReadRequest]] = {}
        for r in group.requests:
            limit = max_bits if r.table.is_bit else max_registers
            assert 1 <= r.count <= limit
            assert r.end <= 65536
            for p in r.points:
                seen[p.key] = seen.get(p.key, 0) + 1
                assert p.poll_interval == group.poll_interval
                assert p.address.table is r.table
                assert (p.address.unit_id or dev.unit_id) == r.unit_id
                assert r.start <= p.address.address
                assert p.address.address + p.address.width <= r.end
            assert r.start == min(p.address.address for p in r.points)
            assert r.end == max(p.address.address + p.address.width for p in r.points)
            by_lane.setdefault((r.unit_id, r.function_code), []).append(r)
        for lane in by_lane.values():
            lane.sort(key=lambda r: r.start)
            for a, b in itertools.pairwise(lane):
                # no overlap, unless the configured points themselves overlap
                assert a.end <= b.start or any(
                    q.address.address <= b.start < q.address.address + q.address.width
                    for q in a.points
                )
    assert seen == {p.key: 1 for p in pts}
