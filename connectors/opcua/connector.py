"""OPC UA connector: one session per server, one subscription, polled reads, with asyncua 2.1.

Lifecycle (DESIGN.md §3): ``async with OpcUaConnector(device, points):`` opens the session or
raises `ConnectError`; `OpcUaConnector.samples` yields sample batches and raises `LinkLost`
when the session, subscription or link is gone. The connector never sleeps on errors and never
reconnects (asyncua's auto-reconnect is off): the runtime makes a new connector, which creates
a new session, subscription and monitored items (R18).

Connecting (at most ``4 × timeout``):

1. GetEndpoints (discovery needs no secure channel) and pick the endpoint with the configured
   policy and mode (none: `ConnectError` listing what the server offers). Unless the policy
   is None: check the endpoint's certificate against the trust list
   (`connectors.opcua.trust`: untrusted ones are copied to the rejected directory), refuse a
   user name whose password would cross the wire in plain text, then open the secure channel.
2. CreateSession, ActivateSession (anonymous or user name).
3. Reads of MaxNodesPerRead (alone: it bounds the next Read), then of the NamespaceArray and
   the other OperationLimits (MaxMonitoredItemsPerCall, MaxNodesPerTranslateBrowsePathsToNodeIds,
   MaxNodesPerBrowse): every later call is chunked to ``min(server limit, configured cap)``, or
   `DEFAULT_MAX_OPERATIONS` when the server announces no limit (R22).
4. ``nsu=`` node ids are mapped to namespace indexes, browse paths translated, and the DataType
   and ValueRank of ``value_type: auto`` points read.
5. One subscription (even without subscription points: its keep-alives prove the session
   alive) and its monitored items (sampling interval, queue size, DataChangeFilter with
   deadband), TimestampsToReturn Both.
6. Unless ``discover: false``: a background task walks the address space below
   ``discover.start`` (bounded in depth, nodes and time, small Browse/Read calls) and keeps
   the variables no point maps for `OpcUaConnector.unmapped`. It never delays `samples`.

`OpcUaConnector.write` (write-back, `connectors.base.WritableConnector`) writes the Value
attribute with a Variant of the node's built-in DataType (read once per point and connection),
then reads the value back; it is serialized with the polled Reads.

`samples` yields:

- one batch per publish response with data (several queued responses are merged), one
  `Sample` per MonitoredItemNotification;
- ``[]`` for a keep-alive publish response: proof that the subscription is alive while no
  monitored value changed (the runtime keeps silent report-by-exception points out of gaps);
- one batch per poll cycle of a poll group (one Sample per point; Read with MaxAge 0 and
  TimestampsToReturn Both, never a value-only read), cycles anchored to the monotonic clock,
  skipped and counted in ``stats.overruns`` when late;
- at start, a batch of Bad samples for subscription points that could not be monitored (node
  unknown, browse path without match, filter refused: the server's status code).

`LinkLost` is raised when the subscription reports a Bad status (e.g. ``BadTimeout``: lifetime
expired, ``BadShutdown``: asyncua saw the socket close or its connection probe fail), when no
publish response (data or keep-alive) arrived for ``max(publishing_interval × keepalive_count,
watchdog) + 0.5 s`` (revised values; a half-open link or a hung server, R19), when a service
call fails with a session or channel error, and when the notification queue overflows.

Why the raw subscription service: asyncua's high-level ``Subscription`` iterator drops
keep-alive responses and hands notifications over one at a time; `UaClient.create_subscription`
with a callback delivers every PublishResult, so keep-alives are seen exactly and each publish
response becomes one batch.

Source: OPC UA Part 4 §5.5 (SecureChannel), §5.6.2-5.6.3 (CreateSession, ActivateSession,
user token encryption §7.36.3), §5.10.2 (Read: MaxAge, TimestampsToReturn), §5.10.4 (Write),
§5.8.2 (Browse), §5.8.4
(TranslateBrowsePathsToNodeIds), §5.12.2 (CreateMonitoredItems), §5.13.1-5.13.5
(subscriptions: publishing interval, keep-alive count, lifetime count, Publish,
StatusChangeNotification), §6.1.3 (certificate validation), Part 5 §6.3.11
(OperationLimitsType).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, Self, TypeVar, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from connectors.base import ConnectError, ConnectorStats, LinkLost, WriteError, WriteResult
from connectors.opcua import browse as _browse
from connectors.opcua.codec import (
    ENCODABLE,
    EncodeError,
    ValueKind,
    decode,
    encode,
    kind_of,
    status_name,
    variant_text,
)
from connectors.opcua.config import (
    AcquisitionMode,
    DeadbandType,
    OpcUaAddress,
    OpcUaDeviceConfig,
    SecurityMode,
    SecurityPolicy,
    ValueType,
    parse_browse_path,
    parse_node_id,
)
from connectors.opcua.trust import (
    CertificateRejected,
    TrustList,
    application_uris,
    parse_certificate,
)
from gateway import clock as _clock
from gateway.model import Sample
from gateway.quality import Q

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_MAX_OPERATIONS = 5000
"""Operations per call when the server announces no limit (0) and none is configured."""

MAX_STAGGER_S = 1.0
"""Upper bound of a poll group's phase offset [s] (as for Modbus)."""

QUEUE_LIMIT = 1000
"""Publish responses buffered between asyncua's publish loop and `samples`; more is overflow."""

_SC = StatusCodes
BAD_NODE_ID_UNKNOWN: int = _SC.BadNodeIdUnknown
BAD_NO_MATCH: int = _SC.BadNoMatch
BAD_SHUTDOWN: int = _SC.BadShutdown

_POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicy.BASIC128RSA15: security_policies.SecurityPolicyBasic128Rsa15,
    SecurityPolicy.BASIC256: security_policies.SecurityPolicyBasic256,
}
_MODES: dict[SecurityMode, ua.MessageSecurityMode] = {
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
_DEADBANDS: dict[DeadbandType, ua.DeadbandType] = {
    DeadbandType.ABSOLUTE: ua.DeadbandType.Absolute,
    DeadbandType.PERCENT: ua.DeadbandType.Percent,
}
_KINDS: dict[ValueType, ValueKind] = {
    ValueType.NUMBER: ValueKind.NUMBER,
    ValueType.BOOL: ValueKind.BOOL,
    ValueType.STRING: ValueKind.STRING,
    ValueType.ANY: ValueKind.ANY,
}
# Service results meaning the session or channel is gone: the runtime must reconnect.
_SESSION_LOST = frozenset(
    {
        _SC.BadSessionIdInvalid,
        _SC.BadSessionClosed,
        _SC.BadSessionNotActivated,
        _SC.BadSecureChannelIdInvalid,
        _SC.BadSecureChannelClosed,
        _SC.BadConnectionClosed,
        _SC.BadServerHalted,
        _SC.BadShutdown,
        _SC.BadNoSubscription,
        _SC.BadSubscriptionIdInvalid,
        _SC.BadNotConnected,
    }
)
_LIMIT_NODES = (
    ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ObjectIds.Server_NamespaceArray,
    ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
    ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
)


class Clock(Protocol):
    """Time sources of the connector (the `gateway.clock` module fits)."""

    def monotonic(self) -> float:
        """Monotonic seconds, for schedules and liveness."""
        ...

    def utc_now(self) -> datetime:
        """Aware UTC wall time, for timestamps."""
        ...


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    """A point to acquire from an OPC UA server.

    Attributes:
        key: Point key ``site/asset/point``.
        address: Node, mode and acquisition settings (a point config model works too).
        poll_interval: Poll interval [s] of a poll-mode point, overriding the address's and
            the device's; None = ``address.poll_interval`` or ``device.poll_interval``.
    """

    key: str
    address: OpcUaAddress
    poll_interval: float | None = None


@dataclass(slots=True)
class OpcUaStats(ConnectorStats):
    """`ConnectorStats` plus subscription counters.

    Attributes:
        notifications: MonitoredItemNotifications received (data changes).
        keepalives: Keep-alive publish responses received.
        monitored_items: Monitored items created on the server by this connection.
    """

    notifications: int = 0
    keepalives: int = 0
    monitored_items: int = 0


class OperationLimits(NamedTuple):
    """Operations per service call used by this connection (>= 1 each).

    Attributes:
        read: Nodes per Read.
        monitored_items: Items per CreateMonitoredItems.
        translate: Browse paths per TranslateBrowsePathsToNodeIds.
        browse: Nodes per Browse.
    """

    read: int
    monitored_items: int
    translate: int
    browse: int


@dataclass(slots=True, eq=False)
class _Slot:
    """A point as this connection acquires it."""

    key: str
    address: OpcUaAddress
    node_id: ua.NodeId | None = None
    kind: ValueKind = ValueKind.ANY
    failure: int | None = None  # status code when the point cannot be acquired
    target: _WriteTarget | None = None  # write-back type and access, read at the first write


@dataclass(frozen=True, slots=True)
class _WriteTarget:
    """What a Write to a node needs: the Variant type, or why it cannot be written."""

    vtype: ua.VariantType | None
    refusal: str | None = None  # None: writable; else the reason (kind "unsupported")
    code: str | None = None  # StatusCode name for the refusal, if any


@dataclass(slots=True, eq=False)
class _Schedule:
    interval: float
    phase: float
    slots: list[_Slot]
    base: float = 0.0
    tick: int = 0

    def due(self) -> float:
        return self.base + self.tick * self.interval


@dataclass(slots=True, eq=False)
class _Session:
    """State of one connection (dropped on close)."""

    client: Client
    limits: OperationLimits
    queue: asyncio.Queue[ua.PublishResult]
    subscription_id: int = 0
    liveness_limit: float = 0.0
    overflowed: bool = False
    handles: dict[int, _Slot] = field(default_factory=dict)
    discovery: asyncio.Task[None] | None = None


@dataclass(slots=True, eq=False)
class _Unmapped:
    """A variable found by discovery that no point maps."""

    info: _browse.VariableInfo
    first_seen: datetime
    last_seen: datetime


@dataclass(slots=True)
class DiscoveryStatus:
    """Progress of the discovery walks of this connection.

    Attributes:
        state: ``off``, ``pending`` (not started), ``running``, ``done``, ``partial`` (stopped
            by ``timeout``, ``max_nodes`` or ``max_variables``: what was found is listed) or
            ``failed`` (see ``error``).
        walks: Walks completed (or stopped).
        visited: Nodes visited by the last walk.
        variables: Variables found by the last walk (configured or not).
        unmapped: Unmapped variables listed.
        error: Why the last walk failed or stopped early, or None.
    """

    state: str = "pending"
    walks: int = 0
    visited: int = 0
    variables: int = 0
    unmapped: int = 0
    error: str | None = None


class _RedactCredentials(logging.Filter):
    """Hide ActivateSession requests from asyncua's DEBUG request log: they hold the password.

    asyncua logs every request it sends (``Sending: %s``) on
    ``asyncua.client.ua_client.UASocketProtocol``; with a UserName token whose policy does not
    encrypt (the channel does), that repr holds the password in plain text (S12).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(a, ua.ActivateSessionRequest | ua.UserNameIdentityToken) for a in args
        ):
            record.args = tuple(
                "ActivateSessionRequest(<redacted: user credentials>)"
                if isinstance(a, ua.ActivateSessionRequest | ua.UserNameIdentityToken)
                else a
                for a in args
            )
        return True


_REDACT = _RedactCredentials()
for _name in ("asyncua.client.ua_client.UASocketProtocol", "asyncua.client.ua_session.UaSession"):
    logging.getLogger(_name).addFilter(_REDACT)


def _phase(device_id: str, interval: float) -> float:
    fraction = zlib.crc32(f"{device_id}/{float(interval)!r}".encode()) / 2**32
    return fraction * min(interval, MAX_STAGGER_S)


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class OpcUaConnector:
    """Acquires the points of one OPC UA server (implements `connectors.base.Connector`).

    Args:
        device: The server: endpoint, security, timeouts, subscription and chunking settings.
        points: Its points (subscription or poll mode each).
        clock: Monotonic and UTC time source; default `gateway.clock`.

    Attributes:
        device_id: The device id.
        stats: Counters: polls, overruns, requests (service calls except Publish), errors by
            kind, last poll cycle latency [s] (typed `ConnectorStats` for the protocol).
        opcua_stats: The same object typed `OpcUaStats`: also notifications, keep-alives and
            monitored items.
        limits: Operation limits of the open connection, or None before connecting.
        subscription_id: Server id of the open subscription, or None.
        discovery: Progress of the background browse for unmapped variables
            (`DiscoveryStatus`).
    """

    def __init__(
        self,
        device: OpcUaDeviceConfig,
        points: Sequence[OpcUaPoint],
        *,
        clock: Clock = _clock,
    ) -> None:
        self.device_id = device.id
        self.opcua_stats = OpcUaStats()
        self.stats: ConnectorStats = self.opcua_stats  # the same object, as the protocol types it
        self.limits: OperationLimits | None = None
        self.subscription_id: int | None = None
        self._device = device
        self._points = list(points)
        self._clock = clock
        prefix = device.source_prefix
        self._sources = {p.key: f"{prefix}#{p.address.locator}" for p in self._points}
        self._session: _Session | None = None
        self._slots: list[_Slot] = []
        self._by_key: dict[str, _Slot] = {}
        self._initial: list[Sample] = []
        self._io = asyncio.Lock()  # serializes polled Reads and write-backs
        self._unmapped: dict[str, _Unmapped] = {}
        self.discovery = DiscoveryStatus("pending" if device.discover.enabled else "off")

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open channel, session and subscription, create the monitored items.

        Bounded by 4 × ``timeout``. Nothing is retried here: the runtime retries with backoff.

        Raises:
            ConnectError: Refused, unreachable or timed out; no endpoint with the configured
                policy and mode; server certificate rejected (untrusted: copied to the
                rejected directory; expired; ApplicationUri mismatch); password would travel
                in plain text; session refused (e.g. BadUserAccessDenied). The message names
                the reason.

        Source: OPC UA Part 4 §5.4.4 (GetEndpoints), §5.5.2 (OpenSecureChannel), §5.6.2-5.6.3
        (CreateSession, ActivateSession), §6.1.3 (certificate validation).
        """
        await self._close()
        device = self._device
        budget = 4 * device.timeout
        client: Client | None = None
        try:
            async with asyncio.timeout(budget):
                client = await self._make_client()
                await client.connect()
                self._session = await self._set_up(client)
        except ConnectError:
            await self._discard(client)
            raise
        except TimeoutError:
            await self._discard(client)
            msg = f"{device.endpoint}: connect timed out after {budget:g} s"
            raise ConnectError(msg) from None
        except UaStatusCodeError as exc:
            await self._discard(client)
            msg = f"{device.endpoint}: server refused: {_explain(exc.code)}"
            raise ConnectError(msg) from exc
        except (OSError, ConnectionError) as exc:
            await self._discard(client)
            msg = f"{device.endpoint}: connect failed: {exc or type(exc).__name__}"
            raise ConnectError(msg) from exc
        except Exception as exc:  # asyncua and cryptography raise many types while connecting
            await self._discard(client)
            msg = f"{device.endpoint}: connect failed: {type(exc).__name__}: {exc}"
            raise ConnectError(msg) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close session (deleting its subscription) and channel; never raises."""
        await self._close()

    async def _close(self) -> None:
        session, self._session = self._session, None
        self.limits = None
        self.subscription_id = None
        if session is not None:
            task = session.discovery
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._discard(session.client)

    async def _discard(self, client: Client | None) -> None:
        """Disconnect within ``timeout``; on a dead link just drop the socket."""
        if client is None:
            return
        try:
            async with asyncio.timeout(self._device.timeout):
                await client.disconnect()
        except Exception:  # closing a broken session may fail in many ways
            log.debug("%s: disconnect failed", self._device.endpoint, exc_info=True)
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    async def _make_client(self) -> Client:
        """A client with security and credentials set (trust list checked). Raises ConnectError."""
        device = self._device
        client = Client(device.endpoint, timeout=device.timeout, watchdog_intervall=device.watchdog)
        client.session_timeout = round(device.session_timeout * 1000)
        client.name = f"ot-gateway {device.id}"
        client.description = client.name
        client.product_uri = "urn:ot-gateway"
        client.application_uri = device.application_uri or "urn:ot-gateway:client"
        policy = device.security_policy
        if policy is SecurityPolicy.NONE and device.username is not None:
            msg = f"{device.endpoint}: refusing to send credentials over security policy None"
            raise ConnectError(msg)  # the config refuses this too
        endpoints = await client.connect_and_get_server_endpoints()
        self.stats.requests += 1
        if policy is SecurityPolicy.NONE:
            mode = ua.MessageSecurityMode.None_
            mode_name = "None"
        else:
            mode = _MODES[device.security_mode]
            mode_name = device.security_mode.value
        chosen = next(
            (e for e in endpoints if e.SecurityPolicyUri == policy.uri and e.SecurityMode == mode),
            None,
        )
        if chosen is None:
            offered = sorted(
                {f"{_policy_name(e.SecurityPolicyUri)}/{_mode_name(e)}" for e in endpoints}
            )
            msg = (
                f"{device.endpoint}: the server offers no endpoint with {policy.value}/"
                f"{mode_name}; it offers {', '.join(offered) or 'none'}"
            )
            raise ConnectError(msg)
        if policy is SecurityPolicy.NONE:
            return client
        if device.certificate is None or device.private_key is None or device.trust_dir is None:
            msg = f"{device.endpoint}: certificate, private_key and trust_dir are required"
            raise ConnectError(msg)
        server_cert, client_uri = await asyncio.to_thread(self._check_server, chosen)
        if device.username is not None:
            self._check_token_policy(chosen)
        if device.application_uri is None and client_uri is not None:
            client.application_uri = client_uri
        password = device.private_key_password
        await client.set_security(
            _POLICIES[policy],
            certificate=device.certificate,
            private_key=device.private_key,
            private_key_password=password.get_secret_value() if password else None,
            server_certificate=server_cert.public_bytes(Encoding.DER),
            mode=mode,
        )
        if device.username is not None:
            client.set_user(device.username)
            if device.password is not None:
                client.set_password(device.password.get_secret_value())
        return client

    def _check_server(
        self, endpoint: ua.EndpointDescription
    ) -> tuple[x509.Certificate, str | None]:
        """Trust-list check of the endpoint's certificate (blocking file I/O: run in a thread).

        Returns:
            The server certificate and the ApplicationUri in the client certificate (or None).

        Raises:
            ConnectError: The server certificate is rejected (reason in the message).
        """
        device = self._device
        trust = TrustList.from_dirs(device.trust_dir or ".", device.rejected_dir)
        try:
            server_cert = trust.check(
                endpoint.ServerCertificate or b"",
                endpoint.Server.ApplicationUri or None,
                self._clock.utc_now(),
            )
        except CertificateRejected as exc:
            self.stats.errors[f"certificate_{exc.reason}"] += 1
            msg = f"{device.endpoint}: {exc}"
            raise ConnectError(msg) from None
        client_uri: str | None = None
        with contextlib.suppress(OSError, ValueError):
            uris = application_uris(parse_certificate(Path(device.certificate or "").read_bytes()))
            client_uri = uris[0] if uris else None
        return server_cert, client_uri

    def _check_token_policy(self, endpoint: ua.EndpointDescription) -> None:
        """Refuse a user name the endpoint would take with a plain-text password (S10)."""
        device = self._device
        token = next(
            (t for t in endpoint.UserIdentityTokens if t.TokenType == ua.UserTokenType.UserName),
            None,
        )
        if token is None:
            msg = f"{device.endpoint}: the endpoint does not accept user names"
            raise ConnectError(msg)
        token_policy = token.SecurityPolicyUri or endpoint.SecurityPolicyUri
        encrypted_token = token_policy != SecurityPolicy.NONE.uri
        encrypted_channel = endpoint.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt
        if not (encrypted_token or encrypted_channel):
            msg = (
                f"{device.endpoint}: refusing to send the password: the endpoint would take it "
                "in plain text over a channel that is not encrypted (use SignAndEncrypt)"
            )
            raise ConnectError(msg)

    async def _set_up(self, client: Client) -> _Session:
        """Limits, node resolution, subscription and monitored items. Raises ConnectError."""
        device = self._device
        namespaces, limits = await self._read_limits(client)
        session = _Session(client, limits, asyncio.Queue(QUEUE_LIMIT))
        self.limits = limits
        self._slots = [_Slot(p.key, p.address) for p in self._points]
        self._by_key = {slot.key: slot for slot in self._slots}
        self._resolve_node_ids(namespaces)
        await self._translate_browse_paths(client, limits)
        await self._read_kinds(client, limits)
        await self._create_subscription(session)
        await self._create_monitored_items(session)
        self._initial = [
            Sample(slot.key, None, slot.failure, self._clock.utc_now())
            for slot in self._slots
            if slot.failure is not None and slot.address.mode is AcquisitionMode.SUBSCRIPTION
        ]
        log.debug(
            "%s: session up, %d monitored items, limits %s",
            device.endpoint,
            self.opcua_stats.monitored_items,
            limits,
        )
        if device.discover.enabled:
            session.discovery = asyncio.get_running_loop().create_task(
                self._discovery_loop(session), name=f"opcua-discovery:{device.id}"
            )
        return session

    async def _read_limits(self, client: Client) -> tuple[list[str], OperationLimits]:
        """NamespaceArray and OperationLimits; MaxNodesPerRead first, alone (it bounds the rest)."""
        device = self._device

        def limit(value: object, cap: int | None) -> int:
            candidates = [v for v in (value, cap) if isinstance(v, int) and v > 0]
            return min(candidates) if candidates else DEFAULT_MAX_OPERATIONS

        first, *rest = _LIMIT_NODES
        raw = await self._read_values(client, [first], 1)
        read_limit = limit(raw[0], device.max_nodes_per_read)
        raw += await self._read_values(client, rest, read_limit)
        namespaces = [str(n) for n in raw[1]] if isinstance(raw[1], list) else []
        return namespaces, OperationLimits(
            read=read_limit,
            monitored_items=limit(raw[2], device.max_monitored_items_per_call),
            translate=limit(raw[3], None),
            browse=limit(raw[4], None),
        )

    async def _read_values(self, client: Client, ids: Sequence[int], per_call: int) -> list[object]:
        """Values of namespace-0 nodes (None where not Good), in chunks of ``per_call``."""
        out: list[object] = []
        for chunk in _chunks(ids, per_call):
            nodes = [ua.ReadValueId(_nid(i), AttributeIds.Value) for i in chunk]
            self.stats.requests += 1
            values = await client.uaclient.read(ua.ReadParameters(NodesToRead=nodes))
            out.extend(_good_value(dv) for dv in values)
        return out

    def _resolve_node_ids(self, namespaces: list[str]) -> None:
        for slot in self._slots:
            text = slot.address.node_id
            if text is None:
                continue
            parsed = parse_node_id(text)
            namespace = parsed.namespace
            if parsed.namespace_uri is not None:
                if parsed.namespace_uri not in namespaces:
                    slot.failure = BAD_NODE_ID_UNKNOWN
                    self.stats.errors["namespace_unknown"] += 1
                    log.warning(
                        "%s: %s: namespace %r not on the server",
                        self._device.endpoint,
                        slot.key,
                        parsed.namespace_uri,
                    )
                    continue
                namespace = namespaces.index(parsed.namespace_uri)
            text = f"ns={namespace};{parsed.kind}={parsed.identifier}"
            slot.node_id = ua.NodeId.from_string(text)

    async def _translate_browse_paths(self, client: Client, limits: OperationLimits) -> None:
        pending = [slot for slot in self._slots if slot.address.browse_path is not None]
        objects = _nid(ObjectIds.ObjectsFolder)
        hierarchical = _nid(ObjectIds.HierarchicalReferences)
        for chunk in _chunks(pending, limits.translate):
            paths = []
            for slot in chunk:
                elements = [
                    ua.RelativePathElement(
                        ReferenceTypeId=hierarchical,
                        IsInverse=_bool(False),
                        IncludeSubtypes=_bool(True),
                        TargetName=ua.QualifiedName(name, ns),
                    )
                    for ns, name in parse_browse_path(slot.address.browse_path or "")
                ]
                paths.append(ua.BrowsePath(objects, ua.RelativePath(elements)))
            self.stats.requests += 1
            results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
            for slot, result in zip(chunk, results, strict=True):
                code = result.StatusCode.value
                if code & 0x80000000 or not result.Targets:
                    slot.failure = code if code & 0x80000000 else BAD_NO_MATCH
                    self.stats.errors["browse_path"] += 1
                    continue
                target = result.Targets[0].TargetId
                slot.node_id = ua.NodeId(
                    target.Identifier, target.NamespaceIndex, target.NodeIdType
                )

    async def _read_kinds(self, client: Client, limits: OperationLimits) -> None:
        auto: list[_Slot] = []
        for slot in self._slots:
            configured = slot.address.value_type
            if configured is not ValueType.AUTO:
                slot.kind = _KINDS[configured]
            elif slot.node_id is not None and slot.failure is None:
                auto.append(slot)
        per_call = max(1, limits.read // 2)
        for chunk in _chunks(auto, per_call):
            nodes: list[ua.ReadValueId] = []
            for slot in chunk:
                nodes.append(ua.ReadValueId(slot.node_id, AttributeIds.DataType))
                nodes.append(ua.ReadValueId(slot.node_id, AttributeIds.ValueRank))
            self.stats.requests += 1
            values = await client.uaclient.read(ua.ReadParameters(NodesToRead=nodes))
            for i, slot in enumerate(chunk):
                dtype, rank = values[2 * i], values[2 * i + 1]
                if _status(dtype) == BAD_NODE_ID_UNKNOWN:
                    slot.failure = BAD_NODE_ID_UNKNOWN
                    continue
                data_type = _good_value(dtype)
                value_rank = _good_value(rank)
                slot.kind = kind_of(
                    data_type if isinstance(data_type, ua.NodeId) else None,
                    value_rank if isinstance(value_rank, int) else None,
                )

    async def _create_subscription(self, session: _Session) -> None:
        device = self._device
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=device.publishing_interval * 1000,
            RequestedLifetimeCount=max(
                3 * device.keepalive_count,
                math.ceil(device.session_timeout / device.publishing_interval),
            ),
            RequestedMaxKeepAliveCount=device.keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        queue = session.queue

        def on_publish(result: ua.PublishResult) -> None:
            try:
                queue.put_nowait(result)
            except asyncio.QueueFull:
                session.overflowed = True

        self.stats.requests += 1
        response = await session.client.uaclient.create_subscription(params, on_publish)
        session.subscription_id = response.SubscriptionId
        self.subscription_id = response.SubscriptionId
        publishing = max(response.RevisedPublishingInterval, 1.0) / 1000
        keepalive = max(int(response.RevisedMaxKeepAliveCount), 1)
        session.liveness_limit = max(publishing * keepalive, device.watchdog) + 0.5

    async def _create_monitored_items(self, session: _Session) -> None:
        wanted = [
            (handle, slot)
            for handle, slot in enumerate(self._slots, start=1)
            if slot.address.mode is AcquisitionMode.SUBSCRIPTION
            and slot.node_id is not None
            and slot.failure is None
        ]
        client = session.client
        for chunk in _chunks(wanted, session.limits.monitored_items):
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=session.subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=[self._item_request(handle, slot) for handle, slot in chunk],
            )
            for handle, slot in chunk:
                session.handles[handle] = slot  # before the call: notifications may race it
            self.stats.requests += 1
            results = await client.uaclient.create_monitored_items(params)
            for (handle, slot), result in zip(chunk, results, strict=True):
                code = result.StatusCode.value
                if code & 0x80000000:
                    slot.failure = code
                    session.handles.pop(handle, None)
                    self.stats.errors["monitored_item"] += 1
                    log.warning(
                        "%s: %s: cannot monitor %s: %s",
                        self._device.endpoint,
                        slot.key,
                        slot.node_id.to_string() if slot.node_id else "?",
                        status_name(code),
                    )
                else:
                    self.opcua_stats.monitored_items += 1

    def _item_request(self, handle: int, slot: _Slot) -> ua.MonitoredItemCreateRequest:
        address = slot.address
        sampling = address.sampling_interval
        params = ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=-1.0 if sampling is None else sampling * 1000,
            QueueSize=address.queue_size,
            DiscardOldest=True,
        )
        if address.deadband_type is not DeadbandType.NONE:
            params.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=_DEADBANDS[address.deadband_type],
                DeadbandValue=address.deadband_value,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(slot.node_id, AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=params,
        )

    @property
    def client(self) -> Client:
        """The open asyncua client (for browsing and diagnostics).

        Raises:
            LinkLost: Not connected.
        """
        if self._session is None:
            msg = f"{self._device.endpoint}: not connected"
            raise LinkLost(msg)
        return self._session.client

    def point_sources(self) -> dict[str, str]:
        """Map point key -> ``opc.tcp://host:port#<node id>`` (or ``#path=<browse path>``)."""
        return dict(self._sources)

    # -- discovery ------------------------------------------------------------------------

    def unmapped(self) -> list[dict[str, object]]:
        """Variables found by discovery that no configured point uses, most recent first.

        Filled by a background walk after connect (`OpcUaDiscovery`: start node, depth, node
        and time bounds); empty while it runs for the first time, when ``discover`` is off, and
        after a reconnect until the new connection's walk finds them again.

        Returns:
            One dict per variable: ``source`` (``opc.tcp://host:port#<node id>``), ``node``
            (node id text), ``browse_path``, ``display_name``, ``data_type``, ``value_type``
            (the point ``value_type`` that fits, or ``unsupported`` for arrays/structures),
            ``access`` (``read``/``write``/``read_write``/``none``), ``unit`` (UCUM from
            EngineeringUnits, or None), ``eu_range`` (``[low, high]`` or None), ``sample``
            (the value when found, as text, or None), ``first_seen`` and ``last_seen`` (RFC
            3339 UTC: the walks that found it) and ``reason`` (``not_configured``).
        """
        by_path = sorted(self._unmapped.values(), key=lambda u: u.info["browse_path"])
        items = sorted(by_path, key=lambda u: u.last_seen, reverse=True)  # stable: paths stay
        return [
            {
                "source": u.info["source"],
                "node": u.info["node_id"],
                "browse_path": u.info["browse_path"],
                "display_name": u.info["display_name"],
                "data_type": u.info["data_type"],
                "value_type": u.info["value_type"],
                "access": u.info["access"],
                "unit": u.info["unit"],
                "eu_range": u.info["eu_range"],
                "sample": u.info["sample"],
                "first_seen": _clock.to_rfc3339(u.first_seen),
                "last_seen": _clock.to_rfc3339(u.last_seen),
                "reason": "not_configured",
            }
            for u in items
        ]

    async def _discovery_loop(self, session: _Session) -> None:
        """Walk once after connect, then every ``discover.interval`` seconds (if set)."""
        interval = self._device.discover.interval
        while True:
            await self._discover(session)
            if interval is None:
                return
            await asyncio.sleep(interval)

    async def _discover(self, session: _Session) -> None:
        """One bounded walk for unmapped variables (runs beside `samples`, never inside it)."""
        device = self._device
        cfg = device.discover
        status = self.discovery
        status.state = "running"
        status.error = None
        started = self._clock.utc_now()
        client = session.client
        # Small calls: the server answers Publish requests between them.
        limits = session.limits._replace(
            browse=min(session.limits.browse, 100), read=min(session.limits.read, 600)
        )
        configured = {slot.node_id for slot in self._slots if slot.node_id is not None}
        found: list[_browse.VariableInfo] = []
        state = "done"
        try:
            async with asyncio.timeout(cfg.timeout):
                start = await _browse.resolve_start(client, cfg.start)
                walked = await _browse.walk(
                    client, start, cfg.depth, limits.browse, max_nodes=cfg.max_nodes
                )
                status.visited = walked.visited
                status.variables = len(walked.variables)
                todo = [f for f in walked.variables if f.node_id not in configured]
                if walked.truncated:
                    state, status.error = "partial", f"stopped after max_nodes {cfg.max_nodes}"
                if len(todo) > cfg.max_variables:
                    todo = todo[: cfg.max_variables]
                    state = "partial"
                    status.error = f"listing the first max_variables {cfg.max_variables}"
                await _browse.describe(client, todo, limits, device.source_prefix, out=found)
        except TimeoutError:
            state, status.error = "partial", f"stopped after timeout {cfg.timeout:g} s"
            self.stats.errors["discovery_timeout"] += 1
        except (UaError, OSError, ConnectError, ValueError) as exc:
            state, status.error = "failed", f"{type(exc).__name__}: {exc}"
            self.stats.errors["discovery_failed"] += 1
        except Exception as exc:  # best effort on a foreign address space: never kill the link
            state, status.error = "failed", f"{type(exc).__name__}: {exc}"
            self.stats.errors["discovery_failed"] += 1
            log.debug("%s: discovery failed", device.endpoint, exc_info=True)
        now = self._clock.utc_now()
        for info in found:
            known = self._unmapped.get(info["node_id"])
            if known is None:
                self._unmapped[info["node_id"]] = _Unmapped(info, started, now)
            else:
                known.info, known.last_seen = info, now
        status.state = state
        status.walks += 1
        status.unmapped = len(self._unmapped)
        if state != "done":
            log.warning("%s: discovery %s: %s", device.endpoint, state, status.error)
        else:
            log.debug("%s: discovery found %d unmapped variables", device.endpoint, len(found))

    # -- write-back -----------------------------------------------------------------------

    async def write(self, point_id: str, raw: object, *, dry_run: bool = False) -> WriteResult:
        """Write ``raw`` to the Value attribute of a point's node, then read it back.

        The node's DataType (resolved to its built-in type with asyncua's
        ``data_type_to_variant_type``; an abstract type takes the type of the current value),
        ValueRank and UserAccessLevel are read at the first write of the point on this
        connection. Writes and polled Reads share the session and are serialized.

        Args:
            point_id: Point key ``site/asset/point``.
            raw: The value in device units (bool, int, float or str; see `codec.encode`).
            dry_run: Check and encode only: nothing is written.

        Returns:
            `WriteResult` with ``encoded`` like ``Write ns=2;s=Setpoint Float 12.5`` and
            ``confirmed``: the point read back after the write (Read with MaxAge 0, decoded as
            the point's samples; a Bad sample if the read-back fails), None for a dry run.

        Raises:
            WriteError: ``unsupported`` (unknown point; array or structure node; no write
                access: code ``BadNotWritable``), ``offline`` (no session), ``encode`` (the
                value does not fit the node's type), ``device`` (the server refused: ``code``
                is the StatusCode name, e.g. ``BadTypeMismatch``, ``BadOutOfRange``,
                ``BadUserAccessDenied``; or the node is unknown), ``timeout`` (no answer within
                ``timeout``: the outcome is unknown and the write is not resent). Only
                ``device`` and ``timeout`` may follow a Write that reached the server.

        Source: OPC UA Part 4 §5.10.4 (Write), §5.10.2 (Read); Part 3 §5.6.4 (AccessLevel).
        """
        endpoint = self._device.endpoint
        if point_id not in self._sources:
            msg = f"{endpoint}: no point {point_id!r} on this device"
            raise WriteError("unsupported", msg)
        session = self._session
        slot = self._by_key.get(point_id)
        if (
            session is None
            or slot is None
            or session.client.uaclient.state is not UaClientState.CONNECTED
        ):
            msg = f"{endpoint}: {point_id}: not connected; nothing was sent"
            raise WriteError("offline", msg)
        if slot.node_id is None or slot.failure is not None:
            code = status_name(slot.failure or BAD_NODE_ID_UNKNOWN)
            msg = f"{endpoint}: {point_id}: node not available ({code}); nothing was sent"
            raise WriteError("device", msg, code)
        node_text = slot.node_id.to_string()
        async with self._io:
            target = slot.target or await self._write_target(session, slot)
            slot.target = target
            if target.refusal is not None or target.vtype is None:
                msg = f"{endpoint}: {point_id}: {node_text} {target.refusal}; nothing was sent"
                raise WriteError("unsupported", msg, target.code)
            try:
                variant = encode(raw, target.vtype)
            except EncodeError as exc:
                self.stats.errors["write_encode"] += 1
                msg = f"{endpoint}: {point_id}: {exc}; nothing was sent"
                raise WriteError("encode", msg) from None
            encoded = f"Write {node_text} {variant_text(variant)}"
            if dry_run:
                return WriteResult(encoded)
            await self._write_value(session, slot, variant, encoded)
            confirmed = await self._read_back(session, slot)
        return WriteResult(encoded, confirmed=confirmed)

    async def _write_target(self, session: _Session, slot: _Slot) -> _WriteTarget:
        """Read DataType, ValueRank, UserAccessLevel and Value; resolve the Variant type."""
        endpoint = self._device.endpoint
        node = slot.node_id
        attributes = (
            AttributeIds.DataType,
            AttributeIds.ValueRank,
            AttributeIds.UserAccessLevel,
            AttributeIds.Value,
        )
        params = ua.ReadParameters(NodesToRead=[ua.ReadValueId(node, a) for a in attributes])
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self._device.timeout):
                dtype, rank, access, current = await session.client.uaclient.read(params)
                data_type = _good_value(dtype)
                if _status(dtype) == BAD_NODE_ID_UNKNOWN or not isinstance(data_type, ua.NodeId):
                    code = status_name(_status(dtype) or BAD_NODE_ID_UNKNOWN)
                    msg = f"{endpoint}: {slot.key}: cannot read the DataType ({code})"
                    raise WriteError("device", msg, code)
                vtype = await data_type_to_variant_type(session.client.get_node(data_type))
        except TimeoutError:
            self.stats.errors["write_timeout"] += 1
            msg = (
                f"{endpoint}: {slot.key}: no answer reading the node's DataType within "
                f"{self._device.timeout:g} s; nothing was written"
            )
            raise WriteError("timeout", msg) from None
        except UaStatusCodeError as exc:
            msg = f"{endpoint}: {slot.key}: {_explain(exc.code)}; nothing was written"
            raise WriteError("device", msg, status_name(exc.code)) from None
        except UaError as exc:  # e.g. a DataType that is no subtype of a built-in type
            msg = f"{endpoint}: {slot.key}: cannot resolve the DataType ({exc}); nothing was sent"
            raise WriteError("unsupported", msg) from None
        except (ConnectionError, OSError) as exc:
            msg = f"{endpoint}: {slot.key}: reading the DataType failed: {exc}; nothing was sent"
            raise WriteError("offline", msg) from None
        value_rank = _good_value(rank)
        if isinstance(value_rank, int) and value_rank >= 0:
            return _WriteTarget(None, f"holds an array (ValueRank {value_rank})")
        if vtype == ua.VariantType.Variant:  # abstract DataType: the current value's type
            value = current.Value if _status(current) & 0x80000000 == 0 else None
            vtype = value.VariantType if value is not None else ua.VariantType.Null
        if vtype not in ENCODABLE:
            return _WriteTarget(None, f"has DataType {vtype.name}, which cannot be written")
        level = _good_value(access)
        if isinstance(level, int) and not level & int(ua.AccessLevel.CurrentWrite.mask):
            return _WriteTarget(vtype, "has no write access (UserAccessLevel)", "BadNotWritable")
        return _WriteTarget(vtype, None)

    async def _write_value(
        self, session: _Session, slot: _Slot, variant: ua.Variant, encoded: str
    ) -> None:
        """Write the Value attribute. Raises WriteError (device, timeout)."""
        endpoint = self._device.endpoint
        node = session.client.get_node(cast("ua.NodeId", slot.node_id))
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self._device.timeout):
                # Value only: no StatusCode, no timestamps (many servers refuse those with
                # BadWriteNotSupported).
                await node.write_attribute(
                    AttributeIds.Value, ua.DataValue(variant, StatusCode=None)
                )
        except TimeoutError:
            self.stats.errors["write_timeout"] += 1
            msg = (
                f"{endpoint}: {slot.key}: no answer to '{encoded}' within "
                f"{self._device.timeout:g} s; the outcome is unknown (not resent)"
            )
            raise WriteError("timeout", msg) from None
        except UaStatusCodeError as exc:
            self.stats.errors["write_refused"] += 1
            msg = f"{endpoint}: {slot.key}: '{encoded}' refused: {_explain(exc.code)}"
            raise WriteError("device", msg, status_name(exc.code)) from None
        except (UaError, ConnectionError, OSError) as exc:
            self.stats.errors["write_timeout"] += 1
            msg = (
                f"{endpoint}: {slot.key}: connection failed during '{encoded}' ({exc}); "
                "the outcome is unknown (not resent)"
            )
            raise WriteError("timeout", msg) from None

    async def _read_back(self, session: _Session, slot: _Slot) -> Sample:
        """The point's value after a write (a Bad sample when the Read fails)."""
        try:
            (sample,) = await self._read_chunk(session, [slot])
        except LinkLost:
            return Sample(slot.key, None, Q.BAD_NO_COMMUNICATION, self._clock.utc_now())
        return sample

    # -- acquisition ----------------------------------------------------------------------

    def _schedules(self) -> list[_Schedule]:
        groups: dict[float, list[_Slot]] = {}
        points = {p.key: p for p in self._points}
        for slot in self._slots:
            if slot.address.mode is not AcquisitionMode.POLL:
                continue
            point = points[slot.key]
            interval = (
                point.poll_interval or slot.address.poll_interval or self._device.poll_interval
            )
            groups.setdefault(interval, []).append(slot)
        return [
            _Schedule(interval, _phase(self._device.id, interval), slots)
            for interval, slots in sorted(groups.items())
        ]

    async def samples(self) -> AsyncIterator[list[Sample]]:
        """Yield sample batches forever: data changes, keep-alives (``[]``) and poll cycles.

        Yields:
            A batch per publish response with data (one Sample per notification, in arrival
            order), ``[]`` per keep-alive, one Sample per point of a poll group per cycle;
            first, Bad samples of subscription points that could not be monitored.

        Raises:
            LinkLost: Subscription status Bad, no publish response within the liveness
                limit, session or channel lost, or notification queue overflow.

        Source: OPC UA Part 4 §5.13.1.1 (keep-alive after MaxKeepAliveCount empty publishing
        cycles), §5.13.5 (Publish), §7.20.4 (StatusChangeNotification), §5.10.2 (Read).
        """
        session = self._session
        if session is None:
            msg = f"{self._device.endpoint}: not connected"
            raise LinkLost(msg)
        if self._initial:
            initial, self._initial = self._initial, []
            yield initial
        monotonic = self._clock.monotonic
        schedules = self._schedules()
        start = monotonic()
        for sched in schedules:
            sched.base = start + sched.phase
        last_alive = start
        queue = session.queue
        while True:
            results: list[ua.PublishResult] = []
            now = monotonic()
            wake = min([last_alive + session.liveness_limit, *(s.due() for s in schedules)])
            if queue.empty() and wake > now:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake - now):
                        results.append(await queue.get())
            while not queue.empty():
                results.append(queue.get_nowait())
            if results:
                last_alive = monotonic()
                yield self._notifications(session, results)
            self._check_link(session, last_alive)
            for sched in schedules:
                if sched.due() <= monotonic():
                    yield await self._poll(session, sched)

    def _check_link(self, session: _Session, last_alive: float) -> None:
        endpoint = self._device.endpoint
        if session.overflowed:
            self.stats.errors["overflow"] += 1
            msg = f"{endpoint}: notification queue overflow ({QUEUE_LIMIT} publish responses)"
            raise LinkLost(msg)
        if session.client.uaclient.state is not UaClientState.CONNECTED:
            msg = f"{endpoint}: connection closed"
            raise LinkLost(msg)
        silent = self._clock.monotonic() - last_alive
        if silent > session.liveness_limit:
            self.stats.errors["keepalive_timeout"] += 1
            msg = (
                f"{endpoint}: no publish response or keep-alive for {silent:.1f} s "
                f"(limit {session.liveness_limit:.1f} s)"
            )
            raise LinkLost(msg)

    def _notifications(self, session: _Session, results: list[ua.PublishResult]) -> list[Sample]:
        """Decode publish responses into one batch. Raises LinkLost on a Bad status change."""
        batch: list[Sample] = []
        device = self._device
        stats = self.opcua_stats
        errors = stats.errors
        handles = session.handles
        now = self._clock.utc_now()
        skew, age = device.max_future_skew, device.max_source_age
        append = batch.append
        for result in results:
            data = result.NotificationMessage.NotificationData
            if not data:
                stats.keepalives += 1
                continue
            for notification in data:
                if isinstance(notification, ua.DataChangeNotification):
                    for item in notification.MonitoredItems:
                        slot = handles.get(item.ClientHandle)
                        if slot is None:
                            errors["unknown_handle"] += 1
                            continue
                        stats.notifications += 1
                        value, quality, when, adjusted, error = decode(
                            item.Value, slot.kind, now, skew, age
                        )
                        if adjusted:
                            errors["ts_adjusted"] += 1
                        if error is not None:
                            errors[error] += 1
                        append(Sample(slot.key, value, quality, when))
                elif isinstance(notification, ua.StatusChangeNotification):
                    code = notification.Status.value
                    if code & 0x80000000:
                        errors["subscription_status"] += 1
                        msg = f"{device.endpoint}: subscription lost: {_explain(code)}"
                        raise LinkLost(msg)
        return batch

    async def _poll(self, session: _Session, sched: _Schedule) -> list[Sample]:
        """One poll cycle of a group: chunked Reads. Raises LinkLost when the session is gone."""
        monotonic = self._clock.monotonic
        stats = self.stats
        started = monotonic()
        late = int((started - sched.due()) // sched.interval)
        if late > 0:
            stats.overruns += late
            sched.tick += late
        batch: list[Sample] = []
        readable = [s for s in sched.slots if s.node_id is not None and s.failure is None]
        now = self._clock.utc_now()
        for slot in sched.slots:
            if slot.failure is not None or slot.node_id is None:
                batch.append(Sample(slot.key, None, slot.failure or BAD_NODE_ID_UNKNOWN, now))
        async with self._io:
            for chunk in _chunks(readable, session.limits.read):
                batch.extend(await self._read_chunk(session, chunk))
        end = monotonic()
        stats.polls += 1
        stats.last_latency_s = end - started
        next_tick = sched.tick + 1
        first_free = math.ceil((end - sched.base) / sched.interval)
        if first_free > next_tick:
            stats.overruns += first_free - next_tick
            next_tick = first_free
        sched.tick = next_tick
        return batch

    async def _read_chunk(self, session: _Session, chunk: Sequence[_Slot]) -> list[Sample]:
        device = self._device
        errors = self.stats.errors
        params = ua.ReadParameters(
            MaxAge=0,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            NodesToRead=[ua.ReadValueId(s.node_id, AttributeIds.Value) for s in chunk],
        )
        self.stats.requests += 1
        try:
            values = await session.client.uaclient.read(params)
        except TimeoutError:
            errors["timeout"] += 1
            return self._failed(chunk, Q.BAD_TIMEOUT)
        except UaStatusCodeError as exc:
            if exc.code in _SESSION_LOST:
                msg = f"{device.endpoint}: session lost: {_explain(exc.code)}"
                raise LinkLost(msg) from exc
            errors[f"service_{status_name(exc.code)}"] += 1
            return self._failed(chunk, exc.code)
        except (ConnectionError, OSError) as exc:
            msg = f"{device.endpoint}: connection closed during a read"
            raise LinkLost(msg) from exc
        if len(values) != len(chunk):
            errors["protocol_length"] += 1
            return self._failed(chunk, Q.BAD_UNEXPECTED_ERROR)
        now = self._clock.utc_now()
        skew, age = device.max_future_skew, device.max_source_age
        batch: list[Sample] = []
        for slot, dv in zip(chunk, values, strict=True):
            value, quality, when, adjusted, error = decode(dv, slot.kind, now, skew, age)
            if adjusted:
                errors["ts_adjusted"] += 1
            if error is not None:
                errors[error] += 1
            batch.append(Sample(slot.key, value, quality, when))
        return batch

    def _failed(self, chunk: Sequence[_Slot], code: int) -> list[Sample]:
        now = self._clock.utc_now()
        return [Sample(slot.key, None, code, now) for slot in chunk]


def _nid(identifier: int) -> ua.NodeId:
    """Numeric node id in namespace 0."""
    return ua.NodeId(ua.Int32(identifier))


def _bool(value: bool) -> ua.Boolean:
    """Asyncua types its Boolean fields with a placeholder class; a bool is what it encodes."""
    return cast("ua.Boolean", value)


def _status(dv: ua.DataValue) -> int:
    """The StatusCode of a DataValue as an int (a missing one is Good)."""
    return dv.StatusCode.value if dv.StatusCode is not None else 0


def _good_value(dv: ua.DataValue) -> object:
    """The value of a Good DataValue, else None."""
    if _status(dv) & 0xC0000000 or dv.Value is None:
        return None
    return cast("object", dv.Value.Value)


def _mode_name(endpoint: ua.EndpointDescription) -> str:
    return str(endpoint.SecurityMode.name).rstrip("_")  # None_ -> None


def _policy_name(uri: str | None) -> str:
    return (uri or "").rsplit("#", 1)[-1]


def _explain(code: int) -> str:
    """``BadCertificateUntrusted (0x801A0000): <hint>`` for a service or status code."""
    name = status_name(code)
    hint = _HINTS.get(code & 0xFFFF0000, "")
    return f"{name} (0x{code:08X}){': ' + hint if hint else ''}"


_HINTS: dict[int, str] = {
    _SC.BadCertificateUntrusted: "the server does not trust the gateway's certificate: "
    "trust it on the server (its rejected folder)",
    _SC.BadCertificateInvalid: "the server considers the gateway's certificate invalid",
    _SC.BadCertificateUriInvalid: "the certificate's ApplicationUri does not match",
    _SC.BadCertificateTimeInvalid: "a certificate is expired or not yet valid (check clocks)",
    _SC.BadSecurityChecksFailed: "security checks failed (certificate, key or clock)",
    _SC.BadSecurityPolicyRejected: "the server rejected the security policy",
    _SC.BadIdentityTokenInvalid: "user identity token invalid: check username and password",
    _SC.BadIdentityTokenRejected: "user identity token rejected: check username and password",
    _SC.BadUserAccessDenied: "user access denied",
    _SC.BadShutdown: "the connection closed or stopped answering",
    _SC.BadTooManySessions: "too many sessions on the server",
}
