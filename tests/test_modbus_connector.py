"""ModbusConnector against real Modbus TCP servers on loopback (pymodbus server, raw asyncio).

No mocks: the pymodbus server runs a custom datastore (`Store`) that counts requests and can
answer exceptions or respond slowly; `RawServer` speaks Modbus TCP byte by byte to produce
late, mismatched and garbage responses. Every wait is bounded by a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from connectors.base import ConnectError, LinkLost
from connectors.modbus.codec import encode
from connectors.modbus.config import ByteOrder, DataType, ModbusAddress, ModbusDeviceConfig
from connectors.modbus.connector import ModbusConnector
from connectors.modbus.plan import ModbusPoint
from connectors.registry import create_connector, protocols
from gateway.model import Sample
from gateway.quality import Q

DEADLINE = 10.0  # generous bound of every wait [s]


# -- servers -------------------------------------------------------------------------------


class Store(ModbusServerContext):
    """Datastore for the pymodbus server: sparse tables, request log, scripted exceptions."""

    def __init__(
        self,
        holding: dict[int, int] | None = None,
        inputs: dict[int, int] | None = None,
        coils: dict[int, bool] | None = None,
        discretes: dict[int, bool] | None = None,
    ) -> None:
        # The base __init__ builds the deprecated SimDevice path; this store answers directly.
        self._devices = {}
        self.simdevices = []
        self.old_simulator = True
        self.tables: dict[int, dict[int, int] | dict[int, bool]] = {
            1: coils or {},
            2: discretes or {},
            3: holding or {},
            4: inputs or {},
        }
        self.requests: list[tuple[int, int, int, int]] = []  # (unit, fc, address, count)
        self.answered: list[int] = []  # exception codes answered
        self.script: list[ExcCodes] = []  # next answers, before the tables
        self.unit_errors: dict[int, ExcCodes] = {}
        self.latency = 0.0

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.requests.append((device_id, func_code, address, count))
        if self.latency:
            await asyncio.sleep(self.latency)
        code = self.script.pop(0) if self.script else self.unit_errors.get(device_id)
        if code is None:
            table = self.tables[func_code]
            if all(a in table for a in range(address, address + count)):
                return [table[a] for a in range(address, address + count)]  # type: ignore[return-value]
            code = ExcCodes.ILLEGAL_ADDRESS
        self.answered.append(int(code))
        return code

    def device_ids(self) -> list[int]:
        return [0]


@contextlib.asynccontextmanager
async def pymodbus_server(store: Store) -> AsyncIterator[ModbusTcpServer]:
    server = ModbusTcpServer(store, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()


def port_of(server: ModbusTcpServer) -> int:
    return int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


@dataclass
class Req:
    seq: int
    tid: int
    unit: int
    fc: int
    address: int
    count: int


def register_frame(tid: int, unit: int, fc: int, values: Sequence[int]) -> bytes:
    body = struct.pack(">BB", fc, 2 * len(values)) + struct.pack(f">{len(values)}H", *values)
    return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


Action = tuple[float, bytes | None]  # (delay [s], frame to send, or None to close)


@dataclass
class RawServer:
    """Byte-level Modbus TCP server; ``behaviour(req)`` returns the actions for each request."""

    behaviour: Callable[[Req], list[Action]]
    seq: int = 0
    port: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                fc, address, count = struct.unpack(">BHH", pdu[:5])
                self.seq += 1
                req = Req(self.seq, tid, unit, fc, address, count)
                task = asyncio.create_task(self._reply(writer, self.behaviour(req)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, actions: list[Action]) -> None:
        for delay, frame in actions:
            if delay:
                await asyncio.sleep(delay)
            if writer.is_closing():
                return
            if frame is None:
                writer.close()
                return
            writer.write(frame)


# -- helpers -------------------------------------------------------------------------------


def device(port: int, **kw: object) -> ModbusDeviceConfig:
    return ModbusDeviceConfig.model_validate(
        {"id": "plc1", "host": "127.0.0.1", "port": port, "timeout": 1.0, **kw}
    )


def mk_point(key: str, interval: float = 0.05, **addr: object) -> ModbusPoint:
    spec: dict[str, object] = {"register": "holding", **addr}
    return ModbusPoint(key, ModbusAddress.model_validate(spec), interval)


async def take(connector: ModbusConnector, n: int) -> list[list[Sample]]:
    batches: list[list[Sample]] = []
    async with asyncio.timeout(DEADLINE):
        async for batch in connector.samples():
            batches.append(batch)
            if len(batches) >= n:
                break
    return batches


async def drain(iterator: AsyncIterator[list[Sample]]) -> None:
    async for _ in iterator:
        pass


def by_key(batch: list[Sample]) -> dict[str, Sample]:
    return {s.point_id: s for s in batch}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- values --------------------------------------------------------------------------------

VALUES: dict[DataType, object] = {
    DataType.INT16: -1234,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_000,
    DataType.INT64: -(2**40) - 5,
    DataType.UINT64: 2**63 + 7,
    DataType.FLOAT32: struct.unpack(">f", struct.pack(">f", 123.456))[0],
    DataType.FLOAT64: -9876.54321,
    DataType.STRING: "PUMP-7",
    DataType.BOOL: True,
}


async def test_every_type_and_byte_order_decodes() -> None:
    holding: dict[int, int] = {}
    points: list[ModbusPoint] = []
    expected: dict[str, object] = {}
    address = 0
    for dtype, value in VALUES.items():
        for order in ByteOrder:
            spec: dict[str, object] = {"address": address, "type": dtype, "byte_order": order}
            if dtype is DataType.STRING:
                spec["length"] = 4
            if dtype is DataType.BOOL:
                spec["bit"] = 9
            addr = ModbusAddress.model_validate({"register": "holding", **spec})
            for i, word in enumerate(encode(value, addr)):  # type: ignore[arg-type]
                holding[address + i] = word
            key = f"s/a/{dtype.value}-{order.value}"
            points.append(ModbusPoint(key, addr, 0.05))
            expected[key] = value
            address += addr.width
    holding[address] = 0x42F6  # literal vector: float32 123.456, ABCD
    holding[address + 1] = 0xE979
    points.append(mk_point("s/a/literal", address=address, type="float32"))
    expected["s/a/literal"] = VALUES[DataType.FLOAT32]
    coils = {3: True, 4: False}
    discretes = {7: True}
    points += [
        mk_point("s/a/coil3", register="coil", address=3, type="bool"),
        mk_point("s/a/coil4", register="coil", address=4, type="bool"),
        mk_point("s/a/di7", register="discrete", address=7, type="bool"),
    ]
    expected |= {"s/a/coil3": True, "s/a/coil4": False, "s/a/di7": True}
    store = Store(holding=holding, coils=coils, discretes=discretes)
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            (batch,) = await take(conn, 1)
    got = by_key(batch)
    assert set(got) == set(expected)
    for key, value in expected.items():
        sample = got[key]
        assert sample.quality == Q.GOOD, key
        assert sample.value == value, key
        assert sample.source_time is not None
        assert sample.source_time.tzinfo is not None
    assert conn.stats.errors == {}


async def test_coalescing_reduces_requests() -> None:
    holding = {a: a for a in range(40)}
    coils = {a: bool(a % 2) for a in range(16)}
    points = [mk_point(f"s/a/hr{a}", address=a) for a in range(0, 40, 2)]  # every 2nd register
    points += [mk_point(f"s/a/co{a}", register="coil", address=a, type="bool") for a in range(16)]
    store = Store(holding=holding, coils=coils)
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server), max_gap=1), points)
        async with conn:
            batches = await take(conn, 3)
    assert [len(b) for b in batches] == [36, 36, 36]
    assert len(store.requests) == 6  # 2 requests per cycle for 36 points
    assert sorted(set(store.requests)) == [(1, 1, 0, 16), (1, 3, 0, 39)]
    assert conn.stats.requests == 6
    assert conn.stats.polls == 3
    assert all(s.quality == Q.GOOD for b in batches for s in b)
    assert by_key(batches[-1])["s/a/hr38"].value == 38


async def test_exception_02_bisects_once_and_keeps_outside_good() -> None:
    n = 16
    holding = {a: 100 + a for a in range(n) if a not in (6, 7)}
    points = [mk_point(f"s/a/p{a:02d}", address=a) for a in range(n)]
    store = Store(holding=holding)
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            (first,) = await take(conn, 1)
            first_cycle = list(store.requests)
            later = await take(conn, 2)
    for batch in [first, *later]:
        got = by_key(batch)
        assert len(got) == n
        for a in range(n):
            sample = got[f"s/a/p{a:02d}"]
            if a in (6, 7):
                assert (sample.value, sample.quality) == (None, Q.BAD_OUT_OF_RANGE)
            else:
                assert (sample.value, sample.quality) == (100 + a, Q.GOOD)
    cached = store.requests[len(first_cycle) :]
    per_cycle = len(cached) // 2
    assert cached[:per_cycle] == cached[per_cycle:]  # the split is cached
    assert all(addr + count <= 6 or addr >= 8 for _, _, addr, count in cached)  # bad not probed
    extra = len(first_cycle) - 1  # bisect requests after the original one
    assert extra <= 2 * math.ceil(math.log2(n))
    assert conn.stats.errors == {"exception_02": store.answered.count(2)}
    assert conn.stats.requests == len(store.requests)


async def test_exception_02_single_point_request() -> None:
    store = Store(holding={0: 1})
    points = [mk_point("s/a/ok", address=0), mk_point("s/a/missing", address=50)]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            batches = await take(conn, 3)
    for batch in batches:
        got = by_key(batch)
        assert got["s/a/ok"].quality == Q.GOOD
        assert got["s/a/missing"].quality == Q.BAD_OUT_OF_RANGE
    assert len(store.requests) == 4  # 2 in cycle 1, then only the good one


async def test_busy_twice_then_ok_gives_no_bad_sample() -> None:
    store = Store(holding={0: 7, 1: 8})
    store.script = [ExcCodes.DEVICE_BUSY, ExcCodes.DEVICE_BUSY]
    points = [mk_point("s/a/x", address=0), mk_point("s/a/y", address=1)]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            batches = await take(conn, 2)
    assert all(s.quality == Q.GOOD for b in batches for s in b)
    assert by_key(batches[0])["s/a/y"].value == 8
    assert conn.stats.errors == {"exception_06": 2}
    assert conn.stats.requests == 4


async def test_other_exceptions_are_device_failure_per_unit() -> None:
    store = Store(holding={0: 5})
    store.unit_errors = {2: ExcCodes.GATEWAY_NO_RESPONSE}
    store.script = [ExcCodes.DEVICE_FAILURE]
    points = [mk_point("s/u1/x", address=0), mk_point("s/u2/x", address=0, unit_id=2)]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            first, second = await take(conn, 2)
    assert by_key(first)["s/u1/x"].quality == Q.BAD_DEVICE_FAILURE  # scripted 04
    assert by_key(second)["s/u1/x"].quality == Q.GOOD
    for batch in (first, second):
        assert by_key(batch)["s/u2/x"].quality == Q.BAD_DEVICE_FAILURE
    assert conn.stats.errors == {"exception_04": 1, "exception_0B": 2}


async def test_rejected_point_is_configuration_error() -> None:
    store = Store(holding={0: 1})
    points = [
        mk_point("s/a/ok", address=0),
        mk_point("s/a/long", address=10, type="string", length=20),
    ]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server), max_registers=10), points)
        async with conn:
            (batch,) = await take(conn, 1)
    assert by_key(batch)["s/a/long"].quality == Q.BAD_CONFIGURATION_ERROR
    assert by_key(batch)["s/a/ok"].quality == Q.GOOD


async def test_overruns_are_counted_not_queued() -> None:
    store = Store(holding={0: 1})
    store.latency = 0.15  # slower than the 0.1 s poll interval
    points = [mk_point("s/a/x", interval=0.1, address=0)]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            batches = await take(conn, 5)
    assert all(s.quality == Q.GOOD for b in batches for s in b)
    assert conn.stats.polls == 5
    assert conn.stats.overruns >= 4  # every poll misses the tick after it
    assert len(store.requests) == 5  # one request per cycle: nothing queued
    assert conn.stats.last_latency_s is not None
    assert conn.stats.last_latency_s >= 0.1


async def test_multiple_poll_groups_in_one_iterator() -> None:
    store = Store(holding={0: 1, 1: 2})
    points = [
        mk_point("s/a/fast", interval=0.05, address=0),
        mk_point("s/a/slow", interval=0.2, address=1),
    ]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            batches = await take(conn, 12)
    kinds = [tuple(s.point_id for s in b) for b in batches]
    assert set(kinds) == {("s/a/fast",), ("s/a/slow",)}
    assert kinds.count(("s/a/fast",)) > kinds.count(("s/a/slow",))


async def test_server_killed_raises_link_lost() -> None:
    store = Store(holding={0: 1})
    points = [mk_point("s/a/x", interval=0.05, address=0)]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points)
        async with conn:
            iterator = conn.samples()
            async with asyncio.timeout(DEADLINE):
                assert (await anext(iterator))[0].quality == Q.GOOD
                await server.shutdown()
                with pytest.raises(LinkLost):
                    await drain(iterator)


async def test_connect_to_closed_port_raises_connect_error() -> None:
    conn = ModbusConnector(device(free_port()), [mk_point("s/a/x", address=0)])
    async with asyncio.timeout(DEADLINE):
        with pytest.raises(ConnectError):
            async with conn:
                pass


async def test_samples_without_connection_raises_link_lost() -> None:
    conn = ModbusConnector(device(free_port()), [mk_point("s/a/x", address=0)])
    with pytest.raises(LinkLost):
        await anext(conn.samples())


# -- wire-level misbehaviour (RawServer) --------------------------------------------------


def answer(values: Callable[[Req], list[int]]) -> Callable[[Req], list[Action]]:
    return lambda r: [(0.0, register_frame(r.tid, r.unit, r.fc, values(r)))]


async def test_timeouts_then_half_open_link_lost() -> None:
    async with RawServer(lambda r: []) as raw:  # never answers
        conn = ModbusConnector(
            device(raw.port, timeout=0.1, retries=1), [mk_point("s/a/x", interval=0.2, address=0)]
        )
        async with conn:
            iterator = conn.samples()
            async with asyncio.timeout(DEADLINE):
                (sample,) = await anext(iterator)
                assert (sample.value, sample.quality) == (None, Q.BAD_TIMEOUT)
                with pytest.raises(LinkLost, match="half-open"):
                    await anext(iterator)
    assert conn.stats.errors == {"timeout": 4}  # 2 cycles x (1 + 1 retry)
    assert raw.seq == 4


async def test_silent_unit_is_skipped_and_other_units_polled() -> None:
    def behaviour(r: Req) -> list[Action]:
        if r.unit == 1:
            return []  # unit 1 behind the gateway never answers
        return [(0.0, register_frame(r.tid, r.unit, r.fc, [r.unit] * r.count))]

    points = [
        mk_point("s/u1/a", interval=0.3, address=0),
        mk_point("s/u1/b", interval=0.3, address=50),
        mk_point("s/u2/a", interval=0.3, address=0, unit_id=2),
    ]
    async with RawServer(behaviour) as raw:
        conn = ModbusConnector(device(raw.port, timeout=0.1), points)
        async with conn:
            batches = await take(conn, 3)  # no LinkLost: unit 2 answers
    for batch in batches:
        got = by_key(batch)
        assert got["s/u1/a"].quality == Q.BAD_TIMEOUT
        assert got["s/u1/b"].quality == Q.BAD_TIMEOUT
        assert (got["s/u2/a"].value, got["s/u2/a"].quality) == (2, Q.GOOD)
    assert conn.stats.errors == {"timeout": 3, "timeout_skipped": 3}
    assert raw.seq == 6  # per cycle: one unit-1 request (the second is skipped) + unit 2


async def test_out_of_range_run_is_reprobed_and_recovers() -> None:
    holding = {a: a for a in range(8) if a not in (3, 4)}
    store = Store(holding=holding)
    points = [mk_point(f"s/a/p{a}", address=a) for a in range(8)]
    async with pymodbus_server(store) as server:
        conn = ModbusConnector(device(port_of(server)), points, reprobe_interval=0.2)
        async with conn:
            (first,) = await take(conn, 1)
            assert by_key(first)["s/a/p3"].quality == Q.BAD_OUT_OF_RANGE
            store.tables[3] |= {3: 33, 4: 44}
            recovered = False
            async with asyncio.timeout(DEADLINE):
                async for batch in conn.samples():
                    got = by_key(batch)
                    assert got["s/a/p0"].quality == Q.GOOD
                    if got["s/a/p3"].quality == Q.GOOD:
                        recovered = (got["s/a/p3"].value, got["s/a/p4"].value) == (33, 44)
                        break
    assert recovered


async def test_late_response_is_never_matched_to_a_newer_request() -> None:
    delays = {1: 0.7, 2: 0.3}  # answer 1 arrives while request 2 waits for its own answer

    def behaviour(r: Req) -> list[Action]:
        return [(delays.get(r.seq, 0.0), register_frame(r.tid, r.unit, r.fc, [r.seq] * r.count))]

    async with RawServer(behaviour) as raw:
        conn = ModbusConnector(
            device(raw.port, timeout=0.4), [mk_point("s/a/x", interval=0.5, address=0)]
        )
        async with conn:
            batches = await take(conn, 4)
    values = [(b[0].value, b[0].quality) for b in batches]
    assert values[0] == (None, Q.BAD_TIMEOUT)
    assert values[1:] == [(2, Q.GOOD), (3, Q.GOOD), (4, Q.GOOD)]


async def test_connection_closed_mid_request_fails_fast() -> None:
    async with RawServer(lambda r: [(0.05, None)]) as raw:  # closes instead of answering
        conn = ModbusConnector(device(raw.port, timeout=30.0), [mk_point("s/a/x", address=0)])
        async with conn:
            with pytest.raises(LinkLost):
                await take(conn, 1)  # DEADLINE (10 s) is far below the 30 s timeout


def _bad(kind: str) -> Callable[[Req], list[Action]]:
    def behaviour(r: Req) -> list[Action]:
        good = register_frame(r.tid, r.unit, r.fc, [r.seq] * r.count)
        frames = {
            "tid_zero": register_frame(0, r.unit, r.fc, [999] * r.count),
            "wrong_fc": register_frame(r.tid, r.unit, 4, [999] * r.count),
            "wrong_unit": register_frame(r.tid, r.unit + 1, r.fc, [999] * r.count),
            "wrong_tid": register_frame(r.tid + 1, r.unit, r.fc, [999] * r.count),
            "short": register_frame(r.tid, r.unit, r.fc, [999] * (r.count - 1)),
            "long": register_frame(r.tid, r.unit, r.fc, [999] * (r.count + 1)),
            "truncated_mbap": good[:5],
            "garbage": bytes(range(0xF0, 0x100)),
            "bad_pdu": struct.pack(">HHHB", r.tid, 0, 4, r.unit) + bytes([r.fc, 200, 1]),
        }
        return [(0.0, frames[kind])]

    return behaviour


@pytest.mark.parametrize(
    "kind",
    [
        "tid_zero",
        "wrong_fc",
        "wrong_unit",
        "wrong_tid",
        "short",
        "long",
        "truncated_mbap",
        "garbage",
        "bad_pdu",
    ],
)
async def test_mismatched_response_never_stores_a_value(kind: str) -> None:
    async with RawServer(_bad(kind)) as raw:
        conn = ModbusConnector(
            device(raw.port, timeout=0.1),
            [mk_point("s/a/x", interval=0.15, address=0, type="uint32")],
        )
        batches: list[list[Sample]] = []
        async with conn:
            with contextlib.suppress(LinkLost):
                async with asyncio.timeout(DEADLINE):
                    async for batch in conn.samples():
                        batches.append(batch)
    # every answer is wrong: no Good value, and the link is declared lost (desync or half-open)
    assert all(s.quality != Q.GOOD and s.value is None for b in batches for s in b)
    assert len(batches) <= 2


async def test_point_sources_and_registry() -> None:
    points = [
        mk_point("s/a/hr", address=40),
        mk_point("s/a/co", register="coil", address=3, type="bool", unit_id=9),
        mk_point("s/a/ir", register="input", address=0),
        mk_point("s/a/di", register="discrete", address=1, type="bool"),
    ]
    conn = create_connector(device(1502), points)
    assert isinstance(conn, ModbusConnector)
    assert conn.device_id == "plc1"
    assert conn.point_sources() == {
        "s/a/hr": "modbus://127.0.0.1:1502/1/hr/40",
        "s/a/co": "modbus://127.0.0.1:1502/9/co/3",
        "s/a/ir": "modbus://127.0.0.1:1502/1/ir/0",
        "s/a/di": "modbus://127.0.0.1:1502/1/di/1",
    }
    assert protocols() == ["modbus", "mqtt", "opcua"]


async def test_reentry_after_link_lost_keeps_polling() -> None:
    store = Store(holding={0: 11})
    points = [mk_point("s/a/x", address=0)]
    async with pymodbus_server(store) as server:
        port = port_of(server)
        conn = ModbusConnector(device(port), points)
        async with conn:
            await take(conn, 1)
    store2 = Store(holding={0: 12})
    server2 = ModbusTcpServer(store2, address=("127.0.0.1", port))
    await server2.serve_forever(background=True)
    try:
        async with conn:
            (batch,) = await take(conn, 1)
        assert batch[0].value == 12
    finally:
        await server2.shutdown()
