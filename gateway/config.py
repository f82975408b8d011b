"""The gateway's YAML configuration: pydantic models, loading, and error messages.

One file declares ``sites -> assets -> points`` and ``devices``. Every error names its key path
(``sites[0].assets[1].points[2].address``) and `load_config` raises `ConfigError` with all
messages; the CLI prints them and exits 2, without a traceback (RELIABILITY R27).

Environment references ``${NAME}`` in any string are replaced from the environment at load
time; a missing variable is an error that names the key path, never the value.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)

from connectors.modbus.config import ModbusAddress, ModbusDeviceConfig
from connectors.mqtt.config import MqttAddress, MqttDeviceConfig, MqttPublisherConfig
from connectors.opcua.config import AcquisitionMode, OpcUaAddress, OpcUaDeviceConfig
from gateway.sparkplug_config import SparkplugEdgeConfig

_STRICT = ConfigDict(extra="forbid", frozen=True)
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML has it (about 5x faster on large point lists)."""
SLUG = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_KEYS = frozenset({"token", "password", "secret"})


class ConfigError(Exception):
    """The configuration is invalid; `messages` holds one ``key.path: reason`` line per error."""

    def __init__(self, source: str, messages: list[str]) -> None:
        super().__init__(
            f"invalid configuration {source}:\n" + "\n".join(f"  {m}" for m in messages)
        )
        self.source = source
        self.messages = messages


NO_EXPECTATION_S = 86400.0
"""Expected interval [s] of a point that promises no rate (an MQTT topic with no
`expected_interval`): only Bad data and a day of silence open gaps."""


class PointBase(BaseModel):
    """What every point has, whatever its protocol.

    Attributes:
        id: Point id (slug), unique within its asset.
        name: Display name.
        device: Id of the device that serves the point.
        unit: UCUM-style unit code, e.g. "Cel", "kPa", "kW.h".
        scale: Engineering value = raw × scale + offset. Default 1.
        offset: See scale. Default 0.
        range: Optional engineering range [min, max]; values outside are Uncertain.
        poll_interval: Overrides the device's poll interval [s] [0.01 .. 86400].
        expected_interval: Seconds between samples when healthy, for gap detection, where
            the protocol does not imply it (MQTT) [s] [0.01 .. 86400].
        writable: The point may be written through the API (also needs ``writes.enabled``).
            Default false.
        write_range: Engineering values a write may request [min, max]; required when
            ``writable`` (defaults to ``range`` when that is set).
    """

    model_config = _STRICT

    id: str = Field(pattern=SLUG, description="Point id (slug)")
    name: str | None = None
    device: str = Field(description="Id of the device serving this point")
    unit: str | None = Field(default=None, max_length=32, description="UCUM-style unit code")
    scale: float = Field(default=1.0, allow_inf_nan=False, description="Multiplier applied to raw")
    offset: float = Field(default=0.0, allow_inf_nan=False, description="Added after scale")
    range: tuple[float, float] | None = Field(
        default=None, description="Engineering range [min, max]; outside -> Uncertain"
    )
    poll_interval: float | None = Field(default=None, ge=0.01, le=86400, description="[s]")
    expected_interval: float | None = Field(
        default=None, ge=0.01, le=86400, description="Expected seconds between samples [s]"
    )
    writable: bool = Field(default=False, description="May be written via the API")
    write_range: tuple[float, float] | None = Field(
        default=None, description="Allowed write values [min, max] in engineering units"
    )

    @model_validator(mode="after")
    def _check_range(self) -> Self:
        for name in ("range", "write_range"):
            value = getattr(self, name)
            if value is not None:
                low, high = value
                if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                    msg = f"{name}: must be [min, max] with finite min <= max, got {list(value)}"
                    raise ValueError(msg)
        kind = getattr(self, "type", None) or getattr(self, "value_type", None)
        numeric = str(getattr(kind, "value", kind)) not in ("bool", "string")
        if self.writable and numeric and self.write_range is None and self.range is None:
            msg = "write_range: required for a writable numeric point (or set range)"
            raise ValueError(msg)
        return self

    @property
    def effective_write_range(self) -> tuple[float, float] | None:
        """``write_range``, else ``range`` (engineering units); None when neither is set."""
        return self.write_range if self.write_range is not None else self.range


class ModbusPointConfig(ModbusAddress, PointBase):
    """A point on a Modbus device: the common fields plus the register address (flat keys)."""

    @model_validator(mode="after")
    def _writable_table(self) -> Self:
        if self.writable and self.table.value in ("input", "discrete"):
            msg = f"writable: {self.table.value} points are read-only in Modbus"
            raise ValueError(msg)
        return self


class OpcUaPointConfig(OpcUaAddress, PointBase):
    """A point on an OPC UA server: the common fields plus `node_id`/`browse_path` and mode."""


class MqttPointConfig(PointBase):
    """A point fed by an MQTT device: its own topic rule under `mqtt:`, or a device mapping.

    Attributes:
        mqtt: The point's own topic rule, or None when one of the device's `mappings`
            resolves the point's key.
    """

    mqtt: MqttAddress | None = Field(default=None, description="The point's own topic rule")

    @model_validator(mode="after")
    def _not_writable(self) -> Self:
        if self.writable:
            msg = "writable: MQTT points cannot be written (commands are never sent, S13)"
            raise ValueError(msg)
        return self


def _point_kind(value: Any) -> str:  # noqa: ANN401 - pydantic passes raw input or a model
    """Discriminate points by their address keys: register -> Modbus, node_id -> OPC UA."""
    if isinstance(value, dict):
        if "register" in value or "table" in value:
            return "point:modbus"
        if "node_id" in value or "browse_path" in value:
            return "point:opcua"
        return "point:other"
    if isinstance(value, ModbusPointConfig):
        return "point:modbus"
    if isinstance(value, OpcUaPointConfig):
        return "point:opcua"
    return "point:other"


PointConfig = Annotated[
    Annotated[ModbusPointConfig, Tag("point:modbus")]
    | Annotated[OpcUaPointConfig, Tag("point:opcua")]
    | Annotated[MqttPointConfig, Tag("point:other")],
    Discriminator(_point_kind),
]
"""A point of any protocol, chosen by its keys (`register`, `node_id`/`browse_path`, else MQTT)."""
AnyPoint = ModbusPointConfig | OpcUaPointConfig | MqttPointConfig


def _device_kind(value: Any) -> str:  # noqa: ANN401 - pydantic passes raw input or a model
    """Discriminate devices by `protocol` (default modbus)."""
    proto = value.get("protocol", "modbus") if isinstance(value, dict) else value.protocol
    return f"device:{proto}"


DeviceConfig = Annotated[
    Annotated[ModbusDeviceConfig, Tag("device:modbus")]
    | Annotated[OpcUaDeviceConfig, Tag("device:opcua")]
    | Annotated[MqttDeviceConfig, Tag("device:mqtt")],
    Discriminator(
        _device_kind,
        custom_error_type="unknown_protocol",
        custom_error_message="protocol must be modbus, opcua or mqtt",
    ),
]
"""A device of any protocol, chosen by its `protocol` key."""
AnyDevice = ModbusDeviceConfig | OpcUaDeviceConfig | MqttDeviceConfig


class AssetConfig(BaseModel):
    """A physical thing (pump, line, meter) with its points."""

    model_config = _STRICT

    id: str = Field(pattern=SLUG, description="Asset id (slug), unique within its site")
    name: str | None = None
    kind: str | None = Field(default=None, description="Free-form asset class, e.g. pump")
    points: list[PointConfig] = Field(default_factory=list)


class SiteConfig(BaseModel):
    """A plant or location holding assets."""

    model_config = _STRICT

    id: str = Field(pattern=SLUG, description="Site id (slug)")
    name: str | None = None
    assets: list[AssetConfig] = Field(default_factory=list)


Role = Literal["viewer", "operator", "admin"]
"""API roles: ``viewer`` reads, ``operator`` also writes points, ``admin`` also reads the audit."""


class ApiTokenConfig(BaseModel):
    """One API token: who it is, its role, and the secret as a hash or an env reference.

    Attributes:
        name: Principal name recorded in the audit log (slug).
        role: ``viewer``, ``operator`` or ``admin``.
        token: The token itself, normally ``${ENV_VAR}``; never logged or echoed.
        token_sha256: Or the hex SHA-256 of the token (64 hex digits), so the file holds no
            secret. Exactly one of ``token`` and ``token_sha256``.
    """

    model_config = _STRICT

    name: str = Field(pattern=SLUG, description="Principal name (slug)")
    role: Role = Field(description="viewer | operator | admin")
    token: SecretStr | None = Field(default=None, description="Token, e.g. ${OTGW_TOKEN}")
    token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the token"
    )

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (self.token is None) == (self.token_sha256 is None):
            msg = "token: give exactly one of token and token_sha256"
            raise ValueError(msg)
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            msg = "token: at least 16 characters"
            raise ValueError(msg)
        return self


class ApiAuthConfig(BaseModel):
    """API authentication (RELIABILITY S1-S9).

    Attributes:
        tokens: The accepted bearer tokens with their roles.
        read_requires_token: Reads (GET) need a token of any role; default false (open reads
            on a loopback-bound API). Writes and the audit log always need a token.
        failed_auth_limit: Failed authentications allowed per client address per minute
            before 429 [1..10000].
    """

    model_config = _STRICT

    tokens: list[ApiTokenConfig] = Field(default_factory=list)
    read_requires_token: bool = Field(default=False, description="GET needs a token")
    failed_auth_limit: int = Field(
        default=10, ge=1, le=10_000, description="Failed auths per client per minute [count]"
    )


class ApiConfig(BaseModel):
    """The HTTP API and web page.

    Attributes:
        enabled: Serve the API and page.
        host: Bind address; ``127.0.0.1`` unless configured (S-rows: never all interfaces by
            default).
        port: TCP port [0..65535], 0 = any free.
        auth: Tokens and roles.
        cors_origins: Origins allowed by CORS; empty = CORS off (default).
        allowed_hosts: Host header names accepted besides ``localhost``/``127.0.0.1``/``[::1]``
            (DNS-rebinding protection); add the name or address clients use when ``host`` is
            not loopback; ``*`` accepts any.
        max_body_bytes: Largest request body accepted [bytes] [1..10485760]; beyond, 413.
    """

    model_config = _STRICT

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="Bind address; loopback by default")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port [0..65535], 0 = any free")
    auth: ApiAuthConfig = Field(default_factory=ApiAuthConfig)
    cors_origins: list[str] = Field(default_factory=list, description="CORS origins; [] = off")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="More Host header names accepted besides localhost (e.g. the gateway's DNS "
        "name or IP when host is not loopback); '*' = any",
    )
    max_body_bytes: int = Field(
        default=65_536, ge=1, le=10 * 1024 * 1024, description="Request body limit [bytes]"
    )


class WritesConfig(BaseModel):
    """Write-back to devices (issue #7). Off by default.

    Attributes:
        enabled: Allow writes at all; each point must also be ``writable``.
        timeout: Time allowed for one write and its read-back [s] (0.1..60); beyond, the
            outcome is unknown and the write is never resent.
    """

    model_config = _STRICT

    enabled: bool = Field(default=False, description="Allow write-back (points need writable)")
    timeout: float = Field(default=5.0, ge=0.1, le=60, description="Write timeout [s]")


class StoreConfig(BaseModel):
    """The local SQLite store (history, latest values, inventory state, gaps)."""

    model_config = _STRICT

    path: str | None = Field(
        default=None, description="Database file; default <data_dir>/gateway.db"
    )
    retention_hours: float = Field(default=168.0, gt=0, le=87600, description="History kept [h]")
    max_bytes: int = Field(
        default=1_073_741_824,
        ge=1_048_576,
        description="Size cap of the database [bytes] (>= 1 MiB)",
    )
    max_unsent_readings: int | None = Field(
        default=None,
        ge=1000,
        description=(
            "Readings a sink may have unacknowledged before the oldest are dropped "
            "(buffer_overflow gaps) [count]; none = bounded by max_bytes and retention only"
        ),
    )
    max_pending_readings: int = Field(
        default=250_000,
        ge=100,
        le=10_000_000,
        description=(
            "Readings accepted from connectors and not yet committed [count, 100..10,000,000]; "
            "reached only while commits fail or stall (disk full): newer readings are then "
            "dropped, counted and recorded as buffer_overflow gaps (≈ 400 B of memory each)"
        ),
    )
    commit_interval: float = Field(
        default=0.25,
        ge=0.0,
        le=5.0,
        description=(
            "Shortest time between two commits of polled readings [s, 0..5]; polls arriving "
            "meanwhile share one transaction. 0 = commit at once (lowest latency, most CPU)"
        ),
    )


class InfluxSinkConfig(BaseModel):
    """An InfluxDB v2 write-API target (InfluxDB 2.x/3.x, 1.8+, VictoriaMetrics).

    Attributes:
        type: ``influxdb``.
        name: Sink name (slug), unique; keys the sink's outbox cursor in the store.
        url: Base URL, e.g. ``http://influxdb:8086``.
        org: Organization (InfluxDB 1.8: any non-empty text, ignored).
        bucket: Bucket (InfluxDB 1.8: ``database/retention_policy``).
        token: API token, best as ``${ENV_VAR}``; never printed. InfluxDB 1.8: ``user:password``.
        batch_size: Readings per write request at most [1..100000].
        flush_interval: Longest wait for a batch to fill [s] (0 < s <= 300).
        timeout: Whole-request timeout [s] (0 < s <= 600).
        max_retry_delay: Cap of the retry backoff [s] (0 < s <= 3600).
        verify_ssl: Verify the server certificate over https.
    """

    model_config = _STRICT

    type: Literal["influxdb"] = Field(description="Sink type")
    name: str = Field(pattern=SLUG, description="Sink name (slug)")
    url: str = Field(pattern=r"^https?://[^\s/]+", description="Base URL: http(s)://host:port")
    org: str = Field(min_length=1, description="Organization")
    bucket: str = Field(min_length=1, description="Bucket")
    token: SecretStr | None = Field(default=None, description="API token (use ${ENV})")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="Readings per request")
    flush_interval: float = Field(default=1.0, gt=0, le=300, description="[s]")
    timeout: float = Field(default=10.0, gt=0, le=600, description="Request timeout [s]")
    max_retry_delay: float = Field(default=30.0, gt=0, le=3600, description="Backoff cap [s]")
    verify_ssl: bool = True


SinkConfig = InfluxSinkConfig
"""Any sink (one type so far)."""


class NorthboundConfig(BaseModel):
    """Live publishing of normalized readings and gateway state to consumers (issue #4).

    Unlike ``sinks`` (store and forward with a cursor, lossless), a northbound publisher is a
    live feed: it sends what is committed from now on through a bounded queue (``queue_max``)
    that drops the oldest and counts them when the broker is slow or away.

    Attributes:
        mqtt: The MQTT publisher (broker, topic templates, QoS, batching, retained gateway
            birth/death and per-asset state); None = off.
        sparkplug: The Sparkplug B edge node (one device per asset, one metric per point;
            docs/sparkplug-edge.md); None = off.
    """

    model_config = _STRICT

    mqtt: MqttPublisherConfig | None = Field(
        default=None, description="Publish readings and gateway state to an MQTT broker"
    )
    sparkplug: SparkplugEdgeConfig | None = Field(
        default=None, description="Act as a Sparkplug B edge node (docs/sparkplug-edge.md)"
    )


class ReconnectConfig(BaseModel):
    """Capped exponential backoff with jitter between reconnect attempts."""

    model_config = _STRICT

    initial: float = Field(default=0.5, gt=0, le=60, description="First delay [s]")
    max: float = Field(default=10.0, gt=0, le=3600, description="Cap of the delay [s]")


class InventoryConfig(BaseModel):
    """Gap detection settings."""

    model_config = _STRICT

    gap_after: float = Field(
        default=2.5,
        ge=1.0,
        le=100.0,
        description="A point is stale after this many expected intervals without good data",
    )


class GatewaySection(BaseModel):
    """Identity and working directory of this gateway."""

    model_config = _STRICT

    name: str = Field(default="ot-gateway", pattern=SLUG)
    data_dir: str = Field(default="./data", description="Directory for the store and state files")


class GatewayConfig(BaseModel):
    """The whole file. Cross-references are checked after the fields."""

    model_config = _STRICT

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    api: ApiConfig = Field(default_factory=ApiConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    inventory: InventoryConfig = Field(default_factory=InventoryConfig)
    sinks: list[SinkConfig] = Field(
        default_factory=list, description="Where readings are forwarded (store and forward)"
    )
    northbound: NorthboundConfig = Field(
        default_factory=NorthboundConfig, description="Live publishing to consumers (MQTT)"
    )
    writes: WritesConfig = Field(default_factory=WritesConfig, description="Write-back; off")
    sites: list[SiteConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    point_files: list[str] = Field(
        default_factory=list, description="CSV point lists, relative to this file"
    )

    def iter_points(self) -> Iterator[tuple[SiteConfig, AssetConfig, AnyPoint]]:
        """Yield every (site, asset, point) in file order."""
        for site in self.sites:
            for asset in site.assets:
                for point in asset.points:
                    yield site, asset, point

    def without_points(self) -> GatewayConfig:
        """A shallow copy with every asset's ``points`` empty (sites, assets, devices kept).

        What the runtime keeps after start: each point then lives on in the inventory spec,
        the pipeline and its connector in compact form, and the point models (≈ 550 bytes
        each) can be freed (issue #8).
        """
        sites = [
            site.model_copy(
                update={"assets": [a.model_copy(update={"points": []}) for a in site.assets]}
            )
            for site in self.sites
        ]
        return self.model_copy(update={"sites": sites})

    def device(self, device_id: str) -> AnyDevice:
        """The device with this id. Raises KeyError."""
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)

    def poll_interval(self, point: AnyPoint) -> float:
        """The point's effective poll interval [s]: its own, else its device's.

        Raises:
            ValueError: The point is not polled (an MQTT point).
        """
        if point.poll_interval is not None:
            return point.poll_interval
        dev = self.device(point.device)
        if isinstance(dev, MqttDeviceConfig):
            msg = f"point {point.id!r} is on MQTT device {dev.id!r}: it is not polled"
            raise ValueError(msg)
        return dev.poll_interval

    def expected_interval(self, point: AnyPoint) -> float:
        """Seconds between samples of a healthy point [s], for gap detection.

        Modbus and polled OPC UA points: the poll interval. OPC UA subscription points
        (report by exception): `max_report_interval` if set, else the subscription's
        liveness limit (keep-alives keep a silent point fresh, `Inventory.device_alive`).
        MQTT points: their `expected_interval` (point, then its `mqtt:` rule), else
        `NO_EXPECTATION_S` (a device mapping's interval is applied by the runtime).
        """
        dev = self.device(point.device)
        if point.expected_interval is not None:
            return point.expected_interval
        if isinstance(point, OpcUaPointConfig) and isinstance(dev, OpcUaDeviceConfig):
            if point.mode is AcquisitionMode.SUBSCRIPTION:
                return point.max_report_interval or dev.liveness_limit
            return self.poll_interval(point)
        if isinstance(point, MqttPointConfig):
            if point.mqtt is not None and point.mqtt.expected_interval is not None:
                return point.mqtt.expected_interval
            return NO_EXPECTATION_S
        return self.poll_interval(point)

    def report_by_exception(self, point: AnyPoint) -> bool:
        """True for OPC UA subscription points (silence is not a gap while keep-alives come)."""
        return isinstance(point, OpcUaPointConfig) and point.mode is AcquisitionMode.SUBSCRIPTION


# ---------------------------------------------------------------------------------------------
# Cross-reference checks, each yielding "key.path: reason".


def _check_references(cfg: GatewayConfig) -> list[str]:
    errors: list[str] = []
    for i, sink in enumerate(cfg.sinks):
        if sink.name in [s.name for s in cfg.sinks[:i]]:
            errors.append(f"sinks[{i}].name: duplicate sink name {sink.name!r}")
    for i, dev in enumerate(cfg.devices):
        if dev.id in [d.id for d in cfg.devices[:i]]:
            errors.append(f"devices[{i}].id: duplicate device id {dev.id!r}")
        if isinstance(dev, ModbusDeviceConfig) and dev.timeout >= dev.poll_interval:
            errors.append(
                f"devices[{i}].timeout: must be shorter than poll_interval "
                f"({dev.poll_interval} s), got {dev.timeout} s"
            )
    site_ids = [s.id for s in cfg.sites]
    devices = {d.id: d for d in cfg.devices}
    for si, site in enumerate(cfg.sites):
        if site.id in site_ids[:si]:
            errors.append(f"sites[{si}].id: duplicate site id {site.id!r}")
        asset_ids = [a.id for a in site.assets]
        for ai, asset in enumerate(site.assets):
            apath = f"sites[{si}].assets[{ai}]"
            if asset.id in asset_ids[:ai]:
                errors.append(f"{apath}.id: duplicate asset id {asset.id!r} in site {site.id!r}")
            point_ids = [p.id for p in asset.points]
            for pi, point in enumerate(asset.points):
                ppath = f"{apath}.points[{pi}]"
                if point.id in point_ids[:pi]:
                    errors.append(
                        f"{ppath}.id: duplicate point id {point.id!r} in asset {asset.id!r}"
                    )
                pdev = devices.get(point.device)
                if pdev is None:
                    errors.append(f"{ppath}.device: unknown device {point.device!r}")
                elif (wrong := _protocol_mismatch(point, pdev)) is not None:
                    errors.append(f"{ppath}: {wrong}")
                elif (
                    isinstance(pdev, ModbusDeviceConfig)
                    and point.poll_interval is not None
                    and pdev.timeout >= point.poll_interval
                ):
                    errors.append(
                        f"{ppath}.poll_interval: must be longer than the timeout of device "
                        f"{pdev.id!r} ({pdev.timeout} s), got {point.poll_interval} s"
                    )
    errors.extend(_check_overlaps(cfg))
    return errors


_POINT_KEYS = {
    "modbus": "`register` and `address`",
    "opcua": "`node_id` or `browse_path`",
    "mqtt": "an optional `mqtt:` topic rule",
}


def _protocol_mismatch(point: AnyPoint, dev: AnyDevice) -> str | None:
    """A message when a point's address keys do not fit its device's protocol."""
    kind = {
        ModbusPointConfig: "modbus",
        OpcUaPointConfig: "opcua",
        MqttPointConfig: "mqtt",
    }[type(point)]
    if kind == dev.protocol:
        return None
    return (
        f"device {dev.id!r} speaks {dev.protocol}: its points need {_POINT_KEYS[dev.protocol]}"
        f" (this point has the keys of a {kind} point)"
    )


def _check_overlaps(cfg: GatewayConfig) -> list[str]:
    """Points of one device, unit id and table must not share registers (bools in bits may)."""
    spans: dict[tuple[str, int, str], list[tuple[int, int, int | None, str, str]]] = {}
    for si, site in enumerate(cfg.sites):
        for ai, asset in enumerate(site.assets):
            for pi, p in enumerate(asset.points):
                dev = next((d for d in cfg.devices if d.id == p.device), None)
                if not isinstance(dev, ModbusDeviceConfig) or not isinstance(p, ModbusPointConfig):
                    continue
                unit = p.unit_id if p.unit_id is not None else dev.unit_id
                key = (p.device, unit, p.table.value)
                path = f"sites[{si}].assets[{ai}].points[{pi}]"
                name = f"{site.id}/{asset.id}/{p.id}"
                spans.setdefault(key, []).append(
                    (p.address, p.address + p.width, p.bit, path, name)
                )
    errors: list[str] = []
    for (device, unit, table), items in spans.items():
        items.sort()
        for (a0, a1, abit, _apath, aname), (b0, b1, bbit, bpath, bname) in pairwise(items):
            if b0 < a1:
                both_bits = abit is not None and bbit is not None and a0 == b0 and a1 == b1
                if both_bits and abit != bbit:
                    continue
                errors.append(
                    f"{bpath}.address: registers {b0}..{b1 - 1} of {bname} overlap {aname} "
                    f"({a0}..{a1 - 1}) on device {device!r} unit {unit} {table}"
                )
    return errors


# ---------------------------------------------------------------------------------------------
# Loading.


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith(("point:", "device:")):
            continue  # a union tag, not a key the user wrote
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def format_validation(err: ValidationError, hidden: set[str]) -> list[str]:
    """One line per pydantic error; values at `hidden` paths (from the environment) not echoed."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _format_loc(loc)
        msg = e["msg"].removeprefix("Value error, ")
        sub = re.match(r"^([a-z_]+): (.*)$", msg)
        if sub:  # a model validator naming the key it is about
            path, msg = f"{path}.{sub[1]}", sub[2]
        if path in hidden or (loc and str(loc[-1]) in _SECRET_KEYS):
            pass  # from an environment variable, or a secret key: never echo the value
        elif e["type"] == "string_pattern_mismatch" and str(loc[-1:]) == "('url',)":
            msg = f"must be an http:// or https:// URL with a host (got {e['input']!r})"
        elif e["type"] == "string_pattern_mismatch" and "a-z0-9" in str(e.get("ctx", {})):
            msg = (
                "must be a slug: lowercase letters, digits, '-', '_' or '.', starting with a "
                f"letter or digit, at most 63 characters (got {e['input']!r})"
            )
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] in {"missing"}:
            msg = "required key is missing"
        elif (
            isinstance(e.get("input"), int | float | str)
            and e["type"] != "string_pattern_mismatch"
            and path not in hidden
        ):
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


def expand_env(node: Any, path: str, errors: list[str], hidden: set[str]) -> Any:  # noqa: ANN401
    """Replace ``${NAME}`` in strings from the environment.

    Missing names are appended to `errors`; the key paths of replaced values go to `hidden`
    so that no message ever echoes them.
    """
    if isinstance(node, dict):
        return {
            k: expand_env(v, f"{path}.{k}" if path else str(k), errors, hidden)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [expand_env(v, f"{path}[{i}]", errors, hidden) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        hidden.add(path)

        def repl(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                errors.append(f"{path}: environment variable {m.group(1)} is not set")
                return ""
            return value

        return _ENV_REF.sub(repl, node)
    return node


CSV_COLUMNS = (
    "site",
    "asset",
    "point",
    "device",
    "register",
    "address",
    "type",
    "byte_order",
    "bit",
    "length",
    "unit_id",
    "unit",
    "scale",
    "offset",
    "min",
    "max",
    "poll_interval",
    "name",
    "node_id",
    "browse_path",
    "mode",
    "value_type",
)
"""Columns a point file may have: Modbus (``register``, ``address``...) and OPC UA
(``node_id`` or ``browse_path``, ``mode``, ``value_type``) points may share one file."""
_CSV_REQUIRED = ("site", "asset", "point", "device")
_CSV_ADDRESS = (("register", "address"), ("node_id",), ("browse_path",))
"""A file needs the columns of at least one way to address a point."""


def _merge_csv(raw: dict[str, Any], base: Path, errors: list[str]) -> None:
    """Add the rows of each ``point_files`` CSV to the raw config's assets (in place)."""
    files = raw.get("point_files") or []
    if not isinstance(files, list):
        return
    sites = raw.get("sites")
    if not isinstance(sites, list):
        return
    for fi, name in enumerate(files):
        fpath = f"point_files[{fi}]"
        path = (base / str(name)).resolve()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            errors.append(f"{fpath}: cannot read {name}: {exc.strerror}")
            continue
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in CSV_COLUMNS]
        missing = [c for c in _CSV_REQUIRED if c not in header]
        if not any(all(c in header for c in cols) for cols in _CSV_ADDRESS):
            missing.append("register and address (Modbus), or node_id or browse_path (OPC UA)")
        if unknown or missing:
            if unknown:
                errors.append(f"{fpath} ({name}): unknown column(s) {', '.join(unknown)}")
            if missing:
                errors.append(f"{fpath} ({name}): missing column(s) {', '.join(missing)}")
            continue
        by_site: dict[object, dict[str, Any]] = {}
        for s_raw in sites:
            if isinstance(s_raw, dict):
                by_site.setdefault(s_raw.get("id"), s_raw)
        by_asset: dict[tuple[object, object], dict[str, Any]] = {}
        for s_raw in by_site.values():
            for a_raw in s_raw.setdefault("assets", []) or []:
                if isinstance(a_raw, dict):
                    by_asset.setdefault((s_raw.get("id"), a_raw.get("id")), a_raw)
        for row_no, row in enumerate(reader, start=2):
            where = f"{fpath} ({name}) line {row_no}"
            if row["site"] not in by_site:
                errors.append(f"{where}: site: unknown site {row['site']!r}")
                continue
            asset = by_asset.get((row["site"], row["asset"]))
            if asset is None:
                errors.append(
                    f"{where}: asset: unknown asset {row['asset']!r} in site {row['site']!r}"
                )
                continue
            addressed = [
                cols for cols in _CSV_ADDRESS if all((row.get(c) or "").strip() for c in cols)
            ]
            if not addressed:
                errors.append(
                    f"{where}: point {row['point']!r}: needs register and address, "
                    "or node_id or browse_path"
                )
                continue
            point: dict[str, Any] = {"id": row["point"]}
            for col in CSV_COLUMNS[3:]:
                cell = (row.get(col) or "").strip()
                if not cell or col in ("min", "max"):
                    continue
                point[col] = cell
            if (row.get("min") or "").strip() or (row.get("max") or "").strip():
                point["range"] = [(row.get("min") or "").strip(), (row.get("max") or "").strip()]
            point["__where__"] = where
            asset.setdefault("points", []).append(point)


def _strip_where(raw: dict[str, Any]) -> dict[tuple[int, int, int], str]:
    """Remove CSV origin markers, returning (site, asset, point) index -> 'file line n'."""
    where: dict[tuple[int, int, int], str] = {}
    for si, site in enumerate(raw.get("sites") or []):
        if not isinstance(site, dict):
            continue
        for ai, asset in enumerate(site.get("assets") or []):
            if not isinstance(asset, dict):
                continue
            for pi, point in enumerate(asset.get("points") or []):
                if isinstance(point, dict) and "__where__" in point:
                    where[(si, ai, pi)] = point.pop("__where__")
    return where


class _NotPlain(Exception):
    """The document uses a YAML feature `_load_plain` leaves to the full loader."""


def _load_plain(text: str) -> Any:  # noqa: ANN401 - any YAML value
    """Load one YAML document of plain mappings, sequences and scalars, from the event stream.

    PyYAML's loader first composes a node tree of the whole document (a Python object, with
    two position marks, per scalar: ≈ 450 MB for 100,000 points) and only then builds the
    data; pymalloc keeps most of that memory after it is freed. This builds each value as its
    events arrive, with the same resolver and scalar constructors (so the same values), and
    never holds more than one scalar node. Anchors, aliases, merge keys, explicit collection
    tags and non-scalar keys raise `_NotPlain`: the caller then uses the full loader.

    Raises:
        _NotPlain: A feature this loader leaves to PyYAML's.
        yaml.YAMLError: The text is not valid YAML.
    """
    loader: Any = _YAML_LOADER(text)  # the event API is untyped in types-PyYAML
    constructors = loader.yaml_constructors
    plain_tags = (None, "!")

    def value() -> Any:  # noqa: ANN401 - any YAML value
        event = loader.get_event()
        kind = type(event)
        if kind is yaml.AliasEvent or getattr(event, "anchor", None) is not None:
            raise _NotPlain
        if kind is yaml.ScalarEvent:
            tag = event.tag
            if tag in plain_tags:
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            construct = constructors.get(tag)
            if construct is None:
                raise _NotPlain
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            return construct(loader, node)
        if kind is yaml.SequenceStartEvent:
            if event.tag not in (*plain_tags, "tag:yaml.org,2002:seq"):
                raise _NotPlain
            items = []
            while not loader.check_event(yaml.SequenceEndEvent):
                items.append(value())
            loader.get_event()
            return items
        if kind is yaml.MappingStartEvent:
            if event.tag not in (*plain_tags, "tag:yaml.org,2002:map"):
                raise _NotPlain
            mapping: dict[Any, Any] = {}
            while not loader.check_event(yaml.MappingEndEvent):
                if loader.check_event(yaml.ScalarEvent) and loader.peek_event().value == "<<":
                    raise _NotPlain  # a merge key, or a quoted "<<": left to PyYAML
                key = value()
                if not isinstance(key, str | int | float | bool | None):
                    raise _NotPlain
                mapping[key] = value()  # a repeated key: the last value wins, as in PyYAML
            loader.get_event()
            return mapping
        raise _NotPlain

    try:
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # document start
        data = value()
        loader.get_event()  # document end
        if not loader.check_event(yaml.StreamEndEvent):
            raise _NotPlain  # several documents: PyYAML words the error
        return data
    finally:
        loader.dispose()


def _load_yaml(text: str) -> Any:  # noqa: ANN401 - any YAML value
    """The YAML document in `text`, as PyYAML's safe loader returns it.

    Raises:
        yaml.YAMLError: The text is not valid YAML (PyYAML's own error).
    """
    try:
        return _load_plain(text)
    except Exception:  # any problem: the full loader decides, with its own errors
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a SafeLoader


_INTERNED_KEYS = ("id", "device", "unit", "name", "kind")
"""String values of devices, sites, assets and points that repeat across the config (point ids,
device ids, units), interned so that equal values share one object."""


def _intern_ids(raw: dict[str, Any]) -> None:
    """Intern the repeated strings of devices, sites, assets and points of the raw config.

    With 100,000 points, ids such as ``p12`` and device ids repeat thousands of times; each
    parsed copy costs ≈ 50 bytes, and the runtime, store and inventory keep more copies.
    Interned, equal values are one object (`sys.intern`). In place; values are unchanged.
    """

    def intern(node: dict[str, Any]) -> None:
        for key in _INTERNED_KEYS:
            value = node.get(key)
            if type(value) is str:
                node[key] = sys.intern(value)

    def dicts(node: object) -> list[dict[str, Any]]:
        # Malformed sections are left to validation, which reports them.
        return [d for d in node if isinstance(d, dict)] if isinstance(node, list) else []

    for device in dicts(raw.get("devices")):
        intern(device)
    for site in dicts(raw.get("sites")):
        intern(site)
        for asset in dicts(site.get("assets")):
            intern(asset)
            for point in dicts(asset.get("points")):
                intern(point)


def _share_fields_sets(cfg: GatewayConfig) -> None:
    """Let points with the same explicitly set fields share one ``model_fields_set`` object.

    pydantic gives every model instance its own set of the field names the input set (728
    bytes for 5 names), the largest part of a point's memory. The models are frozen, so the
    set is never changed in place (`model_copy` copies it first), and equal sets can be one
    object. Values, equality and dumps are unchanged.
    """
    shared: dict[frozenset[str], set[str]] = {}
    for _site, _asset, point in cfg.iter_points():
        fields = point.__pydantic_fields_set__
        one = shared.setdefault(frozenset(fields), fields)
        if one is not fields:
            object.__setattr__(point, "__pydantic_fields_set__", one)


_POINT_PATH = re.compile(r"^sites\[(\d+)\]\.assets\[(\d+)\]\.points\[(\d+)\](.*)$")


def _annotate(messages: list[str], where: dict[tuple[int, int, int], str]) -> list[str]:
    """Point messages about CSV rows at the file and line they came from."""
    out = []
    for m in messages:
        path, _, reason = m.partition(": ")
        hit = _POINT_PATH.match(path)
        if hit and (key := (int(hit[1]), int(hit[2]), int(hit[3]))) in where:
            out.append(f"{where[key]}{hit[4] and ': ' + hit[4].lstrip('.')}: {reason}")
        else:
            out.append(m)
    return out


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> GatewayConfig:
    """Parse and validate a configuration from YAML text.

    Args:
        text: YAML document.
        source: Name used in messages (the file path).
        base: Directory that relative ``point_files`` resolve against (default: cwd).

    Returns:
        The validated, immutable configuration.

    Raises:
        ConfigError: With one ``key.path: reason`` line per problem.
    """
    try:
        try:
            raw = _load_yaml(text)
        except yaml.YAMLError:
            # Error path: the pure-Python loader words the problem better than libyaml.
            raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, [f"(YAML) {pos}: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    errors: list[str] = []
    hidden: set[str] = set()
    raw = expand_env(raw, "", errors, hidden)
    _merge_csv(raw, base or Path.cwd(), errors)
    where = _strip_where(raw)
    _intern_ids(raw)
    if errors:
        raise ConfigError(source, errors)
    try:
        cfg = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, _annotate(format_validation(exc, hidden), where)) from None
    ref_errors = _check_references(cfg)
    if ref_errors:
        raise ConfigError(source, _annotate(ref_errors, where))
    _share_fields_sets(cfg)
    return cfg


def load_config(path: str | Path) -> GatewayConfig:
    """Read, parse and validate a configuration file; see `parse_config`.

    Raises:
        ConfigError: The file cannot be read or is invalid.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"(file): cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), ["(file): not UTF-8 text"]) from None
    return parse_config(text, str(p), p.parent)
