"""Prometheus `/metrics` on a running gateway with the simulator: every RELIABILITY §8 figure,
parsed with prometheus_client's own parser and compared with the API's figures.

The plant: device ``plc`` (the simulator) serves a good point, a point whose value is outside
its configured range (Uncertain, counted as rejected ``out_of_range``), a point whose register
answers Modbus exception 02 (Bad, protocol error ``exception_02``, an open gap)
and a counter; device ``ghost`` has nothing listening (offline, ``device_offline`` gaps).
Phase 1 compares live figures that are stable in the steady state (states, gaps) and brackets
the moving ones (coverage) between two API answers; phase 2 stops the simulator so that no more
readings arrive and compares exactly (readings committed = rows in the store).
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import SimProcess, start_simulator

STATE_VALUE = {"unknown": 0, "offline": 1, "degraded": 2, "online": 3}

PROFILE = {"seed": 3, "devices": [{
    "id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1],
    "faults": [{"kind": "exception", "code": 2, "table": "input", "from": 100, "to": 100,
                "start": 0, "duration": 3600}],
    "registers": [
        {"table": "holding", "address": 0, "type": "float32",
         "signal": {"kind": "constant", "value": 12.5}},
        {"table": "holding", "address": 2, "type": "float32",
         "signal": {"kind": "constant", "value": 500.0}},
        {"table": "holding", "address": 4, "type": "uint16",
         "signal": {"kind": "counter", "period": 1}},
    ],
}]}


def _free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, sim: SimProcess) -> dict[str, Any]:
    return {
        "gateway": {"name": "metrics-gw", "data_dir": str(tmp_path / "data")},
        "api": {"host": "127.0.0.1", "port": 0},
        "devices": [
            {"id": "plc", "host": "127.0.0.1", "port": sim.ports["plc"], "poll_interval": 0.2,
             "timeout": 0.15},
            {"id": "ghost", "host": "127.0.0.1", "port": _free_port(), "poll_interval": 0.5,
             "timeout": 0.2},
        ],
        "sites": [
            {"id": "north", "assets": [
                {"id": "pump-1", "points": [
                    {"id": "flow", "device": "plc", "register": "holding", "address": 0,
                     "type": "float32", "unit": "m3/h"},
                    {"id": "temp", "device": "plc", "register": "holding", "address": 2,
                     "type": "float32", "unit": "Cel", "range": [0, 100]},
                    {"id": "fault", "device": "plc", "register": "input", "address": 100,
                     "type": "uint16"},
                ]},
                {"id": "tank-1", "points": [
                    {"id": "count", "device": "plc", "register": "holding", "address": 4,
                     "type": "uint16"},
                ]},
            ]},
            {"id": "south", "assets": [
                {"id": "meter-1", "points": [
                    {"id": "power", "device": "ghost", "register": "holding", "address": 0,
                     "type": "uint16", "unit": "kW"},
                ]},
            ]},
        ],
    }


def scrape(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus_client: {(sample name, sorted labels): value}."""
    resp = httpx.get(gw.url + "/metrics", timeout=10)
    resp.raise_for_status()
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def series(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           labels: tuple[str, ...] | None = None) -> dict[tuple[str, ...], float]:
    """The samples of one name keyed by their label values (in `labels` order, default by
    label name)."""
    out: dict[tuple[str, ...], float] = {}
    for (n, items), value in metrics.items():
        if n == name:
            found = dict(items)
            out[tuple(found[k] for k in labels or sorted(found))] = value
    return out


def one(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
        **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def _points(gw: GatewayProcess) -> Iterator[dict[str, Any]]:
    for asset in gw.get("/api/v1/assets"):
        yield from gw.get(f"/api/v1/assets/{asset['site']}/{asset['id']}")["points"]


def _steady(gw: GatewayProcess) -> bool:
    devices = {d["id"]: d for d in gw.get("/api/v1/devices")}
    open_gaps = {g["point"] for g in gw.get("/api/v1/gaps", open="true")}
    states = {p["id"]: p["state"] for p in _points(gw)}
    return (devices["plc"]["state"] == "degraded" and devices["ghost"]["state"] == "offline"
            and open_gaps == {"fault", "power"}
            and states == {"flow": "online", "temp": "online", "fault": "degraded",
                           "count": "online", "power": "offline"})


def _coverage(gw: GatewayProcess, group_by: str) -> dict[str, dict[str, Any]]:
    """``/api/v1/coverage`` rows by group, plus ``""``: the window end as Unix time."""
    body = gw.get("/api/v1/coverage", window=3600, group_by=group_by)
    rows: dict[str, dict[str, Any]] = {row["group"]: row for row in body["rows"]}
    rows[""] = {"end": datetime.fromisoformat(body["window_end"]).timestamp()}
    return rows


def _check_coverage(m: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                    before: dict[str, dict[str, dict[str, Any]]],
                    after: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Coverage series lie between two API answers (both only grow while the gateway has run
    for less than the 1 h window) and are consistent with each other."""
    end = one(m, "otgw_coverage_window_end_timestamp_seconds")
    assert before["site"][""]["end"] <= end <= after["site"][""]["end"]
    assert one(m, "otgw_coverage_window_seconds") == 3600
    for level in ("site", "asset"):
        labels = ("site",) if level == "site" else ("site", "asset")
        ratio = series(m, f"otgw_{level}_coverage_ratio", labels)
        expected = series(m, f"otgw_{level}_expected_samples", labels)
        received = series(m, f"otgw_{level}_received_samples", labels)
        assert {"/".join(k) for k in ratio} | {""} == set(before[level]) == set(after[level])
        for key, value in ratio.items():
            group = "/".join(key)
            lo, hi = before[level][group], after[level][group]
            assert lo["expected"] <= expected[key] <= hi["expected"], (group, level)
            assert lo["received"] <= received[key] <= hi["received"], (group, level)
            assert value == (received[key] / expected[key] if expected[key] else 1.0)
    assets = series(m, "otgw_asset_received_samples", ("site", "asset"))
    for (site,), value in series(m, "otgw_site_received_samples").items():
        assert value == sum(v for k, v in assets.items() if k[0] == site)


def _stored_rows(gw: GatewayProcess) -> int:
    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    end = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return len(gw.get("/api/v1/readings", points="*", quality="all", start=start, end=end))


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_metrics_match_the_api_on_a_running_gateway(tmp_path: Path) -> None:
    with start_simulator(PROFILE, tmp_path) as sim:
        gw = GatewayProcess(_config(tmp_path, sim), tmp_path).start()
        try:
            wait_for(lambda: _steady(gw), timeout=40, what="steady states and gaps")
            wait_for(lambda: one(scrape(gw), "otgw_polls_total", device="plc") >= 10,
                     timeout=30, what="10 polls of plc")

            # -- phase 1: live ------------------------------------------------------------------
            before = {g: _coverage(gw, g) for g in ("site", "asset")}
            m = scrape(gw)
            after = {g: _coverage(gw, g) for g in ("site", "asset")}
            devices = {d["id"]: d for d in gw.get("/api/v1/devices")}
            gaps = gw.get("/api/v1/gaps", open="true")
            points = list(_points(gw))

            # per device: state, link, polling, protocol errors by kind
            assert series(m, "otgw_device_state") == {
                (d,): STATE_VALUE[v["state"]] for d, v in devices.items()}
            assert series(m, "otgw_device_link_up") == {("plc",): 1.0, ("ghost",): 0.0}
            assert series(m, "otgw_device_reconnects_total") == {("plc",): 0.0, ("ghost",): 0.0}
            assert one(m, "otgw_polls_total", device="plc") >= 10
            assert one(m, "otgw_requests_total", device="plc") >= one(
                m, "otgw_polls_total", device="plc")
            latency = one(m, "otgw_poll_latency_seconds", device="plc")
            assert 0 < latency < 0.15  # within the configured timeout
            assert one(m, "otgw_protocol_errors_total", device="plc", kind="exception_02") > 0
            assert one(m, "otgw_overruns_total", device="plc") >= 0
            assert one(m, "otgw_ts_adjusted_total", device="plc") == 0  # Modbus has no times

            # readings in/out, rejected by reason
            committed = one(m, "otgw_readings_committed_total")
            assert one(m, "otgw_readings_in_total") >= committed > 0
            assert one(m, "otgw_commit_batches_total") > 0
            assert one(m, "otgw_rejected_total", source="pipeline", reason="out_of_range") > 0
            assert one(m, "otgw_rejected_total", source="pipeline", reason="non_finite") == 0
            assert one(m, "otgw_rejected_total", source="pipeline", reason="unknown_point") == 0

            # inventory: points by state, open gaps (by cause)
            want = dict.fromkeys(("online", "degraded", "offline", "unknown"), 0.0)
            for p in points:
                want[p["state"]] += 1
            assert series(m, "otgw_points") == {(st,): n for st, n in want.items()}
            assert one(m, "otgw_open_gaps") == len(gaps) == 2
            by_cause = series(m, "otgw_open_gaps_by_cause")
            assert {c: n for (c,), n in by_cause.items() if n} == {
                c: float(n) for c, n in Counter(g["cause"] for g in gaps).items()}
            assert by_cause[("device_offline",)] == 1  # the ghost's point
            assert one(m, "otgw_gaps_opened_total") >= 2

            # event loop, buffer, process
            assert 0 <= one(m, "otgw_loop_lag_seconds") < 5
            assert one(m, "otgw_buffer_records") == 0  # no sink: nothing waits to be sent
            assert one(m, "otgw_buffer_dropped_total") == 0
            assert one(m, "otgw_buffer_bytes") > 0
            assert one(m, "otgw_buffer_limit_bytes") > one(m, "otgw_buffer_bytes")
            assert one(m, "process_resident_memory_bytes") > 10e6

            # coverage per site and asset (never per point), between the two API answers
            _check_coverage(m, before, after)
            cov = series(m, "otgw_asset_coverage_ratio", ("site", "asset"))
            assert cov[("south", "meter-1")] == 0  # the ghost
            assert cov[("north", "tank-1")] > 0.5
            assert not any(k == "point" for _, labels in m for k, _v in labels)  # cardinality

            # -- phase 2: no more data: exact figures -------------------------------------------
            sim.stop()
            wait_for(lambda: gw.get("/api/v1/devices")[0]["state"] == "offline", timeout=20,
                     what="plc offline")

            def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                first = scrape(gw)
                rows = _stored_rows(gw)
                second = scrape(gw)
                c1 = one(first, "otgw_readings_committed_total")
                c2 = one(second, "otgw_readings_committed_total")
                # commits are grouped (store.commit_interval): wait for the last one too
                pending = one(second, "otgw_ingest_pending_readings")
                return second if c1 == c2 == rows and pending == 0 else None

            m = wait_for(settled, timeout=20, what="committed readings = rows in the store")
            assert one(m, "otgw_readings_in_total") == one(m, "otgw_readings_committed_total")
            assert one(m, "otgw_ingest_dropped_total") == 0
            assert one(m, "otgw_device_state", device="plc") == STATE_VALUE["offline"]
            before = {g: _coverage(gw, g) for g in ("site", "asset")}
            m = scrape(gw)
            after = {g: _coverage(gw, g) for g in ("site", "asset")}
            _check_coverage(m, before, after)
        finally:
            assert gw.stop() == 0, gw.log()
