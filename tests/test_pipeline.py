"""Sample -> Reading: scale/offset, range, non-finite values, lineage (DESIGN.md §2, B3, B4)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Sample
from gateway.pipeline import Pipeline, PointTransform
from gateway.quality import Q

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _pipeline(scale: float = 1.0, offset: float = 0.0, low: float | None = None,
              high: float | None = None) -> Pipeline:
    return Pipeline({"s/a/p": PointTransform("s", "a", "p", "Cel", scale, offset, low, high,
                                             "modbus://h:502/1/hr/0")})


def test_scale_offset_unit_and_lineage() -> None:
    [r] = _pipeline(0.1, -40.0).convert([Sample("s/a/p", 650, Q.GOOD, None)], T0)
    assert r.value == pytest.approx(25.0)
    assert (r.site, r.asset, r.point, r.unit) == ("s", "a", "p", "Cel")
    assert r.source == "modbus://h:502/1/hr/0"
    assert r.source_time == T0 == r.gateway_time
    assert r.quality == Q.GOOD


def test_identity_keeps_integers_and_source_time() -> None:
    src = T0 - timedelta(seconds=3)
    [r] = _pipeline().convert([Sample("s/a/p", 7, Q.GOOD, src)], T0)
    assert r.value == 7
    assert isinstance(r.value, int)
    assert r.source_time == src
    assert r.gateway_time == T0


def test_bool_and_string_pass_through_scale() -> None:
    p = _pipeline(10.0, 1.0)
    r1, r2 = p.convert([Sample("s/a/p", True, Q.GOOD, None), Sample("s/a/p", "X", Q.GOOD, None)], T0)
    assert r1.value is True
    assert r2.value == "X"


def test_bad_sample_never_carries_a_value() -> None:
    [r] = _pipeline().convert([Sample("s/a/p", 12.0, Q.BAD_TIMEOUT, None)], T0)
    assert r.value is None
    assert r.quality == Q.BAD_TIMEOUT


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf])
def test_non_finite_becomes_bad_and_counted(raw: float) -> None:
    p = _pipeline()
    [r] = p.convert([Sample("s/a/p", raw, Q.GOOD, None)], T0)
    assert r.value is None
    assert r.quality == Q.BAD
    assert p.non_finite == 1


def test_overflow_after_scale_becomes_bad() -> None:
    p = _pipeline(scale=1e308)
    [r] = p.convert([Sample("s/a/p", 1e10, Q.GOOD, None)], T0)
    assert r.value is None
    assert r.quality == Q.BAD


def test_out_of_range_is_uncertain_and_counted() -> None:
    p = _pipeline(low=0.0, high=100.0)
    readings = p.convert([Sample("s/a/p", v, Q.GOOD, None) for v in (-1.0, 0.0, 100.0, 101)], T0)
    assert [r.quality for r in readings] == [
        Q.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, Q.GOOD, Q.GOOD, Q.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED,
    ]
    assert [r.value for r in readings] == [-1.0, 0.0, 100.0, 101]
    assert p.out_of_range == 2


def test_unknown_point_is_dropped_and_counted() -> None:
    p = _pipeline()
    assert p.convert([Sample("x/y/z", 1, Q.GOOD, None)], T0) == []
    assert p.unknown_points == 1


def test_bad_for_marks_points() -> None:
    [r] = _pipeline().bad_for(["s/a/p", "x/y/z"], Q.BAD_NO_COMMUNICATION, T0)
    assert (r.value, r.quality, r.source_time) == (None, Q.BAD_NO_COMMUNICATION, T0)


@given(st.one_of(st.floats(), st.integers(-(2**63), 2**64), st.booleans(), st.text(max_size=8)),
       st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_no_reading_ever_holds_a_non_finite_number(value: object, scale: float, offset: float) -> None:
    [r] = _pipeline(scale, offset).convert([Sample("s/a/p", value, Q.GOOD, None)], T0)  # type: ignore[arg-type]
    if isinstance(r.value, float):
        assert math.isfinite(r.value)
    if r.value is None:
        assert r.quality & 0x80000000
