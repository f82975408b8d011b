"""R8 disk full: the store's file system fills up under a polling gateway, then has room again.

A real tmpfs (root: ``mount -t tmpfs -o size=…``) holds the gateway's data directory; a filler
file takes the last free byte while the gateway polls the simulator. Expected (RELIABILITY R8):
the process stays alive, ENOSPC is handled (``/readyz`` 503 with ``store: failing: …``), pollers
are never blocked, memory stays bounded by ``store.max_pending_readings`` (newer readings are
dropped and counted), and once the filler is removed the gateway recovers by itself and records
the dropped readings as ``buffer_overflow`` gaps with exact bounds.
``generated = stored + dropped + in flight`` holds exactly at every scrape of ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REGISTERS = 50
INTERVAL = 0.1  # s: 500 readings/s
MAX_PENDING = 1000


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` (needs root, as `make test` does for apt)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"R8 needs a tmpfs mount (root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full (ENOSPC); returns its path."""
    filler = directory / "filler.bin"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


def metrics(gw: GatewayProcess) -> dict[str, float]:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("otgw_") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def balanced(m: dict[str, float]) -> bool:
    return m["otgw_readings_in_total"] == (
        m["otgw_readings_committed_total"] + m["otgw_ingest_dropped_total"]
        + m["otgw_ingest_pending_readings"]
    )


def test_disk_full_is_survived_counted_and_recorded_as_gaps(tmp_path: Path) -> None:
    regs = [{"table": "holding", "address": a, "type": "uint16",
             "signal": {"kind": "counter", "period": 1}} for a in range(REGISTERS)]
    profile = {"seed": 1, "devices": [{"id": "plc", "host": "127.0.0.1", "port": 0,
                                       "unit_ids": [1], "registers": regs, "faults": []}]}
    points: list[dict[str, Any]] = [
        {"id": f"r{a}", "device": "plc", "register": "holding", "address": a, "type": "uint16"}
        for a in range(REGISTERS)]
    with start_simulator(profile, tmp_path) as sim, \
            small_tmpfs(tmp_path / "data", "2m") as data:
        cfg = {
            "gateway": {"name": "full-gw", "data_dir": str(data)},
            "api": {"host": "127.0.0.1", "port": 0},
            "store": {"max_pending_readings": MAX_PENDING},
            "devices": [{"id": "plc", "host": "127.0.0.1", "port": sim.ports["plc"],
                         "poll_interval": INTERVAL, "timeout": 0.05}],
            "sites": [{"id": "site-1", "assets": [{"id": "press", "points": points}]}],
        }
        gw = GatewayProcess(cfg, tmp_path)
        try:
            gw.start()
            wait_for(lambda: metrics(gw)["otgw_readings_committed_total"] > 2000, timeout=30,
                     what="readings committed before the disk fills")
            full_at_ns = time.time_ns()
            filler = fill(data)

            def failing() -> dict[str, Any] | None:
                r = httpx.get(gw.url + "/readyz", timeout=10)
                body: dict[str, Any] = r.json()
                return body if r.status_code == 503 else None

            body = wait_for(failing, timeout=60, what="/readyz 503 while the disk is full")
            assert str(body["details"]["store"]).startswith("failing: ")
            assert "full" in str(body["details"]["store"])
            m = wait_for(lambda: (x := metrics(gw))["otgw_ingest_dropped_total"] > 0 and x,
                         timeout=30, what="readings dropped at the ingest bound")
            assert balanced(m)
            assert m["otgw_ingest_pending_readings"] <= MAX_PENDING
            committed_while_full = m["otgw_readings_committed_total"]
            assert gw.proc is not None
            assert gw.proc.poll() is None  # alive
            # Pollers go on: the device keeps being polled while nothing commits.
            polls = gw.get("/api/v1/devices")[0]["polls"]
            wait_for(lambda: gw.get("/api/v1/devices")[0]["polls"] >= polls + 10, timeout=30,
                     what="polls continue while the disk is full")

            # The device never stopped answering: while the store fails, no point goes `stale`
            # (freshness is judged as of the oldest reading waiting for its commit).
            during = [g for g in gw.get("/api/v1/gaps") if _ns(g["start"]) >= full_at_ns]
            assert during == []

            filler.unlink()  # room again: the gateway recovers by itself
            wait_for(lambda: httpx.get(gw.url + "/readyz", timeout=10).status_code == 200,
                     timeout=60, what="/readyz ready again")
            gaps = wait_for(
                lambda: [g for g in gw.get("/api/v1/gaps", open="false")
                         if g["cause"] == "buffer_overflow"],
                timeout=30, what="buffer_overflow gaps for the dropped readings")
            m = metrics(gw)
            assert balanced(m)
            assert m["otgw_readings_committed_total"] > committed_while_full
            dropped = m["otgw_ingest_dropped_total"]
            assert dropped > 0
            print(f"R8: committed {m['otgw_readings_committed_total']:.0f}, dropped {dropped:.0f}"
                  f", in {m['otgw_readings_in_total']:.0f}, {len(gaps)} ingest gaps")
            assert {g["point"] for g in gaps} == {p["id"] for p in points}
            assert all(g["id"].endswith("~ingest") for g in gaps)
            # The dropped readings count as heard from (Inventory.heard): their time is one
            # buffer_overflow gap per point, not also a stale one.
            since_full = [g for g in gw.get("/api/v1/gaps") if _ns(g["start"]) >= full_at_ns]
            assert {g["cause"] for g in since_full} == {"buffer_overflow"}
        finally:
            code = gw.stop()
        assert code == 0, gw.log()[-3000:]

        # The store (read independently) holds exactly the committed readings, none of them
        # inside its point's ingest gap.
        db = sqlite3.connect(f"file:{data / 'gateway.db'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT p.point, r.ts_ns FROM readings r "
                              "JOIN points p ON p.id = r.point_id").fetchall()
        finally:
            db.close()
        in_gap = 0
        bounds = {g["point"]: (_ns(g["start"]), _ns(g["end"])) for g in gaps}
        for point, ts in rows:
            lo, hi = bounds[point]
            in_gap += lo <= ts <= hi
        assert in_gap == 0
        assert len(rows) >= m["otgw_readings_committed_total"]  # plus what came before the stop
        assert os.path.exists(data / "gateway.db")


def _ns(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
