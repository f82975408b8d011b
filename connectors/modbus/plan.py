"""Coalescing of a device's points into as few read requests as its limits allow.

Rules (`build_plan`):

1. Points are grouped by poll interval, then by (unit id, table): only points with the same
   interval, unit id and table share a request.
2. Inside a group, points sorted by address join the current request while the unused registers
   between the request's end and the point's start are at most ``device.max_gap`` and the
   request stays within ``device.max_registers`` (FC 3/4, registers) or ``device.max_bits``
   (FC 1/2, bits; ``max_gap`` then counts unused bits). Overlapping points (several bools on bits
   of one register, a float and its halves) share the registers.
3. A point never straddles two requests. A point wider than the limit (a long string with a
   small ``max_registers``) cannot be read at all: it is listed in `PollGroup.rejected`.
4. The order is deterministic: groups by ascending interval, requests by (unit id, function
   code, start), points by (address, width, key).

Source: Modbus Application Protocol Specification V1.1b3, §6.1-6.4 (quantity limits:
1..2000 bits for FC 1/2, 1..125 registers for FC 3/4).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypedDict

from connectors.modbus.config import AddressLike, ModbusDeviceConfig, RegisterType

FUNCTION_CODES: dict[RegisterType, int] = {
    RegisterType.COIL: 1,
    RegisterType.DISCRETE: 2,
    RegisterType.HOLDING: 3,
    RegisterType.INPUT: 4,
}
"""Read function code of each table (Modbus spec §6.1-6.4)."""


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    """A point to poll on a Modbus device.

    Attributes:
        key: Point key ``site/asset/point``.
        address: Where the point lives and how it decodes: a `RegisterAddress` (what the
            runtime passes, compact), a `ModbusAddress` or a point config.
        poll_interval: Poll interval [s], > 0.
    """

    key: str
    address: AddressLike
    poll_interval: float

    def __post_init__(self) -> None:
        # Interned: the key is held per point by the connector, the runtime and the pipeline;
        # one object instead of a copy each (≈ 70 bytes per copy, issue #8).
        if type(self.key) is str:
            object.__setattr__(self, "key", sys.intern(self.key))

    @property
    def unit_id(self) -> int | None:
        """The point's unit id override, or None for the device's."""
        return self.address.unit_id


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read request: a contiguous range of one table of one unit.

    Attributes:
        unit_id: Modbus unit id [0..255].
        table: Data table read.
        start: First address (0-based) [0..65535].
        count: Registers (FC 3/4) or bits (FC 1/2) read, >= 1.
        points: The points decoded from the response, sorted by (address, width, key).
    """

    unit_id: int
    table: RegisterType
    start: int
    count: int
    points: tuple[ModbusPoint, ...]

    @property
    def function_code(self) -> int:
        """Read function code: 1 coils, 2 discrete inputs, 3 holding, 4 input registers."""
        return FUNCTION_CODES[self.table]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


class PollGroup(NamedTuple):
    """The requests polled together at one interval.

    Attributes:
        poll_interval: Poll interval [s].
        requests: Read requests, in poll order.
        rejected: Points that fit no request (wider than the device's request limit).
    """

    poll_interval: float
    requests: tuple[ReadRequest, ...]
    rejected: tuple[ModbusPoint, ...] = ()


def request_limit(device: ModbusDeviceConfig, table: RegisterType) -> int:
    """Maximum count of a request to ``table``: ``max_bits`` for FC 1/2, else ``max_registers``."""
    return device.max_bits if table.is_bit else device.max_registers


def _sort_key(point: ModbusPoint) -> tuple[int, int, str]:
    return point.address.address, point.address.width, point.key


def make_request(unit_id: int, table: RegisterType, points: Sequence[ModbusPoint]) -> ReadRequest:
    """The smallest request covering ``points`` (all of ``unit_id`` and ``table``).

    Args:
        unit_id: Unit id of the request.
        table: Table of the request.
        points: At least one point.

    Returns:
        A request from the lowest address to one past the highest register used, with the
        points sorted by (address, width, key).
    """
    ordered = tuple(sorted(points, key=_sort_key))
    start = ordered[0].address.address
    end = max(p.address.address + p.address.width for p in ordered)
    return ReadRequest(unit_id, table, start, end - start, ordered)


def _coalesce(
    unit_id: int, table: RegisterType, points: list[ModbusPoint], max_gap: int, limit: int
) -> tuple[list[ReadRequest], list[ModbusPoint]]:
    requests: list[ReadRequest] = []
    rejected: list[ModbusPoint] = []
    current: list[ModbusPoint] = []
    start = end = 0
    for point in sorted(points, key=_sort_key):
        first, width = point.address.address, point.address.width
        if width > limit:
            rejected.append(point)
            continue
        if current and first - end <= max_gap and max(end, first + width) - start <= limit:
            current.append(point)
            end = max(end, first + width)
            continue
        if current:
            requests.append(ReadRequest(unit_id, table, start, end - start, tuple(current)))
        current, start, end = [point], first, first + width
    if current:
        requests.append(ReadRequest(unit_id, table, start, end - start, tuple(current)))
    return requests, rejected


def build_plan(device: ModbusDeviceConfig, points: Sequence[ModbusPoint]) -> list[PollGroup]:
    """Coalesce a device's points into poll groups of read requests.

    Args:
        device: The device; ``unit_id`` is the default unit, ``max_gap``, ``max_registers`` and
            ``max_bits`` bound the requests.
        points: The device's points, in any order. Keys should be unique.

    Returns:
        One `PollGroup` per distinct poll interval, ascending; see the module docstring for
        the rules. Every point is in exactly one request or in ``rejected``.

    Source: Modbus Application Protocol Specification V1.1b3, §6.1-6.4.
    """
    by_group: dict[tuple[float, int, int], list[ModbusPoint]] = {}
    for point in points:
        unit = device.unit_id if point.address.unit_id is None else point.address.unit_id
        fc = FUNCTION_CODES[point.address.table]
        by_group.setdefault((point.poll_interval, unit, fc), []).append(point)
    intervals: dict[float, tuple[list[ReadRequest], list[ModbusPoint]]] = {}
    for interval, unit, fc in sorted(by_group):
        group = by_group[(interval, unit, fc)]
        table = group[0].address.table
        requests, rejected = _coalesce(
            unit, table, group, device.max_gap, request_limit(device, table)
        )
        acc = intervals.setdefault(interval, ([], []))
        acc[0].extend(requests)
        acc[1].extend(rejected)
    return [
        PollGroup(interval, tuple(requests), tuple(rejected))
        for interval, (requests, rejected) in intervals.items()
    ]


class RequestInfo(TypedDict):
    """One request in `describe_plan` output."""

    unit_id: int
    function_code: int
    table: str
    start: int
    count: int
    points: int


class GroupInfo(TypedDict):
    """One poll group in `describe_plan` output."""

    poll_interval_s: float
    requests: list[RequestInfo]
    rejected: list[str]


class PlanInfo(TypedDict):
    """What ``ot-gateway plan FILE`` prints for one device."""

    device: str
    endpoint: str
    points: int
    requests: int
    registers: int
    requests_per_s: float
    samples_per_s: float
    groups: list[GroupInfo]


def describe_plan(device: ModbusDeviceConfig, groups: Sequence[PollGroup]) -> PlanInfo:
    """Summarize a device's plan for people (CLI ``plan``) and tests.

    Args:
        device: The device the plan is for.
        groups: Its poll groups from `build_plan`.

    Returns:
        Per request: unit id, function code, table, start, count (registers or bits) and point
        count. Totals: points, requests per cycle set, registers/bits read per cycle set, and
        the expected rates ``requests_per_s`` = Σ requests/interval and ``samples_per_s`` =
        Σ points/interval (rejected points included: they yield Bad samples) [1/s].
    """
    info: PlanInfo = {
        "device": device.id,
        "endpoint": device.endpoint,
        "points": 0,
        "requests": 0,
        "registers": 0,
        "requests_per_s": 0.0,
        "samples_per_s": 0.0,
        "groups": [],
    }
    for group in groups:
        n_points = sum(len(r.points) for r in group.requests) + len(group.rejected)
        info["points"] += n_points
        info["requests"] += len(group.requests)
        info["registers"] += sum(r.count for r in group.requests)
        info["requests_per_s"] += len(group.requests) / group.poll_interval
        info["samples_per_s"] += n_points / group.poll_interval
        info["groups"].append(
            {
                "poll_interval_s": group.poll_interval,
                "requests": [
                    {
                        "unit_id": r.unit_id,
                        "function_code": r.function_code,
                        "table": r.table.value,
                        "start": r.start,
                        "count": r.count,
                        "points": len(r.points),
                    }
                    for r in group.requests
                ],
                "rejected": [p.key for p in group.rejected],
            }
        )
    return info
