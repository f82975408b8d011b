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

Writes (`encode_write`): a coil point is written with FC 5 (Write Single Coil), a one-register
holding point with FC 6 (Write Single Register), a wider holding point (32/64-bit, float,
string) with FC 16 (Write Multiple Registers, all of its registers in one request, so the value
is never half-written by us), and a ``bool`` on one ``bit`` of a holding register with FC 22
(Mask Write Register), which changes that bit on the device atomically and leaves the other 15
alone. FC 15 (Write Multiple Coils) is not needed: a coil point is one bit. Discrete inputs and
input registers are read-only in the protocol (no function code writes them).

Source: Modbus Application Protocol Specification V1.1b3, §4.2 (data encoding), §6.1-6.4
(read coils / discrete inputs / holding registers / input registers), §6.5 (FC 5), §6.6 (FC 6),
§6.12 (FC 16) and §6.16 (FC 22).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.modbus.config import AddressLike, ByteOrder, DataType, RegisterType
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


@functools.cache
def _bit_decoder() -> Decoder:
    def decode_bit(words: Sequence[int], offset: int) -> tuple[Value, Quality]:
        return bool(words[offset]), _GOOD

    return decode_bit


@functools.cache
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


@functools.cache
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


@functools.cache
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


def make_decoder(addr: AddressLike) -> Decoder:
    """Build the decoder of a point once, for the poll hot path (shared by equal addresses).

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


def decode(registers: Sequence[int], addr: AddressLike) -> tuple[Value, Quality]:
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


def encode(value: bool | int | float | str, addr: AddressLike) -> list[int]:
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


WRITE_SINGLE_COIL = 5
WRITE_SINGLE_REGISTER = 6
WRITE_MULTIPLE_REGISTERS = 16
MASK_WRITE_REGISTER = 22


class ReadOnlyTableError(ValueError):
    """The point is in a table no Modbus function code writes (discrete inputs, input registers)."""


@dataclass(frozen=True, slots=True)
class EncodedWrite:
    """One Modbus write request for a point, before it has a unit id and transaction id.

    Attributes:
        function_code: 5 (single coil), 6 (single register), 16 (multiple registers) or 22
            (mask write register).
        address: First coil/register written, 0-based protocol address [0..65535].
        values: FC 5: ``(0 | 1,)``; FC 6: ``(word,)``; FC 16: the point's words in wire order;
            FC 22: ``(and_mask, or_mask)``. Words are in [0, 65535].
    """

    function_code: int
    address: int
    values: tuple[int, ...]

    def describe(self, unit_id: int) -> str:
        """Human-readable request, e.g. ``FC16 unit_id=1 holding 10..11 = [0x4148, 0x0000]``."""
        fc = self.function_code
        if fc == WRITE_SINGLE_COIL:
            state = "ON" if self.values[0] else "OFF"
            return f"FC5 unit_id={unit_id} coil {self.address} = {state}"
        if fc == MASK_WRITE_REGISTER:
            and_mask, or_mask = self.values
            return (
                f"FC22 unit_id={unit_id} holding {self.address} "
                f"and_mask=0x{and_mask:04X} or_mask=0x{or_mask:04X}"
            )
        words = ", ".join(f"0x{w:04X}" for w in self.values)
        if fc == WRITE_SINGLE_REGISTER:
            return f"FC6 unit_id={unit_id} holding {self.address} = {words}"
        last = self.address + len(self.values) - 1
        return f"FC16 unit_id={unit_id} holding {self.address}..{last} = [{words}]"


def encode_write(value: bool | int | float | str, addr: AddressLike) -> EncodedWrite:
    """Encode a raw value into the write request of a point (the inverse of its decoding).

    Args:
        value: The raw value (device units, after the inverse of scale/offset): a bool for bool
            points, an int for integer types (within the type's range), a real number for
            floats, ASCII text for strings; see `encode`.
        addr: Table, type, bit, length and byte order of the point.

    Returns:
        The request: FC 5 for a coil, FC 22 for a bool on a bit of a holding register, FC 6 for
        a one-register holding point, FC 16 for a wider one.

    Raises:
        ReadOnlyTableError: The point is a discrete input or an input register.
        ValueError: The value does not fit the type, or has the wrong Python type: stricter
            than `encode`, a bool is never a number (nor 0/1 a bool), a float is never an
            integer, and a non-finite float is never written.

    Source: Modbus Application Protocol Specification V1.1b3, §6.5 (FC 5: 0xFF00 = ON,
    0x0000 = OFF on the wire), §6.6 (FC 6), §6.12 (FC 16: 1..123 registers), §6.16 (FC 22:
    result = (current AND and_mask) OR (or_mask AND NOT and_mask)).
    """
    if addr.table in (RegisterType.DISCRETE, RegisterType.INPUT):
        msg = f"{addr.table.value} points are read-only in Modbus (no function code writes them)"
        raise ReadOnlyTableError(msg)
    _check_write_value(value, addr)
    if addr.table is RegisterType.COIL:
        (bit,) = encode(value, addr)
        return EncodedWrite(WRITE_SINGLE_COIL, addr.address, (1 if bit else 0,))
    if addr.type is DataType.BOOL and addr.bit is not None:
        encode(value, addr)  # type check only
        mask = 1 << addr.bit
        return EncodedWrite(
            MASK_WRITE_REGISTER, addr.address, (0xFFFF & ~mask, mask if value else 0)
        )
    words = tuple(encode(value, addr))
    if len(words) > 123:
        msg = f"{len(words)} registers exceed the 123 of one FC 16 request"
        raise ValueError(msg)
    if len(words) == 1:
        return EncodedWrite(WRITE_SINGLE_REGISTER, addr.address, words)
    return EncodedWrite(WRITE_MULTIPLE_REGISTERS, addr.address, words)


def _check_write_value(value: object, addr: AddressLike) -> None:
    """Type checks of a value to write, stricter than `encode` (which also builds test data)."""
    dtype = addr.type
    if dtype is DataType.BOOL:
        if not isinstance(value, bool):
            msg = f"bool point needs true or false, got {value!r}"
            raise ValueError(msg)
        return
    if dtype is DataType.STRING:
        if not isinstance(value, str):
            msg = f"string point needs text, got {value!r}"
            raise ValueError(msg)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{dtype.value} point needs a number, got {value!r}"
        raise ValueError(msg)
    if dtype not in (DataType.FLOAT32, DataType.FLOAT64) and not isinstance(value, int):
        msg = f"{dtype.value} point needs an integer raw value, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"{dtype.value} point needs a finite number, got {value!r}"
        raise ValueError(msg)
