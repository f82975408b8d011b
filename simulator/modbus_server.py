"""One simulated Modbus TCP device on a pymodbus 3.16 async TCP server.

Values are computed when a request arrives (a lazy register map, no stored image), so reads of
any address are cheap and always reflect the wall clock. Each connection handles its requests
one at a time in arrival order, like a real device, and every response carries the
transaction id of its own request.

Behaviour worth knowing:
- Unconfigured addresses read as 0 (registers) or False (bits); any address 0..65535 is valid.
- Requests for a unit id the device does not answer get exception 0x0B (gateway target device
  failed to respond), at once.
- Writes (FC 5, 6, 15, 16, 22, 23) to holding registers and coils are accepted and override the
  signal of the written words/bits until the simulator stops, unless a configured point they
  touch says otherwise (``on_write``: an exception code, or ``unanswered``: applied but never
  answered, so the client cannot know the outcome).
- Every write request received is counted (``writes``), with what became of it (``writes_applied``,
  ``writes_refused``) and a log of the last `WRITE_LOG_SIZE` writes (function code, unit id,
  address, payload, result) in the stats: the oracle for "no write reached the device".
- With ``max_connections``, connections beyond that many open ones are closed at once
  (``refused_connections``); ``peak_connections`` is the most ever open at the same time.
- Function codes other than 1–6, 15, 16, 22, 23 (and 8, 17, 43 answered by pymodbus) get 0x01.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData
from pymodbus.simulator import SimDevice as _PymodbusSimDevice

from simulator.config import BIT_TABLES, DeviceConfig, Fault, OfflineFault, RegisterConfig
from simulator.encoding import as_bool, encode_value
from simulator.faults import ActiveFault, ActiveFaults
from simulator.signals import make_signal
from simulator.truth import utc_now

log = logging.getLogger("simulator")

#: Function code → table it addresses.
FC_TABLE: dict[int, str] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
_PASS_THROUGH_FC = frozenset({8, 17, 43})  # diagnostics, report server id, device id (pymodbus)
_WRITABLE = frozenset({"holding", "coil"})
WRITE_FUNCTION_CODES = frozenset({5, 6, 15, 16, 22, 23})
"""Function codes that write (single/multiple coils and registers, mask write, read/write)."""
WRITE_LOG_SIZE = 200
"""Writes kept in the stats' ``write_log`` (the most recent)."""
_MAX_QUEUED = 256  # requests queued per connection before new ones are dropped


# ---------------------------------------------------------------------------------------------
# Register map: computes values on request.


@dataclass(slots=True)
class _Entry:
    start: int
    width: int
    compute: Callable[[float], list[int]]  # words (register tables) or 0/1 (bit tables)


def _word_fn(reg: RegisterConfig, seed: int, key: str) -> Callable[[float], list[int]]:
    fn = make_signal(reg.signal, seed, key)
    dtype, order, scale, length = reg.data_type, reg.byte_order, reg.scale, reg.length
    return lambda t: encode_value(fn(t), dtype, order, scale, length)


def _bit_fn(reg: RegisterConfig, seed: int, key: str) -> Callable[[float], list[int]]:
    fn = make_signal(reg.signal, seed, key)
    return lambda t: [1 if as_bool(fn(t)) else 0]


def _packed_bits_fn(
    bits: list[tuple[int, Callable[[float], list[int]]]],
) -> Callable[[float], list[int]]:
    def compute(t: float) -> list[int]:
        word = 0
        for bit, fn in bits:
            if fn(t)[0]:
                word |= 1 << bit
        return [word]

    return compute


class RegisterMap:
    """The four tables of one device, computed lazily from signals.

    Args:
        registers: the device's points (validated: no overlaps).
        seed: profile seed for ``random_walk``.
        device_id: used in the per-point random-walk key.
    """

    def __init__(self, registers: list[RegisterConfig], seed: int, device_id: str) -> None:
        tables: dict[str, list[_Entry]] = {t: [] for t in ("coil", "discrete", "holding", "input")}
        packed: dict[tuple[str, int], list[tuple[int, Callable[[float], list[int]]]]] = {}
        for reg in registers:
            key = f"{device_id}/{reg.table}/{reg.address}" + (
                f".{reg.bit}" if reg.bit is not None else ""
            )
            if reg.table in BIT_TABLES:
                tables[reg.table].append(_Entry(reg.address, 1, _bit_fn(reg, seed, key)))
            elif reg.bit is not None:
                packed.setdefault((reg.table, reg.address), []).append(
                    (reg.bit, _bit_fn(reg, seed, key))
                )
            else:
                tables[reg.table].append(_Entry(reg.address, reg.width, _word_fn(reg, seed, key)))
        for (table, address), bits in packed.items():
            tables[table].append(_Entry(address, 1, _packed_bits_fn(bits)))
        for entries in tables.values():
            entries.sort(key=lambda e: e.start)
        self._tables = tables
        self._starts = {t: [e.start for e in entries] for t, entries in tables.items()}
        self._written: dict[str, dict[int, int]] = {t: {} for t in tables}
        self._on_write: dict[tuple[str, int], str | int] = {
            (reg.table, addr): reg.on_write
            for reg in registers
            if reg.on_write != "apply"
            for addr in range(reg.address, reg.address + reg.width)
        }

    def write_behaviour(self, spans: list[tuple[str, int, int]]) -> str | int | None:
        """What a write touching ``spans`` does, from the points' ``on_write``.

        Args:
            spans: (table, first address, last address) the request touches.

        Returns:
            An exception code (int) when any touched point answers one, else ``"unanswered"``
            when any touched point is unanswered, else None (apply and answer).
        """
        if not self._on_write:
            return None
        found: str | int | None = None
        for table, first, last in spans:
            for addr in range(first, last + 1):
                behaviour = self._on_write.get((table, addr))
                if isinstance(behaviour, int):
                    return behaviour
                if behaviour is not None:
                    found = behaviour
        return found

    def read(self, table: str, address: int, count: int, t: float) -> list[int]:
        """Values of ``count`` addresses from ``address`` at epoch time ``t``.

        Args:
            table: coil, discrete, holding or input.
            address: first address (0-based).
            count: number of addresses.
            t: epoch seconds the signals are evaluated at.

        Returns:
            Words (register tables) or 0/1 (bit tables); 0 where nothing is configured. A
            multi-register value cut by the request boundary is served partially.
        """
        out = [0] * count
        entries, starts = self._tables[table], self._starts[table]
        end = address + count
        i = bisect.bisect_right(starts, address) - 1
        if i < 0 or entries[i].start + entries[i].width <= address:
            i += 1
        while i < len(entries) and entries[i].start < end:
            e = entries[i]
            words = e.compute(t)
            for j, w in enumerate(words):
                pos = e.start + j - address
                if 0 <= pos < count:
                    out[pos] = w
            i += 1
        written = self._written[table]
        if written:
            if len(written) <= count:
                for addr, w in written.items():
                    if address <= addr < end:
                        out[addr - address] = w
            else:
                for addr in range(address, end):
                    if (value := written.get(addr)) is not None:
                        out[addr - address] = value
        return out

    def write(self, table: str, address: int, values: list[int]) -> None:
        """Override ``values`` from ``address`` (words, or 0/1 for coils).

        Args:
            table: holding or coil.
            address: first address.
            values: what was written.
        """
        for j, v in enumerate(values):
            self._written[table][address + j] = int(v)


class _Store:
    """The duck-typed datastore pymodbus PDUs call (``async_getValues``/``async_setValues``)."""

    def __init__(self, device: ModbusDevice) -> None:
        self._device = device

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        table = FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address + count > 65536:
            return ExcCodes.ILLEGAL_ADDRESS
        values = self._device.registers.read(table, address, count, self._device.now())
        if table in BIT_TABLES:
            return [bool(v) for v in values]
        return values

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        table = FC_TABLE.get(func_code)
        if table not in _WRITABLE:
            return ExcCodes.ILLEGAL_FUNCTION
        if address + len(values) > 65536:
            return ExcCodes.ILLEGAL_ADDRESS
        self._device.registers.write(table, address, [int(v) for v in values])
        return None


# ---------------------------------------------------------------------------------------------
# Request handling.


def request_spans(fc: int, frame: bytes) -> tuple[list[tuple[str, int, int]], int]:
    """Tables/addresses a request touches, parsed from the raw PDU, and the count it reads.

    Args:
        fc: function code.
        frame: the PDU (function code first).

    Returns:
        ``([(table, first, last), ...], addresses_read)``; empty for other function codes.
    """
    table = FC_TABLE.get(fc)
    if table is None or len(frame) < 5:
        return [], 0
    addr, qty = struct.unpack_from(">HH", frame, 1)
    if fc in (5, 6, 22):
        return [(table, addr, addr)], 0
    if fc == 23:
        if len(frame) < 9:
            return [], 0
        w_addr, w_qty = struct.unpack_from(">HH", frame, 5)
        spans = [(table, addr, addr + max(qty, 1) - 1), (table, w_addr, w_addr + max(w_qty, 1) - 1)]
        return spans, qty
    reads = qty if fc in (1, 2, 3, 4) else 0
    return [(table, addr, addr + max(qty, 1) - 1)], reads


def _exception_pdu(fc: int, code: int) -> bytes:
    return bytes([(fc | 0x80) & 0xFF, code & 0xFF])


def write_payload(fc: int, frame: bytes) -> list[int]:
    """The values a write request carries, parsed from its PDU (for the write log).

    Args:
        fc: function code (5, 6, 15, 16, 22 or 23).
        frame: the PDU (function code first).

    Returns:
        FC 5: ``[0 | 1]`` (0xFF00 = 1); FC 6: ``[word]``; FC 15: the bits; FC 16: the words;
        FC 22: ``[and_mask, or_mask]``; FC 23: the words written. Empty when malformed.
    """
    try:
        if fc == 5:
            return [1 if struct.unpack_from(">H", frame, 3)[0] == 0xFF00 else 0]
        if fc == 6:
            return [struct.unpack_from(">H", frame, 3)[0]]
        if fc == 22:
            return list(struct.unpack_from(">HH", frame, 3))
        if fc == 15:
            qty, nbytes = struct.unpack_from(">HB", frame, 3)
            data = frame[6 : 6 + nbytes]
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(min(qty, 8 * len(data)))]
        if fc in (16, 23):
            offset = 10 if fc == 23 else 6
            nbytes = frame[offset - 1]
            data = frame[offset : offset + nbytes]
            return [w for (w,) in struct.iter_unpack(">H", data[: len(data) // 2 * 2])]
    except (struct.error, IndexError):
        return []
    return []


@dataclass(slots=True)
class DeviceStats:
    """Request counters of one device (what it actually received).

    Attributes:
        connections: TCP connections accepted since start.
        open_connections: connections open now.
        requests: complete request frames received (answered or not).
        by_function: requests per function code (decimal string keys).
        registers_read: registers (or bits) requested by read function codes.
        exceptions: exception responses sent.
        unanswered: requests never answered (silent offline, or dropped from a full queue).
        peak_connections: most connections open at the same time.
        max_outstanding: most requests one connection had sent and not yet had answered at the
            same time (1 = the client never pipelined).
        refused_connections: connections closed at once because ``max_connections`` were open.
        writes: write requests received (FC 5, 6, 15, 16, 22, 23), whatever became of them.
        writes_applied: writes that changed the device's values (answered or not).
        writes_refused: writes answered with an exception (nothing applied).
        write_log: the last `WRITE_LOG_SIZE` writes: ``{"time", "fc", "unit", "address",
            "values", "result"}`` with result ``applied``, ``applied_unanswered``,
            ``exception_XX`` or ``unanswered`` (silent offline: not applied).
    """

    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    by_function: dict[str, int] = field(default_factory=dict)
    registers_read: int = 0
    exceptions: int = 0
    unanswered: int = 0
    peak_connections: int = 0
    max_outstanding: int = 0
    refused_connections: int = 0
    writes: int = 0
    writes_applied: int = 0
    writes_refused: int = 0
    write_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=WRITE_LOG_SIZE))


class _Connection(ServerRequestHandler):
    """One client connection: frames are queued and answered one at a time, in order."""

    def __init__(self, owner: _Listener) -> None:
        super().__init__(owner, None, None, None)  # type: ignore[no-untyped-call]
        self._device: ModbusDevice = owner.device
        self._queue: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue(_MAX_QUEUED)
        self._outstanding = 0  # requests received and not yet answered (or dropped)
        self._worker: asyncio.Task[None] | None = None
        self._open = False

    def callback_connected(self) -> None:
        super().callback_connected()
        stats = self._device.stats
        limit = self._device.cfg.max_connections
        if limit is not None and stats.open_connections >= limit:
            stats.refused_connections += 1
            log.debug("device %s: connection refused (%d open)", self._device.id, limit)
            self.close()
            return
        self._open = True
        stats.connections += 1
        stats.open_connections += 1
        stats.peak_connections = max(stats.peak_connections, stats.open_connections)
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        if self._open:
            self._open = False
            self._device.stats.open_connections -= 1
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        used = 0
        while len(data) - used >= 8:
            tid, pid, length, unit = struct.unpack_from(">HHHB", data, used)
            if pid != 0 or not 2 <= length <= 254:
                log.debug("device %s: garbage frame, closing connection", self._device.id)
                self.close()
                return len(data)
            end = used + 6 + length
            if end > len(data):
                break
            frame = bytes(data[used + 7 : end])
            used = end
            try:
                self._queue.put_nowait((tid, unit, frame))
                self._outstanding += 1
                stats = self._device.stats
                stats.max_outstanding = max(stats.max_outstanding, self._outstanding)
            except asyncio.QueueFull:
                self._device.count_request(frame)
                self._device.stats.unanswered += 1
        return used

    async def _serve(self) -> None:
        while True:
            tid, unit, frame = await self._queue.get()
            try:
                pdu = await self._device.respond(unit, frame)
            finally:
                self._outstanding -= 1
            transport = self.transport
            if pdu is None:
                continue
            if transport is None or transport.is_closing():
                continue
            cast(asyncio.WriteTransport, transport).write(
                struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
            )


class _Listener(ModbusTcpServer):
    """A pymodbus TCP server whose connections are :class:`_Connection` handlers."""

    def __init__(self, device: ModbusDevice, host: str, port: int) -> None:
        # The pymodbus datastore is never used: _Connection answers through ModbusDevice.
        super().__init__(_PymodbusSimDevice(0, simdata=SimData(0)), address=(host, port))
        self.device = device

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)

    def bound_port(self) -> int:
        """The TCP port actually bound (after ``listen``)."""
        server: Any = self.transport
        return int(server.sockets[0].getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The device.


class ModbusDevice:
    """A simulated device: its register map, its listener, active faults and counters.

    Args:
        cfg: the device configuration.
        seed: profile seed.
    """

    def __init__(self, cfg: DeviceConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.host = cfg.host
        self.port = cfg.port
        self.registers = RegisterMap(cfg.registers, seed, cfg.id)
        self.faults = ActiveFaults()
        self.stats = DeviceStats()
        self._units = frozenset(cfg.unit_ids)
        self._listener: _Listener | None = None
        self._store = _Store(self)
        self._decoder = DecodePDU(True)
        self._stopped = False

    # -- time ---------------------------------------------------------------------------------

    def now(self) -> float:
        """Epoch seconds the signals are evaluated at (held still while ``frozen``)."""
        frozen = self.faults.frozen_epoch()
        return time.time() if frozen is None else frozen

    # -- listener -----------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while the TCP listener is open."""
        return self._listener is not None

    async def start(self) -> None:
        """Open the listener (port 0 picks a free port, kept for later re-opens).

        Raises:
            OSError: the address cannot be bound.
        """
        listener = _Listener(self, self.host, self.port)
        if not await listener.listen():
            raise OSError(f"device {self.id}: cannot listen on {self.host}:{self.port}")
        self.port = listener.bound_port()
        self._listener = listener
        log.info(
            "device %s listening on %s:%d (unit ids %s, %d points)",
            self.id,
            self.host,
            self.port,
            ",".join(str(u) for u in self.cfg.unit_ids),
            len(self.cfg.registers),
        )

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()  # closes the listening socket and every open connection
            self._listener = None

    async def _reopen(self) -> None:
        """Listen again on the same port, retrying every 0.1 s while the port is busy."""
        warned = False
        while not self._stopped and self._listener is None:
            listener = _Listener(self, self.host, self.port)
            if await listener.listen():
                self._listener = listener
                return
            if not warned:
                log.warning("device %s: port %d busy, retrying", self.id, self.port)
                warned = True
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Close the listener and all connections for good."""
        self._stopped = True
        self._close_listener()

    # -- faults -------------------------------------------------------------------------------

    async def begin_fault(self, index: int, fault: Fault) -> None:
        """Apply fault ``index`` (its position in the device's fault list).

        Args:
            index: fault index.
            fault: its configuration.
        """
        frozen_epoch = time.time()
        if isinstance(fault, OfflineFault) and fault.mode == "close":
            self._close_listener()
        # The truth start is the instant the fault took effect (after closing the socket).
        self.faults.active[index] = ActiveFault(fault, utc_now(), frozen_epoch=frozen_epoch)
        log.info("device %s: fault %s begins (%s)", self.id, fault.kind, _describe(fault))

    async def end_fault(self, index: int) -> ActiveFault | None:
        """Remove fault ``index``; re-open the listener when no close-offline remains.

        Args:
            index: fault index.

        Returns:
            The occurrence that ended (None if it was not active).
        """
        active = self.faults.active.pop(index, None)
        if active is None:
            return None
        if self.faults.offline_mode() != "close" and self._listener is None and not self._stopped:
            await self._reopen()
        log.info("device %s: fault %s ends", self.id, active.fault.kind)
        return active

    # -- requests -----------------------------------------------------------------------------

    def count_request(self, frame: bytes) -> int:
        """Count one received request frame in the stats.

        Args:
            frame: the PDU.

        Returns:
            Its function code (0 for an empty PDU).
        """
        fc = frame[0] if frame else 0
        self.stats.requests += 1
        key = str(fc)
        self.stats.by_function[key] = self.stats.by_function.get(key, 0) + 1
        return fc

    async def respond(self, unit: int, frame: bytes) -> bytes | None:
        """Answer one request PDU.

        Args:
            unit: the unit id of the request.
            frame: the request PDU (function code first).

        Returns:
            The response PDU, or None when the device does not answer (silent offline).
        """
        fc = self.count_request(frame)
        spans, reads = request_spans(fc, frame)
        self.stats.registers_read += reads
        is_write = fc in WRITE_FUNCTION_CODES
        if is_write:
            self.stats.writes += 1
        delay = self.faults.delay()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.faults.offline_mode() is not None:
            self.stats.unanswered += 1
            if is_write:
                self._log_write(fc, unit, frame, "unanswered")
            return None
        behaviour = self.registers.write_behaviour(spans) if is_write else None
        response = await self._answer(unit, fc, frame, spans, behaviour)
        refused = bool(response[0] & 0x80)
        if refused:
            self.stats.exceptions += 1
        if not is_write:
            return response
        if refused:
            self.stats.writes_refused += 1
            self._log_write(fc, unit, frame, f"exception_{response[1]:02X}")
            return response
        self.stats.writes_applied += 1
        if behaviour == "unanswered":
            self.stats.unanswered += 1
            self._log_write(fc, unit, frame, "applied_unanswered")
            return None
        self._log_write(fc, unit, frame, "applied")
        return response

    def _log_write(self, fc: int, unit: int, frame: bytes, result: str) -> None:
        address = struct.unpack_from(">H", frame, 1)[0] if len(frame) >= 3 else None
        self.stats.write_log.append(
            {
                "time": time.time(),
                "fc": fc,
                "unit": unit,
                "address": address,
                "values": write_payload(fc, frame),
                "result": result,
            }
        )

    async def _answer(
        self,
        unit: int,
        fc: int,
        frame: bytes,
        spans: list[tuple[str, int, int]],
        behaviour: str | int | None = None,
    ) -> bytes:
        if unit not in self._units:
            return _exception_pdu(fc, ExcCodes.GATEWAY_NO_RESPONSE)
        if fc not in FC_TABLE and fc not in _PASS_THROUGH_FC:
            return _exception_pdu(fc, ExcCodes.ILLEGAL_FUNCTION)
        code = self.faults.exception_code(spans)
        if code is not None:
            return _exception_pdu(fc, code)
        if isinstance(behaviour, int):
            return _exception_pdu(fc, behaviour)
        pdu = self._decoder.decode(frame)
        if pdu is None:  # known function code, malformed or out-of-range quantity
            return _exception_pdu(fc, ExcCodes.ILLEGAL_VALUE)
        try:
            response = await pdu.datastore_update(cast(ModbusServerContext, self._store), unit)
            return bytes([response.function_code]) + response.encode()
        except Exception:  # a PDU pymodbus cannot serve: device failure, like pymodbus does
            log.debug("device %s: fc %d failed", self.id, fc, exc_info=True)
            return _exception_pdu(fc, ExcCodes.DEVICE_FAILURE)

    def stats_snapshot(self) -> dict[str, Any]:
        """The counters as a JSON object (with host and the actual port)."""
        s = self.stats
        return {
            "host": self.host,
            "port": self.port,
            "listening": self.listening,
            "connections": s.connections,
            "open_connections": s.open_connections,
            "requests": s.requests,
            "by_function": dict(sorted(s.by_function.items(), key=lambda kv: int(kv[0]))),
            "registers_read": s.registers_read,
            "exceptions": s.exceptions,
            "unanswered": s.unanswered,
            "peak_connections": s.peak_connections,
            "max_outstanding": s.max_outstanding,
            "refused_connections": s.refused_connections,
            "writes": s.writes,
            "writes_applied": s.writes_applied,
            "writes_refused": s.writes_refused,
            "write_log": list(s.write_log),
            "active_faults": sorted(a.fault.kind for a in self.faults.active.values()),
        }


def _describe(fault: Fault) -> str:
    data = fault.model_dump(by_alias=True, exclude={"kind"}, exclude_none=True)
    return ", ".join(f"{k}={v}" for k, v in data.items())


def suppress_pymodbus_logs() -> None:
    """Keep pymodbus' own log lines (connection chatter) out of the simulator's stderr."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with contextlib.suppress(Exception):
        logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)
