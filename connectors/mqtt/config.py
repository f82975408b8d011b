"""MQTT configuration: the broker connection (device), topic mappings and per-point addresses.

A *device* is one broker session. Its ``mappings`` say which topics carry which points and
how their payloads decode; a point key ``site/asset/point`` is built from the mapping's
``site``, ``asset`` and ``point`` templates, whose ``{name}`` variables come from named topic
segments (``plant/{site}/{asset}/{point}``) or, for Sparkplug B, from the topic namespace and
the metric name. A mapping with fixed ids and a literal topic is an explicit per-topic rule.

Source: MQTT 3.1.1 §4.7 (topic names and filters, ``+`` and ``#``), §3.1.2.4 (clean
session), §3.1.2.10 (keep alive); MQTT 5.0 §3.1.2.4 (clean start), §3.1.2.11.2 (session
expiry interval), §3.1.2.11.4 (maximum packet size); Sparkplug 3.0.0 §4.1 (topic namespace).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)
_SEGMENT_VAR = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
_TEMPLATE_VAR = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_POINTER = re.compile(r"^(/([^~/]|~[01])*)*$")
SPARKPLUG_VARIABLES = frozenset({"group", "node", "device", "metric", "site", "asset", "point"})
"""Template variables of a Sparkplug B mapping: ``site`` = group, ``asset`` = device id, or the
node id for node-level metrics, ``point`` = the metric name as a slug."""


class Decoder(StrEnum):
    """Payload decoders."""

    PLAIN = "plain"
    JSON = "json"
    SPARKPLUG_B = "sparkplug_b"


class ValueType(StrEnum):
    """The one value type a point accepts (strict: anything else is ``wrong_type``).

    ``number``: JSON/plain int or float (bool is not a number); ``integer``: int only;
    ``bool``: true/false (plain also ``1``/``0``); ``string``: text; ``any``: any JSON scalar
    (the stored field type may then change between readings: avoid for InfluxDB).
    """

    NUMBER = "number"
    INTEGER = "integer"
    BOOL = "bool"
    STRING = "string"
    ANY = "any"


class TimestampUnit(StrEnum):
    """Unit of a payload timestamp field.

    ``s``/``ms``/``us``/``ns``: number since the Unix epoch (UTC). ``rfc3339``: a string such as
    ``2026-01-02T03:04:05.123Z`` (an offset is required). ``auto``: a string is RFC 3339, a
    number is s, ms, µs or ns by magnitude (< 1e11 s, < 1e14 ms, < 1e17 µs, else ns).
    """

    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"
    RFC3339 = "rfc3339"
    AUTO = "auto"


def check_topic_filter(topic: str, *, allow_vars: bool) -> list[str]:
    """Validate a topic filter (or template) and return its levels.

    Args:
        topic: ``a/+/b/#``; with ``allow_vars`` also ``a/{site}/b``.
        allow_vars: Accept whole-level ``{name}`` variables (each matches one level).

    Returns:
        The levels of the filter.

    Raises:
        ValueError: Empty, contains NUL, ``#`` not last or not alone in its level, ``+`` or a
            variable sharing a level with other characters, or a repeated variable.

    Source: MQTT 3.1.1 §4.7.1 (wildcards), §4.7.3 (topic semantics); MQTT 5.0 §4.7.
    """
    if not topic or "\x00" in topic:
        msg = "topic filter must be non-empty and contain no NUL character"
        raise ValueError(msg)
    if len(topic.encode()) > 65535:
        msg = "topic filter longer than 65535 bytes"
        raise ValueError(msg)
    levels = topic.split("/")
    seen: set[str] = set()
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            msg = f"'#' must be the whole last level: {topic!r}"
            raise ValueError(msg)
        if "+" in level and level != "+":
            msg = f"'+' must be a whole level: {topic!r}"
            raise ValueError(msg)
        if "{" in level or "}" in level:
            match = _SEGMENT_VAR.match(level)
            if not allow_vars or match is None:
                msg = f"a variable must be a whole level like {{site}}: {topic!r}"
                raise ValueError(msg)
            name = match.group(1)
            if name in seen:
                msg = f"variable {{{name}}} appears twice in {topic!r}"
                raise ValueError(msg)
            seen.add(name)
    return levels


def template_variables(template: str) -> set[str]:
    """Names of the ``{name}`` variables in an id template."""
    return set(_TEMPLATE_VAR.findall(template))


class MqttTls(BaseModel):
    """TLS of the broker connection. With a ``tls`` block there is no plaintext fallback.

    Attributes:
        ca_file: PEM file of the CA(s) that sign the broker certificate; None = system store.
        cert_file: PEM client certificate (mutual TLS), with ``key_file``.
        key_file: PEM private key of ``cert_file``.
        verify_hostname: Check the broker certificate's name against ``host``.
    """

    model_config = _STRICT

    ca_file: str | None = Field(
        default=None, description="PEM CA bundle that signs the broker certificate; None = system"
    )
    cert_file: str | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    key_file: str | None = Field(default=None, description="PEM private key of cert_file")
    verify_hostname: bool = Field(
        default=True, description="Check the certificate's name against host (default true)"
    )

    @model_validator(mode="after")
    def _check_pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            msg = "cert_file and key_file go together (mutual TLS)"
            raise ValueError(msg)
        return self


class MqttSubscription(BaseModel):
    """One subscription (SUBSCRIBE topic filter and maximum QoS).

    Attributes:
        topic: Topic filter, ``+`` and ``#`` allowed.
        qos: Maximum QoS [0..1]; QoS 2 is not offered.
    """

    model_config = _STRICT

    topic: str = Field(description="Topic filter; + and # wildcards allowed")
    qos: Literal[0, 1] = Field(default=1, description="Maximum QoS of the subscription [0..1]")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        check_topic_filter(value, allow_vars=False)
        return value


class MqttMapping(BaseModel):
    """Which topics carry which points, and how their payloads decode.

    The point key is ``{site}/{asset}/{point}`` after substituting the templates ``site``,
    ``asset`` and ``point`` (and each key of ``fields``) with the variables the topic matched.
    A resolved key that is not a configured point of the device makes the topic an *unmapped
    source*.

    Attributes:
        topic: Topic template: literal levels, ``+``, ``#`` (last) and ``{name}`` levels that
            capture one level each. For ``sparkplug_b`` it is implied (see ``group``/``node``)
            and must be left unset.
        decoder: ``plain``, ``json`` or ``sparkplug_b``.
        site: Site id template, default ``{site}``.
        asset: Asset id template, default ``{asset}``.
        point: Point id template, default ``{point}`` (JSON: used with ``value``).
        value: JSON: RFC 6901 pointer of the value when ``fields`` is unset; ``""`` = the
            whole document.
        fields: JSON: several points per message, point id template -> JSON pointer.
        timestamp: JSON: pointer of the source timestamp, or None (gateway time).
        timestamp_unit: Unit of ``timestamp``.
        value_type: The type every value of this mapping must have.
        group: Sparkplug: group id, or ``+`` for any.
        node: Sparkplug: edge node id, or ``+`` for any.
        device: Sparkplug: device id; None = the node and all its devices; ``""`` = the
            node's own metrics only.
        metrics: Sparkplug: metric name -> point id template (others use ``point``).
        other_metrics: Sparkplug: map metrics not listed in ``metrics`` with ``point``; False
            makes them unmapped.
        expected_interval: Seconds between messages of a point when healthy, for gap detection
            (0.01 .. 86400), or None (report by exception without a heartbeat).
        retained_max_age: A retained message whose source time is older than this [s] is not
            used as the current value (B8); one without a source time is dropped too. None =
            retained messages are used as they are.
        qos: QoS of the implied subscription when the device lists no ``subscriptions``.
    """

    model_config = _STRICT

    topic: str | None = Field(default=None, description="Topic template with {name} levels")
    decoder: Decoder = Field(default=Decoder.PLAIN, description="plain | json | sparkplug_b")
    site: str = Field(default="{site}", min_length=1, description="Site id template")
    asset: str = Field(default="{asset}", min_length=1, description="Asset id template")
    point: str = Field(default="{point}", min_length=1, description="Point id template")
    value: str = Field(default="/value", description="JSON pointer of the value (RFC 6901)")
    fields: dict[str, str] | None = Field(
        default=None, description="Several points per message: point id template -> JSON pointer"
    )
    timestamp: str | None = Field(
        default=None, description="JSON pointer of the source timestamp; None = gateway time"
    )
    timestamp_unit: TimestampUnit = Field(
        default=TimestampUnit.AUTO, description="s | ms | us | ns | rfc3339 | auto"
    )
    value_type: ValueType = Field(
        default=ValueType.NUMBER, description="number | integer | bool | string | any"
    )
    group: str = Field(default="+", min_length=1, description="Sparkplug group id or +")
    node: str = Field(default="+", min_length=1, description="Sparkplug edge node id or +")
    device: str | None = Field(
        default=None,
        description="Sparkplug device id; None = the node and all its devices; '' = node only",
    )
    metrics: dict[str, str] = Field(
        default_factory=dict, description="Sparkplug metric name -> point id template"
    )
    other_metrics: bool = Field(
        default=True, description="Sparkplug: map metrics not in `metrics` with `point`"
    )
    expected_interval: float | None = Field(
        default=None, ge=0.01, le=86400, description="Expected seconds between messages [s]"
    )
    retained_max_age: float | None = Field(
        default=None, gt=0, le=31_536_000, description="Max age of a used retained message [s]"
    )
    qos: Literal[0, 1] = Field(default=1, description="QoS of the implied subscription [0..1]")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.decoder is Decoder.SPARKPLUG_B:
            if self.topic is not None:
                msg = "topic: implied by group/node for sparkplug_b; leave it unset"
                raise ValueError(msg)
            for name, text in (("group", self.group), ("node", self.node)):
                if text != "+" and any(c in text for c in "+#/{}\x00"):
                    msg = f"{name}: an id or '+', got {text!r}"
                    raise ValueError(msg)
            if self.device and any(c in self.device for c in "+#/{}\x00"):
                msg = f"device: an id, got {self.device!r}"
                raise ValueError(msg)
            allowed = SPARKPLUG_VARIABLES
        else:
            if self.topic is None:
                msg = "topic: required for the plain and json decoders"
                raise ValueError(msg)
            levels = check_topic_filter(self.topic, allow_vars=True)
            allowed = frozenset(m.group(1) for level in levels if (m := _SEGMENT_VAR.match(level)))
        templates = [("site", self.site), ("asset", self.asset)]
        if self.decoder is Decoder.JSON and self.fields is not None:
            if not self.fields:
                msg = "fields: give at least one point id -> JSON pointer"
                raise ValueError(msg)
            templates += [("fields", name) for name in self.fields]
            pointers = list(self.fields.values())
        else:
            templates.append(("point", self.point))
            pointers = [self.value]
        templates += [("metrics", name) for name in self.metrics.values()]
        for key, template in templates:
            missing = template_variables(template) - allowed
            if missing:
                names = ", ".join(sorted(missing))
                msg = f"{key}: {template!r} uses {{{names}}}, not a variable of the topic"
                raise ValueError(msg)
        if self.timestamp is not None:
            pointers.append(self.timestamp)
        for pointer in pointers:
            if not _POINTER.match(pointer):
                msg = f"JSON pointer {pointer!r}: must be '' or start with '/' (RFC 6901)"
                raise ValueError(msg)
        return self

    @property
    def subscription_filter(self) -> str:
        """The topic filter to subscribe to: variables become ``+``."""
        if self.decoder is Decoder.SPARKPLUG_B:
            return f"spBv1.0/{self.group}/+/{self.node}/#"
        assert self.topic is not None  # noqa: S101 - checked by the validator
        return "/".join(
            "+" if _SEGMENT_VAR.match(level) else level for level in self.topic.split("/")
        )


class MqttAddress(BaseModel):
    """A point's own topic rule (the per-point alternative to a device ``mappings`` entry).

    Attributes:
        topic: Exact topic name (no wildcards); for Sparkplug, ``group/node`` or
            ``group/node/device`` (the edge node or device that owns ``metric``).
        decoder: ``plain``, ``json`` or ``sparkplug_b``.
        value: JSON pointer of the value, ``""`` = the whole document.
        timestamp: JSON pointer of the source timestamp, or None.
        timestamp_unit: Unit of ``timestamp``.
        value_type: The type the value must have.
        metric: Sparkplug metric name.
        expected_interval: Seconds between messages when healthy [s], or None.
        retained_max_age: See `MqttMapping.retained_max_age` [s].
        qos: QoS of the implied subscription [0..1].
    """

    model_config = _STRICT

    topic: str = Field(min_length=1, description="Exact topic; Sparkplug: group/node[/device]")
    decoder: Decoder = Field(default=Decoder.PLAIN, description="plain | json | sparkplug_b")
    value: str = Field(default="/value", description="JSON pointer of the value")
    timestamp: str | None = Field(default=None, description="JSON pointer of the source time")
    timestamp_unit: TimestampUnit = Field(default=TimestampUnit.AUTO, description="Unit of time")
    value_type: ValueType = Field(default=ValueType.NUMBER, description="Accepted value type")
    metric: str | None = Field(default=None, description="Sparkplug metric name")
    expected_interval: float | None = Field(
        default=None, ge=0.01, le=86400, description="Expected seconds between messages [s]"
    )
    retained_max_age: float | None = Field(
        default=None, gt=0, le=31_536_000, description="Max age of a used retained message [s]"
    )
    qos: Literal[0, 1] = Field(default=1, description="QoS of the implied subscription [0..1]")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if any(c in self.topic for c in "+#{}\x00"):
            msg = "topic: an exact topic name (no +, #, {} or NUL)"
            raise ValueError(msg)
        if self.decoder is Decoder.SPARKPLUG_B:
            if self.metric is None:
                msg = "metric: required for sparkplug_b"
                raise ValueError(msg)
            if not 2 <= len(self.topic.split("/")) <= 3:
                msg = "topic: group/node or group/node/device for sparkplug_b"
                raise ValueError(msg)
        elif self.metric is not None:
            msg = "metric: applies only to sparkplug_b"
            raise ValueError(msg)
        return self

    def to_mapping(self, site: str, asset: str, point: str) -> MqttMapping:
        """The equivalent mapping with fixed ids (an explicit per-topic rule).

        Args:
            site: Site id (slug) of the point.
            asset: Asset id (slug).
            point: Point id (slug).

        Returns:
            A mapping that resolves only this topic (or Sparkplug metric) to ``site/asset/point``.
        """
        common: dict[str, object] = {
            "decoder": self.decoder,
            "site": site,
            "asset": asset,
            "point": point,
            "value_type": self.value_type,
            "expected_interval": self.expected_interval,
            "retained_max_age": self.retained_max_age,
            "qos": self.qos,
        }
        if self.decoder is Decoder.SPARKPLUG_B:
            parts = self.topic.split("/")
            return MqttMapping.model_validate(
                {
                    **common,
                    "group": parts[0],
                    "node": parts[1],
                    "device": parts[2] if len(parts) == 3 else "",
                    "metrics": {self.metric: point},
                    "other_metrics": False,
                }
            )
        return MqttMapping.model_validate(
            {
                **common,
                "topic": self.topic,
                "value": self.value,
                "timestamp": self.timestamp,
                "timestamp_unit": self.timestamp_unit,
            }
        )


class MqttDeviceConfig(BaseModel):
    """An MQTT broker session the gateway subscribes through.

    Attributes:
        id: Device id (slug), unique in the file.
        protocol: Always "mqtt".
        host: Broker host name or IP address (also the name TLS verifies).
        port: TCP port [1..65535]; default 8883 with ``tls``, else 1883.
        tls: TLS settings; None = plaintext TCP. With TLS there is no plaintext fallback.
        username: User name, or None for anonymous.
        password: Password (write ``${ENV_VAR}`` in the file); never logged.
        client_id: MQTT client identifier [1..23 chars recommended]; default ``otgw-<id>``.
            Must be stable for a persistent session.
        mqtt_version: ``5`` (default) or ``3.1.1``.
        keepalive: Keep alive [s] [5..65535]; a dead link is detected within about
            1.5 × keepalive.
        clean_start: True: a fresh session on every connect. False (default): a persistent
            session, so the broker queues QoS 1 messages while the gateway is away.
        session_expiry: MQTT 5: seconds the broker keeps the session after a disconnect
            [0..4294967295]; 4294967295 = never expires. MQTT 3.1.1 sessions never expire.
        ack: QoS 1 acknowledgement. ``receipt`` (default): the PUBACK goes out when the
            message is in the gateway's memory. ``commit``: only after its readings are
            committed to the local store (RELIABILITY M2), so a gateway crash before the
            commit makes the broker redeliver; the broker's in-flight window then bounds QoS 1
            throughput.
        subscriptions: Topic filters and QoS; empty = one per mapping (``subscription_filter``
            and ``qos``).
        mappings: Topic templates -> points, with their decoders.
        max_payload_bytes: Larger payloads are rejected (``oversized``) [1 .. 268435455]; the
            MQTT 5 Maximum Packet Size the gateway announces is this + 65,600 bytes, so the
            broker drops far larger ones without sending them.
        max_future_skew: A source time later than now + this [s] is replaced by gateway time
            and counted ``ts_adjusted`` [0..86400].
        reorder_timeout: Sparkplug: seconds to wait for a missing ``seq`` before a Rebirth
            request; also the minimum time between two Rebirth requests to one node [0.1..600].
        rebirth: Sparkplug: send ``Node Control/Rebirth`` NCMDs (a write to the edge node).
        max_unmapped: Distinct unmapped topics remembered [0..100000]; more are only counted.
        connect_timeout: Seconds to wait for CONNACK/SUBACK [0.1..120].
        inbox_max: Messages held between the socket and the store writer [messages]
            [1..10000000]. A message arriving while this many wait is dropped and counted
            (``stats.errors["inbox_overflow"]``, ``otgw_protocol_errors_total{kind=
            "inbox_overflow"}``); it still counts as received (``stats.requests``), so
            received = decoded + dropped exactly (RELIABILITY B6). The bound holds QoS 0 and,
            with ``ack: receipt``, QoS 1 (acknowledged on receipt, so a dropped one is lost).
            QoS 1 under ``ack: commit`` is never dropped here: ``receive_maximum`` bounds it.
            Memory: a few hundred bytes per small message.
        receive_maximum: QoS 1 messages the gateway takes before acknowledging [messages]
            [1..65535]; sent as the MQTT 5 Receive Maximum in CONNECT. With ``ack: commit`` it
            is the QoS 1 backpressure window (PUBACK after the commit), bounding memory and
            throughput (≈ one window per commit round trip). Enforced by the gateway too: with
            more unacknowledged (a broker ignoring the property, or 3.1.1, which has none) it
            stops reading the socket until commits catch up (``receive_window_full``).
    """

    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="Device id (slug)")
    protocol: Literal["mqtt"] = "mqtt"
    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="TCP port [1..65535]; 8883 with TLS, else 1883"
    )
    tls: MqttTls | None = Field(default=None, description="TLS; None = plaintext TCP")
    username: str | None = Field(default=None, description="User name; None = anonymous")
    password: SecretStr | None = Field(default=None, description="Password, e.g. ${MQTT_PASS}")
    client_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Client id; default otgw-<id>"
    )
    mqtt_version: Literal["3.1.1", "5"] = Field(default="5", description="3.1.1 | 5")
    keepalive: int = Field(default=30, ge=5, le=65535, description="Keep alive [s] [5..65535]")
    clean_start: bool = Field(
        default=False, description="True: new session each connect; false: persistent session"
    )
    session_expiry: int = Field(
        default=3600,
        ge=0,
        le=4_294_967_295,
        description="MQTT 5 session expiry after disconnect [s]; 4294967295 = never",
    )
    ack: Literal["receipt", "commit"] = Field(
        default="receipt", description="QoS 1 PUBACK on receipt, or after the store commit"
    )
    subscriptions: list[MqttSubscription] = Field(
        default_factory=list, description="Topic filters; empty = one per mapping"
    )
    mappings: list[MqttMapping] = Field(default_factory=list, description="Topic -> points rules")
    max_payload_bytes: int = Field(
        default=262_144, ge=1, le=268_435_455, description="Largest accepted payload [bytes]"
    )
    max_future_skew: float = Field(
        default=60.0, ge=0, le=86400, description="Source times beyond now + this are replaced [s]"
    )
    reorder_timeout: float = Field(
        default=5.0, ge=0.1, le=600, description="Sparkplug seq reorder timeout [s]"
    )
    rebirth: bool = Field(default=True, description="Sparkplug: send Rebirth NCMD requests")
    max_unmapped: int = Field(
        default=1000, ge=0, le=100_000, description="Distinct unmapped topics remembered"
    )
    connect_timeout: float = Field(
        default=10.0, ge=0.1, le=120, description="CONNACK/SUBACK timeout [s]"
    )
    inbox_max: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Received messages held before the store writer; more are dropped [count]",
    )
    receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="MQTT 5: unacknowledged QoS 1 messages the broker may send [count]",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.password is not None and self.username is None:
            msg = "password: needs a username"
            raise ValueError(msg)
        return self

    @property
    def effective_port(self) -> int:
        """The port: configured, else 8883 with TLS, else 1883."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    @property
    def effective_client_id(self) -> str:
        """The client identifier: configured, else ``otgw-<id>``."""
        return self.client_id or f"otgw-{self.id}"

    @property
    def endpoint(self) -> str:
        """Locator prefix ``mqtt://host:port`` (``mqtts://`` with TLS)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.effective_port}"

    def effective_subscriptions(self) -> list[MqttSubscription]:
        """Configured subscriptions, else one per distinct mapping filter (highest QoS)."""
        if self.subscriptions:
            return list(self.subscriptions)
        qos: dict[str, Literal[0, 1]] = {}
        for mapping in self.mappings:
            topic = mapping.subscription_filter
            qos[topic] = 1 if 1 in (qos.get(topic, 0), mapping.qos) else 0
        return [MqttSubscription(topic=t, qos=q) for t, q in qos.items()]


class MqttPublisherConfig(BaseModel):
    """The northbound publisher: normalized readings and gateway state to a broker.

    Attributes:
        host: Broker host name or IP address.
        port: TCP port [1..65535]; default 8883 with ``tls``, else 1883.
        tls: TLS settings; None = plaintext. No plaintext fallback.
        username: User name, or None.
        password: Password (``${ENV_VAR}``); never logged.
        client_id: Client identifier; default ``otgw-pub-<gateway>``.
        mqtt_version: ``5`` or ``3.1.1``.
        keepalive: Keep alive [s] [5..65535].
        topic: Reading topic template; variables ``{gateway}``, ``{site}``, ``{asset}``,
            ``{point}``.
        qos: QoS of reading messages [0..1].
        batch_size: Readings per message [1..10000]. 1 = one message per reading on
            ``topic``; more = one JSON array per asset on ``batch_topic``.
        batch_topic: Topic template of batched messages (``{gateway}``, ``{site}``,
            ``{asset}``).
        state_topic: Retained gateway state topic (birth/death); ``{gateway}``.
        asset_state_topic: Retained per-asset state topic; ``{gateway}``, ``{site}``,
            ``{asset}``.
        gaps_topic: Retained document of the gateway's open data gaps and the most recent
            closed ones (``{"open": [...], "recent": [...]}``); ``{gateway}``.
        queue_max: Readings buffered while the broker is slow or away [1..10000000]; beyond,
            the oldest are dropped and counted.
        max_outstanding: Messages handed to the client library and not yet written (QoS 0)
            or acknowledged (QoS 1) [1..65535]; the sender waits above it.
        reconnect_initial: First reconnect delay [s] (0.1..60).
        reconnect_max: Cap of the reconnect delay [s] (0.1..3600).
    """

    model_config = _STRICT

    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int | None = Field(default=None, ge=1, le=65535, description="TCP port [1..65535]")
    tls: MqttTls | None = Field(default=None, description="TLS; None = plaintext TCP")
    username: str | None = Field(default=None, description="User name; None = anonymous")
    password: SecretStr | None = Field(default=None, description="Password, e.g. ${MQTT_PASS}")
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    mqtt_version: Literal["3.1.1", "5"] = Field(default="5", description="3.1.1 | 5")
    keepalive: int = Field(default=30, ge=5, le=65535, description="Keep alive [s] [5..65535]")
    topic: str = Field(
        default="ot/{site}/{asset}/{point}", min_length=1, description="Reading topic template"
    )
    qos: Literal[0, 1] = Field(default=1, description="QoS of reading messages [0..1]")
    batch_size: int = Field(default=1, ge=1, le=10_000, description="Readings per message")
    batch_topic: str = Field(
        default="ot/{site}/{asset}", min_length=1, description="Topic of batched messages"
    )
    state_topic: str = Field(
        default="ot/_gateway/{gateway}", min_length=1, description="Retained gateway state"
    )
    asset_state_topic: str = Field(
        default="ot/_gateway/{gateway}/assets/{site}/{asset}",
        min_length=1,
        description="Retained per-asset state",
    )
    gaps_topic: str = Field(
        default="ot/_gateway/{gateway}/gaps",
        min_length=1,
        description="Retained open and recent data gaps",
    )
    queue_max: int = Field(
        default=100_000, ge=1, le=10_000_000, description="Readings buffered [count]"
    )
    max_outstanding: int = Field(
        default=1000, ge=1, le=65535, description="Unconfirmed messages in flight [count]"
    )
    reconnect_initial: float = Field(default=0.5, gt=0, le=60, description="First delay [s]")
    reconnect_max: float = Field(default=10.0, gt=0, le=3600, description="Max delay [s]")

    @model_validator(mode="after")
    def _check(self) -> Self:
        allowed = {
            "topic": {"gateway", "site", "asset", "point"},
            "batch_topic": {"gateway", "site", "asset"},
            "state_topic": {"gateway"},
            "asset_state_topic": {"gateway", "site", "asset"},
            "gaps_topic": {"gateway"},
        }
        for name, names in allowed.items():
            template = getattr(self, name)
            if any(c in template for c in "+#\x00"):
                msg = f"{name}: a topic name template (no + or #)"
                raise ValueError(msg)
            unknown = template_variables(template) - names
            if unknown:
                msg = f"{name}: unknown variables {sorted(unknown)}; allowed {sorted(names)}"
                raise ValueError(msg)
        if self.password is not None and self.username is None:
            msg = "password: needs a username"
            raise ValueError(msg)
        return self

    @property
    def effective_port(self) -> int:
        """The port: configured, else 8883 with TLS, else 1883."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883
