"""Config of the Sparkplug B edge node output (``northbound.sparkplug``), kept light.

The node itself is `gateway.sparkplug_edge` (imports aiomqtt, paho, protobuf): this module
holds only the pydantic model so that loading a config (``check-config``) stays fast.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.mqtt.config import MqttTls

_RESERVED = frozenset("+/#\x00")


def check_sparkplug_id(value: str, what: str) -> str:
    """Validate a Sparkplug group, edge node or device id.

    Args:
        value: The id.
        what: Its name, for the error message.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: Empty, longer than 255 characters, or contains ``+``, ``/``, ``#`` or NUL.

    Source: Sparkplug 3.0.0 §4.1.2 (group_id), §4.1.4 (edge_node_id), §4.1.5 (device_id):
        "a valid UTF-8 string with the exception of the reserved characters of + (plus),
        / (forward slash), and # (number sign)".
    """
    if not value:
        msg = f"{what}: must not be empty"
        raise ValueError(msg)
    if len(value) > 255:
        msg = f"{what}: longer than 255 characters"
        raise ValueError(msg)
    bad = sorted(set(value) & _RESERVED)
    if bad:
        msg = f"{what}: {value!r} contains reserved characters {bad} (+ / # and NUL)"
        raise ValueError(msg)
    return value


class SparkplugEdgeConfig(BaseModel):
    """The Sparkplug B edge node output (``northbound.sparkplug``).

    Attributes:
        host: Broker host name or IP address.
        port: TCP port [1..65535]; default 8883 with ``tls``, else 1883.
        tls: TLS settings; None = plaintext. No plaintext fallback.
        username: User name, or None.
        password: Password (``${ENV_VAR}``); never logged.
        client_id: MQTT client identifier; default ``otgw-spb-<edge_node_id>``.
        mqtt_version: ``3.1.1`` (default, what every Sparkplug host supports) or ``5``.
        group_id: Sparkplug group id (topic level 2).
        edge_node_id: Sparkplug edge node id (topic level 4); default the gateway name.
        device_id: Device id template per asset; variables ``{site}`` and ``{asset}``.
        keepalive: MQTT keep alive [s] [5..65535]; the broker publishes the will NDEATH
            about 1.5 × this after the gateway vanishes without closing its socket.
        qos: QoS of DBIRTH/DDATA/DDEATH and NBIRTH [0..1]. 0 is what the specification
            requires (§4.2); 1 is a deliberate deviation for brokers that drop QoS 0.
        reconnect_initial: First reconnect delay [s] (0.1..60).
        reconnect_max: Cap of the reconnect delay [s] (0.1..3600).
        queue_max: Readings buffered while the broker is slow or away [1..10000000]; beyond,
            the oldest are dropped and counted.
        rebirth_min_interval: Least time between two birth sequences [s] (0..60); a Rebirth
            request arriving sooner is served when it has passed (data is held meanwhile).
        max_metrics_per_message: Metrics per DDATA message [1..100000].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="TCP port [1..65535]; default 1883/8883 (TLS)"
    )
    tls: MqttTls | None = Field(default=None, description="TLS; None = plaintext TCP")
    username: str | None = Field(default=None, description="User name; None = anonymous")
    password: SecretStr | None = Field(default=None, description="Password, e.g. ${MQTT_PASS}")
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="MQTT client id [1..128 chars]; default otgw-spb-<edge_node_id>",
    )
    mqtt_version: Literal["3.1.1", "5"] = Field(default="3.1.1", description="3.1.1 | 5")
    group_id: str = Field(description="Sparkplug group id (no + / #) [1..255 chars]")
    edge_node_id: str | None = Field(
        default=None,
        description="Sparkplug edge node id (no + / #) [1..255 chars]; default gateway",
    )
    device_id: str = Field(
        default="{site}:{asset}",
        min_length=1,
        description="Device id template per asset: {site}, {asset} (no + / #)",
    )
    keepalive: int = Field(default=30, ge=5, le=65535, description="Keep alive [s] [5..65535]")
    qos: Literal[0, 1] = Field(
        default=0, description="QoS of births/data [0..1]; Sparkplug requires 0"
    )
    reconnect_initial: float = Field(default=0.5, gt=0, le=60, description="First delay [s]")
    reconnect_max: float = Field(default=10.0, gt=0, le=3600, description="Max delay [s]")
    queue_max: int = Field(
        default=100_000, ge=1, le=10_000_000, description="Readings buffered [count]"
    )
    rebirth_min_interval: float = Field(
        default=1.0, ge=0, le=60, description="Least time between two birth sequences [s]"
    )
    max_metrics_per_message: int = Field(
        default=500, ge=1, le=100_000, description="Metrics per DDATA message [count]"
    )

    @field_validator("group_id")
    @classmethod
    def _check_group(cls, value: str) -> str:
        return check_sparkplug_id(value, "group_id")

    @field_validator("edge_node_id")
    @classmethod
    def _check_node(cls, value: str | None) -> str | None:
        return None if value is None else check_sparkplug_id(value, "edge_node_id")

    @model_validator(mode="after")
    def _check(self) -> Self:
        template = self.device_id
        rest = template.replace("{site}", "").replace("{asset}", "")
        if "{" in rest or "}" in rest:
            msg = "device_id: only the variables {site} and {asset} are allowed"
            raise ValueError(msg)
        if "{asset}" not in template:
            msg = "device_id: must contain {asset} (one device per asset)"
            raise ValueError(msg)
        check_sparkplug_id(rest or "x", "device_id")
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


