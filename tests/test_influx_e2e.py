"""Store and forward end to end: simulator -> gateway subprocess -> victoria-metrics (R3, R6, M1, M3).

Everything is real and separate processes: the Modbus simulator, ``python -m gateway run`` and
Debian's victoria-metrics (speaking the InfluxDB v2 write API) on free loopback ports, stopped
by PID. The oracle is twofold:

- the gateway's own store (every *committed* reading) against the sink's export: no loss, no
  invented point, duplicates only identical (a replay after a crash re-sends the same point);
- the simulator's counter registers (``floor(t / period)``) against each exported value at its
  timestamp: no mismatch.

victoria-metrics keeps ms timestamps; the store keeps µs. Readings of one point are 50 ms
apart or more, so (point, ms) identifies a reading.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import start_simulator
from tests.vm_helpers import VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

POLL = 0.1
PERIODS = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0]
COUNTERS = 18


def _profile() -> dict[str, Any]:
    regs: list[dict[str, Any]] = [
        {"table": "holding", "address": a, "type": "uint16",
         "signal": {"kind": "counter", "period": PERIODS[a % len(PERIODS)]}}
        for a in range(COUNTERS)
    ]
    regs += [
        {"table": "holding", "address": 100, "type": "float32",
         "signal": {"kind": "sine", "amplitude": 10, "period": 7, "offset": 20}},
        {"table": "coil", "address": 0, "signal": {"kind": "step", "values": [0, 1], "every": 1}},
    ]
    return {"seed": 3, "devices": [{"id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1],
                                    "registers": regs, "faults": []}]}


def _config(sim_port: int, vm_url: str, data_dir: Path, **sink: Any) -> dict[str, Any]:
    points = [{"id": f"c{a}", "device": "plc", "register": "holding", "address": a,
               "type": "uint16"} for a in range(COUNTERS)]
    points += [
        {"id": "temp", "device": "plc", "register": "holding", "address": 100, "type": "float32",
         "unit": "Cel"},
        {"id": "run", "device": "plc", "register": "coil", "address": 0, "type": "bool"},
    ]
    return {
        "gateway": {"name": "e2e", "data_dir": str(data_dir)},
        "api": {"host": "127.0.0.1", "port": 0},
        "reconnect": {"initial": 0.1, "max": 0.5},
        "devices": [{"id": "plc", "host": "127.0.0.1", "port": sim_port, "poll_interval": POLL,
                     "timeout": 0.08}],
        "sites": [{"id": "site-1", "assets": [{"id": "line-1", "points": points}]}],
        "sinks": [{"type": "influxdb", "name": "vm", "url": vm_url, "org": "plant",
                   "bucket": "ot", "token": "${OTGW_E2E_TOKEN}", "batch_size": 500,
                   "flush_interval": 0.2, "timeout": 5, "max_retry_delay": 1.0, **sink}],
    }


def _sink(gw: GatewayProcess) -> dict[str, Any]:
    resp = httpx.get(gw.url + "/readyz", timeout=10)
    sinks: list[dict[str, Any]] = resp.json()["details"]["sinks"]
    return sinks[0]


def _store_rows(db: Path) -> list[tuple[str, int, Any, int | None, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT p.site || '/' || p.asset || '/' || p.point, r.ts_ns, r.value, r.vt, r.quality "
            "FROM readings r JOIN points p ON p.id = r.point_id"
        ).fetchall()
    finally:
        conn.close()


def _check_sink_equals_store(db: Path, vm: VictoriaMetrics) -> dict[str, int]:
    """Every committed reading is in the sink exactly; nothing else is; duplicates identical."""
    rows = _store_rows(db)
    assert len(rows) > 500, "too few readings to mean anything"
    expected_q: dict[tuple[str, int], int] = {}
    expected_v: dict[tuple[str, int], float] = {}
    expected_s: dict[tuple[str, int], float] = {}
    for key, ts_ns, v, vt, q in rows:
        k = (key, ts_ns // 1_000_000)
        assert k not in expected_q, f"two store readings of {key} in one ms"
        expected_q[k] = q
        if vt == 1:
            expected_s[k] = float(v)
        elif v is not None:
            expected_v[k] = float(v)
    # victoria-metrics makes samples searchable ~0.4 s after a force flush (DESIGN §8): read
    # back until every committed reading is there, with a deadline.
    deadline = time.monotonic() + 20
    while True:
        quality = vm.by_key("reading_quality")
        lost = [k for k in expected_q if k not in quality]
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    value = vm.by_key("reading_value")
    state = vm.by_key("reading_state")
    if lost:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        cursors = conn.execute("SELECT * FROM sink_cursors").fetchall()
        ids = conn.execute("SELECT id, ts_ns FROM readings WHERE ts_ns / 1000000 = ?",
                           (lost[0][1],)).fetchall()
        conn.close()
        raise AssertionError(f"{len(lost)} committed readings missing in the sink, e.g. "
                             f"{lost[:3]}; cursors {cursors}; ids {ids[:3]}")
    extra = [k for k in quality if k not in expected_q]
    assert not extra, f"{len(extra)} points in the sink that the store never had: {extra[:3]}"
    dups = 0
    for series, expected in ((quality, expected_q), (value, expected_v), (state, expected_s)):
        assert set(series) == set(expected)
        for k, got in series.items():
            # victoria-metrics keeps about 12 significant digits of a float (its own storage
            # format; InfluxDB keeps float64): compare to that precision, ints exactly.
            assert all(math.isclose(g, expected[k], rel_tol=1e-11) for g in got), (k, got, expected[k])
            assert len(set(got)) == 1, (k, got)  # duplicates identical only
            dups += len(got) - 1
    # The oracle: counter = floor(t / period) mod 2^16 at the reading's timestamp (±1).
    mismatches = []
    for (key, ts_ms), v in expected_v.items():
        point = key.rsplit("/", 1)[1]
        if point.startswith("c"):
            period = PERIODS[int(point[1:]) % len(PERIODS)]
            want = math.floor(ts_ms / 1000 / period) % 65536
            diff = min((v - want) % 65536, (want - v) % 65536)
            if diff > 1:
                mismatches.append((key, ts_ms, v, want))
    assert not mismatches, mismatches[:5]
    return {"readings": len(rows), "duplicates": dups,
            "good": sum(1 for _k, _t, _v, _vt, q in rows if q == 0)}


def test_forwarding_survives_a_sink_outage_with_zero_loss(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """R3: victoria-metrics stopped by PID during polling, restarted: backlog drains, no loss."""
    monkeypatch.setenv("OTGW_E2E_TOKEN", "e2e-secret-token")
    data = tmp_path / "data"
    vm = VictoriaMetrics(tmp_path).start()
    try:
        with start_simulator(_profile(), tmp_path) as sim:
            gw = GatewayProcess(_config(sim.ports["plc"], vm.url, data), tmp_path)
            gw.start()
            try:
                wait_for(lambda: _sink(gw)["written"] >= 1000, timeout=60, what="1000 forwarded")
                assert _sink(gw)["state"] == "ok"
                vm.stop()  # SIGTERM by PID: the sink is gone, polling goes on
                wait_for(lambda: _sink(gw)["state"] == "degraded", timeout=30, what="degraded")
                wait_for(lambda: _sink(gw)["backlog"] >= 2000, timeout=60, what="a backlog")
                down = _sink(gw)
                assert down["oldest_unsent"] is not None
                assert down["last_error"]
                metrics = httpx.get(gw.url + "/metrics", timeout=10).text
                assert 'otgw_sink_up{sink="vm"} 0.0' in metrics
                vm.start()  # same port, same data
                wait_for(lambda: _sink(gw)["state"] == "ok" and _sink(gw)["backlog"] < 500,
                         timeout=60, what="backlog drained")
            finally:
                assert gw.stop() == 0, gw.log()
        # Stopped cleanly: whatever was still unsent stays in the outbox for the next start.
        gw2 = GatewayProcess(_config(1, vm.url, data), tmp_path, name="gw2")  # no device
        gw2.start()
        try:
            wait_for(lambda: _sink(gw2)["backlog"] == 0, timeout=60, what="outbox empty")
        finally:
            assert gw2.stop() == 0, gw2.log()
        result = _check_sink_equals_store(data / "gateway.db", vm)
        assert result["good"] > 1000
        assert "e2e-secret-token" not in gw.log() + gw2.log()
    finally:
        vm.stop()


def test_sigkill_during_flushes_loses_no_committed_reading(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """R6: SIGKILL the gateway 10 times at random moments while it forwards; then drain."""
    monkeypatch.setenv("OTGW_E2E_TOKEN", "e2e-secret-token")
    data = tmp_path / "data"
    rnd = random.Random()
    kills = 0
    written_at_kill = []
    with VictoriaMetrics(tmp_path) as vm, start_simulator(_profile(), tmp_path) as sim:
        cfg = _config(sim.ports["plc"], vm.url, data, batch_size=200, flush_interval=0.05)
        for i in range(10):
            gw = GatewayProcess(cfg, tmp_path, name=f"gw{i}")
            gw.start()
            try:
                wait_for(lambda gw=gw: _sink(gw)["written"] > 0, timeout=30, what="forwarding")
                time.sleep(rnd.uniform(0.05, 1.5))  # a random moment (injection, not a check)
                written_at_kill.append(_sink(gw)["written"])
            finally:
                gw.kill()  # SIGKILL by PID, mid-flush
                kills += 1
        last = GatewayProcess(cfg, tmp_path, name="final")
        last.start()
        try:
            wait_for(lambda: _sink(last)["written"] > 0, timeout=30, what="forwarding")
        finally:
            assert last.stop() == 0, last.log()
        drain = GatewayProcess(_config(1, vm.url, data), tmp_path, name="drain")
        drain.start()
        try:
            wait_for(lambda: _sink(drain)["backlog"] == 0, timeout=60, what="outbox empty")
        finally:
            assert drain.stop() == 0, drain.log()
        result = _check_sink_equals_store(data / "gateway.db", vm)
    assert kills >= 10
    assert all(w > 0 for w in written_at_kill)
    # Replays after the kills show up as identical duplicates only (checked above).
    assert result["readings"] > 1000


def test_graceful_stop_forwards_the_rest_of_the_outbox(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean stop (SIGTERM) hands a healthy sink every committed reading before exiting.

    ``flush_interval`` is 60 s and ``batch_size`` larger than what is polled, so without the
    stop-time flush the last partial batch would stay in the outbox until the next start.
    """
    monkeypatch.setenv("OTGW_E2E_TOKEN", "e2e-secret-token")
    data = tmp_path / "data"
    with VictoriaMetrics(tmp_path) as vm, start_simulator(_profile(), tmp_path) as sim:
        cfg = _config(sim.ports["plc"], vm.url, data, batch_size=100_000, flush_interval=60)
        gw = GatewayProcess(cfg, tmp_path)
        gw.start()
        try:
            # The first partial batch goes at once; the next waits for the 60 s flush interval.
            wait_for(lambda: _sink(gw)["backlog"] >= 600, timeout=60, what="600 readings queued")
        finally:
            assert gw.stop() == 0, gw.log()
        result = _check_sink_equals_store(data / "gateway.db", vm)
        assert result["readings"] >= 600
