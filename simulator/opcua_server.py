"""One simulated OPC UA server on asyncua 2.1: variables driven by signals, faults, limits.

Address space: the Objects folder holds one object named after the device id; variables sit
below it (``Boiler1/SupplyTemp`` adds an object ``Boiler1``), in the device namespace (index 2
on an asyncua server), each with EngineeringUnits and EURange properties when configured.

Values are recomputed every ``update_interval`` seconds; a variable is written only when its
value, status or timestamp mode changed, with SourceTimestamp = the computation time (so a
``counter`` variable holds ``floor(SourceTimestamp / period)``, the oracle) and ServerTimestamp =
now. Faults:

- ``offline`` (server down): the server stops (listener and connections closed, every session
  and subscription gone); at the end a *new* server listens on the same endpoint, as after a
  process restart (R18). The replacement servers are built before the schedule starts (one
  per ``offline`` entry; for a repeating one, the next is built after each restart): building
  an asyncua server costs about a second of CPU, which must not stall the other devices of
  the process in the middle of a measurement;
- ``frozen``: values stand still (no writes, so subscriptions see only keep-alives);
- ``status``: the variables report the given StatusCode (and no value with ``null_value``);
- ``clock_skew``: SourceTimestamps shifted by ``offset`` s, or MinDateTime, or absent (R23).

Client writes (Write service, Value attribute) are checked as a device would: a variable not
marked ``writable`` answers ``BadNotWritable``, a Variant of another type than the variable's
``BadTypeMismatch``, a number outside the variable's ``eu_range`` ``BadOutOfRange``. An
accepted value gets SourceTimestamp = now and overrides the signal from then on (until the
server restarts). Every Write request and value is counted (``client_write_requests``,
``client_values_written``, ``client_writes_refused``), so tests can prove that no write
reached the server.

The server announces its OperationLimits and enforces them: a Read, CreateMonitoredItems,
Browse or TranslateBrowsePathsToNodeIds with more operations than the limit gets a service
fault ``BadTooManyOperations`` (R22). Requests are counted for the stats file.

Source: OPC UA Part 4 §5.10.2 (Read), §5.12.2 (CreateMonitoredItems), §5.8.2 (Browse), §5.8.4
(TranslateBrowsePathsToNodeIds), §7.11 (DataValue); Part 5 §6.3.11 (OperationLimitsType),
§5.6.3 (EURange, EngineeringUnits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from simulator.config import (
    ClockSkewFault,
    Fault,
    OfflineFault,
    OpcUaServerConfig,
    StatusFault,
    VariableConfig,
)
from simulator.faults import ActiveFault, ActiveFaults
from simulator.opcua_certs import make_server_certificate
from simulator.signals import SignalFn, Value, make_signal
from simulator.truth import utc_now

log = logging.getLogger("simulator")

MIN_DATETIME = datetime(1601, 1, 1, tzinfo=UTC)
"""OPC UA MinDateTime (DateTime 0)."""

_TYPES: dict[str, ua.VariantType] = {
    name: getattr(ua.VariantType, name)
    for name in (
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
    )
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "SByte": (-(2**7), 2**7 - 1),
    "Byte": (0, 2**8 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt64": (0, 2**64 - 1),
}
_LIMIT_NODES: dict[str, int] = {
    "max_nodes_per_read": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "max_monitored_items_per_call": (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
    ),
    "max_nodes_per_browse": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
    "max_nodes_per_translate": (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds
    ),
}


def convert(value: Value, type_name: str, scale: float | None) -> Value:
    """A signal value as the variable's type: scaled, integers rounded and wrapped.

    Args:
        value: The signal's value.
        type_name: OPC UA built-in type name (``Double``, ``UInt32``...).
        scale: Multiplier for numeric types, or None.

    Returns:
        bool for Boolean, str for String, float for Float/Double, an int in the type's range
        (two's complement wrap) for the integer types.
    """
    if type_name == "String":
        return str(value)
    if type_name == "Boolean":
        if isinstance(value, str):
            return value.strip().lower() not in ("", "0", "false", "off")
        return bool(value)
    number = float(value) if not isinstance(value, str) else float(len(value))
    if scale is not None:
        number *= scale
    if type_name in ("Float", "Double"):
        return number
    low, high = _INT_RANGES[type_name]
    integer = round(number) if math.isfinite(number) else 0
    span = high - low + 1
    return (integer - low) % span + low


def status_code(status: str | int) -> int:
    """A StatusCode from its name (``BadSensorFailure``) or number.

    Raises:
        ValueError: Unknown name.
    """
    if isinstance(status, int):
        return status
    code = getattr(StatusCodes, status, None)
    if not isinstance(code, int):
        msg = f"unknown StatusCode name {status!r}"
        raise ValueError(msg)
    return code


@dataclass(slots=True)
class OpcUaStats:
    """What the server received (survives restarts of the server within the process).

    Attributes:
        restarts: Servers started after an offline fault.
        sessions_created: CreateSession requests served.
        activations: ActivateSession requests by identity token type.
        usernames: User names presented (each once, in order).
        reads: Read requests; ``reads_by_size`` per node count (str keys), ``nodes_read`` their
            nodes, ``max_nodes_per_read_call`` the largest.
        create_monitored_items: CreateMonitoredItems requests; ``items_created`` their items,
            ``max_items_per_call`` the largest.
        subscriptions_created: CreateSubscription requests.
        browses: Browse requests; ``translates``: TranslateBrowsePathsToNodeIds requests.
        too_many_operations: Requests refused with BadTooManyOperations.
        writes: Values written by the simulator (data changes produced).
        client_write_requests: Write requests received from clients.
        client_values_written: Values of client Writes accepted.
        client_writes_refused: Values of client Writes refused (not writable, wrong type,
            out of range).
    """

    restarts: int = 0
    sessions_created: int = 0
    activations: dict[str, int] = field(default_factory=dict)
    usernames: list[str] = field(default_factory=list)
    reads: int = 0
    reads_by_size: dict[str, int] = field(default_factory=dict)
    nodes_read: int = 0
    max_nodes_per_read_call: int = 0
    create_monitored_items: int = 0
    items_created: int = 0
    max_items_per_call: int = 0
    subscriptions_created: int = 0
    browses: int = 0
    translates: int = 0
    too_many_operations: int = 0
    writes: int = 0
    client_write_requests: int = 0
    client_values_written: int = 0
    client_writes_refused: int = 0


class _Users(UserManager):
    """Accepts anonymous sessions (if allowed) and the configured user names and passwords."""

    def __init__(self, users: dict[str, str], allow_anonymous: bool) -> None:
        self._users = dict(users)
        self._anonymous = allow_anonymous

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,  # noqa: ANN401 - asyncua's signature
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self._anonymous else None
        if self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class _Session(InternalSession):
    """A session that counts requests and enforces the operation limits."""

    device: OpcUaDevice

    def _limit(self, key: str, count: int) -> None:
        limit = getattr(self.device.cfg.limits, key)
        if limit and count > limit:
            self.device.stats.too_many_operations += 1
            raise ServiceError(StatusCodes.BadTooManyOperations)

    def activate_session(
        self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
    ) -> ua.ActivateSessionResult:
        token = params.UserIdentityToken
        stats = self.device.stats
        if isinstance(token, ua.UserNameIdentityToken):
            kind = "username"
            if token.UserName and token.UserName not in stats.usernames:
                stats.usernames.append(token.UserName)
        elif isinstance(token, ua.X509IdentityToken):
            kind = "certificate"
        else:
            kind = "anonymous"
        stats.activations[kind] = stats.activations.get(kind, 0) + 1
        return super().activate_session(params, peer_certificate)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        count = len(params.NodesToRead)
        stats = self.device.stats
        stats.reads += 1
        size = str(count)
        stats.reads_by_size[size] = stats.reads_by_size.get(size, 0) + 1
        stats.nodes_read += count
        stats.max_nodes_per_read_call = max(stats.max_nodes_per_read_call, count)
        self._limit("max_nodes_per_read", count)
        return await super().read(params)

    async def create_monitored_items(
        self, params: ua.CreateMonitoredItemsParameters
    ) -> list[ua.MonitoredItemCreateResult]:
        count = len(params.ItemsToCreate)
        stats = self.device.stats
        stats.create_monitored_items += 1
        self._limit("max_monitored_items_per_call", count)
        stats.items_created += count
        stats.max_items_per_call = max(stats.max_items_per_call, count)
        return await super().create_monitored_items(params)

    async def create_subscription(
        self,
        params: ua.CreateSubscriptionParameters,
        callback: Any,  # noqa: ANN401 - asyncua's signature
        request_callback: Any = None,  # noqa: ANN401
    ) -> ua.CreateSubscriptionResult:
        self.device.stats.subscriptions_created += 1
        return await super().create_subscription(params, callback, request_callback)

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        device = self.device
        stats = device.stats
        stats.client_write_requests += 1
        results: list[ua.StatusCode | None] = []
        accepted: list[ua.WriteValue] = []
        for item in params.NodesToWrite:
            code, value = device.check_write(item)
            if code is not None:
                stats.client_writes_refused += 1
                results.append(ua.StatusCode(ua.UInt32(code)))
                continue
            accepted.append(value)
            results.append(None)
        written = iter(
            await super().write(ua.WriteParameters(NodesToWrite=accepted)) if accepted else []
        )
        out: list[ua.StatusCode] = []
        for item, result in zip(params.NodesToWrite, results, strict=True):
            if result is None:
                result = next(written)
                if result.is_good():
                    stats.client_values_written += 1
                    device.overridden(item.NodeId)
            out.append(result)
        return out

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        self.device.stats.browses += 1
        self._limit("max_nodes_per_browse", len(params.NodesToBrowse))
        return await super().browse(params)

    async def translate_browsepaths_to_nodeids(
        self, params: list[ua.BrowsePath]
    ) -> list[ua.BrowsePathResult]:
        self.device.stats.translates += 1
        self._limit("max_nodes_per_translate", len(params))
        return await super().translate_browsepaths_to_nodeids(params)


_ANONYMOUS = User(role=UserRole.Anonymous)


class _InternalServer(InternalServer):
    """Creates counting, limit-enforcing sessions for client connections."""

    def __init__(self, device: OpcUaDevice, user_manager: UserManager) -> None:
        super().__init__(user_manager=user_manager)
        self.device = device

    def create_session(
        self, name: str, user: User = _ANONYMOUS, external: bool = False
    ) -> InternalSession:
        if not external:
            return super().create_session(name, user, external)
        session = _Session(
            self, self.aspace, self.subscription_service, name, user=user, external=external
        )
        session.device = self.device
        self.device.stats.sessions_created += 1
        return session


@dataclass(slots=True, eq=False)
class _Built:
    """A server built (address space complete) but not listening yet, with its variables."""

    server: Server
    variables: list[_Variable]


@dataclass(slots=True, eq=False)
class _Variable:
    cfg: VariableConfig
    node_id: ua.NodeId
    variant_type: ua.VariantType
    fn: SignalFn
    last: tuple[object, int, str] | None = None  # (value, status, timestamp mode) written
    override: bool = False  # a client wrote the value: the signal no longer drives it


def _policy_type(name: str) -> ua.SecurityPolicyType:
    if name == "None":
        return ua.SecurityPolicyType.NoSecurity
    policy, _, mode = name.rpartition("_")
    member = f"{policy.replace('_', '')}_{mode}"
    return cast("ua.SecurityPolicyType", getattr(ua.SecurityPolicyType, member))


class OpcUaDevice:
    """A simulated OPC UA server: configuration, server instance, faults and counters.

    Args:
        cfg: The server configuration.
        seed: Profile seed (``random_walk`` signals).
        workdir: Where a generated server certificate is written.
    """

    def __init__(self, cfg: OpcUaServerConfig, seed: int = 0, workdir: Path | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.host = cfg.host
        self.port = cfg.port
        self.faults = ActiveFaults()
        self.stats = OpcUaStats()
        self.namespace_index = 2
        self.certificate_path: Path | None = None
        self._seed = seed
        self._workdir = workdir or Path.cwd()
        self._server: Server | None = None
        self._spares: list[_Built] = []  # replacement servers for offline faults
        self._variables: list[_Variable] = []
        self._by_node: dict[ua.NodeId, _Variable] = {}
        self._updater: asyncio.Task[None] | None = None
        self._stopped = False
        self._building: asyncio.Task[_Built] | None = None

    # -- endpoint -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``opc.tcp://host:port<path>`` (actual port once started)."""
        return f"opc.tcp://{self.host}:{self.port}{self.cfg.path}"

    @property
    def listening(self) -> bool:
        """True while a server is up."""
        return self._server is not None

    def ready_info(self) -> dict[str, Any]:
        """The device entry of the ready file."""
        return {
            "protocol": "opcua",
            "host": self.host,
            "port": self.port,
            "endpoint": self.endpoint,
            "namespace": self.cfg.namespace_uri,
            "namespace_index": self.namespace_index,
            "certificate": str(self.certificate_path) if self.certificate_path else None,
        }

    # -- building -----------------------------------------------------------------------------

    def _secure(self) -> bool:
        return any(p != "None" for p in self.cfg.security.policies)

    def _certificate(self) -> tuple[Path, Path] | None:
        security = self.cfg.security
        if security.certificate is not None and security.private_key is not None:
            return Path(security.certificate), Path(security.private_key)
        if not self._secure():
            return None
        cert = self._workdir / f"{self.id}-server-cert.der"
        key = self._workdir / f"{self.id}-server-key.pem"
        if not cert.exists() or not key.exists():
            make_server_certificate(cert, key, self._application_uri(), self.host)
        return cert, key

    def _application_uri(self) -> str:
        return self.cfg.security.application_uri or f"urn:ot-gateway:simulator:{self.id}"

    async def _build(self) -> _Built:
        """A new, not yet listening server with the whole address space."""
        cfg = self.cfg
        iserver = _InternalServer(self, _Users(cfg.users, cfg.allow_anonymous))
        iserver.max_session_timeout_ms = cfg.session_timeout * 1000
        server = Server(iserver=iserver)
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}{cfg.path}")
        server.set_server_name(f"ot-gateway simulator {self.id}")
        await server.set_application_uri(self._application_uri())
        server.set_security_policy([_policy_type(p) for p in cfg.security.policies])
        tokens: list[type] = [ua.UserNameIdentityToken] if cfg.users else []
        if cfg.allow_anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        pair = await asyncio.to_thread(self._certificate)
        if pair is not None:
            await server.load_certificate(str(pair[0]))
            await server.load_private_key(str(pair[1]))
            self.certificate_path = pair[0]
        self.namespace_index = await server.register_namespace(cfg.namespace_uri)
        await self._write_limits(server)
        return _Built(server, await self._add_variables(server))

    async def _write_limits(self, server: Server) -> None:
        for key, node in _LIMIT_NODES.items():
            limit = getattr(self.cfg.limits, key)
            await server.get_node(ua.NodeId(ua.Int32(node))).write_value(
                ua.Variant(limit, ua.VariantType.UInt32)
            )

    async def _add_variables(self, server: Server) -> list[_Variable]:
        ns = self.namespace_index
        root = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(self.id), ua.Int16(ns)), ua.QualifiedName(self.id, ns)
        )
        folders: dict[str, Node] = {"": root}
        variables: list[_Variable] = []
        for var in self.cfg.variables:
            parts = var.name.split("/")
            parent = root
            for depth in range(1, len(parts)):
                path = "/".join(parts[:depth])
                if path not in folders:
                    folders[path] = await parent.add_object(
                        ua.NodeId(ua.String(f"{self.id}/{path}"), ua.Int16(ns)),
                        ua.QualifiedName(parts[depth - 1], ns),
                    )
                parent = folders[path]
            vtype = _TYPES[var.type]
            node_id = ua.NodeId.from_string(f"ns={ns};{var.identifier}")
            fn = make_signal(var.signal, self._seed, f"{self.id}/{var.name}")
            initial = convert(fn(time.time()), var.type, var.scale)
            value: object = [initial] * var.array if var.array else initial
            node = await parent.add_variable(
                node_id, ua.QualifiedName(parts[-1], ns), ua.Variant(value, vtype)
            )
            if var.writable:
                await node.set_writable()
            if var.unit is not None:
                unit = ua.EUInformation(
                    NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                    UnitId=-1,
                    DisplayName=ua.LocalizedText(var.unit),
                    Description=ua.LocalizedText(var.unit),
                )
                await node.add_property(ns, "EngineeringUnits", unit)
            if var.eu_range is not None:
                low, high = var.eu_range
                await node.add_property(ns, "EURange", ua.Range(low, high))
            variables.append(_Variable(var, node_id, vtype, fn))
        return variables

    # -- client writes ------------------------------------------------------------------------

    def check_write(self, item: ua.WriteValue) -> tuple[int | None, ua.WriteValue]:
        """Check a client's WriteValue against the variable it targets.

        Returns:
            ``(refusal, item)``: a StatusCode to answer with (BadNotWritable, BadTypeMismatch,
            BadOutOfRange) and the item, or ``(None, item)`` with the value to store
            (SourceTimestamp and ServerTimestamp set to now, status Good). Items for other
            nodes or attributes pass unchanged (asyncua answers them).
        """
        var = self._by_node.get(item.NodeId)
        if var is None or item.AttributeId != AttributeIds.Value:
            return None, item
        cfg = var.cfg
        if not cfg.writable:
            return StatusCodes.BadNotWritable, item
        variant = item.Value.Value if item.Value is not None else None
        if (
            variant is None
            or variant.VariantType != var.variant_type
            or bool(cfg.array) != bool(variant.is_array or isinstance(variant.Value, list))
        ):
            return StatusCodes.BadTypeMismatch, item
        value = variant.Value
        if (
            cfg.eu_range is not None
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and not cfg.eu_range[0] <= value <= cfg.eu_range[1]
        ):
            return StatusCodes.BadOutOfRange, item
        now = datetime.now(UTC)
        stored = ua.DataValue(
            variant,
            StatusCode=ua.StatusCode(ua.UInt32(0)),
            SourceTimestamp=cast("ua.DateTime", now),
            ServerTimestamp=cast("ua.DateTime", now),
        )
        return None, ua.WriteValue(
            NodeId=item.NodeId,
            AttributeId=item.AttributeId,
            IndexRange=item.IndexRange,
            Value=stored,
        )

    def overridden(self, node_id: ua.NodeId) -> None:
        """A client write was stored: the variable's signal no longer drives it."""
        var = self._by_node.get(node_id)
        if var is not None:
            var.override = True

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Build and start the server (port 0 picks a free port, kept for restarts).

        Raises:
            OSError: The endpoint cannot be bound.
        """
        built = await self._build()
        offline = sum(1 for f in self.cfg.faults if isinstance(f, OfflineFault))
        for _ in range(offline):
            self._spares.append(await self._build())
        await self._listen(built)
        log.info(
            "device %s listening on %s (%d variables, policies %s)",
            self.id,
            self.endpoint,
            len(self._variables),
            ",".join(self.cfg.security.policies),
        )

    async def _listen(self, built: _Built) -> None:
        server = built.server
        # The port is known only now for a spare built before the first server listened.
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}{self.cfg.path}")
        try:
            await server.start()
        except OSError:
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        bserver = server.bserver
        if bserver is not None and bserver.port:
            self.port = int(bserver.port)
        self._server = server
        self._variables = built.variables
        self._by_node = {v.node_id: v for v in built.variables}
        await self.update()
        self._updater = asyncio.get_running_loop().create_task(self._update_loop())

    async def _shutdown(self) -> None:
        """Stop the updates and the server (all connections, sessions and subscriptions)."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
            self._updater = None
        server, self._server = self._server, None
        if server is not None:
            # asyncua's stop closes the listener and every client transport; the internal
            # server and its subscriptions are dropped with the object.
            with contextlib.suppress(Exception):
                await server.stop()

    async def stop(self) -> None:
        """Stop for good."""
        self._stopped = True
        if self._building is not None:
            self._building.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._building
        await self._shutdown()

    # -- values -------------------------------------------------------------------------------

    def now(self) -> float:
        """Epoch seconds the signals are evaluated at (held still while ``frozen``)."""
        frozen = self.faults.frozen_epoch()
        return time.time() if frozen is None else frozen

    async def _update_loop(self) -> None:
        interval = self.cfg.update_interval
        next_at = time.monotonic()
        while True:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()  # overrun: do not catch up
            try:
                await self.update()
            except Exception:  # a bad write must not stop the simulation
                log.exception("device %s: update failed", self.id)

    def _overrides(self, name: str) -> tuple[int, bool, ClockSkewFault | None]:
        status, null_value, skew = 0, False, None
        for active in self.faults.active.values():
            fault = active.fault
            if isinstance(fault, StatusFault) and (
                fault.variables is None or name in fault.variables
            ):
                status, null_value = status_code(fault.status), fault.null_value
            elif isinstance(fault, ClockSkewFault) and (
                fault.variables is None or name in fault.variables
            ):
                skew = fault
        return status, null_value, skew

    async def update(self) -> None:
        """Recompute every variable; write those whose value, status or time mode changed."""
        server = self._server
        if server is None:
            return
        t = self.now()
        wall = time.time()
        now_dt = datetime.fromtimestamp(wall, UTC)
        for var in self._variables:
            if var.override:
                continue
            cfg = var.cfg
            status, null_value, skew = self._overrides(cfg.name)
            value = convert(var.fn(t), cfg.type, cfg.scale)
            mode = "normal" if skew is None else f"{skew.source_time}:{skew.offset}"
            key = (None if null_value else value, status, mode)
            if key == var.last:
                continue
            var.last = key
            if skew is None:
                source: datetime | None = datetime.fromtimestamp(t, UTC)
            elif skew.source_time == "min":
                source = MIN_DATETIME
            elif skew.source_time == "null":
                source = None
            else:
                source = datetime.fromtimestamp(t + skew.offset, UTC)
            if null_value:
                variant = ua.Variant()
            elif cfg.array:
                variant = ua.Variant([value] * cfg.array, var.variant_type)
            else:
                variant = ua.Variant(value, var.variant_type)
            dv = ua.DataValue(
                variant,
                StatusCode=ua.StatusCode(ua.UInt32(status)),
                SourceTimestamp=cast("ua.DateTime | None", source),
                ServerTimestamp=cast("ua.DateTime", now_dt),
            )
            if null_value:  # no Value field at all: a status-only DataValue
                object.__setattr__(dv, "Value", None)
            result = await server.iserver.aspace.write_attribute_value(
                var.node_id, AttributeIds.Value, dv
            )
            if not result.is_good():
                log.warning("device %s: write of %s refused: %s", self.id, cfg.name, result.name)
            self.stats.writes += 1

    # -- faults -------------------------------------------------------------------------------

    async def begin_fault(self, index: int, fault: Fault) -> None:
        """Apply fault ``index`` (its position in the device's fault list).

        The fault's ground-truth start is taken before anything changes: asyncua's server stop
        takes up to about a second after the connections are closed, and clients see the
        outage from its first moment.
        """
        frozen_epoch = time.time()
        began = utc_now()
        if isinstance(fault, OfflineFault):
            await self._shutdown()
            if not self._spares and self._building is None and not self._stopped:
                self._building = asyncio.get_running_loop().create_task(self._build())
        self.faults.active[index] = ActiveFault(fault, began, frozen_epoch=frozen_epoch)
        log.info("device %s: fault %s begins", self.id, fault.kind)
        await self.update()

    async def end_fault(self, index: int) -> ActiveFault | None:
        """Remove fault ``index``; restart the server when no offline fault remains.

        Returns:
            The occurrence that ended (None if it was not active).
        """
        active = self.faults.active.pop(index, None)
        if active is None:
            return None
        if self.faults.offline_mode() is None and self._server is None and not self._stopped:
            await self._restart()
        else:
            await self.update()
        log.info("device %s: fault %s ends", self.id, active.fault.kind)
        return active

    async def _restart(self) -> None:
        built: _Built | None = None
        if self._spares:
            built = self._spares.pop(0)
        else:
            building, self._building = self._building, None
            if building is not None:
                try:
                    built = await building
                except Exception:  # build it again below
                    log.exception("device %s: building the restarted server failed", self.id)
        if built is None:
            built = await self._build()
        while not self._stopped:
            try:
                await self._listen(built)
            except OSError:
                log.warning("device %s: port %d busy, retrying", self.id, self.port)
                await asyncio.sleep(0.1)
                built = await self._build()
                continue
            self.stats.restarts += 1
            repeating = any(
                isinstance(f, OfflineFault) and f.every is not None for f in self.cfg.faults
            )
            if repeating and not self._spares and self._building is None:
                self._building = asyncio.get_running_loop().create_task(self._build())
            return

    # -- stats --------------------------------------------------------------------------------

    def stats_snapshot(self) -> dict[str, Any]:
        """Counters and the server's live state (sessions, subscriptions, monitored items)."""
        s = self.stats
        subscriptions = 0
        monitored = 0
        sessions = 0
        server = self._server
        if server is not None:
            subs = server.iserver.subscription_service.subscriptions
            subscriptions = len(subs)
            # asyncua keeps the items of a subscription in its MonitoredItemService.
            monitored = sum(len(sub.monitored_item_srv._monitored_items) for sub in subs.values())
            sessions = len(server.iserver._external_sessions)
        return {
            "protocol": "opcua",
            "host": self.host,
            "port": self.port,
            "endpoint": self.endpoint,
            "listening": self.listening,
            "restarts": s.restarts,
            "sessions": sessions,
            "subscriptions": subscriptions,
            "monitored_items": monitored,
            "sessions_created": s.sessions_created,
            "activations": dict(s.activations),
            "usernames": list(s.usernames),
            "reads": s.reads,
            "reads_by_size": dict(s.reads_by_size),
            "nodes_read": s.nodes_read,
            "max_nodes_per_read_call": s.max_nodes_per_read_call,
            "create_monitored_items": s.create_monitored_items,
            "items_created": s.items_created,
            "max_items_per_call": s.max_items_per_call,
            "subscriptions_created": s.subscriptions_created,
            "browses": s.browses,
            "translates": s.translates,
            "too_many_operations": s.too_many_operations,
            "writes": s.writes,
            "client_write_requests": s.client_write_requests,
            "client_values_written": s.client_values_written,
            "client_writes_refused": s.client_writes_refused,
            "active_faults": sorted(a.fault.kind for a in self.faults.active.values()),
        }


def suppress_asyncua_logs() -> None:
    """Keep asyncua's per-request log lines and service-fault errors out of stderr."""
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
