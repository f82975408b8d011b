"""Value → 16-bit register words, written independently of the gateway's codec.

Byte orders name the order in which the big-endian bytes ``A B C D`` (more for 64-bit) of the
value appear on the wire: ABCD big-endian bytes and words, DCBA fully little-endian, BADC bytes
swapped in each word, CDAB words reversed. Integers wrap modulo 2^bits (two's complement).
"""

from __future__ import annotations

import math
import struct

from simulator.signals import Value

_INT_BITS: dict[str, tuple[int, bool]] = {
    "int16": (16, True),
    "uint16": (16, False),
    "int32": (32, True),
    "uint32": (32, False),
    "int64": (64, True),
    "uint64": (64, False),
}
_FLOAT_FMT: dict[str, str] = {"float32": ">f", "float64": ">d"}


def reorder(raw: bytes, byte_order: str) -> bytes:
    """Reorder big-endian ``raw`` bytes (even length) to ``byte_order`` on the wire.

    Args:
        raw: the value's bytes, big-endian.
        byte_order: ABCD, DCBA, BADC or CDAB.

    Returns:
        The bytes in wire order.
    """
    if byte_order == "ABCD":
        return raw
    if byte_order == "DCBA":
        return raw[::-1]
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if byte_order == "BADC":
        return b"".join(w[::-1] for w in words)
    if byte_order == "CDAB":
        return b"".join(reversed(words))
    raise ValueError(f"unknown byte order {byte_order!r}")


def _as_number(value: Value) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return float(value)


def to_words(raw: bytes) -> list[int]:
    """Split bytes (even length) into big-endian 16-bit words.

    Args:
        raw: wire bytes.

    Returns:
        One int 0..65535 per two bytes.
    """
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def encode_string(value: Value, length: int) -> list[int]:
    """Encode text as ``length`` registers, 2 ASCII characters each, NUL-padded.

    Non-ASCII characters become ``?``; text longer than ``2·length`` is cut.

    Args:
        value: the text (other values are converted with ``str``).
        length: number of registers.

    Returns:
        ``length`` words.
    """
    raw = str(value).encode("ascii", errors="replace")[: 2 * length]
    return to_words(raw.ljust(2 * length, b"\x00"))


def encode_value(
    value: Value,
    dtype: str,
    byte_order: str = "ABCD",
    scale: float | None = None,
    length: int | None = None,
) -> list[int]:
    """Encode one value of a register point (not ``bool``) into register words.

    Args:
        value: the signal value in engineering units.
        dtype: int16 … uint64, float32, float64 or string.
        byte_order: ABCD, DCBA, BADC or CDAB.
        scale: raw = round(value·scale) for integers, value·scale for floats.
        length: registers of a ``string``.

    Returns:
        The words to serve, first word at the point's address.
    """
    if dtype == "string":
        return encode_string(value, length or 1)
    if dtype in _INT_BITS and isinstance(value, int) and (scale is None or scale.is_integer()):
        bits, _signed = _INT_BITS[dtype]
        exact = int(value) * (int(scale) if scale is not None else 1)  # no float rounding
        return to_words(reorder((exact % (1 << bits)).to_bytes(bits // 8, "big"), byte_order))
    number = _as_number(value)
    if scale is not None:
        number *= scale
    if dtype in _FLOAT_FMT:
        try:
            raw = struct.pack(_FLOAT_FMT[dtype], number)
        except OverflowError:  # beyond float32: serve ±inf, as a real device would overflow
            raw = struct.pack(_FLOAT_FMT[dtype], math.copysign(math.inf, number))
    else:
        bits, _signed = _INT_BITS[dtype]
        raw_int = round(number) if math.isfinite(number) else 0
        raw = (raw_int % (1 << bits)).to_bytes(bits // 8, "big")
    return to_words(reorder(raw, byte_order))


def as_bool(value: Value) -> bool:
    """Truth value of a signal for a bool point (non-zero numbers and non-empty text are on).

    Args:
        value: the signal value.

    Returns:
        The bit to serve.
    """
    if isinstance(value, str):
        return value.strip().lower() not in {"", "0", "false", "off"}
    return bool(value)
