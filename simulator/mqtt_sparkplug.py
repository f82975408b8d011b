"""A minimal Sparkplug B payload encoder for the simulator (protobuf wire format by hand).

Independent of the gateway's decoder on purpose (the simulator shares only the wire protocol
with what it tests): it writes Payload/Metric fields with their Sparkplug field numbers.

Source: Sparkplug 3.0.0 §6.4 (Payload: timestamp=1, metrics=2, seq=3; Metric: name=1,
alias=2, timestamp=3, datatype=4, is_null=7, int_value=10, long_value=11, float_value=12,
double_value=13, boolean_value=14, string_value=15); protobuf encoding (varint, fixed32/64,
length-delimited).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

INT64 = 4
UINT32 = 7
FLOAT = 9
DOUBLE = 10
BOOLEAN = 11
STRING = 12


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


@dataclass(frozen=True)
class Metric:
    """One metric to encode.

    Attributes:
        name: Metric name (births), or None.
        alias: Alias, or None.
        datatype: Sparkplug DataType code, or None (data messages may omit it).
        value: int, float, bool, str or None (is_null).
        timestamp_ms: Acquisition time [ms since the Unix epoch], or None.
    """

    name: str | None
    alias: int | None
    datatype: int | None
    value: int | float | bool | str | None
    timestamp_ms: int | None = None

    def encode(self, value_type: int) -> bytes:
        """Serialize; ``value_type`` picks the value field (the datatype from the birth)."""
        out = bytearray()
        if self.name is not None:
            out += _len(1, self.name.encode())
        if self.alias is not None:
            out += _key(2, 0) + _varint(self.alias)
        if self.timestamp_ms is not None:
            out += _key(3, 0) + _varint(self.timestamp_ms)
        if self.datatype is not None:
            out += _key(4, 0) + _varint(self.datatype)
        value = self.value
        if value is None:
            out += _key(7, 0) + _varint(1)
        elif value_type in (INT64,):
            out += _key(11, 0) + _varint(int(value))
        elif value_type in (UINT32,):
            out += _key(10, 0) + _varint(int(value) & 0xFFFFFFFF)
        elif value_type == FLOAT:
            out += _key(12, 5) + struct.pack("<f", float(value))
        elif value_type == DOUBLE:
            out += _key(13, 1) + struct.pack("<d", float(value))
        elif value_type == BOOLEAN:
            out += _key(14, 0) + _varint(1 if value else 0)
        else:
            out += _len(15, str(value).encode())
        return bytes(out)


def payload(
    metrics: list[tuple[Metric, int]], *, seq: int | None, timestamp_ms: int | None
) -> bytes:
    """Encode a Payload from (metric, value datatype) pairs."""
    out = bytearray()
    if timestamp_ms is not None:
        out += _key(1, 0) + _varint(timestamp_ms)
    for metric, value_type in metrics:
        out += _len(2, metric.encode(value_type))
    if seq is not None:
        out += _key(3, 0) + _varint(seq)
    return bytes(out)


def is_rebirth_request(data: bytes) -> bool:
    """True when an NCMD payload contains the ``Node Control/Rebirth`` metric.

    A byte search suffices for the simulator: the name is a length-delimited UTF-8 string.
    """
    return b"Node Control/Rebirth" in data
