"""Modbus TCP connector: polls one device over one TCP connection with pymodbus 3.16.

Lifecycle (DESIGN.md §3): ``async with ModbusConnector(device, points):`` opens the link or
raises `ConnectError`; `ModbusConnector.samples` yields one batch (one `Sample` per point of a
poll group) per poll cycle and raises `LinkLost` when the link is gone. The connector never
sleeps on errors and never reconnects: pymodbus runs with ``retries=0`` and
``reconnect_delay=0``, and its own "close after N unanswered requests" rule is switched off, so
the runtime alone decides when to reconnect.

Per-request failures become Bad samples of that request's points:

==========================  ===========================  =====================================
Event                       Quality                      ``stats.errors`` key
==========================  ===========================  =====================================
no response in ``timeout``  ``BadTimeout``               ``timeout`` (per attempt; ``retries``
                                                         extra attempts first)
unit silent in this cycle   ``BadTimeout`` (not sent)    ``timeout_skipped`` (per request)
exception 02                ``BadOutOfRange``            ``exception_02``; the request is
                                                         bisected, the split is cached
exception 06 (busy)         retried at once, up to       ``exception_06`` (per response)
                            ``busy_retries`` times, then
                            ``BadDeviceFailure``
other exception code        ``BadDeviceFailure``         ``exception_NN`` (two hex digits)
undecodable value           ``BadDecodingError``         ``decode`` (per sample)
NaN / ±Inf float            ``Bad``                      ``non_finite`` (per sample)
point wider than a request  ``BadConfigurationError``    none (see `PollGroup.rejected`)
==========================  ===========================  =====================================

`LinkLost` is raised when pymodbus reports the connection closed (``ConnectionException``, or
the socket closes while a request waits, which fails that request at once), when a response
does not belong to its request (transaction id, unit id, function code or length mismatch:
the stream is out of sync; ``protocol_<kind>`` is counted) and when ``dead_after_cycles``
consecutive poll cycles got nothing but timeouts (a half-open link: device power loss without
FIN/RST, R10).

Transaction ids (pymodbus 3.16.1, ``transaction/transaction.py``, ``framer/base.py``): each
``execute`` takes a new transaction id (1..65000, reset to 0 on connect), and the framer drops
every frame whose transaction id or unit id differs from the outstanding request's. A response
arriving after its request timed out is dropped ("received pdu without a corresponding
request") or skipped as a wrong transaction id, so it is never matched to a newer request (R12).
Retries are ours, each a new ``execute`` with a new transaction id. pymodbus accepts a response
with transaction id 0 or, for unit 0, any unit id; this connector rejects both as mismatches.

Writes (`ModbusConnector.write`, RELIABILITY M9, R17, R26): a write goes over the same TCP
connection as the polls. Every request, read or write, holds the connector's request lock
while it is on the wire, so a write waits for at most the one poll request in flight and the
device never sees two outstanding requests from this gateway (single-connection devices). The
function code follows the point (`codec.encode_write`: FC 5, 6, 16, or 22 for a bit of a
holding register). A write is sent once: no timeout retry, no busy (06) retry. After an answer
the point is read back (one read of its own registers); after a timeout the outcome is unknown,
a read-back is still attempted and attached to the error (`WriteOutcomeUnknown.read_back`), and
nothing is resent.

Timestamps: Modbus carries no device time. ``source_time`` is the gateway's aware-UTC time when
the response (or the failure) of the request arrived, which bounds the instant the device
sampled the registers more tightly than the batch's acquisition time.

Source: Modbus Application Protocol Specification V1.1b3, §4.1 (PDU), §6.1-6.4 (read
functions), §6.5, §6.6, §6.12, §6.16 (write functions), §7 (exception responses); Modbus
Messaging on TCP/IP Implementation Guide V1.0b, §3.1.3 (MBAP header, transaction identifier).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import NamedTuple, NoReturn, Protocol, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    MaskWriteRegisterRequest,
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from connectors.base import ConnectError, ConnectorStats, LinkLost, WriteError, WriteResult
from connectors.modbus.codec import (
    MASK_WRITE_REGISTER,
    WRITE_SINGLE_COIL,
    WRITE_SINGLE_REGISTER,
    Decoder,
    EncodedWrite,
    ReadOnlyTableError,
    encode_write,
    make_decoder,
)
from connectors.modbus.config import ModbusDeviceConfig, RegisterType
from connectors.modbus.plan import ModbusPoint, PollGroup, ReadRequest, build_plan, make_request
from gateway import clock as _clock
from gateway.model import Sample
from gateway.quality import Q, Quality

MAX_STAGGER_S = 1.0
"""Upper bound of a poll group's phase offset [s]: offset = frac(crc32(device, interval)) ×
min(interval, MAX_STAGGER_S)."""

_NEVER_DISCONNECT = 1 << 30  # pymodbus closes after this many unanswered requests: never
_EXCEPTION_BUSY = 0x06
_EXCEPTION_ILLEGAL_ADDRESS = 0x02

_REQUEST_CLASSES: dict[RegisterType, type[ModbusPDU]] = {
    RegisterType.COIL: ReadCoilsRequest,
    RegisterType.DISCRETE: ReadDiscreteInputsRequest,
    RegisterType.HOLDING: ReadHoldingRegistersRequest,
    RegisterType.INPUT: ReadInputRegistersRequest,
}


_EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
"""Exception codes (Modbus Application Protocol V1.1b3, §7)."""


class WriteOutcomeUnknown(WriteError):
    """A write that got no answer (kind ``timeout``): it may or may not have been applied.

    Never resent. The connector attempted one read-back of the point after the timeout.

    Attributes:
        read_back: That read-back (raw value, not scaled; a Bad sample when it failed too), or
            None when it could not be attempted (the link was gone).
    """

    def __init__(self, message: str, code: str | None, read_back: Sample | None) -> None:
        super().__init__("timeout", message, code)
        self.read_back = read_back


class Clock(Protocol):
    """Time sources of the connector (the `gateway.clock` module fits)."""

    def monotonic(self) -> float:
        """Monotonic seconds, for schedules."""
        ...

    def utc_now(self) -> datetime:
        """Aware UTC wall time, for sample timestamps."""
        ...


class _Failure(NamedTuple):
    quality: Quality
    kind: str


_TIMEOUT = _Failure(Q.BAD_TIMEOUT, "timeout")
_OUT_OF_RANGE = _Failure(Q.BAD_OUT_OF_RANGE, "exception_02")
_Outcome = Sequence[int] | _Failure


class _Slot(NamedTuple):
    key: str
    offset: int  # index of the point's first register/bit in the response
    decode: Decoder


@dataclass(slots=True, eq=False)
class _Op:
    """A request as executed: precomputed slots, and the 02 state of a known-bad run."""

    request: ReadRequest
    slots: tuple[_Slot, ...]
    probe_at: float | None = None  # set: all points answer 02; re-read at this monotonic time


@dataclass(slots=True, eq=False)
class _Schedule:
    interval: float
    phase: float
    ops: list[_Op]
    rejected: tuple[str, ...]
    base: float = 0.0
    tick: int = 0

    def due(self) -> float:
        return self.base + self.tick * self.interval


def _phase(device_id: str, interval: float) -> float:
    """Deterministic stagger of a (device, interval) poll group [s], in [0, min(interval, 1 s))."""
    fraction = zlib.crc32(f"{device_id}/{float(interval)!r}".encode()) / 2**32
    return fraction * min(interval, MAX_STAGGER_S)


class ModbusConnector:
    """Polls the points of one Modbus TCP device (implements `connectors.base.Connector`).

    Args:
        device: The device: endpoint, default unit id, ``timeout`` [s] per request attempt,
            ``retries`` extra attempts after a timeout, request limits and ``max_gap``.
        points: Its points; each point's ``poll_interval`` [s] selects its poll group.
        clock: Monotonic and UTC time source; default `gateway.clock`.
        busy_retries: Immediate re-sends of a request answered with exception 06 [0..], default 2.
        reprobe_interval: Seconds between re-reads of a range known to answer exception 02.
        dead_after_cycles: Consecutive poll cycles with only timeouts before `LinkLost` [1..].

    Attributes:
        device_id: The device id.
        stats: Counters (polls, overruns, requests, errors by kind, last cycle latency [s]).
        plan: The poll groups from `build_plan`, as configured (before any 02 split).
    """

    def __init__(
        self,
        device: ModbusDeviceConfig,
        points: Sequence[ModbusPoint],
        *,
        clock: Clock = _clock,
        busy_retries: int = 2,
        reprobe_interval: float = 60.0,
        dead_after_cycles: int = 2,
    ) -> None:
        self.device_id = device.id
        self.stats = ConnectorStats()
        self.plan: list[PollGroup] = build_plan(device, points)
        self._device = device
        self._clock = clock
        self._busy_retries = max(0, busy_retries)
        self._reprobe_interval = reprobe_interval
        self._dead_after_cycles = max(1, dead_after_cycles)
        # The points as given (the runtime's list, not a copy); a key index only once a write
        # asks for one: writes are rare, a dict per device is ≈ 36 bytes per point (issue #8).
        self._points: Sequence[ModbusPoint] = points
        self._by_key: dict[str, ModbusPoint] | None = None
        self._io = asyncio.Lock()  # one request on the wire at a time: polls and writes
        self._schedules = self._build_schedules()
        self._client: AsyncModbusTcpClient | None = None
        self._in_request = False
        self._link_down = asyncio.Event()
        self._timeout_cycles = 0

    def _build_schedules(self) -> list[_Schedule]:
        """Fresh per-group state from the plan (drops any cached 02 split)."""
        device_id = self._device.id
        return [
            _Schedule(
                interval=group.poll_interval,
                phase=_phase(device_id, group.poll_interval),
                ops=[self._make_op(r) for r in group.requests],
                rejected=tuple(p.key for p in group.rejected),
            )
            for group in self.plan
        ]

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the TCP connection (timeout = ``device.timeout``). Raises ConnectError."""
        self._close()
        device = self._device
        client = AsyncModbusTcpClient(
            device.host,
            port=device.port,
            name=f"modbus:{device.id}",
            timeout=device.timeout,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            trace_connect=self._on_link_change,
        )
        client.set_max_no_responses(_NEVER_DISCONNECT)
        try:
            connected = await client.connect()
        except (OSError, TimeoutError, ModbusException, ValueError) as exc:
            client.close()
            msg = f"{device.endpoint}: connect failed: {exc}"
            raise ConnectError(msg) from exc
        if not connected or not client.connected:
            client.close()
            msg = f"{device.endpoint}: connect failed (refused, unreachable or timed out)"
            raise ConnectError(msg)
        self._client = client
        self._link_down = asyncio.Event()
        self._timeout_cycles = 0
        self._schedules = self._build_schedules()  # re-learn 02 ranges on every connection
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection; never raises."""
        self._close()

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _on_link_change(self, connected: bool) -> None:
        """Hook for pymodbus ``trace_connect``: on a drop, fail the waiting request at once.

        pymodbus 3.16 does not wake a request waiting for its response when the socket closes;
        it would wait for the full timeout. Failing the pending response future with
        ConnectionException makes `samples` raise LinkLost within one poll (R11).
        """
        if connected or self._client is None:
            return
        self._link_down.set()
        if not self._in_request:
            return
        future = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection closed"))

    def point_sources(self) -> dict[str, str]:
        """Map point key -> ``modbus://host:port/<unit>/<hr|ir|co|di>/<address>``.

        Built on each call (the runtime asks once, at start), not kept per connector.
        """
        device = self._device
        return {
            p.key: f"{device.endpoint}/"
            f"{device.unit_id if p.address.unit_id is None else p.address.unit_id}/"
            f"{p.address.table.short}/{p.address.address}"
            for p in self._points
        }

    # -- polling --------------------------------------------------------------------------

    async def samples(self) -> AsyncIterator[list[Sample]]:
        """Poll forever; yield one batch per poll cycle of a poll group.

        Cycles of each group are anchored to the monotonic clock at ``base + k × interval``
        (``base`` = start + the group's phase offset). The earliest due group polls next; a
        tick that passed while a poll was running, or that is already one interval late, is
        skipped and counted in ``stats.overruns`` (never queued).

        Yields:
            One `Sample` per point of the group, in request order; ``source_time`` is the
            aware-UTC arrival time of the point's response.

        Raises:
            LinkLost: The connection is closed or out of sync, or only timeouts for
                ``dead_after_cycles`` cycles.
        """
        if self._client is None or not self._client.connected:
            msg = f"{self._device.endpoint}: not connected"
            raise LinkLost(msg)
        schedules = self._schedules
        if not schedules:
            await self._link_down.wait()
            msg = f"{self._device.endpoint}: connection closed"
            raise LinkLost(msg)
        monotonic = self._clock.monotonic
        stats = self.stats
        anchor = monotonic()
        for sched in schedules:
            sched.base = anchor + sched.phase
            sched.tick = 0
        while True:
            sched = min(schedules, key=_Schedule.due)
            interval = sched.interval
            due = sched.due()
            now = monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = monotonic()
            late = int((now - due) // interval)
            if late > 0:
                stats.overruns += late
                sched.tick += late
            batch = await self._poll(sched)
            end = monotonic()
            stats.polls += 1
            stats.last_latency_s = end - now
            next_tick = sched.tick + 1
            first_free = math.ceil((end - sched.base) / interval)
            if first_free > next_tick:
                stats.overruns += first_free - next_tick
                next_tick = first_free
            sched.tick = next_tick
            yield batch

    async def _poll(self, sched: _Schedule) -> list[Sample]:
        """One cycle of a group: read every op, decode, bisect on 02. Raises LinkLost.

        A unit whose first answered-or-not request of the cycle timed out is *silent*: its
        remaining requests in this cycle are not sent and their points get ``BadTimeout``
        (``stats.errors["timeout_skipped"]`` per skipped request), so a dead device costs one
        ``timeout × (retries + 1)`` per cycle, not one per request, while other unit ids behind
        the same gateway are still polled.
        """
        batch: list[Sample] = []
        clock = self._clock
        sent = timeouts = 0
        silent: set[int] = set()  # units that timed out before answering in this cycle
        answered: set[int] = set()
        next_ops: list[_Op] | None = None  # the group's new op list, once a 02 split it
        for index, op in enumerate(sched.ops):
            unit = op.request.unit_id
            if unit in silent:
                self.stats.errors["timeout_skipped"] += 1
                self._emit_failure(op, _TIMEOUT, clock.utc_now(), batch)
            elif op.probe_at is not None and clock.monotonic() < op.probe_at:
                self._emit_failure(op, _OUT_OF_RANGE, clock.utc_now(), batch)
            else:
                outcome = await self._read(op.request)
                arrived = clock.utc_now()
                sent += 1
                if outcome is _TIMEOUT:
                    timeouts += 1
                    if unit not in answered:
                        silent.add(unit)
                else:
                    answered.add(unit)
                if outcome is _OUT_OF_RANGE and op.probe_at is None and len(op.slots) > 1:
                    pieces = await self._bisect(op, known_failed=True)
                    if next_ops is None:
                        next_ops = sched.ops[:index]
                    next_ops.extend(self._merge_bad([piece for piece, _, _ in pieces]))
                    for piece, piece_outcome, piece_time in pieces:
                        self._emit(piece, piece_outcome, piece_time, batch)
                    continue
                if outcome is _OUT_OF_RANGE:
                    op.probe_at = clock.monotonic() + self._reprobe_interval
                elif op.probe_at is not None and not isinstance(outcome, _Failure):
                    op.probe_at = None
                self._emit(op, outcome, arrived, batch)
            if next_ops is not None:
                next_ops.append(op)
        if next_ops is not None:
            sched.ops = next_ops
        if sched.rejected:
            now = clock.utc_now()
            bad = Q.BAD_CONFIGURATION_ERROR
            batch.extend(Sample(key, None, bad, now) for key in sched.rejected)
        if sent and timeouts == sent:
            self._timeout_cycles += 1
            if self._timeout_cycles >= self._dead_after_cycles:
                self._close()
                msg = (
                    f"{self._device.endpoint}: no response for {self._timeout_cycles} "
                    "poll cycles (half-open link)"
                )
                raise LinkLost(msg)
        elif sent:
            self._timeout_cycles = 0
        return batch

    async def _bisect(self, op: _Op, *, known_failed: bool) -> list[tuple[_Op, _Outcome, datetime]]:
        """Split a request answering 02 until every piece reads or is one bad point.

        A piece is read unless ``known_failed``; a multi-point right half is inferred to fail,
        without a read, when its left half read Good and the two are adjacent. A single point
        is only declared out of range after a read of its own. The pieces come back in
        address order, with this cycle's outcome and arrival time.
        """
        clock = self._clock
        if not known_failed:
            outcome = await self._read(op.request)
            arrived = clock.utc_now()
            if outcome is not _OUT_OF_RANGE:
                return [(op, outcome, arrived)]
        if len(op.slots) == 1:
            op.probe_at = clock.monotonic() + self._reprobe_interval
            return [(op, _OUT_OF_RANGE, clock.utc_now())]
        request = op.request
        middle = len(request.points) // 2
        left = self._make_op(make_request(request.unit_id, request.table, request.points[:middle]))
        right = self._make_op(make_request(request.unit_id, request.table, request.points[middle:]))
        pieces = await self._bisect(left, known_failed=False)
        left_good = (
            len(pieces) == 1 and pieces[0][0] is left and not isinstance(pieces[0][1], _Failure)
        )
        infer = left_good and len(right.slots) > 1 and right.request.start <= left.request.end
        pieces.extend(await self._bisect(right, known_failed=infer))
        return pieces

    def _merge_bad(self, ops: list[_Op]) -> list[_Op]:
        """Merge runs of adjacent known-bad (02) ops into one op re-probed as one request."""
        merged: list[_Op] = []
        for op in ops:
            last = merged[-1] if merged else None
            if last is not None and last.probe_at is not None and op.probe_at is not None:
                request = last.request
                joined = self._make_op(
                    make_request(request.unit_id, request.table, request.points + op.request.points)
                )
                joined.probe_at = max(last.probe_at, op.probe_at)
                merged[-1] = joined
            else:
                merged.append(op)
        return merged

    def _make_op(self, request: ReadRequest) -> _Op:
        start = request.start
        # make_decoder shares one decoder among equal addresses (its parts are cached).
        return _Op(
            request,
            tuple(
                _Slot(p.key, p.address.address - start, make_decoder(p.address))
                for p in request.points
            ),
        )

    def _emit(self, op: _Op, outcome: _Outcome, when: datetime, batch: list[Sample]) -> None:
        if isinstance(outcome, _Failure):
            self._emit_failure(op, outcome, when, batch)
            return
        errors = self.stats.errors
        append = batch.append
        for key, offset, decode in op.slots:
            value, quality = decode(outcome, offset)
            if quality:
                errors["non_finite" if quality == Q.BAD else "decode"] += 1
            append(Sample(key, value, quality, when))

    @staticmethod
    def _emit_failure(op: _Op, failure: _Failure, when: datetime, batch: list[Sample]) -> None:
        quality = failure.quality
        batch.extend(Sample(slot.key, None, quality, when) for slot in op.slots)

    async def _read(self, request: ReadRequest) -> _Outcome:
        """Execute one read with timeout retries and busy retries.

        Returns:
            The response's registers (or bits, padded to a multiple of 8), or a `_Failure`.

        Raises:
            LinkLost: Connection closed, or a response that does not match its request.
        """
        client = self._client
        if client is None:
            msg = f"{self._device.endpoint}: not connected"
            raise LinkLost(msg)
        stats = self.stats
        errors = stats.errors
        request_class = _REQUEST_CLASSES[request.table]
        timeouts_left = self._device.retries
        busy_left = self._busy_retries
        while True:
            pdu = request_class(address=request.start, count=request.count, dev_id=request.unit_id)
            stats.requests += 1
            try:
                response: ModbusPDU = await self._execute(client, pdu)
            except ConnectionException as exc:
                self._close()
                msg = f"{self._device.endpoint}: connection closed by the peer"
                raise LinkLost(msg) from exc
            except ModbusIOException as exc:
                if not client.connected:
                    self._close()
                    msg = f"{self._device.endpoint}: connection closed during a request"
                    raise LinkLost(msg) from exc
                errors["timeout"] += 1
                if timeouts_left > 0:
                    timeouts_left -= 1
                    continue
                return _TIMEOUT
            except ModbusException as exc:
                self._protocol_error("exception", str(exc))
            if (
                response.transaction_id != pdu.transaction_id
                or response.dev_id != request.unit_id
                or response.function_code & 0x7F != pdu.function_code
            ):
                self._protocol_error(
                    "mismatch",
                    f"response tid={response.transaction_id} unit={response.dev_id} "
                    f"fc={response.function_code} to request tid={pdu.transaction_id} "
                    f"unit={request.unit_id} fc={pdu.function_code}",
                )
            if response.isError():
                code = response.exception_code
                errors[f"exception_{code:02X}"] += 1
                if code == _EXCEPTION_BUSY and busy_left > 0:
                    busy_left -= 1
                    continue
                if code == _EXCEPTION_ILLEGAL_ADDRESS:
                    return _OUT_OF_RANGE
                return _Failure(Q.BAD_DEVICE_FAILURE, f"exception_{code:02X}")
            if request.table.is_bit:
                bits = response.bits
                if not request.count <= len(bits) < request.count + 8:
                    self._protocol_error("length", f"{len(bits)} bits for {request.count}")
                return bits
            registers = response.registers
            if len(registers) != request.count:
                self._protocol_error("length", f"{len(registers)} registers for {request.count}")
            return registers

    async def _execute(self, client: AsyncModbusTcpClient, pdu: ModbusPDU) -> ModbusPDU:
        """Send one request and wait for its response, holding the request lock.

        Raises:
            ConnectionException: The connection is closed (or closes while waiting).
            ModbusIOException: No response within the device timeout.
            ModbusException: Any other pymodbus failure.
        """
        async with self._io:
            self._in_request = True
            try:
                response: ModbusPDU = await client.execute(False, pdu)
            finally:
                self._in_request = False
        return response

    # -- write-back -----------------------------------------------------------------------

    async def write(self, point_id: str, raw: object, *, dry_run: bool = False) -> WriteResult:
        """Write one point's raw value to the device, then read the point back.

        The request shares the polling connection and waits for the request lock (at most the
        one poll request in flight). It is sent exactly once: a timeout is not retried, nor is
        a busy answer (exception 06).

        Args:
            point_id: Point key ``site/asset/point`` of one of this connector's points.
            raw: The raw value (device units; the gateway already applied the inverse of
                scale/offset): bool for bool points, int for integer types, int or float for
                float types, ASCII str for strings.
            dry_run: Encode only and return the request; nothing is sent, and no link is needed.

        Returns:
            `WriteResult`: ``encoded`` such as ``FC16 unit_id=1 holding 10..11 = [0x4148,
            0x0000]``, ``registers`` (the words or the coil bit sent; for FC 22 the AND and OR
            masks) and ``confirmed``: the point read back after the write (raw; a Bad sample
            when the read-back failed), None for a dry run.

        Raises:
            WriteError: ``unsupported`` (not a point of this device, or a discrete input /
                input register point), ``encode`` (the value does not fit the type; nothing
                sent), ``offline`` (no open connection; nothing sent), ``device`` (the device
                answered an exception; ``code`` is ``exception_XX``, e.g. ``exception_02``).
            WriteOutcomeUnknown: Kind ``timeout``: no answer within the device timeout, or the
                connection closed or desynchronized while the request was out (``code``
                ``timeout``, ``connection_lost`` or ``protocol_mismatch``). Never resent.

        Source: Modbus Application Protocol Specification V1.1b3, §6.5 (FC 5), §6.6 (FC 6),
        §6.12 (FC 16), §6.16 (FC 22), §7 (exception responses).
        """
        endpoint = self._device.endpoint
        if self._by_key is None:
            self._by_key = {p.key: p for p in self._points}
        point = self._by_key.get(point_id)
        if point is None:
            msg = f"{endpoint}: no point {point_id!r} on this device; nothing was sent"
            raise WriteError("unsupported", msg)
        unit = self._device.unit_id if point.address.unit_id is None else point.address.unit_id
        if not isinstance(raw, bool | int | float | str):
            msg = f"{point_id}: cannot write a {type(raw).__name__}; nothing was sent"
            raise WriteError("encode", msg)
        try:
            request = encode_write(raw, point.address)
        except ReadOnlyTableError as exc:
            msg = f"{endpoint}: {point_id}: {exc}; nothing was sent"
            raise WriteError("unsupported", msg) from None
        except ValueError as exc:
            self.stats.errors["write_encode"] += 1
            msg = f"{point_id}: {exc}; nothing was sent"
            raise WriteError("encode", msg) from None
        encoded = request.describe(unit)
        if dry_run:
            return WriteResult(encoded, list(request.values), None)
        client = self._client
        if client is None or not client.connected or self._link_down.is_set():
            msg = f"{endpoint}: not connected; nothing was sent"
            raise WriteError("offline", msg)
        await self._send_write(client, request, unit, point, encoded)
        confirmed = await self._read_back(point)
        return WriteResult(encoded, list(request.values), confirmed)

    async def _send_write(
        self,
        client: AsyncModbusTcpClient,
        request: EncodedWrite,
        unit: int,
        point: ModbusPoint,
        encoded: str,
    ) -> None:
        """Send the write once and check the answer. Raises WriteError / WriteOutcomeUnknown."""
        endpoint = self._device.endpoint
        pdu = _write_pdu(request, unit)
        errors = self.stats.errors
        self.stats.requests += 1
        problem: str | None = None
        try:
            response: ModbusPDU = await self._execute(client, pdu)
        except ConnectionException:
            self._close()
            problem = "connection_lost"
        except ModbusIOException:
            if not client.connected:
                self._close()
                problem = "connection_lost"
            else:
                problem = "timeout"
        except ModbusException:
            self._close()
            problem = "protocol_mismatch"
        else:
            if (
                response.transaction_id != pdu.transaction_id
                or response.dev_id != unit
                or response.function_code & 0x7F != pdu.function_code
            ):
                errors["protocol_mismatch"] += 1
                self._close()  # the stream is out of sync: the poller sees LinkLost
                problem = "protocol_mismatch"
        if problem is not None:
            errors[f"write_{problem}"] += 1
            read_back = await self._read_back(point) if self._client is not None else None
            what = {
                "timeout": f"no answer within {self._device.timeout} s",
                "connection_lost": "the connection closed before the answer",
                "protocol_mismatch": "the answer did not match the request (link reset)",
            }[problem]
            msg = f"{endpoint}: {encoded}: {what}; outcome unknown, not resent"
            raise WriteOutcomeUnknown(msg, problem, read_back)
        if response.isError():
            code = int(response.exception_code)
            errors[f"write_exception_{code:02X}"] += 1
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            msg = f"{endpoint}: {encoded}: device answered exception {code:02X} ({name})"
            raise WriteError("device", msg, f"exception_{code:02X}")

    async def _read_back(self, point: ModbusPoint) -> Sample:
        """Read one point's own registers (or bit) now; a failure is a Bad sample, not raised."""
        request = make_request(
            self._device.unit_id if point.address.unit_id is None else point.address.unit_id,
            point.address.table,
            (point,),
        )
        op = self._make_op(request)
        batch: list[Sample] = []
        try:
            outcome = await self._read(request)
        except LinkLost:
            return Sample(point.key, None, Q.BAD_NO_COMMUNICATION, self._clock.utc_now())
        self._emit(op, outcome, self._clock.utc_now(), batch)
        return batch[0]

    def _protocol_error(self, kind: str, detail: str) -> NoReturn:
        """Count a desynchronized stream, close the link and raise LinkLost."""
        self.stats.errors[f"protocol_{kind}"] += 1
        self._close()
        msg = f"{self._device.endpoint}: protocol error ({kind}): {detail}"
        raise LinkLost(msg)


def _write_pdu(request: EncodedWrite, unit: int) -> ModbusPDU:
    """The pymodbus request PDU of an encoded write."""
    fc, address, values = request.function_code, request.address, request.values
    if fc == WRITE_SINGLE_COIL:
        return WriteSingleCoilRequest(address=address, bits=[bool(values[0])], dev_id=unit)
    if fc == WRITE_SINGLE_REGISTER:
        return WriteSingleRegisterRequest(address=address, registers=list(values), dev_id=unit)
    if fc == MASK_WRITE_REGISTER:
        and_mask, or_mask = values
        mask: ModbusPDU = MaskWriteRegisterRequest(  # untyped in pymodbus 3.16
            address=address, and_mask=and_mask, or_mask=or_mask, dev_id=unit
        )
        return mask
    return WriteMultipleRegistersRequest(
        address=address, registers=list(values), count=len(values), dev_id=unit
    )
