"""The fleet view's YAML config: the broker to read gateway state from, and the API to serve.

Example (``fleet.yaml``)::

    broker: {host: broker.example.net, port: 8883, tls: {ca_file: ca.pem},
             username: fleet, password: ${FLEET_MQTT_PASSWORD}}
    prefix: ot/_gateway            # the gateways' northbound state_topic without {gateway}
    api: {host: 127.0.0.1, port: 8090}

Errors name the key path and exit 2 without a traceback, as for the gateway config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.mqtt.config import MqttTls
from gateway.config import ConfigError, expand_env, format_validation

_STRICT = ConfigDict(extra="forbid", frozen=True)


class FleetBroker(BaseModel):
    """The broker (or cluster endpoint) the site gateways publish their state to.

    Attributes:
        host: Host name or IP address.
        port: TCP port [1..65535]; default 8883 with ``tls``, else 1883.
        tls: TLS settings; None = plaintext TCP.
        username: User name, or None.
        password: Password (``${ENV_VAR}``); never logged.
        client_id: MQTT client id; default ``otgw-fleet``.
        keepalive: Keep alive [s] [5..65535].
        mqtt_version: ``5`` or ``3.1.1``.
    """

    model_config = _STRICT

    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int | None = Field(default=None, ge=1, le=65535, description="TCP port [1..65535]")
    tls: MqttTls | None = Field(default=None, description="TLS; None = plaintext")
    username: str | None = Field(default=None, description="User name; None = anonymous")
    password: SecretStr | None = Field(default=None, description="Password, e.g. ${MQTT_PASS}")
    client_id: str = Field(default="otgw-fleet", min_length=1, max_length=128)
    keepalive: int = Field(default=30, ge=5, le=65535, description="Keep alive [s]")
    mqtt_version: Literal["3.1.1", "5"] = Field(default="5", description="3.1.1 | 5")

    @property
    def effective_port(self) -> int:
        """The port: configured, else 8883 with TLS, else 1883."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


class FleetApi(BaseModel):
    """The fleet's HTTP API and page."""

    model_config = _STRICT

    host: str = Field(default="127.0.0.1", description="Bind address; loopback by default")
    port: int = Field(default=8090, ge=0, le=65535, description="TCP port [0..65535], 0 = any")


class FleetConfig(BaseModel):
    """The whole fleet file."""

    model_config = _STRICT

    broker: FleetBroker
    prefix: str = Field(
        default="ot/_gateway",
        min_length=1,
        pattern=r"^[^#+]+$",
        description="Topic prefix of the gateways' state topics (their state_topic minus "
        "/{gateway})",
    )
    api: FleetApi = Field(default_factory=FleetApi)


def parse_fleet_config(text: str, source: str = "<fleet>") -> FleetConfig:
    """Parse and validate fleet YAML.

    Raises:
        ConfigError: Bad YAML, unknown keys, bad values or missing ``${ENV}``; every message
            names its key path.
    """
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, ["top level: expected a mapping"])
    errors: list[str] = []
    hidden: set[str] = set()
    raw = expand_env(raw, "", errors, hidden)
    if errors:
        raise ConfigError(source, errors)
    from pydantic import ValidationError

    try:
        return FleetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, format_validation(exc, hidden)) from None


def load_fleet_config(path: str | Path) -> FleetConfig:
    """Read and validate a fleet file. Raises ConfigError (also for an unreadable file)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read: {exc.strerror}"]) from None
    return parse_fleet_config(text, str(p))
