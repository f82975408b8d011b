"""Pure decode/encode of Modbus register and bit values: no I/O, inputs never mutated.

A point occupies ``addr.width`` consecutive 16-bit registers (holding/input tables) or one bit
(coil/discrete tables). Multi-byte values are laid out by `ByteOrder`, named by where the
big-endian bytes ``A B C D`` (``A`` most significant) land in the registers, generalized to
64-bit values as two flags:

- *word reversal* (``CDAB``, ``DCBA``): the least significant register comes first;
- *byte swap* (``BADC``, ``DCBA``): the two bytes inside every register are swapped.

So ``ABCD`` is big-endian (the Modbus default, Modbus spec §4.2 "big-Endian representation"),
``DCBA`` is fully little-endian, ``CDAB`` is the common "word swap". 16-bit types honour the byte
swap only. Strings hold 2 ASCII characters per register, first character in the high byte;
``BADC``/``DCBA`` swap the two characters of every register, the register order never changes.
A ``bool`` with ``bit`` reads that bit of the raw register (0 = least significant), without any
byte swap; a ``bool`` without ``bit`` in a register is ``register != 0``.

Source: Modbus Application Protocol Specification V1.1b3, §4.2 (data encoding) and §6.1-6.4
(read coils / discrete inputs / holding registers / input registers).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from connectors.modbus.config import ByteOrder, DataType, ModbusAddress
from gateway.model import Value
from gateway.quality import Q, Quality

Decoder = Callable[[Sequence[int], int], tuple[Value, Quality]]
"""``decoder(words, offset) -> (value, quality)``: reads ``width`` items of ``words`` at ``offset``.

The caller guarantees ``offset + width <= len(words)``; a decoder never raises and never mutates.
"""

_GOOD: Quality = Q.GOOD
_BAD: Quality = Q.BAD
_BAD_DECODING: Quality = Q.BAD_DECODING_ERROR
_DECODING_ERROR: tuple[Value, Quality] = (None, _BAD_DECODING)
_NON_FINITE: tuple[Value, Quality] = (None, _BAD)

# struct format character and register count of each numeric type
_NUMERIC: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}


def _flags(order: ByteOrder) -> tuple[bool, bool]:
    """(word_reversed, byte_swapped) of a byte order."""
    return order in (ByteOrder.CDAB, ByteOrder.DCBA), order in (ByteOrder.BADC, ByteOrder.DCBA)


def _bit_decoder() -> Decoder:
    def decode_bit(words: Sequence[int], offset: int) -> tuple[Value, Quality]:
        return bool(words[offset]), _GOOD

    return decode_bit


def _register_bool_decoder(bit: int | None) -> Decoder:
    if bit is None:

        def decode_nonzero(words: Sequence[int], offset: int) -> tuple[Value, Quality]:
            word = words[offset]
            if not 0 <= word <= 0xFFFF:
                return _DECODING_ERROR
            return word != 0, _GOOD

        return decode_nonzero

    mask = 1 << bit

    def decode_bit_of_register(words: Sequence[int], offset: int) -> tuple[Value, Quality]:
        word = words[offset]
        if not 0 <= word <= 0xFFFF:
            return _DECODING_ERROR
        return bool(word & mask), _GOOD

    return decode_bit_of_register


def _numeric_decoder(dtype: DataType, order: ByteOrder) -> Decoder:
    fmt, width = _NUMERIC[dtype]
    word_reversed, byte_swapped = _flags(order)
    word_reversed = word_reversed and width > 1
    pack = struct.Struct(("<" if byte_swapped else ">") + "H" * width).pack
    unpack = struct.Struct(">" + fmt).unpack
    is_float = dtype in (DataType.FLOAT32, DataType.FLOAT64)

    def decode_numeric(words: Sequence[int], offset: int) -> tuple[Value, Quality]:
        chunk = words[offset : offset + width]
        if word_reversed:
            chunk = chunk[::-1]
        try:
            (value,) = unpack(pack(*chunk))
        except (struct.error, TypeError):
            return _DECODING_ERROR
        if is_float and not math.isfinite(value):
            return _NON_FINITE
        return value, _GOOD

    return decode_numeric


def _string_decoder(length: int, order: ByteOrder) -> Decoder:
    _, byte_swapped = _flags(order)
    pack = struct.Struct(("<" if byte_swapped else ">") + "H" * length).pack

    def decode_string(words: Sequence[int], offset: int) -> tuple[Value, Quality]:
        try:
            raw = pack(*words[offset : offset + length])
        except (struct.error, TypeError):
            return _DECODING_ERROR
        if not raw.isascii():
            return _DECODING_ERROR
        text = raw.decode("ascii")
        end = text.find("\x00")
        if end >= 0:
            text = text[:end]
        return text.rstrip(" "), _GOOD

    return decode_string


def make_decoder(addr: ModbusAddress) -> Decoder:
    """Build the decoder of a point once, for the poll hot path.

    Args:
        addr: The point's address; its ``table``, ``type``, ``bit``, ``length`` and
            ``byte_order`` select the decoding.

    Returns:
        A `Decoder` reading ``addr.width`` registers (or one bit) at a given offset. Non-finite
        floats (NaN, ±Inf) give ``(None, Q.BAD)``; words outside [0, 65535] or non-ASCII string
        bytes give ``(None, Q.BAD_DECODING_ERROR)``.

    Source: Modbus Application Protocol Specification V1.1b3, §4.2 and §6.1-6.4.
    """
    if addr.table.is_bit:
        return _bit_decoder()
    if addr.type is DataType.BOOL:
        return _register_bool_decoder(addr.bit)
    if addr.type is DataType.STRING:
        return _string_decoder(addr.width, addr.byte_order)
    return _numeric_decoder(addr.type, addr.byte_order)


def decode(registers: Sequence[int], addr: ModbusAddress) -> tuple[Value, Quality]:
    """Decode one point from exactly its slice of registers (or bits).

    Args:
        registers: The point's ``addr.width`` registers, each an int in [0, 65535]; for a
            coil/discrete point, one bit (bool or 0/1). Not mutated.
        addr: Table, type, bit, length and byte order of the point.

    Returns:
        ``(value, Q.GOOD)``; ``(None, Q.BAD_DECODING_ERROR)`` when the count is not
        ``addr.width``, a word is outside [0, 65535] or a string byte is not ASCII;
        ``(None, Q.BAD)`` for a non-finite float (NaN, ±Inf). Never raises.

    Source: Modbus Application Protocol Specification V1.1b3, §4.2 and §6.1-6.4.
    """
    if len(registers) != addr.width:
        return _DECODING_ERROR
    return make_decoder(addr)(registers, 0)


def encode(value: bool | int | float | str, addr: ModbusAddress) -> list[int]:
    """Encode a value into the registers (or bit) of a point: the inverse of `decode`.

    Args:
        value: bool for bool points, int for integer types (within the type's range), a real
            number for floats (float32 must fit its range), an ASCII str without NUL of at most
            ``2 × length`` characters for strings (padded with NUL).
        addr: Table, type, bit, length and byte order of the point.

    Returns:
        ``addr.width`` words in [0, 65535] (one 0/1 item for a coil/discrete point; for a bool
        with ``bit``, a register with only that bit set or 0).

    Raises:
        ValueError: The value does not fit the type, or has the wrong Python type.

    Source: Modbus Application Protocol Specification V1.1b3, §4.2 and §6.5-6.6, §6.11-6.12.
    """
    if addr.type is DataType.BOOL:
        if not isinstance(value, bool | int) or (isinstance(value, int) and value not in (0, 1)):
            msg = f"bool point needs a bool, got {value!r}"
            raise ValueError(msg)
        if addr.bit is not None:
            return [1 << addr.bit if value else 0]
        return [1 if value else 0]
    word_reversed, byte_swapped = _flags(addr.byte_order)
    if addr.type is DataType.STRING:
        if not isinstance(value, str) or not value.isascii() or "\x00" in value:
            msg = f"string point needs ASCII text without NUL, got {value!r}"
            raise ValueError(msg)
        width = addr.width
        if len(value) > 2 * width:
            msg = f"string of {len(value)} chars does not fit {width} registers"
            raise ValueError(msg)
        raw = value.encode("ascii").ljust(2 * width, b"\x00")
        return list(struct.unpack(("<" if byte_swapped else ">") + "H" * width, raw))
    fmt, width = _NUMERIC[addr.type]
    if isinstance(value, str) or (fmt not in "fd" and not isinstance(value, int)):
        msg = f"{addr.type.value} point needs a number, got {value!r}"
        raise ValueError(msg)
    try:
        raw = struct.pack(">" + fmt, value)
    except (struct.error, OverflowError) as exc:
        msg = f"{value!r} does not fit {addr.type.value}: {exc}"
        raise ValueError(msg) from exc
    words = list(struct.unpack(("<" if byte_swapped else ">") + "H" * width, raw))
    if word_reversed:
        words.reverse()
    return words
