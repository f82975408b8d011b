"""End to end over real Modbus TCP: simulator process -> gateway process -> store -> inventory -> API.

Faults come from the simulator's schedule; its ground truth (JSONL) is the oracle for gap
accuracy (issue #2): every detected gap starts and ends within one poll interval + timeout of
the fault window, and no gap appears on healthy devices.
"""

from __future__ import annotations

import itertools
import math
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL = 0.5
TIMEOUT = 0.25
TOL = timedelta(seconds=INTERVAL + TIMEOUT)
RECONNECT_MAX = 0.2  # s, the config's reconnect.max (backoff jitter is ±20 %)
# A gap whose device lost its link ends only after a reconnect: up to one backoff (reconnect.max
# + 20 % jitter) before the connect, then the first poll within a poll interval, then a response
# within the timeout.
TOL_RECONNECT = TOL + timedelta(seconds=RECONNECT_MAX * 1.2)
SLOW_DELAY = 1.0  # s, the d-slow device's response delay during its latency fault
# The d-slow device answers each request 1 s late while the fault lasts, one request at a time
# per connection: a request sent just before the fault ends is answered up to SLOW_DELAY later,
# and requests behind it wait for it; the first good reading comes with the next poll after
# that, within one poll interval.
TOL_SLOW_END = timedelta(seconds=SLOW_DELAY + INTERVAL)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _gateway_config(devices: list[dict[str, Any]], assets: dict[str, list[dict[str, Any]]],
                    data_dir: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "test-gw", "data_dir": str(data_dir)},
        "api": {"host": "127.0.0.1", "port": 0},
        "reconnect": {"initial": 0.1, "max": RECONNECT_MAX},
        "inventory": {"gap_after": 2.5},
        "devices": devices,
        "sites": [{"id": "site-1", "assets": [{"id": a, "points": pts} for a, pts in assets.items()]}],
    }


def _device(dev_id: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"id": dev_id, "host": "127.0.0.1", "port": port, "poll_interval": INTERVAL,
            "timeout": TIMEOUT, **extra}


# ---------------------------------------------------------------------------------------------
# Types, byte orders, scale, coalescing and the exception split


TYPE_CASES: list[tuple[str, str, str, Any, int]] = [
    # (point id, type, byte order, value, registers)
    ("i16", "int16", "ABCD", -1234, 1),
    ("u16", "uint16", "ABCD", 54321, 1),
    ("i32_abcd", "int32", "ABCD", -123456789, 2),
    ("i32_dcba", "int32", "DCBA", -123456789, 2),
    ("u32_badc", "uint32", "BADC", 3_000_000_001, 2),
    ("u32_cdab", "uint32", "CDAB", 3_000_000_001, 2),
    ("i64_abcd", "int64", "ABCD", -(2**40) - 7, 4),
    ("u64_cdab", "uint64", "CDAB", 2**63 + 12345, 4),
    ("u64_dcba", "uint64", "DCBA", 2**50 + 3, 4),
    ("f32_abcd", "float32", "ABCD", 123.456, 2),
    ("f32_dcba", "float32", "DCBA", -0.015625, 2),
    ("f32_badc", "float32", "BADC", 98765.5, 2),
    ("f32_cdab", "float32", "CDAB", 3.5e-3, 2),
    ("f64_abcd", "float64", "ABCD", 1.0 / 3.0, 4),
    ("f64_cdab", "float64", "CDAB", -2.5e100, 4),
    ("f64_badc", "float64", "BADC", 6.02214076e23, 4),
]


def _type_profile() -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    regs: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    addr = 0
    for pid, typ, order, value, width in TYPE_CASES:
        regs.append({"table": "holding", "address": addr, "type": typ, "byte_order": order,
                     "signal": {"kind": "constant", "value": value}})
        points.append({"id": pid, "device": "types", "register": "holding", "address": addr,
                       "type": typ, "byte_order": order})
        addr += width
    n_hr = addr
    regs += [
        {"table": "holding", "address": 100, "type": "int16", "scale": 10,
         "signal": {"kind": "constant", "value": -12.3}},
        {"table": "holding", "address": 101, "type": "bool", "bit": 0, "signal": {"kind": "constant", "value": 1}},
        {"table": "holding", "address": 101, "type": "bool", "bit": 5, "signal": {"kind": "constant", "value": 0}},
        {"table": "holding", "address": 101, "type": "bool", "bit": 15, "signal": {"kind": "constant", "value": 1}},
        {"table": "input", "address": 0, "type": "string", "length": 4, "signal": {"kind": "constant", "value": "PUMP-7"}},
        {"table": "input", "address": 4, "type": "uint16", "signal": {"kind": "counter", "period": 1}},
        {"table": "coil", "address": 0, "signal": {"kind": "constant", "value": 1}},
        {"table": "coil", "address": 1, "signal": {"kind": "constant", "value": 0}},
        {"table": "discrete", "address": 7, "signal": {"kind": "constant", "value": 1}},
    ]
    points += [
        {"id": "scaled", "device": "types", "register": "holding", "address": 100, "type": "int16",
         "scale": 0.1, "offset": 0.0, "unit": "Cel"},
        {"id": "bit0", "device": "types", "register": "holding", "address": 101, "type": "bool", "bit": 0},
        {"id": "bit5", "device": "types", "register": "holding", "address": 101, "type": "bool", "bit": 5},
        {"id": "bit15", "device": "types", "register": "holding", "address": 101, "type": "bool", "bit": 15},
        {"id": "text", "device": "types", "register": "input", "address": 0, "type": "string", "length": 4},
        {"id": "counter", "device": "types", "register": "input", "address": 4, "type": "uint16", "unit": "s"},
        {"id": "coil0", "device": "types", "register": "coil", "address": 0, "type": "bool"},
        {"id": "coil1", "device": "types", "register": "coil", "address": 1, "type": "bool"},
        {"id": "di7", "device": "types", "register": "discrete", "address": 7, "type": "bool"},
    ]
    profile = {"seed": 1, "devices": [{"id": "types", "host": "127.0.0.1", "port": 0,
                                       "unit_ids": [1], "registers": regs, "faults": []}]}
    return profile, points, n_hr


def _f32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def test_every_type_and_byte_order_through_the_gateway(tmp_path: Path) -> None:
    profile, points, _ = _type_profile()
    with start_simulator(profile, tmp_path) as sim:
        gw = GatewayProcess(_gateway_config([_device("types", sim.ports["types"])],
                                            {"plc": points}, tmp_path / "data"), tmp_path)
        try:
            gw.start()

            def all_good() -> dict[str, Any] | None:
                asset = gw.get("/api/v1/assets/site-1/plc")
                pts = {p["id"]: p for p in asset["points"]}
                return pts if all(p["quality"] == 0 for p in pts.values()) else None

            pts = wait_for(all_good, timeout=20, what="all points Good")
            for pid, typ, _order, value, _w in TYPE_CASES:
                got = pts[pid]["value"]
                if typ == "float32":
                    assert got == pytest.approx(_f32(value), rel=1e-7), pid
                elif typ == "float64":
                    assert got == pytest.approx(value, rel=1e-15), pid
                else:
                    assert got == value, pid
            assert pts["scaled"]["value"] == pytest.approx(-12.3)
            assert pts["scaled"]["unit"] == "Cel"
            assert (pts["bit0"]["value"], pts["bit5"]["value"], pts["bit15"]["value"]) == (True, False, True)
            assert pts["text"]["value"] == "PUMP-7"
            assert (pts["coil0"]["value"], pts["coil1"]["value"], pts["di7"]["value"]) == (True, False, True)
            # The oracle: counter = floor(t / 1 s) mod 2^16 at the reading's source time (±1).
            seen = _ts(pts["counter"]["last_seen"]).timestamp()
            assert abs(pts["counter"]["value"] - (math.floor(seen) % 65536)) <= 1
            assert pts["counter"]["source"].startswith(f"modbus://127.0.0.1:{sim.ports['types']}/1/ir/4")
        finally:
            assert gw.stop() == 0, gw.log()


def test_coalescing_counted_on_the_simulator(tmp_path: Path) -> None:
    """Contiguous registers of one device are read in one request per poll (counted device-side)."""
    profile, points, n_hr = _type_profile()
    with start_simulator(profile, tmp_path) as sim:
        gw = GatewayProcess(_gateway_config([_device("types", sim.ports["types"])],
                                            {"plc": points}, tmp_path / "data"), tmp_path)
        gw.start()
        wait_for(lambda: gw.get("/api/v1/devices")[0]["polls"] >= 6, timeout=20, what="6 polls")
        assert gw.stop() == 0
        # After the gateway stopped, the simulator's counters settle (rewritten every 0.5 s).
        previous: dict[str, Any] = {}

        def settled() -> dict[str, Any] | None:
            nonlocal previous
            current = sim.device_stats("types")
            stable = current == previous
            previous = current
            return current if stable else None

        stats = wait_for(settled, timeout=10, interval=0.7, what="stable simulator stats")
        by_fc = stats["by_function"]
        polls = by_fc["1"]  # one coil request per poll
        assert polls >= 6
        # holding 0..n_hr-1 and 100..101 are two blocks -> 2 FC3 requests per poll;
        # input 0..4 one FC4, coils 0..1 one FC1, discrete 7 one FC2.
        assert by_fc["3"] == 2 * polls
        assert by_fc["4"] == polls
        assert by_fc["2"] == polls
        assert stats["registers_read"] == polls * (n_hr + 2 + 5 + 2 + 1)


def test_exception_02_block_is_split_so_valid_points_stay_good(tmp_path: Path) -> None:
    regs = [{"table": "holding", "address": a, "type": "uint16",
             "signal": {"kind": "constant", "value": 100 + a}} for a in range(10)]
    profile = {"seed": 1, "devices": [{
        "id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": regs,
        "faults": [{"kind": "exception", "start": 0, "duration": 3600, "code": 2,
                    "table": "holding", "from": 6, "to": 7}],
    }]}
    points = [{"id": f"r{a}", "device": "plc", "register": "holding", "address": a,
               "type": "uint16"} for a in range(10)]
    with start_simulator(profile, tmp_path) as sim:
        gw = GatewayProcess(_gateway_config([_device("plc", sim.ports["plc"])], {"a": points},
                                            tmp_path / "data"), tmp_path)
        try:
            gw.start()

            def settled() -> dict[str, Any] | None:
                pts = {p["id"]: p for p in gw.get("/api/v1/assets/site-1/a")["points"]}
                return pts if all(p["quality"] is not None for p in pts.values()) else None

            pts = wait_for(settled, timeout=20, what="all points read")
            for a in range(10):
                p = pts[f"r{a}"]
                if a in (6, 7):
                    assert p["quality"] == 0x803C0000, p  # BadOutOfRange
                    assert p["value"] is None
                else:
                    assert p["quality"] == 0, p
                    assert p["value"] == 100 + a
            asset = gw.get("/api/v1/assets/site-1/a")
            assert asset["state"] == "degraded"
        finally:
            assert gw.stop() == 0, gw.log()


# ---------------------------------------------------------------------------------------------
# Gap accuracy against the simulator's ground truth


FAULT_AT = 7.0  # seconds after simulator start; the gateway is up well before


def _signal_regs() -> list[dict[str, Any]]:
    return [
        {"table": "holding", "address": 0, "type": "uint16", "signal": {"kind": "counter", "period": 1}},
        {"table": "holding", "address": 1, "type": "float32", "signal": {"kind": "sine", "amplitude": 1, "period": 30, "offset": 5}},
        {"table": "coil", "address": 0, "signal": {"kind": "step", "values": [0, 1], "every": 3}},
    ]


def _signal_points(dev: str) -> list[dict[str, Any]]:
    return [
        {"id": "count", "device": dev, "register": "holding", "address": 0, "type": "uint16"},
        {"id": "temp", "device": dev, "register": "holding", "address": 1, "type": "float32", "unit": "Cel"},
        {"id": "run", "device": dev, "register": "coil", "address": 0, "type": "bool"},
    ]


GAP_DEVICES: dict[str, tuple[list[dict[str, Any]], set[str]]] = {
    # device id: (faults, acceptable gap causes)
    "d-off": ([{"kind": "offline", "mode": "close", "start": FAULT_AT, "duration": 3}], {"device_offline"}),
    "d-silent": ([{"kind": "offline", "mode": "silent", "start": FAULT_AT + 1, "duration": 3}],
                 {"timeout", "device_offline"}),
    "d-exc": ([{"kind": "exception", "code": 4, "start": FAULT_AT, "duration": 2.5}], {"bad_quality"}),
    "d-slow": ([{"kind": "latency", "delay": SLOW_DELAY, "start": FAULT_AT + 0.5, "duration": 3}],
               {"timeout", "device_offline"}),
    "d-twice": ([{"kind": "offline", "mode": "close", "start": FAULT_AT, "duration": 1.5},
                 {"kind": "offline", "mode": "close", "start": FAULT_AT + 4, "duration": 1.5}],
                {"device_offline"}),
    "d-ok": ([], set()),
}


def test_gaps_match_the_simulator_ground_truth(tmp_path: Path) -> None:
    profile = {"seed": 3, "devices": [
        {"id": dev, "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": _signal_regs(),
         "faults": faults} for dev, (faults, _) in GAP_DEVICES.items()
    ]}
    with start_simulator(profile, tmp_path) as sim:
        started = _ts(sim.ready["started"])
        cfg = _gateway_config([_device(d, sim.ports[d]) for d in GAP_DEVICES],
                              {d: _signal_points(d) for d in GAP_DEVICES}, tmp_path / "data")
        gw = GatewayProcess(cfg, tmp_path)
        try:
            gw.start()
            wait_for(lambda: all(a["state"] == "online" for a in gw.get("/api/v1/assets")),
                     timeout=20, what="all assets online")
            assert datetime.now(UTC) < started + timedelta(seconds=FAULT_AT), "gateway too slow to start"
            n_faults = sum(len(f) for f, _ in GAP_DEVICES.values())
            wait_for(lambda: len(sim.truth()) >= n_faults, timeout=40, what="all faults over")
            # Let every device deliver good data again, then let the detector settle.
            wait_for(lambda: not gw.get("/api/v1/gaps", open="true"), timeout=20, what="no open gap")
            gaps = gw.get("/api/v1/gaps")
        finally:
            assert gw.stop() == 0, gw.log()
        truth = sim.truth()

    by_point: dict[str, list[dict[str, Any]]] = {}
    for g in gaps:
        by_point.setdefault(g["asset"] + "/" + g["point"], []).append(g)
    for dev, (faults, causes) in GAP_DEVICES.items():
        windows = sorted((_ts(t["start"]), _ts(t["end"])) for t in truth if t["device"] == dev)
        assert len(windows) == len(faults)
        for pid in ("count", "temp", "run"):
            found = sorted(by_point.get(f"{dev}/{pid}", []), key=lambda g: g["start"])
            assert len(found) == len(windows), (dev, pid, found, windows)
            for gap, (t_start, t_end) in zip(found, windows, strict=True):
                start, end = _ts(gap["start"]), _ts(gap["end"])
                assert gap["cause"] in causes, (dev, gap)
                assert abs(start - t_start) <= TOL, (dev, pid, gap, t_start)
                end_tol = (TOL_SLOW_END if dev == "d-slow"
                           else TOL_RECONNECT if gap["cause"] == "device_offline" else TOL)
                assert abs(end - t_end) <= end_tol, (dev, pid, gap, t_end)
                assert gap["samples_missed"] >= 1
            for a, b in itertools.pairwise(found):
                assert _ts(a["end"]) <= _ts(b["start"])  # ordered, non-overlapping


# ---------------------------------------------------------------------------------------------
# Isolation, reconnect, restart


def test_dead_device_does_not_delay_others(tmp_path: Path) -> None:
    """R10/M8: a device that never answers (half-open) costs only itself."""
    profile = {"seed": 1, "devices": [
        {"id": "dead", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": _signal_regs(),
         "faults": [{"kind": "offline", "mode": "silent", "start": 0, "duration": 3600}]},
        {"id": "live", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": _signal_regs(),
         "faults": []},
    ]}
    with start_simulator(profile, tmp_path) as sim:
        cfg = _gateway_config(
            [_device("dead", sim.ports["dead"]), _device("live", sim.ports["live"])],
            {"dead": _signal_points("dead"), "live": _signal_points("live")}, tmp_path / "data",
        )
        gw = GatewayProcess(cfg, tmp_path)
        try:
            gw.start()
            wait_for(lambda: {d["id"]: d for d in gw.get("/api/v1/devices")}["live"]["polls"] >= 20,
                     timeout=30, what="20 polls of the live device")
            devices = {d["id"]: d for d in gw.get("/api/v1/devices")}
            assert devices["live"]["overruns"] == 0
            assert devices["live"]["state"] == "online"
            assert devices["dead"]["state"] in ("offline", "degraded")
            live = gw.get("/api/v1/assets/site-1/live")
            assert live["state"] == "online"
            assert all(p["quality"] == 0 for p in live["points"])
            dead = gw.get("/api/v1/assets/site-1/dead")
            assert all(p["quality"] in (0x800A0000, 0x80310000) for p in dead["points"]), dead
            assert not gw.get("/api/v1/gaps", asset="live")
            cov = {r["group"]: r for r in gw.get("/api/v1/coverage", window=5, group_by="asset")["rows"]}
            assert cov["site-1/live"]["coverage"] >= 0.8
            assert cov["site-1/dead"]["received"] == 0
        finally:
            assert gw.stop() == 0, gw.log()


def test_reconnects_after_the_simulator_restarts(tmp_path: Path) -> None:
    """R11: the simulator process is killed and restarted on the same port."""
    profile: dict[str, Any] = {"seed": 1, "devices": [
        {"id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": _signal_regs(),
         "faults": []}]}
    sim = start_simulator(profile, tmp_path, name="sim1")
    port = sim.ports["plc"]
    cfg = _gateway_config([_device("plc", port)], {"plc": _signal_points("plc")}, tmp_path / "data")
    gw = GatewayProcess(cfg, tmp_path)
    sim2 = None
    try:
        gw.start()
        wait_for(lambda: gw.get("/api/v1/devices")[0]["state"] == "online", timeout=20, what="online")
        sim.kill()
        wait_for(lambda: gw.get("/api/v1/devices")[0]["state"] == "offline", timeout=20, what="offline")
        assert gw.get("/api/v1/assets/site-1/plc")["state"] == "offline"
        profile["devices"][0]["port"] = port
        sim2 = start_simulator(profile, tmp_path, name="sim2")
        wait_for(lambda: gw.get("/api/v1/devices")[0]["state"] == "online", timeout=20, what="back online")
        dev = gw.get("/api/v1/devices")[0]
        assert dev["reconnects"] >= 1
        assert dev["link_up"] is True
        [gap] = gw.get("/api/v1/gaps", point="count")
        assert gap["cause"] == "device_offline"
        wait_for(lambda: gw.get("/api/v1/gaps", point="count")[0]["end"] is not None, timeout=10,
                 what="gap closed")
        # Logged once per state change, not once per failed attempt.
        log = gw.log()
        assert log.count("link lost") == 1, log
    finally:
        assert gw.stop() == 0, gw.log()
        sim.stop()
        if sim2 is not None:
            sim2.stop()


def test_gateway_restart_records_gateway_down_gap(tmp_path: Path) -> None:
    profile = {"seed": 1, "devices": [
        {"id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": _signal_regs(),
         "faults": []}]}
    with start_simulator(profile, tmp_path) as sim:
        cfg = _gateway_config([_device("plc", sim.ports["plc"])], {"plc": _signal_points("plc")},
                              tmp_path / "data")
        gw = GatewayProcess(cfg, tmp_path)
        gw.start()
        wait_for(lambda: gw.get("/api/v1/assets/site-1/plc")["state"] == "online", timeout=20,
                 what="online")
        time.sleep(2.5)  # let a heartbeat be recorded while running
        last_seen = max(_ts(p["last_good"]) for p in gw.get("/api/v1/assets/site-1/plc")["points"])
        gw.kill()  # SIGKILL: no clean shutdown
        killed_at = datetime.now(UTC)
        time.sleep(3.0)  # the gateway is down for ~3 s
        gw.start()
        restarted_at = datetime.now(UTC)
        wait_for(lambda: gw.get("/api/v1/assets/site-1/plc")["state"] == "online", timeout=20,
                 what="online after restart")
        try:
            gaps = [g for g in gw.get("/api/v1/gaps") if g["cause"] == "gateway_down"]
            assert {g["point"] for g in gaps} == {"count", "temp", "run"}
            for g in gaps:
                start = _ts(g["start"])
                # DESIGN §4: start = last good + one interval (the first sample that never came).
                assert last_seen <= start <= killed_at + timedelta(seconds=INTERVAL), g
                wait_for(lambda g=g: next(x for x in gw.get("/api/v1/gaps") if x["id"] == g["id"])["end"],
                         timeout=10, what="gateway_down gap closed")
                closed = next(x for x in gw.get("/api/v1/gaps") if x["id"] == g["id"])
                assert _ts(closed["end"]) >= restarted_at - timedelta(seconds=1)
                assert _ts(closed["end"]) - _ts(closed["start"]) >= timedelta(seconds=3)
        finally:
            assert gw.stop() == 0, gw.log()


def test_api_and_metrics_on_a_running_gateway(tmp_path: Path) -> None:
    profile = {"seed": 1, "devices": [
        {"id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "registers": _signal_regs(),
         "faults": []}]}
    with start_simulator(profile, tmp_path) as sim:
        cfg = _gateway_config([_device("plc", sim.ports["plc"])], {"plc": _signal_points("plc")},
                              tmp_path / "data")
        gw = GatewayProcess(cfg, tmp_path)
        try:
            gw.start()
            wait_for(lambda: gw.get("/api/v1/sites")[0]["state"] == "online", timeout=20, what="online")
            site = gw.get("/api/v1/sites/site-1")
            assert site["id"] == "site-1"
            asset = gw.get("/api/v1/assets/site-1/plc")
            count = next(p for p in asset["points"] if p["id"] == "count")
            seen = _ts(count["last_seen"]).timestamp()
            assert abs(count["value"] - math.floor(seen) % 65536) <= 1
            assert count["severity"] == "good"
            assert gw.get("/healthz")["status"] == "ok"
            assert gw.get("/readyz")["ready"] is True
            import httpx

            text = httpx.get(gw.url + "/metrics", timeout=10).text
            assert "otgw_readings_committed_total" in text
            assert 'otgw_device_state{device="plc"} 3.0' in text
            assert httpx.get(gw.url + "/api/v1/assets/site-1/nope", timeout=10).status_code == 404
        finally:
            assert gw.stop() == 0, gw.log()
