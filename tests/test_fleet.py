"""Many sites, one view (issue #9): 10 gateway processes, Debian mosquitto, the fleet view,
victoria-metrics as the central InfluxDB v2 write API.

Each gateway serves its own site from one simulator process (10 Modbus devices) and publishes
its state northbound; the fleet view (`python -m gateway.fleet`) subscribes. Checked:

* all 10 sites online in the fleet view with their assets, gaps and coverage;
* a gateway killed by PID → its site's gateway offline, every one of its assets ``unknown``;
  restarted → online again with the same assets (from its birth and retained states);
* a gateway whose network path is cut (a black-hole TCP proxy: no FIN/RST) → offline via its
  last will, which the broker publishes after 1.5 × keepalive; path back → online;
* the fleet lists a gap of a site whose device the simulator drops;
* every reading committed by every gateway is in victoria-metrics (no loss), counted per site.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gw_helpers import GatewayProcess, wait_for
from tests.mosquitto_helpers import Mosquitto
from tests.sim_helpers import start_simulator
from tests.test_mqtt_delivery import BlackholeProxy
from tests.vm_helpers import VictoriaMetrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

SITES = 10
KEEPALIVE = 5  # s, the gateways' northbound keepalive
CUT = 4  # the gateway whose network path is cut
KILLED = 2  # the gateway killed by PID


def _profile() -> dict[str, Any]:
    devices = []
    for i in range(SITES):
        regs = [{"table": "holding", "address": a, "type": "uint16",
                 "signal": {"kind": "counter", "period": 0.5}} for a in range(4)]
        faults = []
        if i == 7:  # site-7's device drops out for a while: a gap the fleet must list
            faults = [{"kind": "offline", "start": 25.0, "duration": 5.0}]
        devices.append({"id": f"plc{i}", "host": "127.0.0.1", "port": 0, "unit_ids": [1],
                        "registers": regs, "faults": faults})
    return {"seed": 9, "devices": devices}


def _gw_config(i: int, sim_port: int, broker_port: int, vm_url: str, data: Path) -> dict[str, Any]:
    points = [{"id": f"p{a}", "device": "plc", "register": "holding", "address": a,
               "type": "uint16"} for a in range(4)]
    return {
        "gateway": {"name": f"gw{i}", "data_dir": str(data)},
        "api": {"port": 0},
        "reconnect": {"initial": 0.1, "max": 0.5},
        "northbound": {"mqtt": {"host": "127.0.0.1", "port": broker_port, "qos": 0,
                                "keepalive": KEEPALIVE, "reconnect_initial": 0.2,
                                "reconnect_max": 1.0}},
        "sinks": [{"type": "influxdb", "name": "central", "url": vm_url, "org": "fleet",
                   "bucket": "ot", "batch_size": 1000, "flush_interval": 0.5,
                   "max_retry_delay": 1.0}],
        "devices": [{"id": "plc", "host": "127.0.0.1", "port": sim_port, "poll_interval": 0.5,
                     "timeout": 0.4}],
        "sites": [{"id": f"site-{i}", "assets": [
            {"id": "line-a", "points": points[:2]},
            {"id": "line-b", "points": points[2:]},
        ]}],
    }


class FleetProcess:
    def __init__(self, broker_port: int, workdir: Path) -> None:
        self.workdir = workdir
        cfg = {"broker": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5},
               "api": {"port": 0}}
        (workdir / "fleet.yaml").write_text(yaml.safe_dump(cfg))
        ready = workdir / "fleet.ready.json"
        self.log_path = workdir / "fleet.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "fleet", "-c", str(workdir / "fleet.yaml"),
                 "--api-port", "0", "--ready-file", str(ready)],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        self.port = wait_for(lambda: ready.exists() and ready.read_text().strip() and
                             json.loads(ready.read_text())["api_port"], timeout=30,
                             what="fleet ready")

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"http://127.0.0.1:{self.port}{path}", params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def gateway(self, name: str) -> dict[str, Any] | None:
        return next((g for g in self.get("/api/v1/gateways") if g["name"] == name), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def _store_counts(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def _sink(gw: GatewayProcess) -> dict[str, Any]:
    sinks: list[dict[str, Any]] = httpx.get(gw.url + "/readyz", timeout=10).json()[
        "details"]["sinks"]
    return sinks[0]


def test_ten_sites_one_view(tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    gateways: list[GatewayProcess] = []
    fleet: FleetProcess | None = None
    proxy: BlackholeProxy | None = None
    try:
        with Mosquitto(tmp_path / "broker") as broker, \
                start_simulator(_profile(), tmp_path / "sim") as sim:
            fleet = FleetProcess(broker.port, tmp_path)
            proxy = BlackholeProxy(broker.port)
            for i in range(SITES):
                port = proxy.port if i == CUT else broker.port
                gw = GatewayProcess(
                    _gw_config(i, sim.ports[f"plc{i}"], port, vm.url, tmp_path / f"data{i}"),
                    tmp_path, name=f"gw{i}")
                gateways.append(gw.start())

            def all_online() -> list[dict[str, Any]] | None:
                sites = fleet.get("/api/v1/sites")  # type: ignore[union-attr]
                ok = len(sites) == SITES and all(
                    s["state"] == "online" and s["assets_total"] == 2 for s in sites)
                return sites if ok else None

            sites = wait_for(all_online, timeout=90, what="10 sites online in the fleet view")
            assert [s["id"] for s in sites] == [f"site-{i}" for i in range(SITES)]
            assert all(s["gateways"] == [{"name": f"gw{i}", "status": "online"}]
                       for i, s in enumerate(sites))
            assets = fleet.get("/api/v1/assets", site="site-3")
            assert [(a["id"], a["state"], a["points_total"]) for a in assets] == [
                ("line-a", "online", 2), ("line-b", "online", 2)]
            # Coverage crosses the broker too (published every 30 s, first at start).
            wait_for(lambda: all(s["coverage"] is not None for s in fleet.get("/api/v1/sites")),
                     timeout=60, what="coverage of every site")

            # The simulator drops site-7's device: the fleet lists its gaps.
            gaps = wait_for(lambda: fleet.get("/api/v1/gaps", site="site-7") or None,
                            timeout=60, what="site-7 gaps in the fleet view")
            assert {g["cause"] for g in gaps} <= {"device_offline", "timeout", "stale"}
            assert {g["point"] for g in gaps} == {"p0", "p1", "p2", "p3"}
            assert all(g["gateway"] == "gw7" for g in gaps)

            # Kill one gateway by PID: its site's gateway goes offline, its assets unknown.
            gateways[KILLED].kill()
            wait_for(lambda: fleet.gateway(f"gw{KILLED}")["status"] == "offline",  # type: ignore[index]
                     timeout=3 * KEEPALIVE, what="killed gateway offline")
            assert fleet.gateway(f"gw{KILLED}")["reason"] == "connection lost"  # type: ignore[index]
            killed_assets = fleet.get("/api/v1/assets", site=f"site-{KILLED}")
            assert [(a["id"], a["state"]) for a in killed_assets] == [
                ("line-a", "unknown"), ("line-b", "unknown")]
            site = next(s for s in fleet.get("/api/v1/sites") if s["id"] == f"site-{KILLED}")
            assert site["state"] == "unknown"
            assert site["gateways"] == [{"name": f"gw{KILLED}", "status": "offline"}]
            # The other sites are untouched.
            others = [s for s in fleet.get("/api/v1/sites") if s["id"] != f"site-{KILLED}"]
            assert all(s["gateways"][0]["status"] == "online" for s in others)

            # Cut the network path of another (half-open: no FIN/RST): the broker notices the
            # silence after 1.5 x keepalive and publishes its last will.
            proxy.blackhole(True)
            t_cut = time.monotonic()
            wait_for(lambda: fleet.gateway(f"gw{CUT}")["status"] == "offline",  # type: ignore[index]
                     timeout=4 * KEEPALIVE + 10, what="cut gateway offline")
            detected_s = time.monotonic() - t_cut
            assert [a["state"] for a in fleet.get("/api/v1/assets", site=f"site-{CUT}")] == [
                "unknown", "unknown"]

            # Back: restart the killed one, restore the path; both online with the same assets.
            gateways[KILLED].start()
            proxy.blackhole(False)
            for i in (KILLED, CUT):
                wait_for(lambda i=i: [(a["id"], a["state"]) for a in fleet.get(
                    "/api/v1/assets", site=f"site-{i}")] == [("line-a", "online"),
                                                             ("line-b", "online")],
                         timeout=60, what=f"site-{i} online again")
                assert fleet.gateway(f"gw{i}")["status"] == "online"  # type: ignore[index]

            # No loss: every gateway's outbox drains into victoria-metrics.
            for gw in gateways:
                wait_for(lambda gw=gw: _sink(gw)["backlog"] == 0, timeout=60, what="drained")
            for gw in gateways:
                assert gw.stop() == 0, gw.log()
    finally:
        for gw in gateways:
            gw.stop()
        if fleet is not None:
            fleet.stop()
        if proxy is not None:
            proxy.close()
    try:
        stored = {f"site-{i}": _store_counts(tmp_path / f"data{i}" / "gateway.db")
                  for i in range(SITES)}
        deadline = time.monotonic() + 30
        while True:
            in_vm: dict[str, int] = {}
            for s in vm.samples('{__name__="reading_quality"}'):
                in_vm[s.site] = in_vm.get(s.site, 0) + 1
            if in_vm == stored or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert in_vm == stored
        assert all(n > 50 for n in stored.values())
    finally:
        vm.stop()
    print(f"half-open gateway detected offline after {detected_s:.1f} s "
          f"(bound 1.5 x {KEEPALIVE} s keepalive + broker check)")
