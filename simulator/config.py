"""Simulator profile: pydantic models, YAML loading and key-path error messages.

A profile declares devices: Modbus TCP devices (``protocol: modbus``, the default) with the
registers each one serves (type, byte order, scale and the signal that drives the value), and
OPC UA servers (``protocol: opcua``) with their variables (type, unit, range, signal), security
and operation limits. Each device has a fault schedule. Unknown keys are errors. Times are
seconds; fault times count from the moment every device listens (the ready file is written).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

Table = Literal["coil", "discrete", "holding", "input"]
DataType = Literal[
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]
Scalar = bool | int | float | str

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
TYPE_WIDTH: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---------------------------------------------------------------------------------------------
# Signals: value as a function of the wall clock (epoch seconds).


class ConstantSignal(_Strict):
    """Always the same value."""

    kind: Literal["constant"]
    value: Scalar


class RampSignal(_Strict):
    """Sawtooth: ``min + (slope·t mod (max − min))``; slope in units per second."""

    kind: Literal["ramp"]
    slope: float = 1.0
    min: float = 0.0
    max: float = 100.0

    @model_validator(mode="after")
    def _check(self) -> RampSignal:
        if not self.max > self.min:
            raise ValueError("max: must be greater than min")
        return self


class SineSignal(_Strict):
    """``offset + amplitude·sin(2π·t / period)``; period in seconds."""

    kind: Literal["sine"]
    amplitude: float = 1.0
    period: float = Field(60.0, gt=0)
    offset: float = 0.0


class StepSignal(_Strict):
    """Cycles through ``values``, one every ``every`` seconds (epoch-aligned)."""

    kind: Literal["step"]
    values: list[Scalar] = Field(min_length=1)
    every: float = Field(1.0, gt=0)


class CounterSignal(_Strict):
    """The oracle: ``floor(t / period)`` (wrapped to the register's bit width)."""

    kind: Literal["counter"]
    period: float = Field(1.0, gt=0)


class RandomWalkSignal(_Strict):
    """Bounded random walk, deterministic from the profile seed and the 1-s tick number.

    Each 1-s tick moves the value by at most ``2·step``; the walk is reflected into
    ``[min, max]``.
    """

    kind: Literal["random_walk"]
    step: float = Field(1.0, gt=0)
    min: float = 0.0
    max: float = 100.0

    @model_validator(mode="after")
    def _check(self) -> RandomWalkSignal:
        if not self.max > self.min:
            raise ValueError("max: must be greater than min")
        return self


Signal = Annotated[
    ConstantSignal | RampSignal | SineSignal | StepSignal | CounterSignal | RandomWalkSignal,
    Field(discriminator="kind"),
]


def _is_text_signal(signal: Signal) -> bool:
    if isinstance(signal, ConstantSignal):
        return isinstance(signal.value, str)
    if isinstance(signal, StepSignal):
        return any(isinstance(v, str) for v in signal.values)
    return False


# ---------------------------------------------------------------------------------------------
# Registers.


class RegisterConfig(_Strict):
    """One served point: where it lives, how it is encoded and what drives it.

    Attributes:
        table: ``coil``/``discrete`` (1 bit per address) or ``holding``/``input`` (16-bit words).
        address: 0-based PDU address of the first register/bit.
        type: data type; defaults to ``bool`` in bit tables and is required in register tables.
        byte_order: for values wider than one byte (ABCD big-endian, DCBA little-endian, BADC
            bytes swapped in each word, CDAB words swapped).
        scale: raw = round(value·scale) for integer types, value·scale for floats.
        bit: for ``bool`` in a holding/input register, the bit 0..15 (0 = least significant).
        length: for ``string``, the number of registers (2 ASCII characters each).
        signal: the value source.
        on_write: what a write request touching this point does (holding and coil tables):
            ``apply`` (default: the value overrides the signal, the device answers),
            ``unanswered`` (applied, but the response is never sent: the client's outcome is
            unknown), or an exception code 1..255 (nothing applied, the device answers that
            exception, e.g. 2 or 3).
    """

    table: Table
    address: int = Field(ge=0, le=65535)
    type: DataType | None = None
    byte_order: ByteOrder = "ABCD"
    scale: float | None = None
    bit: int | None = Field(None, ge=0, le=15)
    length: int | None = Field(None, ge=1, le=123)
    signal: Signal
    on_write: Literal["apply", "unanswered"] | Annotated[int, Field(ge=1, le=255)] = "apply"

    @model_validator(mode="after")
    def _check(self) -> RegisterConfig:
        dtype = self.data_type
        if self.table in BIT_TABLES:
            if dtype != "bool":
                raise ValueError(f"type: {self.table} points are bool (got {dtype!r})")
            if self.bit is not None:
                raise ValueError(f"bit: only for bool in holding/input registers, not {self.table}")
        elif self.type is None:
            raise ValueError("type: required for holding/input registers")
        if dtype == "bool" and self.table not in BIT_TABLES and self.bit is None:
            raise ValueError("bit: required for bool in a holding/input register (0..15)")
        if dtype != "bool" and self.bit is not None:
            raise ValueError("bit: only allowed with type bool")
        if dtype == "string":
            if self.length is None:
                raise ValueError("length: required for string (number of registers)")
        elif self.length is not None:
            raise ValueError("length: only allowed with type string")
        if self.byte_order != "ABCD" and dtype in {"bool", "string"}:
            raise ValueError(f"byte_order: not applicable to {dtype}")
        if self.scale is not None and (
            dtype in {"bool", "string"} or self.scale == 0 or not math.isfinite(self.scale)
        ):
            raise ValueError("scale: must be a finite non-zero number, for numeric types only")
        if _is_text_signal(self.signal) and dtype != "string":
            raise ValueError(f"signal: text values need type string (got {dtype!r})")
        if self.address + self.width > 65536:
            raise ValueError("address: register span goes past 65535")
        if self.on_write != "apply" and self.table not in {"holding", "coil"}:
            raise ValueError(f"on_write: {self.table} points cannot be written")
        return self

    @property
    def data_type(self) -> DataType:
        """The effective data type (``bool`` by default in bit tables)."""
        if self.type is not None:
            return self.type
        return "bool"

    @property
    def width(self) -> int:
        """Span in addresses: bits in bit tables, 16-bit registers otherwise."""
        if self.table in BIT_TABLES or self.data_type == "bool":
            return 1
        if self.data_type == "string":
            return self.length or 1
        return TYPE_WIDTH[self.data_type]


# ---------------------------------------------------------------------------------------------
# Faults.


class _FaultBase(_Strict):
    start: float = Field(ge=0)
    duration: float = Field(gt=0)
    every: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_every(self) -> _FaultBase:
        if self.every is not None and self.every <= self.duration:
            raise ValueError("every: must be greater than duration")
        return self


class OfflineFault(_FaultBase):
    """Device down. ``close``: listener and connections closed; ``silent``: never answers."""

    kind: Literal["offline"]
    mode: Literal["close", "silent"] = "close"


class ExceptionFault(_FaultBase):
    """Requests overlapping ``[from, to]`` of ``table`` answer Modbus exception ``code``.

    With no table the whole device (every table) is affected; ``from``/``to`` default to the
    whole address range.
    """

    kind: Literal["exception"]
    code: int = Field(2, ge=1, le=255)
    table: Table | None = None
    from_: int = Field(0, ge=0, le=65535, alias="from")
    to: int = Field(65535, ge=0, le=65535)

    @model_validator(mode="after")
    def _check_range(self) -> ExceptionFault:
        if self.to < self.from_:
            raise ValueError("to: must be >= from")
        return self


class LatencyFault(_FaultBase):
    """Every response is delayed by ``delay`` seconds."""

    kind: Literal["latency"]
    delay: float = Field(gt=0)


class FrozenFault(_FaultBase):
    """Values stop changing (the clock driving the signals stands still)."""

    kind: Literal["frozen"]


class StatusFault(_FaultBase):
    """OPC UA only: variables report StatusCode ``status`` (name or number) while active.

    ``variables`` lists browse names (``name`` keys) to affect; none = every variable. With
    ``null_value`` the DataValue carries no value (a status-only notification).
    """

    kind: Literal["status"]
    status: str | int
    variables: list[str] | None = None
    null_value: bool = False

    @model_validator(mode="after")
    def _check_status(self) -> StatusFault:
        if isinstance(self.status, int) and not 0 <= self.status <= 0xFFFFFFFF:
            raise ValueError("status: must be a StatusCode name or 0..0xFFFFFFFF")
        return self


class ClockSkewFault(_FaultBase):
    """OPC UA only: SourceTimestamps are shifted by ``offset`` seconds while active.

    ``source_time: min`` sends MinDateTime (1601-01-01) and ``null`` no SourceTimestamp
    instead; ``variables`` as for ``status``.
    """

    kind: Literal["clock_skew"]
    offset: float = 0.0
    source_time: Literal["shifted", "min", "null"] = "shifted"
    variables: list[str] | None = None


ModbusFault = Annotated[
    OfflineFault | ExceptionFault | LatencyFault | FrozenFault,
    Field(discriminator="kind"),
]
OpcUaFault = Annotated[
    OfflineFault | FrozenFault | StatusFault | ClockSkewFault,
    Field(discriminator="kind"),
]
Fault = OfflineFault | ExceptionFault | LatencyFault | FrozenFault | StatusFault | ClockSkewFault
"""Any fault of any device kind."""


# ---------------------------------------------------------------------------------------------
# Devices and profile.


class DeviceConfig(_Strict):
    """One Modbus TCP device: one listener on ``host:port`` answering ``unit_ids``.

    Requests for other unit ids answer exception 0x0B (gateway target failed to respond).
    With ``max_connections`` set, a connection beyond that many open ones is closed at once
    (a single-connection device: ``max_connections: 1``), and counted.
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    protocol: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    unit_ids: list[int] = Field(default_factory=lambda: [1], min_length=1)
    max_connections: int | None = Field(None, ge=1, le=10_000)
    registers: list[RegisterConfig] = Field(default_factory=list)
    faults: list[ModbusFault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DeviceConfig:
        for uid in self.unit_ids:
            if not 0 <= uid <= 255:
                raise ValueError(f"unit_ids: {uid} is outside 0..255")
        if len(set(self.unit_ids)) != len(self.unit_ids):
            raise ValueError("unit_ids: duplicates")
        _check_overlaps(self.registers)
        return self


def _check_overlaps(registers: list[RegisterConfig]) -> None:
    """Raise ValueError naming ``registers[i]`` when two points share an address (or bit)."""
    taken: dict[tuple[str, int], tuple[int, int | None]] = {}
    for idx, reg in enumerate(registers):
        for addr in range(reg.address, reg.address + reg.width):
            key = (reg.table, addr)
            prev = taken.get(key)
            if prev is not None:
                other, other_bit = prev
                shared_ok = reg.bit is not None and other_bit is not None and other_bit != reg.bit
                if not shared_ok:
                    raise ValueError(
                        f"registers: registers[{idx}] ({reg.table} {addr}) overlaps "
                        f"registers[{other}]"
                    )
            taken[key] = (idx, reg.bit)


# ---------------------------------------------------------------------------------------------
# OPC UA servers.

OpcUaType = Literal[
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
    "String",
]
OpcUaPolicy = Literal[
    "None",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128_Sha256_RsaOaep_Sign",
    "Aes128_Sha256_RsaOaep_SignAndEncrypt",
    "Aes256_Sha256_RsaPss_Sign",
    "Aes256_Sha256_RsaPss_SignAndEncrypt",
    "Basic128Rsa15_Sign",
    "Basic128Rsa15_SignAndEncrypt",
    "Basic256_Sign",
    "Basic256_SignAndEncrypt",
]

_NONE_POLICY: OpcUaPolicy = "None"


class VariableConfig(_Strict):
    """One OPC UA variable of a simulated server.

    Attributes:
        name: Browse name path below the device object: ``Boiler1/SupplyTemp`` makes an object
            ``Boiler1`` holding variable ``SupplyTemp`` (browse names in the device namespace).
        node_id: ``s=<string>`` or ``i=<number>`` in the device namespace; default
            ``s=<name with / replaced by .>``.
        type: OPC UA built-in DataType of the value.
        array: Serve an array of this many copies of the value (ValueRank 1) instead.
        unit: Engineering unit (UCUM code) for the EngineeringUnits property.
        eu_range: [low, high] for the EURange property (percent deadbands need it).
        scale: served value = signal value × scale (integers rounded).
        writable: Clients may write the value (it then overrides the signal).
        signal: The value source.
    """

    name: str = Field(min_length=1, pattern=r"^[^/]+(/[^/]+)*$")
    node_id: str | None = Field(None, pattern=r"^(s=.+|i=[0-9]+)$")
    type: OpcUaType = "Double"
    array: int | None = Field(None, ge=1, le=1000)
    unit: str | None = None
    eu_range: tuple[float, float] | None = None
    scale: float | None = None
    writable: bool = False
    signal: Signal

    @model_validator(mode="after")
    def _check(self) -> VariableConfig:
        text = _is_text_signal(self.signal)
        if text and self.type != "String":
            raise ValueError(f"signal: text values need type String (got {self.type!r})")
        if self.scale is not None and (
            self.type in {"Boolean", "String"} or self.scale == 0 or not math.isfinite(self.scale)
        ):
            raise ValueError("scale: must be a finite non-zero number, for numeric types only")
        if self.eu_range is not None and not self.eu_range[0] < self.eu_range[1]:
            raise ValueError("eu_range: must be [low, high] with low < high")
        return self

    @property
    def identifier(self) -> str:
        """The node id without namespace: ``s=...`` or ``i=...``."""
        return self.node_id or "s=" + self.name.replace("/", ".")


class OperationLimitsConfig(_Strict):
    """ServerCapabilities/OperationLimits the server announces and enforces (0 = no limit).

    A call with more operations than its limit is refused with ``BadTooManyOperations``.
    """

    max_nodes_per_read: int = Field(0, ge=0)
    max_monitored_items_per_call: int = Field(0, ge=0)
    max_nodes_per_browse: int = Field(0, ge=0)
    max_nodes_per_translate: int = Field(0, ge=0)


class OpcUaSecurityConfig(_Strict):
    """Endpoints (security policy and mode) the server offers, and its certificate.

    Without ``certificate``/``private_key``, a secure policy makes the simulator generate a
    self-signed pair in its working directory (listed in the ready file).
    """

    policies: list[OpcUaPolicy] = Field(default_factory=lambda: [_NONE_POLICY], min_length=1)
    certificate: str | None = None
    private_key: str | None = None
    application_uri: str | None = None

    @model_validator(mode="after")
    def _check(self) -> OpcUaSecurityConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate: give certificate and private_key together")
        return self


class OpcUaServerConfig(_Strict):
    """One simulated OPC UA server: ``opc.tcp://host:port<path>``.

    Attributes:
        id: Device id (also the name of the object holding the variables).
        protocol: Always ``opcua``.
        host: Listen address.
        port: TCP port; 0 picks a free one (kept across restarts).
        path: Endpoint path.
        namespace: Namespace URI of the variables (index 2 on an asyncua server).
        update_interval: How often values are recomputed [s]; a change is written with the
            computation time as SourceTimestamp.
        session_timeout: Longest session timeout the server grants [s].
        allow_anonymous: Accept anonymous sessions.
        users: User name → password accepted for UserName sessions.
        security: Offered endpoints and certificate.
        limits: Operation limits announced and enforced.
        variables: The variables.
        faults: ``offline`` (server down: stopped, restarted as a new server on the same
            endpoint), ``frozen``, ``status``, ``clock_skew``.
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    protocol: Literal["opcua"]
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    path: str = Field("/ot-gateway/sim", pattern=r"^(/[A-Za-z0-9_.~-]+)*$")
    namespace: str | None = None
    update_interval: float = Field(0.1, ge=0.01, le=60)
    session_timeout: float = Field(600.0, ge=5, le=3600)
    allow_anonymous: bool = True
    users: dict[str, str] = Field(default_factory=dict)
    security: OpcUaSecurityConfig = Field(default_factory=OpcUaSecurityConfig)
    limits: OperationLimitsConfig = Field(default_factory=OperationLimitsConfig)
    variables: list[VariableConfig] = Field(default_factory=list)
    faults: list[OpcUaFault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> OpcUaServerConfig:
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise ValueError("variables: duplicate variable names")
        ids = [v.identifier for v in self.variables]
        if len(set(ids)) != len(ids):
            raise ValueError("variables: duplicate node ids")
        for i, fault in enumerate(self.faults):
            if isinstance(fault, OfflineFault) and fault.mode != "close":
                raise ValueError(f"faults: faults[{i}]: an OPC UA server supports mode close only")
            if isinstance(fault, StatusFault | ClockSkewFault):
                unknown = sorted(set(fault.variables or []) - set(names))
                if unknown:
                    raise ValueError(f"faults: faults[{i}]: unknown variables {unknown}")
        if not (self.allow_anonymous or self.users):
            raise ValueError("users: needed when allow_anonymous is false")
        return self

    @property
    def namespace_uri(self) -> str:
        """The namespace URI of the variables."""
        return self.namespace or f"urn:ot-gateway:simulator:{self.id}:plant"


def _device_protocol(value: Any) -> str:  # noqa: ANN401 - raw YAML or a model
    if isinstance(value, dict):
        return str(value.get("protocol", "modbus"))
    return str(getattr(value, "protocol", "modbus"))


AnyDevice = Annotated[
    Annotated[DeviceConfig, Tag("modbus")] | Annotated[OpcUaServerConfig, Tag("opcua")],
    Discriminator(_device_protocol),
]
"""A device of either protocol; ``protocol`` (default ``modbus``) selects the model."""


class Profile(_Strict):
    """A simulator profile (the YAML file).

    Attributes:
        seed: seed of the ``random_walk`` signals.
        truth: ground-truth JSON Lines path (relative to the working directory); none = off.
        stats: request-counter JSON path, rewritten every 0.5 s; none = off.
        devices: the devices, each with its own listener.
    """

    seed: int = 0
    truth: str | None = None
    stats: str | None = None
    devices: list[AnyDevice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Profile:
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("devices: device ids must be unique")
        fixed = [(d.host, d.port) for d in self.devices if d.port]
        if len(set(fixed)) != len(fixed):
            raise ValueError("devices: two devices use the same host and port")
        return self


# ---------------------------------------------------------------------------------------------
# Loading.


class ProfileError(Exception):
    """The profile cannot be used; ``str()`` is the user-facing message (one line per problem)."""


_TAGS = frozenset(
    {"constant", "ramp", "sine", "step", "counter", "random_walk"}
    | {"offline", "exception", "latency", "frozen", "status", "clock_skew"}
    | {"modbus", "opcua"}
)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    after_tag = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            after_tag = False
        elif not after_tag and (part in _TAGS or part.startswith("function-")):
            after_tag = True  # union tag inserted by pydantic, not a key of the file
        else:
            out += ("." if out else "") + part
            after_tag = False
    return out or "(top level)"


def format_validation_error(err: ValidationError) -> str:
    """Render a pydantic error as ``key.path: message`` lines.

    Args:
        err: the validation error raised for a profile.

    Returns:
        One line per problem, each starting with the key path in the YAML file.
    """
    lines: list[str] = []
    for e in err.errors(include_url=False):
        path = _format_loc(tuple(e["loc"]))
        msg = str(e["msg"]).removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and head.isidentifier() and head.islower():
            path, msg = (f"{path}.{head}" if path != "(top level)" else head), rest
        if e["type"] == "union_tag_invalid" and "_device_protocol" in msg:
            tag = (e.get("ctx") or {}).get("tag")
            path, msg = f"{path}.protocol", f"must be modbus or opcua (got {tag!r})"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif isinstance(e.get("input"), int | float | str) and e["type"] != "value_error":
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return "\n".join(lines)


def parse_profile(data: Any) -> Profile:  # noqa: ANN401 - raw YAML data
    """Validate already-parsed profile data.

    Args:
        data: the mapping read from YAML (or built by a test).

    Returns:
        The validated profile.

    Raises:
        ProfileError: with key-path messages.
    """
    if not isinstance(data, dict):
        raise ProfileError("(top level): the profile must be a mapping")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(exc)) from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a YAML profile file.

    Args:
        path: the profile file.

    Returns:
        The validated profile.

    Raises:
        ProfileError: unreadable file, YAML syntax error or invalid content.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read profile: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{p}: invalid YAML: {exc}") from None
    return parse_profile(data)
