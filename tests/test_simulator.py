"""The Modbus simulator, as a real subprocess, read by real clients (pymodbus, mbpoll, raw TCP).

Expected values are decoded here with ``struct``, independently of ``simulator.encoding``.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import socket
import struct
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tests.sim_helpers import SimProcess, run_simulator_once, start_simulator, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# Helpers (independent decoding and raw Modbus TCP).


def wire_bytes(words: list[int], order: str) -> bytes:
    """Registers → the value's big-endian bytes, undoing ``order``."""
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if order == "ABCD":
        return raw
    if order == "DCBA":
        return raw[::-1]
    if order == "BADC":
        return b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    if order == "CDAB":
        return b"".join(raw[i : i + 2] for i in reversed(range(0, len(raw), 2)))
    raise AssertionError(order)


def parse_ts(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def started_epoch(sim: SimProcess) -> float:
    return parse_ts(sim.ready["started"]).timestamp()


async def sleep_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def mbap_read(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, address, count)


def recv_response(sock: socket.socket) -> tuple[int, int, bytes]:
    """One Modbus TCP response → (transaction id, unit, PDU)."""
    header = _recv_exact(sock, 7)
    tid, _pid, length, unit = struct.unpack(">HHHB", header)
    return tid, unit, _recv_exact(sock, length - 1)


def exchange(sock: socket.socket, frame: bytes) -> tuple[int, int, bytes]:
    sock.sendall(frame)
    return recv_response(sock)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by peer")
        buf += chunk
    return buf


def pdu_registers(pdu: bytes) -> list[int]:
    assert pdu[0] < 0x80, f"exception {pdu.hex()}"
    return [int.from_bytes(pdu[2 + 2 * i : 4 + 2 * i], "big") for i in range(pdu[1] // 2)]


def connect_refused(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


async def client_for(port: int, wait: float = 2.0) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient(HOST, port=port, timeout=wait, retries=0, reconnect_delay=0)
    assert await client.connect(), f"cannot connect to {port}"
    return client


async def read_regs(client: AsyncModbusTcpClient, table: str, address: int, count: int) -> Any:
    fn = client.read_holding_registers if table == "holding" else client.read_input_registers
    return await fn(address, count=count, device_id=1)


def reg(table: str, address: int, dtype: str | None, signal: dict[str, Any], **extra: Any) -> dict:
    out: dict[str, Any] = {"table": table, "address": address, "signal": signal}
    if dtype is not None:
        out["type"] = dtype
    out.update(extra)
    return out


def const(value: Any) -> dict[str, Any]:
    return {"kind": "constant", "value": value}


def device(registers: list[dict], faults: list[dict] | None = None, dev_id: str = "plc-1") -> dict:
    return {
        "id": dev_id,
        "host": HOST,
        "port": 0,
        "unit_ids": [1],
        "registers": registers,
        "faults": faults or [],
    }


# ---------------------------------------------------------------------------------------------
# Types and byte orders.

NUMERIC_CASES: list[tuple[str, str, Any, str]] = []
for _order in ("ABCD", "DCBA", "BADC", "CDAB"):
    NUMERIC_CASES += [
        ("int32", _order, -123456789, ">i"),
        ("uint32", _order, 4_000_000_000, ">I"),
        ("int64", _order, -1_234_567_890_123_456, ">q"),
        ("uint64", _order, 18_000_000_000_000_000_000, ">Q"),
        ("float32", _order, -1234.5, ">f"),
        ("float64", _order, math.pi, ">d"),
    ]
for _order in ("ABCD", "BADC"):
    NUMERIC_CASES += [("int16", _order, -1234, ">h"), ("uint16", _order, 54321, ">H")]

WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
WIDTH |= {"int64": 4, "uint64": 4, "float64": 4}

# Hand-written wire images (golden), to pin the byte-order convention itself.
GOLDEN: list[tuple[str, str, Any, list[int]]] = [
    ("uint32", "ABCD", 0x11223344, [0x1122, 0x3344]),
    ("uint32", "DCBA", 0x11223344, [0x4433, 0x2211]),
    ("uint32", "BADC", 0x11223344, [0x2211, 0x4433]),
    ("uint32", "CDAB", 0x11223344, [0x3344, 0x1122]),
    ("uint64", "ABCD", 0x1122334455667788, [0x1122, 0x3344, 0x5566, 0x7788]),
    ("uint64", "DCBA", 0x1122334455667788, [0x8877, 0x6655, 0x4433, 0x2211]),
    ("uint64", "BADC", 0x1122334455667788, [0x2211, 0x4433, 0x6655, 0x8877]),
    ("uint64", "CDAB", 0x1122334455667788, [0x7788, 0x5566, 0x3344, 0x1122]),
    ("float32", "ABCD", 1.0, [0x3F80, 0x0000]),
    ("float32", "CDAB", 1.0, [0x0000, 0x3F80]),
    ("uint16", "BADC", 0x1234, [0x3412]),
]


NumericCase = tuple[int, str, str, Any, str]


def types_profile() -> tuple[dict, list[NumericCase], list[tuple[int, list[int]]]]:
    registers: list[dict] = []
    numeric: list[NumericCase] = []
    golden: list[tuple[int, list[int]]] = []
    addr = 0
    for dtype, order, value, fmt in NUMERIC_CASES:
        registers.append(reg("holding", addr, dtype, const(value), byte_order=order))
        numeric.append((addr, dtype, order, value, fmt))
        addr += WIDTH[dtype]
    addr = 500
    for dtype, order, value, words in GOLDEN:
        registers.append(reg("holding", addr, dtype, const(value), byte_order=order))
        golden.append((addr, words))
        addr += WIDTH[dtype]
    registers += [
        # scale: raw = round(value * scale)
        reg("holding", 700, "int16", const(12.34), scale=10),
        reg("holding", 701, "uint16", const(655.35), scale=100),
        reg("holding", 702, "int32", const(-1.5), scale=1000),
        reg("holding", 704, "float32", const(1.25), scale=2),
        # strings: 2 ASCII chars per register, big-endian, NUL padded / cut
        reg("holding", 800, "string", const("PUMP-7"), length=4),
        reg("holding", 804, "string", const("ABCDEFGH"), length=2),
        # bits of a register, several points sharing one register
        reg("holding", 900, "bool", const(1), bit=0),
        reg("holding", 900, "bool", const(1), bit=3),
        reg("holding", 900, "bool", const(0), bit=7),
        reg("holding", 900, "bool", const(True), bit=15),
        reg("input", 900, "bool", const(1), bit=1),
        # input table
        reg("input", 0, "uint32", const(0x11223344)),
        reg("input", 10, "string", const("FW-1.2"), length=3),
        # bit tables
        reg("coil", 0, None, const(1)),
        reg("coil", 1, None, const(0)),
        reg("coil", 2, None, const(True)),
        reg("coil", 3, None, {"kind": "step", "values": [1], "every": 5}),
        reg("coil", 10, "bool", const(1)),
        reg("discrete", 0, None, const(1)),
        reg("discrete", 1, None, const(False)),
        reg("discrete", 7, None, const(1)),
    ]
    return {"seed": 1, "devices": [device(registers)]}, numeric, golden


async def test_every_type_and_byte_order_reads_back(tmp_path: Path) -> None:
    profile, numeric, golden = types_profile()
    with start_simulator(profile, tmp_path) as sim:
        client = await client_for(sim.ports["plc-1"])
        try:
            rr = await read_regs(client, "holding", 0, 120)
            assert not rr.isError()
            words = rr.registers
            for addr, dtype, order, value, fmt in numeric:
                raw = wire_bytes(words[addr : addr + WIDTH[dtype]], order)
                (got,) = struct.unpack(fmt, raw)
                if dtype == "float32":
                    assert got == pytest.approx(value, rel=1e-7), (dtype, order)
                else:
                    assert got == value, (dtype, order, addr)

            for addr, expected in golden:
                rr = await read_regs(client, "holding", addr, len(expected))
                assert rr.registers == expected, (addr, [hex(w) for w in rr.registers])

            rr = await read_regs(client, "holding", 700, 6)
            w = rr.registers
            assert struct.unpack(">h", w[0].to_bytes(2, "big"))[0] == 123
            assert w[1] == 65535
            assert struct.unpack(">i", wire_bytes(w[2:4], "ABCD"))[0] == -1500
            assert struct.unpack(">f", wire_bytes(w[4:6], "ABCD"))[0] == 2.5

            rr = await read_regs(client, "holding", 800, 6)
            assert wire_bytes(rr.registers[:4], "ABCD") == b"PUMP-7\x00\x00"
            assert wire_bytes(rr.registers[4:6], "ABCD") == b"ABCD"

            rr = await read_regs(client, "holding", 899, 3)
            assert rr.registers == [0, 0x8009, 0]
            rr = await read_regs(client, "input", 900, 1)
            assert rr.registers == [0x0002]

            rr = await read_regs(client, "input", 0, 2)
            assert rr.registers == [0x1122, 0x3344]
            rr = await read_regs(client, "input", 10, 3)
            assert wire_bytes(rr.registers, "ABCD") == b"FW-1.2"

            rc = await client.read_coils(0, count=12, device_id=1)
            assert rc.bits[:12] == [True, False, True, True] + [False] * 6 + [True, False]
            rd = await client.read_discrete_inputs(0, count=8, device_id=1)
            assert rd.bits[:8] == [True, False, False, False, False, False, False, True]

            # Unconfigured addresses read as 0, up to the end of the address space.
            rr = await read_regs(client, "holding", 65411, 125)
            assert rr.registers == [0] * 125
            rr = await read_regs(client, "input", 3000, 10)
            assert rr.registers == [0] * 10

            # A unit id the device does not answer: exception 0x0B at once.
            bad = await client.read_holding_registers(0, count=1, device_id=9)
            assert bad.isError()
            assert bad.exception_code == 0x0B
        finally:
            client.close()


async def test_writes_override_signal_until_restart(tmp_path: Path) -> None:
    profile = {"devices": [device([reg("holding", 0, "uint16", const(7))])]}
    with start_simulator(profile, tmp_path) as sim:
        client = await client_for(sim.ports["plc-1"])
        try:
            assert (await read_regs(client, "holding", 0, 2)).registers == [7, 0]
            wr = await client.write_registers(0, [4242, 17], device_id=1)
            assert not wr.isError()
            assert (await read_regs(client, "holding", 0, 2)).registers == [4242, 17]
            assert not (await client.write_coil(5, True, device_id=1)).isError()
            assert (await client.read_coils(5, count=1, device_id=1)).bits[0] is True
        finally:
            client.close()


# ---------------------------------------------------------------------------------------------
# The oracle.


async def test_counter_oracle_matches_wall_clock(tmp_path: Path) -> None:
    profile = {
        "devices": [
            device(
                [
                    reg("holding", 0, "uint16", {"kind": "counter", "period": 1}),
                    reg("holding", 1, "uint32", {"kind": "counter", "period": 0.5}),
                    reg("holding", 3, "float64", {"kind": "counter", "period": 10}),
                ]
            )
        ]
    }
    with start_simulator(profile, tmp_path) as sim:
        client = await client_for(sim.ports["plc-1"])
        try:
            for _ in range(3):
                before = time.time()
                rr = await read_regs(client, "holding", 0, 7)
                after = time.time()
                w = rr.registers
                c1 = w[0]
                c2 = struct.unpack(">I", wire_bytes(w[1:3], "ABCD"))[0]
                c3 = struct.unpack(">d", wire_bytes(w[3:7], "ABCD"))[0]
                lo1, hi1 = math.floor(before) % 65536, math.floor(after) % 65536
                assert lo1 - 1 <= c1 <= hi1 + 1
                assert math.floor(before / 0.5) - 1 <= c2 <= math.floor(after / 0.5) + 1
                assert math.floor(before / 10) - 1 <= c3 <= math.floor(after / 10) + 1
                await asyncio.sleep(0.3)
        finally:
            client.close()


# ---------------------------------------------------------------------------------------------
# Faults and ground truth.


async def test_exception_window_only_for_its_block(tmp_path: Path) -> None:
    fault = {
        "kind": "exception",
        "start": 0.5,
        "duration": 2.0,
        "code": 2,
        "table": "holding",
        "from": 10,
        "to": 11,
    }
    profile = {
        "devices": [
            device(
                [
                    reg("holding", 0, "uint16", const(100)),
                    reg("holding", 10, "uint16", const(110)),
                    reg("holding", 11, "uint16", const(111)),
                    reg("input", 10, "uint16", const(210)),
                ],
                [fault],
            )
        ]
    }
    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        client = await client_for(sim.ports["plc-1"])
        try:
            assert (await read_regs(client, "holding", 10, 2)).registers == [110, 111]
            await sleep_until(t0 + 1.0)
            for address, count in ((10, 2), (9, 2), (11, 5), (0, 12)):
                rr = await read_regs(client, "holding", address, count)
                assert rr.isError(), (address, count)
                assert rr.exception_code == 2
            assert (await read_regs(client, "holding", 0, 1)).registers == [100]
            assert (await read_regs(client, "holding", 12, 3)).registers == [0, 0, 0]
            assert (await read_regs(client, "input", 10, 1)).registers == [210]
            await sleep_until(t0 + 2.8)
            assert (await read_regs(client, "holding", 10, 2)).registers == [110, 111]
        finally:
            client.close()
        records = wait_for(sim.truth, 3.0, what="truth record")
    assert len(records) == 1
    rec = records[0]
    assert rec["device"] == "plc-1"
    assert rec["kind"] == "exception"
    assert (rec["code"], rec["table"], rec["from"], rec["to"]) == (2, "holding", 10, 11)
    assert rec["mode"] is None
    assert rec["delay"] is None
    start, end = parse_ts(rec["start"]).timestamp(), parse_ts(rec["end"]).timestamp()
    assert start == pytest.approx(t0 + 0.5, abs=0.25)
    assert end - start == pytest.approx(2.0, abs=0.25)


async def test_offline_close_refuses_then_serves_again_on_same_port(tmp_path: Path) -> None:
    fault = {"kind": "offline", "mode": "close", "start": 1.0, "duration": 2.0}
    profile = {
        "devices": [
            device([reg("holding", 0, "uint16", const(4711))], [fault]),
            device([reg("holding", 0, "uint16", const(5))], dev_id="plc-other"),
        ]
    }
    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        port = sim.ports["plc-1"]
        held = socket.create_connection((HOST, port), timeout=2.0)
        try:
            held.sendall(mbap_read(1, 1, 3, 0, 1))
            assert pdu_registers(recv_response(held)[2]) == [4711]

            wait_for(lambda: connect_refused(port), 3.0, what="connection refused")
            refused_at = time.time()
            assert refused_at == pytest.approx(t0 + 1.0, abs=0.5)
            # The open connection was dropped too.
            held.settimeout(2.0)
            with pytest.raises(OSError):  # reset or closed by peer
                exchange(held, mbap_read(2, 1, 3, 0, 1))
            # The other device is unaffected.
            assert can_connect(sim.ports["plc-other"])
        finally:
            held.close()

        wait_for(lambda: can_connect(port), 4.0, what="device back")
        back_at = time.time()
        assert back_at == pytest.approx(t0 + 3.0, abs=0.5)
        client = await client_for(port)
        try:
            assert (await read_regs(client, "holding", 0, 1)).registers == [4711]
        finally:
            client.close()
        records = wait_for(sim.truth, 3.0, what="truth record")
        assert sim.stop() == 0
    (rec,) = records
    assert (rec["device"], rec["kind"], rec["mode"]) == ("plc-1", "offline", "close")
    assert rec["code"] is None
    start, end = parse_ts(rec["start"]).timestamp(), parse_ts(rec["end"]).timestamp()
    assert start == pytest.approx(t0 + 1.0, abs=0.25)
    assert end == pytest.approx(t0 + 3.0, abs=0.25)
    assert start <= refused_at <= end


async def test_offline_silent_keeps_tcp_but_never_answers(tmp_path: Path) -> None:
    fault = {"kind": "offline", "mode": "silent", "start": 0.5, "duration": 1.5}
    profile = {"devices": [device([reg("holding", 0, "uint16", const(9))], [fault])]}
    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        port = sim.ports["plc-1"]
        await sleep_until(t0 + 0.8)
        with socket.create_connection((HOST, port), timeout=0.6) as sock:  # TCP still accepted
            sock.sendall(mbap_read(1, 1, 3, 0, 1))
            with pytest.raises(TimeoutError):
                recv_response(sock)
            await sleep_until(t0 + 2.3)
            sock.settimeout(2.0)
            sock.sendall(mbap_read(2, 1, 3, 0, 1))
            tid, _unit, pdu = recv_response(sock)
            assert tid == 2  # the request sent while silent is never answered late
            assert pdu_registers(pdu) == [9]
        assert sim.stop() == 0
        stats = sim.device_stats("plc-1")
        assert stats["requests"] == 2
        assert stats["unanswered"] == 1
        (rec,) = sim.truth()
        assert (rec["kind"], rec["mode"]) == ("offline", "silent")


async def test_latency_delays_responses(tmp_path: Path) -> None:
    fault = {"kind": "latency", "start": 0.3, "duration": 2.0, "delay": 1.0}
    profile = {"devices": [device([reg("holding", 0, "uint16", const(1))], [fault])]}
    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        client = await client_for(sim.ports["plc-1"], wait=3.0)
        try:
            await sleep_until(t0 + 0.5)
            t = time.monotonic()
            assert (await read_regs(client, "holding", 0, 1)).registers == [1]
            assert time.monotonic() - t >= 0.9
            await sleep_until(t0 + 2.5)
            t = time.monotonic()
            assert (await read_regs(client, "holding", 0, 1)).registers == [1]
            assert time.monotonic() - t < 0.5
        finally:
            client.close()
        (rec,) = wait_for(sim.truth, 2.0, what="truth record")
        assert (rec["kind"], rec["delay"]) == ("latency", 1.0)


async def test_frozen_values_stop_changing(tmp_path: Path) -> None:
    fault = {"kind": "frozen", "start": 0.5, "duration": 1.5}
    profile = {
        "devices": [
            device([reg("holding", 0, "uint32", {"kind": "counter", "period": 0.1})], [fault])
        ]
    }

    async def counter(client: AsyncModbusTcpClient) -> int:
        rr = await read_regs(client, "holding", 0, 2)
        return int(struct.unpack(">I", wire_bytes(rr.registers, "ABCD"))[0])

    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        client = await client_for(sim.ports["plc-1"])
        try:
            await sleep_until(t0 + 0.7)
            a = await counter(client)
            await asyncio.sleep(0.5)
            b = await counter(client)
            assert a == b
            assert abs(a - math.floor((t0 + 0.5) / 0.1) % 2**32) <= 2
            await sleep_until(t0 + 2.2)
            c = await counter(client)
            assert abs(c - math.floor(time.time() / 0.1) % 2**32) <= 2
            assert c > a + 10
        finally:
            client.close()


async def test_sigterm_exits_zero_and_records_fault_in_progress(tmp_path: Path) -> None:
    fault = {"kind": "exception", "start": 0.0, "duration": 1000, "code": 4}
    profile = {"devices": [device([reg("holding", 0, "uint16", const(1))], [fault])]}
    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        client = await client_for(sim.ports["plc-1"])
        try:
            rr = await read_regs(client, "holding", 0, 1)
            assert rr.isError()
            assert rr.exception_code == 4
        finally:
            client.close()
        assert sim.truth() == []
        stopped = time.time()
        assert sim.stop() == 0
    (rec,) = sim.truth()
    assert rec["kind"] == "exception"
    assert rec["table"] is None
    assert parse_ts(rec["start"]).timestamp() == pytest.approx(t0, abs=0.25)
    assert parse_ts(rec["end"]).timestamp() == pytest.approx(stopped, abs=1.0)
    assert "fault exception begins" in sim.stderr()
    assert "Traceback" not in sim.stderr()
    assert sim.device_stats("plc-1")["exceptions"] == 1


async def test_repeating_fault_every_period(tmp_path: Path) -> None:
    fault = {"kind": "offline", "mode": "close", "start": 0.3, "duration": 0.4, "every": 1.0}
    profile = {"devices": [device([reg("holding", 0, "uint16", const(1))], [fault])]}
    with start_simulator(profile, tmp_path) as sim:
        t0 = started_epoch(sim)
        records = wait_for(lambda: len(sim.truth()) >= 3 and sim.truth(), 6.0, what="3 records")
    for n, rec in enumerate(records[:3]):
        assert parse_ts(rec["start"]).timestamp() == pytest.approx(t0 + 0.3 + n, abs=0.25)
        assert parse_ts(rec["end"]).timestamp() == pytest.approx(t0 + 0.7 + n, abs=0.25)


# ---------------------------------------------------------------------------------------------
# Stats: exact request counts (the tests of coalescing rely on them).


async def test_stats_count_requests_exactly(tmp_path: Path) -> None:
    registers = [reg("holding", a, "uint16", const(a)) for a in range(10)]
    profile = {"devices": [device(registers)]}
    with start_simulator(profile, tmp_path) as sim:
        client = await client_for(sim.ports["plc-1"])
        try:
            for _ in range(7):
                rr = await read_regs(client, "holding", 0, 10)
                assert rr.registers == list(range(10))
            for _ in range(3):
                await client.read_coils(0, count=8, device_id=1)
            bad = await client.read_holding_registers(0, count=1, device_id=5)
            assert bad.exception_code == 0x0B
        finally:
            client.close()
        stats = sim.wait_stats(lambda s: s["devices"]["plc-1"]["requests"] >= 11)
        dev = stats["devices"]["plc-1"]
        assert dev["requests"] == 11
        assert dev["by_function"] == {"1": 3, "3": 8}
        assert dev["registers_read"] == 7 * 10 + 3 * 8 + 1
        assert dev["exceptions"] == 1
        assert dev["connections"] == 1
        assert dev["port"] == sim.ports["plc-1"]
        assert dev["host"] == HOST


def test_pipelined_requests_answered_in_order_with_own_transaction_ids(tmp_path: Path) -> None:
    profile = {
        "devices": [
            device(
                [reg("holding", 0, "uint16", const(111)), reg("holding", 1, "uint16", const(222))]
            )
        ]
    }
    with (
        start_simulator(profile, tmp_path) as sim,
        socket.create_connection((HOST, sim.ports["plc-1"]), timeout=3.0) as sock,
    ):
        sock.sendall(mbap_read(7, 1, 3, 0, 1) + mbap_read(8, 1, 3, 1, 1) + mbap_read(9, 1, 4, 0, 1))
        answers = [recv_response(sock) for _ in range(3)]
    assert [a[0] for a in answers] == [7, 8, 9]
    assert pdu_registers(answers[0][2]) == [111]
    assert pdu_registers(answers[1][2]) == [222]
    assert pdu_registers(answers[2][2]) == [0]


# ---------------------------------------------------------------------------------------------
# Invalid profiles.

_OK_REG = reg("holding", 0, "uint16", const(1))


@pytest.mark.parametrize(
    ("profile", "path"),
    [
        pytest.param(
            {"devices": [device([_OK_REG, reg("holding", 0, "int16", const(2))])]},
            "devices[0].registers",
            id="overlap",
        ),
        pytest.param(
            {
                "devices": [
                    device([reg("holding", 0, "float32", const(1)), _OK_REG | {"address": 1}])
                ]
            },
            "devices[0].registers",
            id="overlap-multi-register",
        ),
        pytest.param(
            {"devices": [device([_OK_REG | {"colour": "red"}])]},
            "devices[0].registers[0].colour",
            id="unknown-key",
        ),
        pytest.param(
            {"devices": [device([reg("holding", 0, "float32", {"kind": "sine", "period": -1})])]},
            "devices[0].registers[0].signal.period",
            id="bad-signal",
        ),
        pytest.param(
            {"devices": [device([_OK_REG], [{"kind": "offline", "start": 1}])]},
            "devices[0].faults[0].duration",
            id="fault-missing-key",
        ),
        pytest.param(
            {"devices": [device([reg("holding", 0, "bool", const(1))])]},
            "devices[0].registers[0].bit",
            id="bool-without-bit",
        ),
        pytest.param(
            {"devices": [device([reg("holding", 0, "int16", const("x"))])]},
            "devices[0].registers[0].signal",
            id="text-in-number",
        ),
        pytest.param({"devices": []}, "devices", id="no-devices"),
        pytest.param(
            {"devices": [device([_OK_REG]), device([_OK_REG])]}, "devices", id="duplicate-id"
        ),
    ],
)
def test_invalid_profile_exits_2_naming_key_path(tmp_path: Path, profile: dict, path: str) -> None:
    result = run_simulator_once(profile, tmp_path)
    assert result.returncode == 2, result.stderr
    assert path in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "once-ready.json").exists()


def test_yaml_syntax_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [\n  - id: x\n", encoding="utf-8")
    result = run_simulator_once(bad, tmp_path)
    assert result.returncode == 2
    assert "invalid YAML" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Independent client: Debian mbpoll.


def mbpoll(port: int, *args: str) -> dict[int, str]:
    exe = shutil.which("mbpoll")
    assert exe, "mbpoll is required (apt-get install mbpoll): this test must not be skipped"
    cmd = [exe, "-m", "tcp", "-a", "1", "-0", "-1", "-o", "2", "-p", str(port), *args, HOST]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    values = dict(re.findall(r"^\[(\d+)\]:\s+(\S+)", out.stdout, re.MULTILINE))
    return {int(k): v for k, v in values.items()}


def test_mbpoll_reads_expected_values(tmp_path: Path) -> None:
    profile = {
        "devices": [
            device(
                [
                    reg("holding", 0, "uint16", const(1234)),
                    reg("holding", 1, "int16", const(-5)),
                    reg("holding", 2, "float32", const(3.5)),
                    reg("holding", 4, "int32", const(-70000)),
                    reg("holding", 6, "uint16", {"kind": "counter", "period": 1}),
                    reg("input", 0, "uint16", const(4321)),
                    reg("coil", 0, None, const(1)),
                    reg("coil", 1, None, const(0)),
                    reg("coil", 2, None, const(1)),
                    reg("discrete", 0, None, const(1)),
                ]
            )
        ]
    }
    with start_simulator(profile, tmp_path) as sim:
        port = sim.ports["plc-1"]
        holding = mbpoll(port, "-t", "4", "-r", "0", "-c", "2")
        assert holding == {0: "1234", 1: "65531"}
        assert mbpoll(port, "-t", "4:float", "-B", "-r", "2", "-c", "1") == {2: "3.5"}
        assert mbpoll(port, "-t", "4:int", "-B", "-r", "4", "-c", "1") == {4: "-70000"}
        before = time.time()
        counter = int(mbpoll(port, "-t", "4", "-r", "6", "-c", "1")[6])
        after = time.time()
        assert math.floor(before) % 65536 - 1 <= counter <= math.floor(after) % 65536 + 1
        assert mbpoll(port, "-t", "3", "-r", "0", "-c", "1") == {0: "4321"}
        assert mbpoll(port, "-t", "0", "-r", "0", "-c", "3") == {0: "1", 1: "0", 2: "1"}
        assert mbpoll(port, "-t", "1", "-r", "0", "-c", "1") == {0: "1"}
        stats = sim.wait_stats(lambda s: s["devices"]["plc-1"]["requests"] >= 7)
        assert stats["devices"]["plc-1"]["requests"] == 7


# ---------------------------------------------------------------------------------------------
# The packaged demo profile.


async def test_demo_profile_serves_its_register_map(tmp_path: Path) -> None:
    from simulator.profiles import demo_profile_path

    with start_simulator(demo_profile_path(), tmp_path) as sim:
        assert set(sim.ports) == {"plc-boilers", "plc-pumps", "meter-main", "plc-packing"}
        clients = {dev: await client_for(port) for dev, port in sim.ports.items()}
        try:
            rr = await read_regs(clients["plc-boilers"], "input", 0, 8)
            assert wire_bytes(rr.registers, "ABCD").rstrip(b"\x00") == b"BLR-FW-2.4.1"
            now = time.time()
            rr = await read_regs(clients["meter-main"], "input", 16, 2)
            assert abs(struct.unpack(">I", wire_bytes(rr.registers, "ABCD"))[0] - int(now)) <= 1
            rr = await read_regs(clients["meter-main"], "input", 22, 4)
            assert abs(struct.unpack(">q", wire_bytes(rr.registers, "DCBA"))[0] - int(now)) <= 1
            rr = await read_regs(clients["plc-pumps"], "holding", 9, 1)
            assert abs(rr.registers[0] - int(now) % 65536) <= 1
            rr = await read_regs(clients["plc-pumps"], "holding", 2, 2)
            speed = struct.unpack(">f", wire_bytes(rr.registers, "CDAB"))[0]
            assert 1250 <= speed <= 1650
            rr = await read_regs(clients["plc-packing"], "holding", 200, 3)
            w = rr.registers
            assert struct.unpack(">f", wire_bytes(w[:2], "ABCD"))[0] == 12.5
            assert w[2] == 42
            rr = await read_regs(clients["meter-main"], "input", 14, 1)
            assert 49.9 <= rr.registers[0] / 100 <= 50.1
        finally:
            for client in clients.values():
                client.close()
