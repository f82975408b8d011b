"""OPC UA end to end: simulator process -> gateway process -> store -> inventory -> API.

- R18: the OPC UA server process is killed by PID and restarted on the same endpoint; the
  gateway re-creates session, subscription and monitored items without a restart of its own,
  records one gap per point whose bounds match the kill and restart times, and the server ends
  up with exactly one subscription with the same number of monitored items as before.
- The simulator's ``offline`` fault (server stopped, a new server on the same endpoint): gaps
  match the simulator's ground truth within the tolerance of the Modbus e2e test.
- A frozen value whose subscription keeps sending keep-alives is not a gap.
- Discovery: variables under the configured start node that no point maps are listed by
  ``GET /api/v1/unmapped``.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.opcua_helpers import free_port
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOL = timedelta(seconds=0.75)  # as tests/test_e2e_modbus.py: one poll interval + timeout
PUBLISHING = 0.2  # s
KEEPALIVE_COUNT = 3
WATCHDOG = 1.0  # s: liveness limit max(0.2 × 3, 1.0) + 0.5 = 1.5 s
GAP_AFTER = 2.5  # × expected interval (1.5 s for subscription points) = 3.75 s of silence


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _variables() -> list[dict[str, Any]]:
    return [
        {"name": "Line/Count", "type": "UInt32", "signal": {"kind": "counter", "period": 0.5}},
        {"name": "Line/Temp", "type": "Double", "unit": "Cel",
         "signal": {"kind": "sine", "amplitude": 5, "period": 20, "offset": 60}},
        {"name": "Line/Run", "type": "Boolean",
         "signal": {"kind": "step", "values": [0, 1], "every": 2}},
    ]


def _points(dev: str) -> list[dict[str, Any]]:
    return [
        {"id": "count", "device": dev, "node_id": "ns=2;s=Line.Count"},
        {"id": "temp", "device": dev, "node_id": "ns=2;s=Line.Temp", "unit": "Cel"},
        {"id": "run", "device": dev, "node_id": "ns=2;s=Line.Run"},
        {"id": "count-polled", "device": dev, "node_id": "ns=2;s=Line.Count", "mode": "poll",
         "poll_interval": 0.5},
    ]


def _device(dev: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"id": dev, "protocol": "opcua", "endpoint": endpoint, "security_policy": "None",
            "insecure": True, "timeout": 1.0, "publishing_interval": PUBLISHING,
            "keepalive_count": KEEPALIVE_COUNT, "watchdog": WATCHDOG, "discover": False,
            **extra}


def _config(devices: list[dict[str, Any]], assets: dict[str, list[dict[str, Any]]],
            data_dir: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "test-gw", "data_dir": str(data_dir)},
        "api": {"host": "127.0.0.1", "port": 0},
        "reconnect": {"initial": 0.1, "max": 0.2},
        "inventory": {"gap_after": GAP_AFTER},
        "devices": devices,
        "sites": [{"id": "site-1", "assets": [{"id": a, "points": pts} for a, pts in assets.items()]}],
    }


def _server(dev: str, **extra: Any) -> dict[str, Any]:
    return {"id": dev, "protocol": "opcua", "variables": _variables(), "faults": [], **extra}


def _all_good(gw: GatewayProcess, asset: str) -> bool:
    points = gw.get(f"/api/v1/assets/site-1/{asset}")["points"]
    return all(p["quality"] == 0 for p in points)


def _gaps_by_point(gaps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for g in sorted(gaps, key=lambda g: g["start"]):
        out.setdefault(g["point"], []).append(g)
    return out


def test_server_kill_and_restart_recreates_the_subscription_and_records_exact_gaps(
    tmp_path: Path,
) -> None:
    """R18: SIGKILL the server process, restart it on the same endpoint."""
    port = free_port()
    profile = {"seed": 1, "devices": [_server("opc", port=port)]}
    sim1 = start_simulator(profile, tmp_path, name="sim1")
    endpoint = sim1.ready["devices"]["opc"]["endpoint"]
    gw = GatewayProcess(_config([_device("opc", endpoint)], {"line": _points("opc")},
                                tmp_path / "data"), tmp_path)
    sim2 = None
    try:
        gw.start()
        wait_for(lambda: _all_good(gw, "line"), timeout=20, what="all points Good")
        before = sim1.wait_stats(lambda s: s["devices"]["opc"]["monitored_items"] == 3)
        killed_at = datetime.now(UTC)
        sim1.kill()
        wait_for(lambda: gw.get("/api/v1/devices")[0]["state"] == "offline", timeout=20,
                 what="device offline")
        # The outage lasts: reconnect attempts fail until the server is back.
        wait_for(lambda: "connect" in (gw.get("/api/v1/devices")[0]["last_error"] or ""),
                 timeout=20, what="a failed reconnect")
        # ... and longer than the longest expected interval (1.5 s), so every point misses at
        # least one sample (a fast restart could otherwise end it within one interval).
        wait_for(lambda: datetime.now(UTC) - killed_at > timedelta(seconds=2.5), timeout=10,
                 what="the outage to outlast one expected interval")
        sim2 = start_simulator(profile, tmp_path, name="sim2")
        assert sim2.ports["opc"] == port
        restarted_at = _ts(sim2.ready["started"])
        wait_for(lambda: not gw.get("/api/v1/gaps", open="true"), timeout=30,
                 what="every gap closed")
        assert _all_good(gw, "line")
        dev = gw.get("/api/v1/devices")[0]
        gaps = gw.get("/api/v1/gaps")
        # No process restart of the gateway, one new session, no duplicate subscription.
        after = sim2.wait_stats(lambda s: s["devices"]["opc"]["monitored_items"] == 3
                                and s["devices"]["opc"]["sessions"] == 1)
    finally:
        assert gw.stop() == 0, gw.log()
        sim1.stop()
        if sim2 is not None:
            sim2.stop()
    assert dev["reconnects"] == 1
    assert dev["link_up"] is True
    s_before, s_after = before["devices"]["opc"], after["devices"]["opc"]
    assert s_after["subscriptions"] == s_before["subscriptions"] == 1
    assert s_after["monitored_items"] == s_before["monitored_items"] == 3
    assert s_after["subscriptions_created"] == 1
    by_point = _gaps_by_point(gaps)
    assert sorted(by_point) == ["count", "count-polled", "run", "temp"]
    for point, found in by_point.items():
        (gap,) = found
        # Subscribed points lost their subscription; the polled one its device.
        want = "device_offline" if gap["point"] == "count-polled" else "subscription_lost"
        assert gap["cause"] == want, gap
        assert abs(_ts(gap["start"]) - killed_at) <= TOL, (point, gap, killed_at)
        assert abs(_ts(gap["end"]) - restarted_at) <= TOL, (point, gap, restarted_at)
        assert gap["samples_missed"] >= 1, gap
    assert gw.log().count("link lost") == 1


def test_gaps_match_the_simulator_ground_truth_for_server_outages(tmp_path: Path) -> None:
    """The simulator's offline fault: the server stops, later a new one listens on the same
    endpoint (twice); the gaps match its ground truth."""
    fault_at = 6.0  # s after the simulator started; the gateway is up well before
    faults = [
        {"kind": "offline", "start": fault_at, "duration": 2.0},
        {"kind": "offline", "start": fault_at + 5.0, "duration": 1.5},
    ]
    profile = {"seed": 2, "devices": [_server("opc", faults=faults), _server("ok")]}
    with start_simulator(profile, tmp_path) as sim:
        started = _ts(sim.ready["started"])
        devices = [_device(d, sim.ready["devices"][d]["endpoint"]) for d in ("opc", "ok")]
        gw = GatewayProcess(_config(devices, {"line": _points("opc"), "healthy": _points("ok")},
                                    tmp_path / "data"), tmp_path)
        try:
            gw.start()
            wait_for(lambda: _all_good(gw, "line") and _all_good(gw, "healthy"), timeout=20,
                     what="all points Good")
            assert datetime.now(UTC) < started + timedelta(seconds=fault_at), "gateway too slow"
            wait_for(lambda: len(sim.truth()) >= len(faults), timeout=40, what="faults over")
            wait_for(lambda: not gw.get("/api/v1/gaps", open="true"), timeout=20,
                     what="no open gap")
            gaps = gw.get("/api/v1/gaps")
        finally:
            assert gw.stop() == 0, gw.log()
        truth = sim.truth()
    windows = sorted((_ts(t["start"]), _ts(t["end"])) for t in truth if t["device"] == "opc")
    assert len(windows) == len(faults)
    invented = [g for g in gaps if g["asset"] == "healthy"]
    assert not invented, invented  # the other server of the simulator process kept serving
    by_point = _gaps_by_point([g for g in gaps if g["asset"] == "line"])
    assert sorted(by_point) == ["count", "count-polled", "run", "temp"]
    for point, found in by_point.items():
        assert len(found) == len(windows), (point, found, windows)
        for gap, (t_start, t_end) in zip(found, windows, strict=True):
            want = "device_offline" if gap["point"] == "count-polled" else "subscription_lost"
            assert gap["cause"] == want, gap
            assert abs(_ts(gap["start"]) - t_start) <= TOL, (point, gap, t_start)
            assert abs(_ts(gap["end"]) - t_end) <= TOL, (point, gap, t_end)
        for a, b in itertools.pairwise(found):
            assert _ts(a["end"]) <= _ts(b["start"])


def test_frozen_value_with_keepalives_is_not_a_gap(tmp_path: Path) -> None:
    """Report by exception: a value that stops changing while the subscription sends
    keep-alives is "no change", not "no data"."""
    stale_after = GAP_AFTER * (max(PUBLISHING * KEEPALIVE_COUNT, WATCHDOG) + 0.5)  # 3.75 s
    frozen_for = 10.0  # s
    faults = [{"kind": "frozen", "start": 4.0, "duration": frozen_for}]
    profile = {"seed": 3, "devices": [_server("opc", faults=faults)]}
    subscribed = [p for p in _points("opc") if p.get("mode") != "poll"]
    with start_simulator(profile, tmp_path) as sim:
        gw = GatewayProcess(_config([_device("opc", sim.ready["devices"]["opc"]["endpoint"])],
                                    {"line": subscribed}, tmp_path / "data"), tmp_path)
        try:
            gw.start()
            wait_for(lambda: _all_good(gw, "line"), timeout=20, what="all points Good")
            sim.wait_stats(lambda s: s["devices"]["opc"]["active_faults"] == ["frozen"],
                           timeout=15)

            def silent_longer_than_stale() -> dict[str, Any] | None:
                points = {p["id"]: p for p in gw.get("/api/v1/assets/site-1/line")["points"]}
                silence = datetime.now(UTC) - _ts(points["count"]["last_seen"])
                return points if silence > timedelta(seconds=stale_after + 1.5) else None

            # Mid-freeze: silent for longer than a stale point may be, yet no gap.
            during = wait_for(silent_longer_than_stale, timeout=15, interval=0.1,
                              what="a silence longer than the stale threshold")
            gaps_during = gw.get("/api/v1/gaps")
            frozen_still = sim.device_stats("opc")["active_faults"] == ["frozen"]
            (window,) = wait_for(sim.truth, timeout=30, what="frozen window over")
            frozen_end = _ts(window["end"])
            wait_for(lambda: all(_ts(p["last_seen"]) > frozen_end for p in
                                 gw.get("/api/v1/assets/site-1/line")["points"]
                                 if p["id"] == "count"),
                     timeout=10, what="values changing again")
            gaps = gw.get("/api/v1/gaps")
            states = {p["id"]: p["state"] for p in gw.get("/api/v1/assets/site-1/line")["points"]}
        finally:
            assert gw.stop() == 0, gw.log()
    assert frozen_still  # the silence measured above was the freeze
    assert {p["state"] for p in during.values()} == {"online"}
    assert gaps_during == []
    assert gaps == []
    assert set(states.values()) == {"online"}


def test_unmapped_variables_are_listed_by_the_api(tmp_path: Path) -> None:
    """Discovery below the configured start node; configured nodes and other devices' nodes
    with discovery off are not listed."""
    variables = [
        {"name": "Boiler1/Temp", "type": "Double", "unit": "Cel", "eu_range": [0, 200],
         "signal": {"kind": "constant", "value": 80.0}},
        {"name": "Boiler1/Pressure", "type": "Double", "unit": "bar",
         "signal": {"kind": "constant", "value": 2.5}},
        {"name": "Boiler1/Status", "type": "String", "signal": {"kind": "constant", "value": "ok"}},
        {"name": "Boiler1/History", "type": "Double", "array": 3,
         "signal": {"kind": "constant", "value": 1.0}},
        {"name": "Line/Count", "type": "UInt32", "signal": {"kind": "counter", "period": 1}},
    ]
    profile = {"seed": 1, "devices": [
        {"id": "opc", "protocol": "opcua", "variables": variables},
        {"id": "quiet", "protocol": "opcua", "variables": variables},
    ]}
    with start_simulator(profile, tmp_path) as sim:
        ep = {d: sim.ready["devices"][d]["endpoint"] for d in ("opc", "quiet")}
        devices = [
            _device("opc", ep["opc"], discover={"start": "ns=2;s=opc/Boiler1", "depth": 2}),
            _device("quiet", ep["quiet"]),  # discover: false
        ]
        points = {
            "boiler": [{"id": "temp", "device": "opc", "node_id": "ns=2;s=Boiler1.Temp"}],
            "quiet": [{"id": "temp", "device": "quiet", "node_id": "ns=2;s=Boiler1.Temp"}],
        }
        gw = GatewayProcess(_config(devices, points, tmp_path / "data"), tmp_path)
        try:
            gw.start()
            listed = wait_for(lambda: gw.get("/api/v1/unmapped"), timeout=20,
                              what="unmapped OPC UA variables")
            wait_for(lambda: _all_good(gw, "boiler"), timeout=20, what="configured point Good")
            again = gw.get("/api/v1/unmapped")
            sim_stats = sim.device_stats("quiet")
        finally:
            assert gw.stop() == 0, gw.log()
    assert again == listed  # one walk per connection: the list stays as it was
    by_node = {u["node"]: u for u in listed}
    assert sorted(by_node) == ["ns=2;s=Boiler1.History", "ns=2;s=Boiler1.Pressure",
                               "ns=2;s=Boiler1.Status"]  # not Temp (configured), not Line
    assert {u["device"] for u in listed} == {"opc"}
    pressure = by_node["ns=2;s=Boiler1.Pressure"]
    assert pressure["source"] == f"{ep['opc'].rsplit('/', 2)[0]}#ns=2;s=Boiler1.Pressure"
    assert (pressure["unit"], pressure["value_type"], pressure["sample"]) == ("bar", "number", "2.5")
    assert pressure["browse_path"] == "2:Pressure"
    assert pressure["reason"] == "not_configured"
    assert _ts(pressure["last_seen"]) <= datetime.now(UTC)
    assert by_node["ns=2;s=Boiler1.Status"]["value_type"] == "string"
    assert by_node["ns=2;s=Boiler1.History"]["value_type"] == "unsupported"
    assert sim_stats["browses"] == 0  # discovery off: the other server was never browsed
