"""Discovery: list the variable nodes below a start node, and render them as config snippets.

`browse` opens a session exactly as the connector does (same security, trust list and
credentials) and calls `walk` and `describe`, which the connector also uses on its own session
to report unconfigured variables (unmapped sources):

- `walk` follows the hierarchical references (Organizes, HasComponent... but not HasProperty,
  so EURange and EngineeringUnits are not listed as points) breadth-first down to ``depth``
  levels below the start node, follows continuation points, chunks every call to the server's
  MaxNodesPerBrowse, and stops after ``max_nodes`` nodes. Namespace-0 nodes (the Server object
  and its diagnostics) are skipped unless ``include_ns0``.
- `describe` reads DataType, ValueRank, UserAccessLevel and Value of the variables found, and
  their EngineeringUnits and EURange properties (found with a HasProperty Browse), chunked to
  MaxNodesPerRead.

`render_points_yaml` and `render_points_csv` turn the result into point entries for the gateway
configuration (``node_id``, ``value_type``, ``unit`` from EngineeringUnits).

Source: OPC UA Part 4 §5.8.2 (Browse), §5.8.3 (BrowseNext, continuation points), §5.10.2
(Read), Part 3 §5.6.2 (DataType, ValueRank), §5.6.4 (AccessLevel bits), Part 8 §5.6.3
(EUInformation: UNECE unit codes), §5.6.2 (EURange), Part 5 §6.3.11 (OperationLimits).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypedDict, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from connectors.base import ConnectError
from connectors.opcua.codec import ValueKind, kind_of, status_name
from connectors.opcua.config import OpcUaDeviceConfig, parse_node_id

if TYPE_CHECKING:
    from connectors.opcua.connector import OperationLimits

DEFAULT_START = "i=85"
"""The Objects folder."""

SAMPLE_CHARS = 256
"""Longest ``sample`` text kept per variable [characters]."""

_HAS_PROPERTY = ObjectIds.HasProperty
_OBJECT_OR_VARIABLE = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)
_PROPERTY_NAMES = ("EngineeringUnits", "EURange")

# UNECE Recommendation 20 common codes (EUInformation.UnitId) -> UCUM codes used in the config.
# Source: OPC UA Part 8 §5.6.3; UNECE Rec. 20 Annex I.
_UNECE_TO_UCUM: dict[str, str] = {
    "CEL": "Cel",
    "KEL": "K",
    "FAH": "[degF]",
    "BAR": "bar",
    "MBR": "mbar",
    "PAL": "Pa",
    "KPA": "kPa",
    "MPA": "MPa",
    "A97": "hPa",
    "MTR": "m",
    "CMT": "cm",
    "MMT": "mm",
    "KGM": "kg",
    "GRM": "g",
    "TNE": "t",
    "LTR": "L",
    "MTQ": "m3",
    "MQH": "m3/h",
    "L2": "L/min",
    "WTT": "W",
    "KWT": "kW",
    "MAW": "MW",
    "KWH": "kW.h",
    "MWH": "MW.h",
    "AMP": "A",
    "4K": "mA",
    "VLT": "V",
    "KVT": "kV",
    "HTZ": "Hz",
    "P1": "%",
    "SEC": "s",
    "MIN": "min",
    "HUR": "h",
    "RPM": "/min",
    "MTS": "m/s",
    "KMH": "km/h",
    "C62": "1",
}


class VariableInfo(TypedDict):
    """One variable found by `browse` / `describe`.

    Keys:
        node_id: Node id text, ``ns=<index>;...`` (``i=...`` for namespace 0).
        browse_path: Qualified names from the start node, ``2:Plant/2:Pump7/2:Flow`` (a config
            ``browse_path`` when the start node is the Objects folder).
        display_name: DisplayName text.
        data_type: Built-in type name (``Double``) or the DataType's node id text.
        value_rank: −1 scalar, −2 any, −3 scalar or 1-D, 0 or n ≥ 1 arrays.
        access: ``read``, ``write``, ``read_write`` or ``none`` (UserAccessLevel).
        supported: False for arrays and structures (they would be BadTypeMismatch).
        value_type: The point ``value_type`` that fits: ``number``, ``bool``, ``string``,
            ``any`` (vendor or abstract DataType), or ``unsupported``.
        unit: UCUM code from the EngineeringUnits property (UNECE code mapped, else its
            DisplayName), or None when the server has none.
        eu_range: ``[low, high]`` of the EURange property, or None.
        sample: The current value as text (at most `SAMPLE_CHARS`), or None when Bad or empty.
        source: The point's source locator ``opc.tcp://host:port#<node id>``.
    """

    node_id: str
    browse_path: str
    display_name: str
    data_type: str
    value_rank: int
    access: str
    supported: bool
    value_type: str
    unit: str | None
    eu_range: list[float] | None
    sample: str | None
    source: str


class Found(NamedTuple):
    """A variable reached by `walk` (not described yet).

    Attributes:
        node_id: Its node id.
        browse_path: Qualified names from the start node (``2:Plant/2:Flow``).
        display_name: DisplayName text (or browse name).
    """

    node_id: ua.NodeId
    browse_path: str
    display_name: str


class WalkResult(NamedTuple):
    """What `walk` reached.

    Attributes:
        variables: Variables in browse-path order.
        visited: Nodes visited (objects and variables, excluding the start node).
        truncated: True when ``max_nodes`` stopped the walk before ``depth`` was exhausted.
    """

    variables: list[Found]
    visited: int
    truncated: bool


def _nid(identifier: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(identifier))


def _node_text(node_id: ua.NodeId) -> str:
    return node_id.to_string()


def _plain(node_id: ua.NodeId | ua.ExpandedNodeId) -> ua.NodeId:
    return ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType)


async def _browse_refs(
    client: Client,
    nodes: Sequence[ua.NodeId],
    per_call: int,
    reference: int = ObjectIds.HierarchicalReferences,
    node_classes: int = _OBJECT_OR_VARIABLE,
    *,
    strict: bool = False,
) -> list[list[ua.ReferenceDescription]]:
    """Forward references of ``nodes`` of type ``reference`` (and subtypes), all pages.

    A node the server cannot browse (e.g. BadNodeIdUnknown) has no references, or, with
    ``strict``, raises its `UaStatusCodeError`.
    """
    out: list[list[ua.ReferenceDescription]] = []
    reference_id = _nid(reference)
    for start in range(0, len(nodes), per_call):
        chunk = nodes[start : start + per_call]
        params = ua.BrowseParameters(
            RequestedMaxReferencesPerNode=0,
            NodesToBrowse=[
                ua.BrowseDescription(
                    NodeId=node,
                    BrowseDirection=ua.BrowseDirection.Forward,
                    ReferenceTypeId=reference_id,
                    IncludeSubtypes=cast("ua.Boolean", True),
                    NodeClassMask=ua.UInt32(node_classes),
                    ResultMask=ua.UInt32(int(ua.BrowseResultMask.All)),
                )
                for node in chunk
            ],
        )
        results = await client.uaclient.browse(params)
        for result in results:
            if strict and result.StatusCode is not None:
                result.StatusCode.check()  # raises UaStatusCodeError for a Bad status
            refs = list(result.References or [])
            point = result.ContinuationPoint
            while point:
                more = await client.uaclient.browse_next(
                    ua.BrowseNextParameters(
                        ReleaseContinuationPoints=cast("ua.Boolean", False),
                        ContinuationPoints=[point],
                    )
                )
                refs.extend(more[0].References or [])
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


def unece_code(unit_id: int) -> str:
    """The UNECE common code packed in an EUInformation ``UnitId`` (``CEL`` for 4408652).

    Returns:
        The code (1-3 ASCII characters), or ``""`` when ``unit_id`` is not a packed code.

    Source: OPC UA Part 8 §5.6.3 (UnitId: the code's characters in the three low bytes).
    """
    if unit_id <= 0 or unit_id > 0xFFFFFF:
        return ""
    chars = [(unit_id >> shift) & 0xFF for shift in (16, 8, 0)]
    text = "".join(chr(c) for c in chars if c)
    return text if text.isascii() and text.isalnum() else ""


def unit_text(info: object) -> str | None:
    """A UCUM-style unit code for an EngineeringUnits value (an `ua.EUInformation`).

    Returns:
        The UCUM code for a known UNECE ``UnitId`` (``CEL`` -> ``Cel``), else the DisplayName
        text when it is 1..32 characters, else None.
    """
    if not isinstance(info, ua.EUInformation):
        return None
    code = unece_code(int(info.UnitId or 0))
    if code in _UNECE_TO_UCUM:
        return _UNECE_TO_UCUM[code]
    text = (info.DisplayName.Text if info.DisplayName is not None else None) or ""
    text = text.strip()
    return text if 0 < len(text) <= 32 else None


def _range(value: object) -> list[float] | None:
    if isinstance(value, ua.Range):
        low, high = float(value.Low), float(value.High)
        if math.isfinite(low) and math.isfinite(high):
            return [low, high]
    return None


def _sample_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, ua.LocalizedText):
        value = value.Text or ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:SAMPLE_CHARS]


async def walk(
    client: Client,
    start: ua.NodeId,
    depth: int,
    per_call: int,
    *,
    include_ns0: bool = False,
    max_nodes: int = 100_000,
) -> WalkResult:
    """Breadth-first walk of the hierarchy below ``start`` (objects and variables).

    Args:
        client: A connected asyncua client.
        start: Start node (not itself reported).
        depth: Levels below ``start`` [1..32].
        per_call: Nodes per Browse call (the server's MaxNodesPerBrowse).
        include_ns0: Also follow namespace-0 nodes.
        max_nodes: Stop after visiting this many nodes [1..].

    Returns:
        The variables reached, in browse-path order; nodes visited; whether it was truncated.

    Raises:
        ConnectError: The start node cannot be browsed (e.g. BadNodeIdUnknown).
        UaError, OSError, TimeoutError: A Browse failed (asyncua's errors, unchanged).

    Source: OPC UA Part 4 §5.8.2, §5.8.3.
    """
    variables: list[Found] = []
    seen: set[ua.NodeId] = {start}
    level: list[tuple[ua.NodeId, str]] = [(start, "")]
    has_property = _nid(_HAS_PROPERTY)
    truncated = False
    for _ in range(depth):
        if not level or truncated:
            break
        try:
            refs_per_node = await _browse_refs(
                client, [n for n, _ in level], per_call, strict=level[0][0] == start
            )
        except UaStatusCodeError as exc:
            msg = f"start node {_node_text(start)} cannot be browsed: {status_name(exc.code)}"
            raise ConnectError(msg) from exc
        next_level: list[tuple[ua.NodeId, str]] = []
        for (_, path), refs in zip(level, refs_per_node, strict=True):
            for ref in refs:
                if _plain(ref.ReferenceTypeId) == has_property:
                    continue
                node = _plain(ref.NodeId)
                if node in seen or (node.NamespaceIndex == 0 and not include_ns0):
                    continue
                if len(seen) - 1 >= max_nodes:
                    truncated = True
                    break
                seen.add(node)
                qname = ref.BrowseName
                step = f"{qname.NamespaceIndex}:{qname.Name}"
                child = f"{path}/{step}" if path else step
                if ref.NodeClass == ua.NodeClass.Variable:
                    name = ref.DisplayName.Text if ref.DisplayName is not None else None
                    variables.append(Found(node, child, name or qname.Name or ""))
                next_level.append((node, child))
            if truncated:
                break
        level = next_level
    variables.sort(key=lambda item: item.browse_path)
    return WalkResult(variables, len(seen) - 1, truncated)


def matches(pattern: str, found: Found) -> bool:
    """Whether the glob ``pattern`` selects ``found``.

    Returns:
        True when ``pattern`` (``fnmatch``, case-sensitive) matches the browse path without
        namespace prefixes (``Plant/Pump7/Flow``), the display name or the node id text.
    """
    if pattern in ("", "*"):
        return True
    names = "/".join(part.split(":", 1)[-1] for part in found.browse_path.split("/"))
    texts = (names, found.display_name, _node_text(found.node_id))
    return any(fnmatch.fnmatchcase(text, pattern) for text in texts)


async def _read_all(
    client: Client, nodes: Sequence[ua.ReadValueId], per_call: int
) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for start in range(0, len(nodes), per_call):
        chunk = list(nodes[start : start + per_call])
        out.extend(await client.uaclient.read(ua.ReadParameters(NodesToRead=chunk)))
    return out


async def describe(
    client: Client,
    found: Sequence[Found],
    limits: OperationLimits,
    prefix: str,
    out: list[VariableInfo] | None = None,
) -> list[VariableInfo]:
    """Read what a point entry needs about each variable: type, access, unit, range, value.

    Args:
        client: A connected asyncua client.
        found: Variables from `walk`.
        limits: Operation limits of the session (Browse and Read chunk sizes).
        prefix: Locator prefix ``opc.tcp://host:port`` for ``source``.
        out: Append here as each chunk completes (so a caller that times out keeps what was
            described); default a new list.

    Returns:
        ``out``, one `VariableInfo` per variable in ``found`` order.

    Raises:
        UaError, OSError, TimeoutError: A Browse or Read failed.

    Source: OPC UA Part 4 §5.10.2 (Read), Part 8 §5.6.2-5.6.3 (EURange, EngineeringUnits).
    """
    result: list[VariableInfo] = [] if out is None else out
    attributes = (
        AttributeIds.DataType,
        AttributeIds.ValueRank,
        AttributeIds.UserAccessLevel,
        AttributeIds.Value,
    )
    # Chunks sized so one chunk's reads (4 attributes + up to 2 properties each) fit one Read.
    per_chunk = max(1, min(limits.read // (len(attributes) + 2), limits.browse, 500))
    for start in range(0, len(found), per_chunk):
        chunk = found[start : start + per_chunk]
        props = await _browse_refs(
            client,
            [f.node_id for f in chunk],
            limits.browse,
            reference=_HAS_PROPERTY,
            node_classes=int(ua.NodeClass.Variable),
        )
        reads: list[ua.ReadValueId] = []
        slots: list[dict[str, int]] = []
        for item, refs in zip(chunk, props, strict=True):
            index = {"base": len(reads)}
            reads.extend(ua.ReadValueId(item.node_id, attr) for attr in attributes)
            for ref in refs:
                name = ref.BrowseName.Name
                if name in _PROPERTY_NAMES and name not in index:
                    index[name] = len(reads)
                    reads.append(ua.ReadValueId(_plain(ref.NodeId), AttributeIds.Value))
            slots.append(index)
        values = await _read_all(client, reads, limits.read)
        for item, index in zip(chunk, slots, strict=True):
            base = index["base"]
            dtype, rank, access, value = (_good(values[base + k]) for k in range(4))
            rank_int = rank if isinstance(rank, int) else -1
            kind = kind_of(dtype if isinstance(dtype, ua.NodeId) else None, rank_int)
            units = values[index["EngineeringUnits"]] if "EngineeringUnits" in index else None
            eu_range = values[index["EURange"]] if "EURange" in index else None
            text = _node_text(item.node_id)
            result.append(
                VariableInfo(
                    node_id=text,
                    browse_path=item.browse_path,
                    display_name=item.display_name,
                    data_type=_data_type_name(dtype),
                    value_rank=rank_int,
                    access=_access(access),
                    supported=kind is not ValueKind.UNSUPPORTED,
                    value_type=kind.value,
                    unit=unit_text(_good(units)) if units is not None else None,
                    eu_range=_range(_good(eu_range)) if eu_range is not None else None,
                    sample=None if kind is ValueKind.UNSUPPORTED else _sample_text(value),
                    source=f"{prefix}#{text}",
                )
            )
    return result


async def resolve_start(client: Client, text: str) -> ua.NodeId:
    """The node id of ``text`` on this server (``nsu=`` resolved with the NamespaceArray).

    Raises:
        ConnectError: The ``nsu=`` namespace is not on the server.
        ValueError: Malformed node id text.
    """
    parsed = parse_node_id(text)
    if parsed.namespace_uri is None:
        return ua.NodeId.from_string(parsed.canonical())
    namespaces = [str(n) for n in await client.get_namespace_array()]
    if parsed.namespace_uri not in namespaces:
        msg = f"namespace {parsed.namespace_uri!r} is not on the server"
        raise ConnectError(msg)
    index = namespaces.index(parsed.namespace_uri)
    return ua.NodeId.from_string(f"ns={index};{parsed.kind}={parsed.identifier}")


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
    max_nodes: int = 100_000,
    exclude: Collection[str] = (),
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
        max_nodes: Most nodes visited by the walk [1..].
        exclude: Node id texts (as the server reports them) to leave out.

    Returns:
        The variables found, sorted by browse path; each a `VariableInfo` dict.

    Raises:
        ConnectError: The session cannot be opened (refused, untrusted certificate, policy
            None without ``insecure``...) or a Browse/Read failed.
        ValueError: ``depth``, ``limit`` or ``max_nodes`` out of range, or a malformed
            ``start_node``.

    Source: OPC UA Part 4 §5.8.2, §5.8.3, §5.10.2.
    """
    # Imported here: the connector imports this module for its own discovery.
    from connectors.opcua.connector import OpcUaConnector, OperationLimits

    if not 1 <= depth <= 32:
        msg = f"depth must be 1..32, got {depth}"
        raise ValueError(msg)
    if limit < 1 or max_nodes < 1:
        msg = f"limit and max_nodes must be >= 1, got {limit} and {max_nodes}"
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
    no_discovery = device.discover.model_copy(update={"enabled": False})
    device = device.model_copy(update={"discover": no_discovery})
    connector = OpcUaConnector(device, [])
    async with connector:
        client = connector.client
        limits = connector.limits or OperationLimits(1000, 1000, 1000, 1000)
        try:
            start = await resolve_start(client, parsed.canonical())
            walked = await walk(
                client, start, depth, limits.browse, include_ns0=include_ns0, max_nodes=max_nodes
            )
            skip = set(exclude)
            selected = [
                f
                for f in walked.variables
                if matches(pattern, f) and _node_text(f.node_id) not in skip
            ][:limit]
            return await describe(client, selected, limits, device.source_prefix)
        except ConnectError as exc:
            msg = f"{endpoint}: {exc}"
            raise ConnectError(msg) from exc
        except (UaError, OSError, TimeoutError) as exc:
            msg = f"{endpoint}: browse failed: {type(exc).__name__}: {exc}"
            raise ConnectError(msg) from exc


def _good(dv: ua.DataValue | None) -> object:
    if dv is None:
        return None
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    if status & 0xC0000000 or dv.Value is None:
        return None
    return cast("object", dv.Value.Value)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug or "point")[:63].rstrip("-") or "point"


def point_ids(variables: Sequence[VariableInfo]) -> list[str]:
    """Unique point ids (slugs of the last three browse names), one per variable, in order."""
    used: set[str] = set()
    out: list[str] = []
    for info in variables:
        names = [part.split(":", 1)[-1] for part in info["browse_path"].split("/")]
        base = _slug("-".join(names[-3:]))
        ident, n = base, 2
        while ident in used:
            suffix = f"-{n}"
            ident, n = f"{base[: 63 - len(suffix)]}{suffix}", n + 1
        used.add(ident)
        out.append(ident)
    return out


def _value_type(info: VariableInfo) -> str | None:
    """The ``value_type`` to write into a point entry (None: leave ``auto``)."""
    kind = info.get("value_type", "any")
    return kind if kind in ("number", "bool", "string") else None


def render_points_yaml(
    variables: Sequence[VariableInfo],
    device_id: str,
    *,
    mode: str = "subscription",
    header: Sequence[str] = (),
) -> str:
    """Point entries for the gateway configuration, to paste under an asset's ``points:``.

    Args:
        variables: `browse` results.
        device_id: The ``devices:`` id of the server.
        mode: ``subscription`` or ``poll`` for every entry.
        header: Extra comment lines (without ``#``) put first, e.g. a matching device entry.

    Returns:
        YAML text: a comment header and one list item per variable (``id`` slug from the
        browse path, unique; ``device``; ``node_id``; ``value_type`` when the DataType says
        number, bool or string; ``unit`` from EngineeringUnits; ``mode`` when poll), with the
        browse path, data type, access and EURange as a comment; unsupported types (arrays,
        structures) are commented out.
    """
    lines = [f"# {line}".rstrip() for line in header]
    lines.append(f"# {len(variables)} variable(s); paste under an asset's points:")
    for ident, info in zip(point_ids(variables), variables, strict=True):
        entry = [
            f"- id: {ident}",
            f"  device: {json.dumps(device_id)}",
            f"  node_id: {json.dumps(info['node_id'])}",
        ]
        value_type = _value_type(info)
        if value_type is not None:
            entry.append(f"  value_type: {value_type}")
        unit = info.get("unit")
        if unit:
            entry.append(f"  unit: {json.dumps(unit)}")
        if mode == "poll":
            entry.append("  mode: poll")
        note = (
            f"  # browse_path: {info['browse_path']}; data_type: {info['data_type']}; "
            f"access: {info['access']}"
        )
        eu_range = info.get("eu_range")
        if eu_range:
            note += f"; eu_range: [{eu_range[0]:g}, {eu_range[1]:g}]"
        if not info["supported"]:
            lines.append(f"# unsupported (array or structure: BadTypeMismatch): {info['node_id']}")
            lines.extend(f"# {line}" for line in entry)
            continue
        lines.extend([*entry, note])
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("site", "asset", "point", "device", "node_id", "mode", "value_type", "unit", "name")
"""Columns of `render_points_csv`, named as the point keys of the configuration."""


def render_points_csv(
    variables: Sequence[VariableInfo],
    device_id: str,
    *,
    mode: str = "subscription",
    site: str = "",
    asset: str = "",
) -> str:
    """A point list as CSV (the form plant tools exchange), one row per supported variable.

    Args:
        variables: `browse` results (unsupported ones are left out).
        device_id: The ``devices:`` id of the server.
        mode: ``subscription`` or ``poll`` for every row.
        site: Value of the ``site`` column (empty: fill in).
        asset: Value of the ``asset`` column (empty: fill in).

    Returns:
        CSV text with the header `CSV_COLUMNS`; ``mode`` empty for subscription, ``value_type``
        empty for ``auto``, ``name`` the display name.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for ident, info in zip(point_ids(variables), variables, strict=True):
        if not info["supported"]:
            continue
        writer.writerow(
            [
                site,
                asset,
                ident,
                device_id,
                info["node_id"],
                "poll" if mode == "poll" else "",
                _value_type(info) or "",
                info.get("unit") or "",
                info["display_name"],
            ]
        )
    return buffer.getvalue()
