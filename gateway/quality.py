"""Quality codes: the OPC UA StatusCode (uint32) used by every protocol.

Severity is bits 30-31 of the code: 00 Good, 01 Uncertain, 10 Bad.

Source: OPC UA Part 4 §7.39 (StatusCode), named values from OPC UA Part 6
Annex A (``Opc.Ua.StatusCodes.csv``). This module is part of the kernel and imports
nothing else from the project.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

Quality = int
"""An OPC UA StatusCode, uint32 [0 .. 2**32-1]."""


class Q(IntEnum):
    """Named quality codes this project produces (OPC UA StatusCode values)."""

    GOOD = 0x00000000
    UNCERTAIN_LAST_USABLE_VALUE = 0x40900000
    UNCERTAIN_ENGINEERING_UNITS_EXCEEDED = 0x40940000
    BAD = 0x80000000
    BAD_UNEXPECTED_ERROR = 0x80010000
    BAD_COMMUNICATION_ERROR = 0x80050000
    BAD_DECODING_ERROR = 0x80070000
    BAD_TIMEOUT = 0x800A0000
    BAD_NO_COMMUNICATION = 0x80310000
    BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
    BAD_OUT_OF_RANGE = 0x803C0000
    BAD_CONFIGURATION_ERROR = 0x80890000
    BAD_DEVICE_FAILURE = 0x808B0000
    BAD_TYPE_MISMATCH = 0x80740000
    BAD_NO_SUBSCRIPTION = 0x80790000
    BAD_SUBSCRIPTION_ID_INVALID = 0x80280000


class Severity(StrEnum):
    """Severity of a quality code (bits 30-31)."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


_SEVERITY_MASK = 0xC0000000


def severity(code: Quality) -> Severity:
    """Return the severity of a StatusCode.

    Args:
        code: OPC UA StatusCode, uint32.

    Returns:
        GOOD when bits 30-31 are 00, UNCERTAIN when 01, BAD otherwise (10 and the reserved 11).
    """
    bits = code & _SEVERITY_MASK
    if bits == 0:
        return Severity.GOOD
    if bits == 0x40000000:
        return Severity.UNCERTAIN
    return Severity.BAD


def is_bad(code: Quality) -> bool:
    """True when the code's severity is Bad (bit 31 set)."""
    return bool(code & 0x80000000)


def is_usable(code: Quality) -> bool:
    """True for Good and Uncertain codes: data a gap detector counts as received."""
    return not code & 0x80000000


def quality_name(code: Quality) -> str:
    """Human-readable name, e.g. ``BadTimeout``; unknown codes as ``0x80AB0000``."""
    try:
        name = Q(code).name
    except ValueError:
        return f"0x{code:08X}"
    return "".join(part.capitalize() for part in name.split("_"))
