"""Discovery: list the variable nodes below a start node, and render them as config snippets.

`browse` opens a session exactly as the connector does (same security, trust list and
credentials), walks the hierarchical references (Organizes, HasComponent... but not
HasProperty, so EURange and EngineeringUnits are not listed as points) breadth-first down to
``depth`` levels below the start node, follows continuation points, chunks every call to the
server's MaxNodesPerBrowse / MaxNodesPerRead, then reads DataType, ValueRank and UserAccessLevel
of the variables found. Namespace-0 nodes (the Server object and its diagnostics) are skipped
unless ``include_ns0``.

`render_points_yaml` turns the result into point entries to paste under an asset's
``points:`` in the gateway configuration.

Source: OPC UA Part 4 §5.8.2 (Browse), §5.8.3 (BrowseNext, continuation points), §5.10.2
(Read), Part 3 §5.6.2 (DataType, ValueRank), §5.6.4 (AccessLevel bits), Part 5 §6.3.11
(OperationLimits).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from typing import TypedDict, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError

from connectors.base import ConnectError
from connectors.opcua.codec import ValueKind, kind_of
from connectors.opcua.config import OpcUaDeviceConfig, parse_node_id
from connectors.opcua.connector import OpcUaConnector, OperationLimits

DEFAULT_START = "i=85"
"""The Objects folder."""

_HAS_PROPERTY = ObjectIds.HasProperty
_OBJECT_OR_VARIABLE = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)


class VariableInfo(TypedDict):
    """One variable found by `browse`.

    Keys:
        node_id: Node id text, ``ns=<index>;...`` (``i=...`` for namespace 0).
        browse_path: Qualified names from the start node, ``2:Plant/2:Pump7/2:Flow`` (a config
            ``browse_path`` when the start node is the Objects folder).
        display_name: DisplayName text.
        data_type: Built-in type name (``Double``) or the DataType's node id text.
        value_rank: −1 scalar, −2 any, −3 scalar or 1-D, 0 or n ≥ 1 arrays.
        access: ``read``, ``write``, ``read_write`` or ``none`` (UserAccessLevel).
        supported: False for arrays and structures (they would be BadTypeMismatch).
        source: The point's source locator ``opc.tcp://host:port#<node id>``.
    """

    node_id: str
    browse_path: str
    display_name: str
    data_type: str
    value_rank: int
    access: str
    supported: bool
    source: str


def _nid(identifier: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(identifier))


def _node_text(node_id: ua.NodeId) -> str:
    return node_id.to_string()


def _plain(node_id: ua.NodeId | ua.ExpandedNodeId) -> ua.NodeId:
    return ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType)


async def _browse_level(
    client: Client, nodes: Sequence[ua.NodeId], per_call: int
) -> list[list[ua.ReferenceDescription]]:
    """Forward hierarchical references of ``nodes`` (objects and variables), all pages."""
    out: list[list[ua.ReferenceDescription]] = []
    hierarchical = _nid(ObjectIds.HierarchicalReferences)
    for start in range(0, len(nodes), per_call):
        chunk = nodes[start : start + per_call]
        params = ua.BrowseParameters(
            RequestedMaxReferencesPerNode=0,
            NodesToBrowse=[
                ua.BrowseDescription(
                    NodeId=node,
                    BrowseDirection=ua.BrowseDirection.Forward,
                    ReferenceTypeId=hierarchical,
                    IncludeSubtypes=cast("ua.Boolean", True),
                    NodeClassMask=ua.UInt32(_OBJECT_OR_VARIABLE),
                    ResultMask=ua.UInt32(int(ua.BrowseResultMask.All)),
                )
                for node in chunk
            ],
        )
        results = await client.uaclient.browse(params)
        for result in results:
            refs = list(result.References)
            point = result.ContinuationPoint
            while point:
                more = await client.uaclient.browse_next(
                    ua.BrowseNextParameters(
                        ReleaseContinuationPoints=cast("ua.Boolean", False),
                        ContinuationPoints=[point],
                    )
                )
                refs.extend(more[0].References)
                point = more[0].ContinuationPoint
            out.append(refs)
    return out


def _data_type_name(value: object) -> str:
    if isinstance(value, ua.NodeId):
        if value.NamespaceIndex == 0 and isinstance(value.Identifier, int):
            return str(ObjectIdNames.get(value.Identifier, _node_text(value)))
        return _node_text(value)
    return "unknown"


def _access(level: object) -> str:
    if not isinstance(level, int):
        return "none"
    readable, writable = bool(level & 0x01), bool(level & 0x02)
    if readable and writable:
        return "read_write"
    return "read" if readable else "write" if writable else "none"


async def browse(
    endpoint: str,
    start_node: str = DEFAULT_START,
    depth: int = 5,
    pattern: str = "*",
    *,
    device: OpcUaDeviceConfig | None = None,
    insecure: bool = False,
    include_ns0: bool = False,
    limit: int = 10_000,
) -> list[VariableInfo]:
    """List the variables below ``start_node``.

    Args:
        endpoint: ``opc.tcp://host[:port][/path]``.
        start_node: Node id text of the start node (default the Objects folder, ``i=85``).
        depth: Levels below the start node [1..32].
        pattern: Glob (``fnmatch``, case-sensitive) on the browse path without namespace
            prefixes (``Plant/Pump7/Flow``), on the display name, or on the node id text.
        device: Security settings (policy, mode, certificate, trust list, credentials,
            timeouts) as for the connector; its endpoint is replaced by ``endpoint``.
        insecure: Without ``device``: connect with security policy None (else refused).
        include_ns0: Also walk namespace-0 nodes (the Server object and its diagnostics).
        limit: Most variables returned [1..].

    Returns:
        The variables found, sorted by browse path; each a `VariableInfo` dict.

    Raises:
        ConnectError: The session cannot be opened (refused, untrusted certificate, policy
            None without ``insecure``...) or a Browse/Read failed.
        ValueError: ``depth`` or ``limit`` out of range, or a malformed ``start_node``.

    Source: OPC UA Part 4 §5.8.2, §5.8.3, §5.10.2.
    """
    if not 1 <= depth <= 32:
        msg = f"depth must be 1..32, got {depth}"
        raise ValueError(msg)
    if limit < 1:
        msg = f"limit must be >= 1, got {limit}"
        raise ValueError(msg)
    parsed = parse_node_id(start_node)
    if device is None:
        if not insecure:
            msg = (
                f"{endpoint}: browse without a device config would use security policy None; "
                "pass insecure=True to allow it"
            )
            raise ConnectError(msg)
        device = OpcUaDeviceConfig(
            id="browse", endpoint=endpoint, security_policy="None", insecure=True
        )
    else:
        device = device.model_copy(update={"endpoint": endpoint})
    connector = OpcUaConnector(device, [])
    async with connector:
        client = connector.client
        limits = connector.limits or OperationLimits(1000, 1000, 1000, 1000)
        try:
            start = await _start_node(client, parsed.canonical())
            found = await _walk(client, start, depth, include_ns0, limits)
            selected = [
                (node, path, name)
                for node, path, name in found
                if _matches(pattern, path, name, _node_text(node))
            ][:limit]
            return await _describe(client, selected, limits, device.source_prefix)
        except (UaError, OSError, TimeoutError) as exc:
            msg = f"{endpoint}: browse failed: {type(exc).__name__}: {exc}"
            raise ConnectError(msg) from exc


async def _start_node(client: Client, text: str) -> ua.NodeId:
    parsed = parse_node_id(text)
    if parsed.namespace_uri is None:
        return ua.NodeId.from_string(text)
    namespaces = [str(n) for n in await client.get_namespace_array()]
    if parsed.namespace_uri not in namespaces:
        msg = f"namespace {parsed.namespace_uri!r} is not on the server"
        raise ConnectError(msg)
    index = namespaces.index(parsed.namespace_uri)
    return ua.NodeId.from_string(f"ns={index};{parsed.kind}={parsed.identifier}")


async def _walk(
    client: Client, start: ua.NodeId, depth: int, include_ns0: bool, limits: OperationLimits
) -> list[tuple[ua.NodeId, str, str]]:
    """Breadth-first walk; returns (variable node id, browse path, display name)."""
    variables: list[tuple[ua.NodeId, str, str]] = []
    seen: set[ua.NodeId] = {start}
    level: list[tuple[ua.NodeId, str]] = [(start, "")]
    for _ in range(depth):
        if not level:
            break
        refs_per_node = await _browse_level(client, [n for n, _ in level], limits.browse)
        next_level: list[tuple[ua.NodeId, str]] = []
        for (_, path), refs in zip(level, refs_per_node, strict=True):
            for ref in refs:
                if _plain(ref.ReferenceTypeId) == _nid(_HAS_PROPERTY):
                    continue
                node = _plain(ref.NodeId)
                if node in seen or (node.NamespaceIndex == 0 and not include_ns0):
                    continue
                seen.add(node)
                qname = ref.BrowseName
                child = f"{path}/{qname.NamespaceIndex}:{qname.Name}" if path else (
                    f"{qname.NamespaceIndex}:{qname.Name}"
                )
                if ref.NodeClass == ua.NodeClass.Variable:
                    variables.append((node, child, ref.DisplayName.Text or qname.Name or ""))
                next_level.append((node, child))
        level = next_level
    return sorted(variables, key=lambda item: item[1])


def _matches(pattern: str, path: str, name: str, node_id: str) -> bool:
    if pattern in ("", "*"):
        return True
    names = "/".join(part.split(":", 1)[-1] for part in path.split("/"))
    return any(fnmatch.fnmatchcase(text, pattern) for text in (names, name, node_id))


async def _describe(
    client: Client,
    selected: list[tuple[ua.NodeId, str, str]],
    limits: OperationLimits,
    prefix: str,
) -> list[VariableInfo]:
    attributes = (AttributeIds.DataType, AttributeIds.ValueRank, AttributeIds.UserAccessLevel)
    per_call = max(1, limits.read // len(attributes))
    out: list[VariableInfo] = []
    for start in range(0, len(selected), per_call):
        chunk = selected[start : start + per_call]
        nodes = [ua.ReadValueId(node, attr) for node, _, _ in chunk for attr in attributes]
        values = await client.uaclient.read(ua.ReadParameters(NodesToRead=nodes))
        for i, (node, path, name) in enumerate(chunk):
            dtype, rank, access = (_good(values[3 * i + k]) for k in range(3))
            rank_int = rank if isinstance(rank, int) else -1
            kind = kind_of(dtype if isinstance(dtype, ua.NodeId) else None, rank_int)
            text = _node_text(node)
            out.append(
                VariableInfo(
                    node_id=text,
                    browse_path=path,
                    display_name=name,
                    data_type=_data_type_name(dtype),
                    value_rank=rank_int,
                    access=_access(access),
                    supported=kind is not ValueKind.UNSUPPORTED,
                    source=f"{prefix}#{text}",
                )
            )
    return out


def _good(dv: ua.DataValue) -> object:
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    if status & 0xC0000000 or dv.Value is None:
        return None
    return cast("object", dv.Value.Value)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug or "point")[:63].rstrip("-") or "point"


def render_points_yaml(
    variables: Sequence[VariableInfo], device_id: str, *, mode: str = "subscription"
) -> str:
    """Point entries for the gateway configuration, to paste under an asset's ``points:``.

    Args:
        variables: `browse` results.
        device_id: The ``devices:`` id of the server.
        mode: ``subscription`` or ``poll`` for every entry.

    Returns:
        YAML text: a comment header and one list item per variable (``id`` slug from the
        browse path, unique; ``device``; ``node_id``; ``mode`` when poll), with the browse
        path, data type and access as a comment; unsupported types are commented out.
    """
    lines = [f"# {len(variables)} variable(s); paste under an asset's points:"]
    used: set[str] = set()
    for info in variables:
        names = [part.split(":", 1)[-1] for part in info["browse_path"].split("/")]
        base = _slug("-".join(names[-3:]))
        ident, n = base, 2
        while ident in used:
            ident, n = f"{base[:60]}-{n}", n + 1
        used.add(ident)
        entry = [
            f"- id: {ident}",
            f"  device: {json.dumps(device_id)}",
            f"  node_id: {json.dumps(info['node_id'])}",
        ]
        if mode == "poll":
            entry.append("  mode: poll")
        note = (
            f"  # browse_path: {info['browse_path']}; data_type: {info['data_type']}; "
            f"access: {info['access']}"
        )
        if not info["supported"]:
            lines.append(f"# unsupported (array or structure: BadTypeMismatch): {info['node_id']}")
            lines.extend(f"# {line}" for line in entry)
            continue
        lines.extend([*entry, note])
    return "\n".join(lines) + "\n"
