"""OPC UA configuration: the device (endpoint, security, session, subscription), the point address.

Pure pydantic: this module imports no asyncua, so the gateway can validate a configuration
without the OPC UA stack installed. Node ids are checked here in their standard string forms
(``i=85``, ``ns=2;s=Pump7.Flow``, ``ns=3;i=1001``, ``ns=2;g=<guid>``, ``ns=2;b=<base64>``,
``nsu=urn:vendor:plant;s=Pump7.Flow``); browse paths as ``/``-separated qualified names
``<namespace index>:<browse name>`` below the Objects folder (``2:Plant/2:Pump7/2:Flow``).

Source: OPC UA Part 3 §8.2 (NodeId), Part 4 §5.8.4 (TranslateBrowsePathsToNodeIds), §5.12.1
(monitored item sampling interval, queue size), §5.13.1 (subscription publishing interval,
keep-alive count), §7.22.2 (DataChangeFilter, deadband), §7.41 (SecurityPolicy), Part 6 §5.3.1.1
(text format of NodeIds), Part 7 (deprecated security policies Basic128Rsa15 and Basic256).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from enum import StrEnum
from typing import Literal, NamedTuple, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)

DEFAULT_PORT = 4840
"""IANA port of OPC UA binary (opc.tcp) [Part 6 §7.2]."""


class SecurityPolicy(StrEnum):
    """OPC UA security policies (names as in the policy URIs ``…/SecurityPolicy#<name>``)."""

    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"
    NONE = "None"
    BASIC128RSA15 = "Basic128Rsa15"  # deprecated (SHA-1, RSA-PKCS#1 v1.5)
    BASIC256 = "Basic256"  # deprecated (SHA-1)

    @property
    def uri(self) -> str:
        """The policy URI, e.g. ``http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256``."""
        return f"http://opcfoundation.org/UA/SecurityPolicy#{self.value}"

    @property
    def is_insecure(self) -> bool:
        """True for None and the deprecated policies, which need ``insecure: true``."""
        return self in _INSECURE_POLICIES


_INSECURE_POLICIES = frozenset(
    {SecurityPolicy.NONE, SecurityPolicy.BASIC128RSA15, SecurityPolicy.BASIC256}
)


class SecurityMode(StrEnum):
    """MessageSecurityMode of a secure channel (ignored for policy None)."""

    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class AcquisitionMode(StrEnum):
    """How a point's value is acquired."""

    SUBSCRIPTION = "subscription"  # monitored item, report by exception
    POLL = "poll"  # Read service every poll_interval


class DeadbandType(StrEnum):
    """DataChangeFilter deadband (Part 4 §7.22.2); percent needs an EURange on the server."""

    NONE = "none"
    ABSOLUTE = "absolute"
    PERCENT = "percent"


class ValueType(StrEnum):
    """The value a point expects; other types give ``BadTypeMismatch`` (RELIABILITY B9)."""

    AUTO = "auto"  # from the node's DataType and ValueRank attributes, read at connect
    NUMBER = "number"  # any integer or floating-point scalar
    BOOL = "bool"
    STRING = "string"  # String, LocalizedText (its text) or DateTime (RFC 3339)
    ANY = "any"  # any scalar number, bool or string


# ---------------------------------------------------------------------------------------------
# Node ids and browse paths (text forms).

_NODE_ID = re.compile(
    r"^(?:(?:ns=(?P<ns>[0-9]+)|nsu=(?P<nsu>[^;]+));)?(?P<kind>[isgb])=(?P<ident>.+)$", re.DOTALL
)
_QUALIFIED = re.compile(r"^(?:(?P<ns>[0-9]+):)?(?P<name>[^/]*)$")


class NodeIdText(NamedTuple):
    """A parsed node id text form.

    Attributes:
        namespace: Namespace index [0..65535], or None when given by URI (``nsu=``).
        namespace_uri: Namespace URI (``nsu=`` form), resolved against the server's
            NamespaceArray at connect; None for the ``ns=`` form.
        kind: Identifier type: ``i`` numeric, ``s`` string, ``g`` GUID, ``b`` opaque (base64).
        identifier: The identifier exactly as written after ``<kind>=``.
    """

    namespace: int | None
    namespace_uri: str | None
    kind: Literal["i", "s", "g", "b"]
    identifier: str

    def canonical(self) -> str:
        """Standard text form: ``ns`` omitted for namespace 0, ``nsu=`` kept as given."""
        if self.namespace_uri is not None:
            return f"nsu={self.namespace_uri};{self.kind}={self.identifier}"
        if self.namespace:
            return f"ns={self.namespace};{self.kind}={self.identifier}"
        return f"{self.kind}={self.identifier}"


def parse_node_id(text: str) -> NodeIdText:
    """Parse and check a node id in its standard text form.

    Args:
        text: e.g. ``ns=2;s=Pump7.Flow``, ``i=2258``, ``nsu=urn:x;i=5``, ``ns=1;g=<uuid>``.

    Returns:
        The parts; the identifier text is kept as written (string ids may hold ``;`` and ``=``).

    Raises:
        ValueError: Malformed text, namespace index > 65535, numeric id outside
            [0..2**32-1], an invalid GUID or base64 identifier, or an empty string id.

    Source: OPC UA Part 6 §5.3.1.10 (NodeId text format), Part 3 §8.2.
    """
    match = _NODE_ID.match(text.strip())
    if match is None:
        msg = (
            f"{text!r} is not a node id: expected [ns=<index>;|nsu=<uri>;]<i|s|g|b>=<identifier>, "
            "e.g. ns=2;s=Pump7.Flow"
        )
        raise ValueError(msg)
    ns_text, nsu, kind, ident = match["ns"], match["nsu"], match["kind"], match["ident"]
    namespace: int | None = None
    if ns_text is not None:
        namespace = int(ns_text)
        if namespace > 0xFFFF:
            msg = f"{text!r}: namespace index {namespace} is outside 0..65535"
            raise ValueError(msg)
    elif nsu is None:
        namespace = 0
    if kind == "i":
        if not ident.isdigit() or int(ident) > 0xFFFFFFFF:
            msg = f"{text!r}: numeric identifier must be an integer in 0..4294967295"
            raise ValueError(msg)
    elif kind == "g":
        try:
            uuid.UUID(ident)
        except ValueError:
            msg = f"{text!r}: {ident!r} is not a GUID"
            raise ValueError(msg) from None
    elif kind == "b":
        try:
            base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            msg = f"{text!r}: opaque identifier must be base64"
            raise ValueError(msg) from None
    return NodeIdText(namespace, nsu, kind, ident)  # type: ignore[arg-type]


def parse_browse_path(text: str) -> list[tuple[int, str]]:
    """Parse a browse path below the Objects folder.

    Args:
        text: ``/``-separated qualified names ``<ns>:<name>``, e.g. ``2:Plant/2:Pump7/2:Flow``;
            a missing ``<ns>:`` means namespace 0; one leading ``/`` is ignored.

    Returns:
        ``[(namespace index, browse name), ...]``, at least one element.

    Raises:
        ValueError: Empty path or element, or a namespace index > 65535.

    Source: OPC UA Part 4 §5.8.4 (TranslateBrowsePathsToNodeIds), §7.31 (RelativePath).
    """
    body = text.strip().removeprefix("/")
    if not body:
        msg = "a browse path needs at least one element, e.g. 2:Plant/2:Pump7/2:Flow"
        raise ValueError(msg)
    elements: list[tuple[int, str]] = []
    for part in body.split("/"):
        match = _QUALIFIED.match(part)
        if match is None or not match["name"].strip():
            msg = f"{text!r}: empty element in browse path (use <ns>:<name>/<ns>:<name>)"
            raise ValueError(msg)
        namespace = int(match["ns"]) if match["ns"] is not None else 0
        if namespace > 0xFFFF:
            msg = f"{text!r}: namespace index {namespace} is outside 0..65535"
            raise ValueError(msg)
        elements.append((namespace, match["name"]))
    return elements


# ---------------------------------------------------------------------------------------------
# Point address.


class OpcUaAddress(BaseModel):
    """Where a point lives on an OPC UA server and how it is acquired.

    Attributes:
        node_id: Node id text (``ns=2;s=…``, ``ns=2;i=…``, ``nsu=<uri>;s=…``); or use browse_path.
        browse_path: Qualified names below Objects (``2:Plant/2:Pump7/2:Flow``), resolved
            at connect; or use node_id.
        mode: ``subscription`` (monitored item, report by exception) or ``poll`` (Read).
        sampling_interval: Server sampling interval [s] (0 = fastest the server supports);
            None = the subscription's publishing interval. Subscription mode only.
        queue_size: Monitored item queue size [1..10000]; 1 keeps only the newest value per
            publishing interval. Subscription mode only.
        deadband_type: none | absolute | percent (of the node's EURange). Subscription only.
        deadband_value: Deadband in engineering units (absolute) or percent [0..100].
        poll_interval: Poll interval [s] of a poll-mode point; None = the device's.
        max_report_interval: Longest silence [s] expected from a subscription point whose
            value does not change (heartbeat expectation for gap detection); None = none.
        value_type: Expected value type; ``auto`` reads the node's DataType at connect.
    """

    model_config = _STRICT

    node_id: str | None = Field(
        default=None,
        description="Node id: ns=<index>;s=<string> | ns=<index>;i=<0..4294967295> | "
        "nsu=<namespace uri>;s=<string> (also g= GUID, b= base64)",
    )
    browse_path: str | None = Field(
        default=None,
        description="Browse path below the Objects folder: <ns>:<name>/<ns>:<name>/...",
    )
    mode: AcquisitionMode = Field(
        default=AcquisitionMode.SUBSCRIPTION,
        description="subscription (monitored item, report by exception) | poll (Read service)",
    )
    sampling_interval: float | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="Server sampling interval [s], [0..86400], 0 = fastest; default = "
        "publishing interval (subscription mode)",
    )
    queue_size: int = Field(
        default=1,
        ge=1,
        le=10000,
        description="Monitored item queue size [1..10000] (subscription mode)",
    )
    deadband_type: DeadbandType = Field(
        default=DeadbandType.NONE,
        description="Data change deadband: none | absolute | percent (subscription mode)",
    )
    deadband_value: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Deadband [engineering units] (absolute) or [%] of EURange [0..100]",
    )
    poll_interval: float | None = Field(
        default=None,
        ge=0.01,
        le=86400,
        description="Poll interval [s], [0.01..86400] (poll mode); default = device's",
    )
    max_report_interval: float | None = Field(
        default=None,
        ge=0.01,
        le=86400,
        description="Longest expected silence [s] of a subscription point, [0.01..86400]",
    )
    value_type: ValueType = Field(
        default=ValueType.AUTO,
        description="Expected value: auto (node DataType) | number | bool | string | any",
    )

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str | None) -> str | None:
        if value is not None:
            parse_node_id(value)
        return value

    @field_validator("browse_path")
    @classmethod
    def _check_browse_path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_browse_path(value)
        return value

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if (self.node_id is None) == (self.browse_path is None):
            msg = "node_id: give exactly one of node_id or browse_path"
            raise ValueError(msg)
        if self.mode is AcquisitionMode.POLL:
            for key, is_set in (
                ("sampling_interval", self.sampling_interval is not None),
                ("queue_size", self.queue_size != 1),
                ("deadband_type", self.deadband_type is not DeadbandType.NONE),
                ("max_report_interval", self.max_report_interval is not None),
            ):
                if is_set:
                    msg = f"{key}: applies only to mode subscription"
                    raise ValueError(msg)
        elif self.poll_interval is not None:
            msg = "poll_interval: applies only to mode poll"
            raise ValueError(msg)
        if self.deadband_type is DeadbandType.NONE and self.deadband_value:
            msg = "deadband_value: set deadband_type absolute or percent to use a deadband"
            raise ValueError(msg)
        if self.deadband_type is DeadbandType.PERCENT and self.deadband_value > 100:
            msg = f"deadband_value: a percent deadband is 0..100, got {self.deadband_value}"
            raise ValueError(msg)
        return self

    @property
    def locator(self) -> str:
        """The point's fragment in its source URI: canonical node id, or ``path=<browse path>``."""
        if self.node_id is not None:
            return parse_node_id(self.node_id).canonical()
        return f"path={self.browse_path}"


# ---------------------------------------------------------------------------------------------
# Discovery of unconfigured variables.


class OpcUaDiscovery(BaseModel):
    """Browsing for variables that no point maps (reported as unmapped sources).

    After each connect the connector walks the hierarchy below ``start`` in a background task
    (never on the sample path) and lists the variables that no configured point uses, for
    ``GET /api/v1/unmapped``. The walk is bounded by ``depth``, ``max_nodes`` and ``timeout``;
    namespace 0 (the Server object) is skipped. Write ``discover: false`` to turn it off.

    Attributes:
        enabled: Browse after connect (default true).
        start: Node id text of the start node (default the Objects folder ``i=85``).
        depth: Levels below the start node [1..32].
        max_nodes: Most nodes visited (objects and variables) per walk [1..100000].
        max_variables: Most unmapped variables reported [1..100000].
        timeout: Longest walk [s], (0..600]; what was found by then is kept.
        interval: Walk again every this many seconds [60..86400]; None = once per connection.

    Source: OPC UA Part 4 §5.8.2 (Browse), §5.8.3 (BrowseNext).
    """

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Browse for unmapped variables after connect")
    start: str = Field(default="i=85", description="Start node id (default the Objects folder)")
    depth: int = Field(default=5, ge=1, le=32, description="Levels below the start node [1..32]")
    max_nodes: int = Field(
        default=10_000, ge=1, le=100_000, description="Most nodes visited per walk [1..100000]"
    )
    max_variables: int = Field(
        default=1000, ge=1, le=100_000, description="Most unmapped variables reported [1..100000]"
    )
    timeout: float = Field(
        default=30.0, gt=0, le=600, description="Longest walk [s], (0..600]"
    )
    interval: float | None = Field(
        default=None,
        ge=60,
        le=86400,
        description="Walk again every this many seconds [s], [60..86400]; default once per "
        "connection",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            return {"enabled": value}
        return value

    @field_validator("start")
    @classmethod
    def _check_start(cls, value: str) -> str:
        parse_node_id(value)
        return value


# ---------------------------------------------------------------------------------------------
# Device.


class OpcUaDeviceConfig(BaseModel):
    """An OPC UA server (endpoint) and how the gateway talks to it.

    Attributes:
        id: Device id (slug), unique in the file.
        protocol: Always "opcua".
        endpoint: ``opc.tcp://host[:port][/path]`` (port 4840 by default).
        security_policy: Basic256Sha256 (default), Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss;
            None, Basic128Rsa15 and Basic256 only with ``insecure: true`` (RELIABILITY S10).
        security_mode: Sign or SignAndEncrypt (default); ignored for policy None.
        insecure: Allow policy None and the deprecated policies.
        certificate: Client certificate file (DER or PEM); required unless policy None.
        private_key: Client private key file (PEM or DER); required unless policy None.
        private_key_password: Password of an encrypted private key (``${ENV}``), or None.
        trust_dir: Directory of trusted server (or CA) certificates; required unless None.
        rejected_dir: Where untrusted server certificates are copied; default
            ``<trust_dir>/../rejected``.
        application_uri: Client ApplicationUri; default: the certificate's SAN URI, else
            ``urn:ot-gateway:client``.
        username: User name for UserName authentication, or None (anonymous).
        password: Password (``${ENV}``), never logged; sent only over an encrypted channel or
            encrypted with the server's key.
        timeout: Request timeout [s]; connect takes at most 4 × timeout.
        session_timeout: Requested session timeout [s].
        publishing_interval: Subscription publishing interval [s].
        keepalive_count: Publishing intervals without data before the server sends a keep-alive.
        watchdog: Connection probe interval [s]; with no publish response (data or keep-alive)
            for max(publishing_interval × keepalive_count, watchdog) + 0.5 s the link is lost.
        poll_interval: Default poll interval [s] of poll-mode points.
        max_nodes_per_read: Cap of nodes per Read (the server's MaxNodesPerRead is also obeyed).
        max_monitored_items_per_call: Cap of items per CreateMonitoredItems (and the server's).
        max_future_skew: A SourceTimestamp later than now + this [s] is replaced (R23).
        max_source_age: A SourceTimestamp older than now − this [s] is replaced; None = only
            timestamps before 2000-01-01 are.
        discover: Browsing for unconfigured variables after connect (`OpcUaDiscovery`); on by
            default, ``discover: false`` turns it off.
    """

    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="Device id (slug)")
    protocol: Literal["opcua"] = Field(default="opcua", description="Always opcua")
    endpoint: str = Field(description="opc.tcp://host[:port][/path], port 4840 by default")
    security_policy: SecurityPolicy = Field(
        default=SecurityPolicy.BASIC256SHA256,
        description="Basic256Sha256 | Aes128_Sha256_RsaOaep | Aes256_Sha256_RsaPss; "
        "None | Basic128Rsa15 | Basic256 need insecure: true",
    )
    security_mode: SecurityMode = Field(
        default=SecurityMode.SIGN_AND_ENCRYPT, description="Sign | SignAndEncrypt"
    )
    insecure: bool = Field(
        default=False, description="Allow security_policy None and the deprecated policies"
    )
    certificate: str | None = Field(
        default=None, description="Client certificate file (DER or PEM)"
    )
    private_key: str | None = Field(default=None, description="Client private key file")
    private_key_password: SecretStr | None = Field(
        default=None, description="Password of the private key (use ${ENV})"
    )
    trust_dir: str | None = Field(
        default=None, description="Directory of trusted server/CA certificates"
    )
    rejected_dir: str | None = Field(
        default=None,
        description="Where untrusted server certificates are copied; "
        "default <trust_dir>/../rejected",
    )
    application_uri: str | None = Field(
        default=None, description="Client ApplicationUri; default from the certificate"
    )
    username: str | None = Field(default=None, min_length=1, description="User name")
    password: SecretStr | None = Field(default=None, description="Password (use ${ENV})")
    timeout: float = Field(default=5.0, gt=0, le=60, description="Request timeout [s], (0..60]")
    session_timeout: float = Field(
        default=60.0, ge=10, le=3600, description="Session timeout [s], [10..3600]"
    )
    publishing_interval: float = Field(
        default=1.0, ge=0.01, le=3600, description="Publishing interval [s], [0.01..3600]"
    )
    keepalive_count: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Keep-alive after this many empty publishing intervals [1..1000]",
    )
    watchdog: float = Field(
        default=5.0,
        ge=0.5,
        le=600,
        description="Connection probe interval and minimum silence before link loss [s], "
        "[0.5..600]",
    )
    poll_interval: float = Field(
        default=1.0, ge=0.01, le=86400, description="Default poll interval [s], [0.01..86400]"
    )
    max_nodes_per_read: int | None = Field(
        default=None, ge=1, le=100_000, description="Cap of nodes per Read [1..100000]"
    )
    max_monitored_items_per_call: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Cap of items per CreateMonitoredItems [1..100000]",
    )
    max_future_skew: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="SourceTimestamps later than now + this [s] are replaced, [0..86400]",
    )
    max_source_age: float | None = Field(
        default=None,
        gt=0,
        description="SourceTimestamps older than now - this [s] are replaced; default off",
    )
    discover: OpcUaDiscovery = Field(
        default_factory=OpcUaDiscovery,
        description="Browse for unconfigured variables (unmapped sources); false = off",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            msg = f"must be opc.tcp://host[:port][/path], got {value!r}"
            raise ValueError(msg)
        try:
            port = parts.port
        except ValueError:
            msg = f"port of {value!r} is not in 1..65535"
            raise ValueError(msg) from None
        if port == 0:
            msg = f"port of {value!r} is not in 1..65535"
            raise ValueError(msg)
        if parts.username or parts.password:
            msg = "no credentials in the endpoint: use username and password"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        policy = self.security_policy
        if policy.is_insecure and not self.insecure:
            why = (
                "offers no signing and no encryption"
                if policy is SecurityPolicy.NONE
                else "is deprecated (SHA-1)"
            )
            msg = (
                f"security_policy: {policy.value} {why}; use Basic256Sha256, "
                "Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss, or set insecure: true"
            )
            raise ValueError(msg)
        if policy is not SecurityPolicy.NONE:
            for key in ("certificate", "private_key", "trust_dir"):
                if getattr(self, key) is None:
                    msg = f"{key}: required with security_policy {policy.value}"
                    raise ValueError(msg)
        if self.password is not None and self.username is None:
            msg = "password: set username too"
            raise ValueError(msg)
        if self.username is not None and policy is SecurityPolicy.NONE:
            msg = "username: credentials are never sent over security_policy None"
            raise ValueError(msg)
        return self

    @property
    def host(self) -> str:
        """Host name or address of the endpoint."""
        return urlsplit(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        """TCP port of the endpoint (4840 when not given)."""
        return urlsplit(self.endpoint).port or DEFAULT_PORT

    @property
    def source_prefix(self) -> str:
        """Locator prefix ``opc.tcp://host:port`` of this device's points."""
        host = self.host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"opc.tcp://{host}:{self.port}"

    @property
    def liveness_limit(self) -> float:
        """Silence [s] without a publish response after which the link is declared lost."""
        return max(self.publishing_interval * self.keepalive_count, self.watchdog) + 0.5
