"""Modbus codec: known vectors, round trips for every type x byte order, robustness."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.modbus.codec import decode, encode, make_decoder
from connectors.modbus.config import ByteOrder, DataType, ModbusAddress, RegisterType
from gateway.quality import Q

ORDERS = list(ByteOrder)
NUMERIC = [t for t in DataType if t not in (DataType.BOOL, DataType.STRING)]
INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def hr(dtype: DataType, order: ByteOrder = ByteOrder.ABCD, **kw: object) -> ModbusAddress:
    return ModbusAddress.model_validate(
        {"register": "holding", "address": 0, "type": dtype, "byte_order": order, **kw}
    )


# -- known vectors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (ByteOrder.ABCD, [0x42F6, 0xE979]),
        (ByteOrder.CDAB, [0xE979, 0x42F6]),
        (ByteOrder.BADC, [0xF642, 0x79E9]),
        (ByteOrder.DCBA, [0x79E9, 0xF642]),
    ],
)
def test_float32_123_456_vectors(order: ByteOrder, words: list[int]) -> None:
    value, quality = decode(words, hr(DataType.FLOAT32, order))
    assert quality == Q.GOOD
    assert value == pytest.approx(123.456, rel=1e-6)
    assert encode(123.456, hr(DataType.FLOAT32, order)) == words


@pytest.mark.parametrize(
    ("dtype", "order", "words", "expected"),
    [
        (DataType.INT16, ByteOrder.ABCD, [0xFFFE], -2),
        (DataType.UINT16, ByteOrder.ABCD, [0xFFFE], 65534),
        (DataType.UINT16, ByteOrder.BADC, [0x3412], 0x1234),
        (DataType.INT32, ByteOrder.ABCD, [0xFFFF, 0xFFFF], -1),
        (DataType.UINT32, ByteOrder.ABCD, [0x0001, 0x0002], 0x00010002),
        (DataType.UINT32, ByteOrder.CDAB, [0x0002, 0x0001], 0x00010002),
        (DataType.UINT32, ByteOrder.DCBA, [0x0200, 0x0100], 0x00010002),
        (DataType.UINT64, ByteOrder.ABCD, [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
        (DataType.UINT64, ByteOrder.CDAB, [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
        (DataType.UINT64, ByteOrder.BADC, [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
        (DataType.UINT64, ByteOrder.DCBA, [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
        (DataType.INT64, ByteOrder.ABCD, [0xFFFF] * 4, -1),
        (DataType.FLOAT64, ByteOrder.ABCD, [0x3FF0, 0, 0, 0], 1.0),
    ],
)
def test_known_vectors(
    dtype: DataType, order: ByteOrder, words: list[int], expected: object
) -> None:
    assert decode(words, hr(dtype, order)) == (expected, Q.GOOD)


def test_bool_bits_and_tables() -> None:
    assert decode([0b1000_0000_0000_0100], hr(DataType.BOOL, bit=2)) == (True, Q.GOOD)
    assert decode([0b1000_0000_0000_0100], hr(DataType.BOOL, bit=3)) == (False, Q.GOOD)
    assert decode([0x8000], hr(DataType.BOOL, bit=15)) == (True, Q.GOOD)
    assert decode([7], hr(DataType.BOOL)) == (True, Q.GOOD)
    assert decode([0], hr(DataType.BOOL)) == (False, Q.GOOD)
    coil = ModbusAddress.model_validate({"register": "coil", "address": 5, "type": "bool"})
    assert decode([True], coil) == (True, Q.GOOD)
    assert decode([0], coil) == (False, Q.GOOD)
    assert encode(True, hr(DataType.BOOL, bit=4)) == [16]
    assert encode(True, coil) == [1]


def test_string() -> None:
    addr = hr(DataType.STRING, length=3)
    assert decode([0x4142, 0x4300, 0x0000], addr) == ("ABC", Q.GOOD)
    assert decode([0x4142, 0x2020, 0x2020], addr) == ("AB", Q.GOOD)
    assert decode([0x4142, 0x0043, 0x4400], addr) == ("AB", Q.GOOD)  # cut at the first NUL
    swapped = hr(DataType.STRING, ByteOrder.BADC, length=2)
    assert decode([0x4241, 0x0043], swapped) == ("ABC", Q.GOOD)
    assert decode([0x41C3, 0, 0], addr) == (None, Q.BAD_DECODING_ERROR)
    assert encode("ABC", addr) == [0x4142, 0x4300, 0x0000]
    with pytest.raises(ValueError, match="does not fit"):
        encode("ABCDEFG", addr)


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00000])
@pytest.mark.parametrize("order", ORDERS)
def test_non_finite_float32_is_bad(bits: int, order: ByteOrder) -> None:
    value = struct.unpack(">f", struct.pack(">I", bits))[0]
    addr = hr(DataType.FLOAT32, order)
    words = encode(value, addr)
    assert decode(words, addr) == (None, Q.BAD)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float64_is_bad(value: float) -> None:
    addr = hr(DataType.FLOAT64, ByteOrder.CDAB)
    assert decode(encode(value, addr), addr) == (None, Q.BAD)


@pytest.mark.parametrize("dtype", list(DataType))
def test_wrong_register_count_is_decoding_error(dtype: DataType) -> None:
    addr = hr(dtype, length=2) if dtype is DataType.STRING else hr(dtype)
    assert decode([], addr) == (None, Q.BAD_DECODING_ERROR)
    assert decode([0] * (addr.width + 1), addr) == (None, Q.BAD_DECODING_ERROR)


def test_out_of_range_words_are_decoding_errors() -> None:
    assert decode([70000], hr(DataType.UINT16)) == (None, Q.BAD_DECODING_ERROR)
    assert decode([-1, 0], hr(DataType.FLOAT32)) == (None, Q.BAD_DECODING_ERROR)
    assert decode([70000], hr(DataType.BOOL, bit=0)) == (None, Q.BAD_DECODING_ERROR)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(70000, hr(DataType.UINT16))
    with pytest.raises(ValueError, match="does not fit"):
        encode(1e300, hr(DataType.FLOAT32))
    with pytest.raises(ValueError, match="needs a number"):
        encode(1.5, hr(DataType.INT32))


def test_decoder_reads_at_offset() -> None:
    dec = make_decoder(hr(DataType.INT32, ByteOrder.CDAB))
    assert dec([9, 9, 0xFFFE, 0xFFFF, 9], 2) == (-2, Q.GOOD)


# -- properties ----------------------------------------------------------------------------


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[ModbusAddress, object]:
    dtype = draw(st.sampled_from(list(DataType)))
    order = draw(st.sampled_from(ORDERS))
    if dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        return hr(dtype, order), draw(st.integers(lo, hi))
    if dtype is DataType.FLOAT32:
        return hr(dtype, order), draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    if dtype is DataType.FLOAT64:
        return hr(dtype, order), draw(st.floats(allow_nan=False, allow_infinity=False))
    if dtype is DataType.BOOL:
        bit = draw(st.none() | st.integers(0, 15))
        table = draw(st.sampled_from(list(RegisterType)))
        if table.is_bit:
            addr = ModbusAddress.model_validate({"register": table, "address": 0, "type": "bool"})
        else:
            addr = hr(dtype, order, bit=bit)
        return addr, draw(st.booleans())
    length = draw(st.integers(1, 8))
    alphabet = st.characters(min_codepoint=1, max_codepoint=127)
    text = draw(st.text(alphabet, max_size=2 * length)).rstrip(" ")
    return hr(dtype, order, length=length), text


@given(typed_values())
def test_round_trip(case: tuple[ModbusAddress, object]) -> None:
    addr, value = case
    words = encode(value, addr)  # type: ignore[arg-type]
    assert len(words) == addr.width
    assert all(0 <= w <= 0xFFFF for w in words)
    decoded, quality = decode(words, addr)
    assert quality == Q.GOOD
    assert decoded == value
    assert type(decoded) is type(value)


@given(
    st.sampled_from(list(DataType)),
    st.sampled_from(ORDERS),
    st.lists(st.integers(0, 0xFFFF), max_size=12),
    st.none() | st.integers(0, 15),
)
def test_decode_never_raises_nor_mutates(
    dtype: DataType, order: ByteOrder, words: list[int], bit: int | None
) -> None:
    kw: dict[str, object] = {}
    if dtype is DataType.STRING:
        kw["length"] = 3
    if dtype is DataType.BOOL:
        kw["bit"] = bit
    addr = hr(dtype, order, **kw)
    before = list(words)
    value, quality = decode(words, addr)
    assert words == before
    assert (value is None) == bool(quality & 0x80000000)
    if len(words) != addr.width:
        assert quality == Q.BAD_DECODING_ERROR
    assert decode(tuple(words), addr) == (value, quality)
