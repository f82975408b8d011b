"""Pure DataValue decoding and Variant encoding (connectors.opcua.codec), with hypothesis:
R21, R23, B3, B9, B11; write-back encoding (M9-M11)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.opcua.codec import (
    BAD_NO_DATA,
    ENCODABLE,
    MIN_SOURCE_TIME,
    EncodeError,
    ValueKind,
    decode,
    encode,
    kind_of,
    plausible,
    source_time,
    status_name,
    variant_text,
)
from gateway.quality import Q, is_bad

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
VT = ua.VariantType

INT_RANGES = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}


def dv(
    value: object,
    vtype: ua.VariantType | None = None,
    status: int = 0,
    source: datetime | None = NOW,
    server: datetime | None = NOW,
) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(
        variant, StatusCode=ua.StatusCode(status), SourceTimestamp=source, ServerTimestamp=server
    )


statuses = st.integers(0, 0xFFFFFFFF)
good_or_uncertain = st.integers(0, 0x7FFFFFFF).filter(lambda c: not c & 0x80000000)
bad_statuses = st.integers(0x80000000, 0xFFFFFFFF)
kinds = st.sampled_from(list(ValueKind))


@st.composite
def scalars(draw: st.DrawFn) -> tuple[object, ua.VariantType]:
    vtype = draw(st.sampled_from([*INT_RANGES, VT.Float, VT.Double, VT.Boolean, VT.String]))
    if vtype in INT_RANGES:
        low, high = INT_RANGES[vtype]
        return draw(st.integers(low, high)), vtype
    if vtype in (VT.Float, VT.Double):
        return draw(st.floats(allow_nan=True, allow_infinity=True)), vtype
    if vtype == VT.Boolean:
        return draw(st.booleans()), vtype
    return draw(st.text(max_size=20)), vtype


@st.composite
def odd_values(draw: st.DrawFn) -> tuple[object, ua.VariantType]:
    """Values no point should take as a number: arrays, structures, bytes, ids, nulls."""
    return draw(
        st.sampled_from(
            [
                ([1.0, 2.0], VT.Double),
                ([True], VT.Boolean),
                ([], VT.Int32),
                (b"\x00\x01", VT.ByteString),
                (ua.NodeId(5, 2), VT.NodeId),
                (ua.ExtensionObject(), VT.ExtensionObject),
                (ua.QualifiedName("x", 1), VT.QualifiedName),
                (ua.StatusCode(0), VT.StatusCode),
            ]
        )
    )


# ---------------------------------------------------------------------------------------------
# Quality.


@settings(max_examples=500)
@given(status=bad_statuses, value=scalars(), kind=kinds)
def test_bad_status_passes_through_and_never_carries_a_value(
    status: int, value: tuple[object, ua.VariantType], kind: ValueKind
) -> None:
    out = decode(dv(value[0], value[1], status), kind, NOW)
    assert (out.value, out.quality, out.error) == (None, status, None)


@settings(max_examples=500)
@given(status=good_or_uncertain, number=st.one_of(st.integers(-(2**31), 2**31 - 1)))
def test_good_and_uncertain_status_pass_through_unchanged(status: int, number: int) -> None:
    out = decode(dv(number, VT.Int32, status), ValueKind.NUMBER, NOW)
    assert (out.value, out.quality, out.error) == (number, status, None)


@settings(max_examples=300)
@given(status=good_or_uncertain, kind=kinds)
def test_status_only_good_or_uncertain_becomes_bad_no_data(status: int, kind: ValueKind) -> None:
    out = decode(dv(None, status=status), kind, NOW)
    assert (out.value, out.quality, out.error) == (None, BAD_NO_DATA, "no_value")
    missing = ua.DataValue(StatusCode=ua.StatusCode(status), SourceTimestamp=NOW)
    object.__setattr__(missing, "Value", None)  # no Value field at all on the wire
    assert decode(missing, kind, NOW).quality == BAD_NO_DATA


def test_status_only_bad_keeps_its_code() -> None:
    out = decode(dv(None, status=0x808C0000), ValueKind.NUMBER, NOW)  # BadSensorFailure
    assert (out.value, out.quality, out.error) == (None, 0x808C0000, None)


def test_named_statuses_of_r21() -> None:
    for code in (0x808C0000, 0x40900000, 0x00960000):  # BadSensorFailure, UncertainLUV, GoodLO
        out = decode(dv(3.5, VT.Double, code), ValueKind.NUMBER, NOW)
        assert out.quality == code
        assert out.value == (None if code & 0x80000000 else 3.5)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("vtype", [VT.Double, VT.Float])
def test_non_finite_floats_are_bad_without_value(value: float, vtype: ua.VariantType) -> None:
    out = decode(dv(value, vtype), ValueKind.NUMBER, NOW)
    assert (out.value, out.quality, out.error) == (None, Q.BAD, "non_finite")


# ---------------------------------------------------------------------------------------------
# Types (B9).


@settings(max_examples=300)
@given(value=odd_values(), kind=kinds, status=good_or_uncertain)
def test_arrays_structures_and_ids_are_type_mismatch(
    value: tuple[object, ua.VariantType], kind: ValueKind, status: int
) -> None:
    out = decode(dv(value[0], value[1], status), kind, NOW)
    assert (out.value, out.quality, out.error) == (None, Q.BAD_TYPE_MISMATCH, "type_mismatch")


@pytest.mark.parametrize(
    ("value", "vtype", "kind", "expected"),
    [
        ("12.3", VT.String, ValueKind.NUMBER, None),  # a string on a numeric point
        (True, VT.Boolean, ValueKind.NUMBER, None),  # strict: bool is not a number
        (1, VT.Int32, ValueKind.BOOL, None),
        (1.5, VT.Double, ValueKind.STRING, None),
        ("on", VT.String, ValueKind.STRING, "on"),
        (ua.LocalizedText("Running", "en"), VT.LocalizedText, ValueKind.STRING, "Running"),
        (True, VT.Boolean, ValueKind.BOOL, True),
        (2**64 - 1, VT.UInt64, ValueKind.NUMBER, 2**64 - 1),
        (-5, VT.SByte, ValueKind.ANY, -5),
        ("x", VT.String, ValueKind.ANY, "x"),
        (1.25, VT.Float, ValueKind.UNSUPPORTED, None),
    ],
)
def test_value_kinds(
    value: object, vtype: ua.VariantType, kind: ValueKind, expected: object
) -> None:
    out = decode(dv(value, vtype), kind, NOW)
    if expected is None:
        assert (out.value, out.quality) == (None, Q.BAD_TYPE_MISMATCH)
    else:
        assert (out.value, out.quality) == (expected, Q.GOOD)
        assert type(out.value) is type(expected)


def test_datetime_on_string_point_is_rfc3339() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    out = decode(dv(when, VT.DateTime), ValueKind.STRING, NOW)
    assert (out.value, out.quality) == ("2026-01-02T03:04:05.600000Z", Q.GOOD)
    assert decode(dv(when, VT.DateTime), ValueKind.NUMBER, NOW).quality == Q.BAD_TYPE_MISMATCH


@settings(max_examples=2000)
@given(
    value=st.one_of(scalars(), odd_values()),
    status=statuses,
    kind=kinds,
    source=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    server=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    skew=st.floats(0, 86400),
)
def test_decode_never_raises_and_keeps_the_invariants(
    value: tuple[object, ua.VariantType],
    status: int,
    kind: ValueKind,
    source: datetime | None,
    server: datetime | None,
    skew: float,
) -> None:
    """B11: any DataValue gives a sample; value None iff Bad; no NaN/Inf; time plausible."""
    out = decode(dv(value[0], value[1], status, source, server), kind, NOW, skew)
    assert (out.value is None) == is_bad(out.quality)
    if isinstance(out.value, float):
        assert math.isfinite(out.value)
    assert out.value is None or isinstance(out.value, bool | int | float | str)
    assert out.source_time is not None
    assert MIN_SOURCE_TIME <= out.source_time <= NOW + timedelta(seconds=skew)
    assert out.ts_adjusted == (out.source_time is not source or source is None)


# ---------------------------------------------------------------------------------------------
# Timestamps (R23).


@settings(max_examples=500)
@given(offset=st.floats(-20 * 365 * 86400, 300), server_offset=st.floats(-60, 60))
def test_plausible_source_time_is_kept(offset: float, server_offset: float) -> None:
    source = NOW + timedelta(seconds=offset)
    if source < MIN_SOURCE_TIME:
        return
    when, adjusted = source_time(source, NOW + timedelta(seconds=server_offset), NOW, 300)
    assert (when, adjusted) == (source, False)


@pytest.mark.parametrize(
    "source",
    [
        NOW + timedelta(hours=1),  # device clock one hour ahead
        datetime(1601, 1, 1, tzinfo=UTC),  # MinDateTime
        datetime(1999, 12, 31, 23, 59, tzinfo=UTC),
        None,  # no SourceTimestamp
    ],
)
def test_implausible_or_missing_source_time_is_replaced_and_flagged(
    source: datetime | None,
) -> None:
    server = NOW - timedelta(milliseconds=3)
    assert source_time(source, server, NOW, 300) == (server, True)  # the server's clock
    assert source_time(source, None, NOW, 300) == (NOW, True)  # else the gateway's
    assert source_time(source, server + timedelta(days=1), NOW, 300) == (NOW, True)
    out = decode(dv(1.0, VT.Double, 0, source, None), ValueKind.NUMBER, NOW)
    assert (out.source_time, out.ts_adjusted) == (NOW, True)


def test_max_age_makes_old_source_times_implausible() -> None:
    old = NOW - timedelta(days=1)
    assert plausible(old, NOW, 300, None)
    assert not plausible(old, NOW, 300, 3600)
    assert source_time(old, None, NOW, 300, 3600) == (NOW, True)


def test_naive_timestamps_are_utc() -> None:
    naive = NOW.replace(tzinfo=None) - timedelta(seconds=5)
    when, adjusted = source_time(naive, None, NOW)
    assert (when, adjusted) == (NOW - timedelta(seconds=5), False)
    assert when.tzinfo is not None


# ---------------------------------------------------------------------------------------------
# DataType -> kind, names.


@pytest.mark.parametrize(
    ("data_type", "rank", "kind"),
    [
        (ua.NodeId(11), -1, ValueKind.NUMBER),  # Double
        (ua.NodeId(7), -1, ValueKind.NUMBER),  # UInt32
        (ua.NodeId(1), -1, ValueKind.BOOL),
        (ua.NodeId(12), -1, ValueKind.STRING),
        (ua.NodeId(21), -1, ValueKind.STRING),  # LocalizedText
        (ua.NodeId(290), -1, ValueKind.NUMBER),  # Duration
        (ua.NodeId(29), -1, ValueKind.NUMBER),  # Enumeration
        (ua.NodeId(24), -2, ValueKind.ANY),  # BaseDataType, any rank
        (ua.NodeId(11), 1, ValueKind.UNSUPPORTED),  # array of Double
        (ua.NodeId(11), 0, ValueKind.UNSUPPORTED),
        (ua.NodeId(15), -1, ValueKind.UNSUPPORTED),  # ByteString
        (ua.NodeId(22), -1, ValueKind.UNSUPPORTED),  # Structure
        (ua.NodeId(3002, 2), -1, ValueKind.ANY),  # vendor type
        (None, None, ValueKind.ANY),
    ],
)
def test_kind_of(data_type: ua.NodeId | None, rank: int | None, kind: ValueKind) -> None:
    assert kind_of(data_type, rank) is kind


def test_status_name() -> None:
    assert status_name(0x80340000) == "BadNodeIdUnknown"
    assert status_name(0x40900000) == "UncertainLastUsableValue"
    assert status_name(0x00960400) == "GoodLocalOverride"  # info bits ignored
    assert status_name(0x81230000) == "0x81230000"


# ---------------------------------------------------------------------------------------------
# Encoding for write-back.


@given(st.sampled_from(sorted(INT_RANGES, key=int)), st.integers(-(2**65), 2**65))
def test_integer_encoding_fits_or_refuses(vtype: ua.VariantType, raw: int) -> None:
    low, high = INT_RANGES[vtype]
    if low <= raw <= high:
        variant = encode(raw, vtype)
        assert (variant.Value, variant.VariantType) == (raw, vtype)
        # round trip: what was encoded decodes to the same value
        assert decode(ua.DataValue(variant), ValueKind.NUMBER, NOW).value == raw
    else:
        with pytest.raises(EncodeError, match="outside"):
            encode(raw, vtype)


@pytest.mark.parametrize(
    ("raw", "vtype", "value"),
    [
        (13.000000000000002, VT.Int16, 13),  # inverse-scaling noise
        (-2.0, VT.SByte, -2),
        (1, VT.Boolean, True),
        (0.0, VT.Boolean, False),
        (True, VT.Boolean, True),
        (3, VT.Double, 3.0),
        (12.5, VT.Float, 12.5),
        ("on", VT.String, "on"),
        ("", VT.String, ""),
    ],
)
def test_encodes(raw: object, vtype: ua.VariantType, value: object) -> None:
    variant = encode(raw, vtype)
    assert variant.Value == value
    assert type(variant.Value) is type(value)
    assert variant.VariantType == vtype


@pytest.mark.parametrize(
    ("raw", "vtype", "reason"),
    [
        (12.5, VT.Int32, "not an integer"),
        (True, VT.Int32, "not a number"),
        ("12", VT.Double, "not a number"),
        (None, VT.Double, "not a number"),
        (math.nan, VT.Double, "not finite"),
        (math.inf, VT.Float, "not finite"),
        (math.inf, VT.UInt16, "not finite"),
        (3.5e38, VT.Float, "outside the Float range"),
        (2, VT.Boolean, "not a Boolean"),
        ("true", VT.Boolean, "not a Boolean"),
        (5, VT.String, "not a string"),
        ("2026-03-01T12:00:00", VT.DateTime, "no UTC offset"),
        ("yesterday", VT.DateTime, "not an RFC 3339"),
        (b"\x00", VT.ByteString, "not supported"),
    ],
)
def test_refuses_values_that_do_not_fit(raw: object, vtype: ua.VariantType, reason: str) -> None:
    with pytest.raises(EncodeError, match=reason):
        encode(raw, vtype)


def test_datetime_localized_text_and_text_forms() -> None:
    when = encode("2026-03-01T12:00:00Z", VT.DateTime)
    assert when.Value == NOW
    assert variant_text(when) == "DateTime 2026-03-01T12:00:00.000000Z"
    text = encode("Pump 7", VT.LocalizedText)
    assert variant_text(text) == 'LocalizedText "Pump 7"'
    assert variant_text(encode(12.5, VT.Float)) == "Float 12.5"
    assert variant_text(encode(False, VT.Boolean)) == "Boolean false"
    assert VT.ByteString not in ENCODABLE


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_float_round_trip(raw: float) -> None:
    variant = encode(raw, VT.Float)
    decoded = decode(ua.DataValue(variant), ValueKind.NUMBER, NOW)
    assert decoded.value == raw
