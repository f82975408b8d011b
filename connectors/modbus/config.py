"""Modbus TCP configuration: the device (endpoint) and the per-point register address.

Addresses are 0-based protocol addresses (document register 40001 is holding address 0).
Source: Modbus Application Protocol Specification V1.1b3, §4.3-4.4 and §6.1-6.4.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RegisterType(StrEnum):
    """Modbus data tables and the function code that reads each."""

    COIL = "coil"  # FC 1, 1 bit
    DISCRETE = "discrete"  # FC 2, 1 bit, read-only
    HOLDING = "holding"  # FC 3, 16-bit
    INPUT = "input"  # FC 4, 16-bit, read-only

    @property
    def is_bit(self) -> bool:
        """True for the 1-bit tables (coils, discrete inputs)."""
        return self in (RegisterType.COIL, RegisterType.DISCRETE)

    @property
    def short(self) -> str:
        """Two-letter code used in source URIs: co, di, hr, ir."""
        return {"coil": "co", "discrete": "di", "holding": "hr", "input": "ir"}[self.value]


class DataType(StrEnum):
    """Value types a point can decode; register width in `REGISTER_WIDTH`."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


REGISTER_WIDTH: dict[DataType, int] = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}


class ByteOrder(StrEnum):
    """Byte/word order of multi-byte values, named by where bytes A B C D (big-endian) land.

    ABCD: big-endian bytes and words (Modbus standard). DCBA: fully little-endian.
    BADC: bytes swapped within each word. CDAB: words swapped, bytes big-endian ("word swap").
    """

    ABCD = "ABCD"
    DCBA = "DCBA"
    BADC = "BADC"
    CDAB = "CDAB"


_STRICT = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)


class ModbusAddress(BaseModel):
    """Where a point lives on a Modbus device and how its registers decode.

    Attributes:
        table: Data table (YAML key ``register``): coil, discrete, holding or input.
        address: 0-based protocol address [0..65535].
        type: Value type; bool is the only type for coil/discrete.
        bit: For bool in a holding/input register, the bit [0..15] (0 = least significant).
        length: For string, the number of registers [1..125] (2 ASCII chars each).
        byte_order: ABCD (default), DCBA, BADC or CDAB.
        unit_id: Overrides the device's unit id for this point [0..255].
    """

    model_config = _STRICT

    table: RegisterType = Field(
        alias="register", description="Modbus table: coil | discrete | holding | input"
    )
    address: int = Field(ge=0, le=65535, description="0-based protocol address [0..65535]")
    type: DataType = Field(default=DataType.UINT16, description="Value type")
    bit: int | None = Field(
        default=None, ge=0, le=15, description="Bit of a register for bool [0..15]"
    )
    length: int | None = Field(
        default=None, ge=1, le=125, description="Registers of a string [1..125]"
    )
    byte_order: ByteOrder = Field(default=ByteOrder.ABCD, description="Byte/word order")
    unit_id: int | None = Field(default=None, ge=0, le=255, description="Unit id override [0..255]")

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if self.table.is_bit and self.type is not DataType.BOOL:
            msg = f"type: a {self.table.value} point must have type bool, not {self.type.value}"
            raise ValueError(msg)
        if self.type is DataType.STRING and self.length is None:
            msg = "length: a string point needs `length` (number of registers)"
            raise ValueError(msg)
        if self.type is not DataType.STRING and self.length is not None:
            msg = "length: applies only to type string"
            raise ValueError(msg)
        if self.bit is not None and (self.table.is_bit or self.type is not DataType.BOOL):
            msg = "bit: applies only to a bool in a holding or input register"
            raise ValueError(msg)
        end = self.address + self.width
        if end > 65536:
            msg = f"address: registers {self.address}..{end - 1} run past address 65535"
            raise ValueError(msg)
        return self

    @property
    def width(self) -> int:
        """Number of registers (or bits, for coil/discrete) the point occupies."""
        if self.type is DataType.STRING:
            return self.length or 1
        return REGISTER_WIDTH[self.type]


class AddressLike(Protocol):
    """What the codec and the poll plan read of a point's address.

    `ModbusAddress` (and the point configs) and `RegisterAddress` have it: table, 0-based
    address, type, bit, string length, byte order, unit id override and width in registers
    (bits for coil/discrete).
    """

    @property
    def table(self) -> RegisterType: ...  # noqa: D102
    @property
    def address(self) -> int: ...  # noqa: D102
    @property
    def type(self) -> DataType: ...  # noqa: D102
    @property
    def bit(self) -> int | None: ...  # noqa: D102
    @property
    def length(self) -> int | None: ...  # noqa: D102
    @property
    def byte_order(self) -> ByteOrder: ...  # noqa: D102
    @property
    def unit_id(self) -> int | None: ...  # noqa: D102
    @property
    def width(self) -> int: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class RegisterAddress:
    """A validated point address in the compact form the connector keeps per point.

    The same fields as `ModbusAddress` (already validated there) in about 100 bytes instead of
    a pydantic model's ~550 (issue #8: the runtime keeps one per configured point).

    Attributes:
        table: Data table: coil, discrete, holding or input.
        address: 0-based protocol address [0..65535].
        type: Value type.
        bit: Bit [0..15] of a register for bool, or None.
        length: Registers of a string [1..125], or None.
        byte_order: ABCD, DCBA, BADC or CDAB.
        unit_id: Unit id override [0..255], or None for the device's.
        width: Registers (bits for coil/discrete) the point occupies; derived.
    """

    table: RegisterType
    address: int
    type: DataType
    bit: int | None
    length: int | None
    byte_order: ByteOrder
    unit_id: int | None
    width: int

    @classmethod
    def of(cls, addr: AddressLike) -> RegisterAddress:
        """The compact copy of a validated address (a `ModbusAddress` or a point config)."""
        return cls(
            addr.table,
            addr.address,
            addr.type,
            addr.bit,
            addr.length,
            addr.byte_order,
            addr.unit_id,
            addr.width,
        )


class ModbusDeviceConfig(BaseModel):
    """A Modbus TCP device (endpoint).

    Attributes:
        id: Device id, unique in the file.
        protocol: Always "modbus".
        host: Host name or IP address.
        port: TCP port [1..65535], default 502.
        unit_id: Default unit id [0..255], default 1.
        timeout: Request timeout [s] (0 .. poll_interval), default min(1.0, poll_interval / 2).
        poll_interval: Default poll interval of its points [s] [0.01 .. 86400], default 1.0.
        max_gap: Unused registers allowed inside one coalesced request [0..124], default 0.
        max_registers: Registers per request for FC 3/4 [1..125], default 125.
        max_bits: Bits per request for FC 1/2 [1..2000], default 2000.
        retries: Extra attempts after a timeout, within one poll [0..5], default 0.
    """

    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="Device id (slug)")
    protocol: Literal["modbus"] = "modbus"
    host: str = Field(min_length=1, description="Host name or IP address")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port [1..65535]")
    unit_id: int = Field(default=1, ge=0, le=255, description="Default unit id [0..255]")
    timeout: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Request timeout [s]; default min(1.0, poll_interval / 2)",
    )
    poll_interval: float = Field(default=1.0, ge=0.01, le=86400, description="Poll interval [s]")
    max_gap: int = Field(
        default=0, ge=0, le=124, description="Max unused registers bridged [0..124]"
    )
    max_registers: int = Field(default=125, ge=1, le=125, description="Registers per request")
    max_bits: int = Field(default=2000, ge=1, le=2000, description="Bits per request")
    retries: int = Field(default=0, ge=0, le=5, description="Retries after a timeout [0..5]")

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: object) -> object:
        """Without an explicit timeout, use min(1.0 s, poll_interval / 2)."""
        if isinstance(data, dict) and "timeout" not in data:
            interval = data.get("poll_interval", 1.0)
            if isinstance(interval, int | float) and interval > 0:
                return {**data, "timeout": min(1.0, interval / 2)}
        return data

    @property
    def endpoint(self) -> str:
        """Locator prefix ``modbus://host:port``."""
        return f"modbus://{self.host}:{self.port}"
