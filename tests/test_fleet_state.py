"""FleetState: messages in any order, bad input counted, offline gateways' assets unknown;
the fleet CLI refuses a bad config with key paths and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fleet.state import FleetState

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
BIRTH = json.dumps({"status": "online", "gateway": "gw1", "time": "2026-11-22T08:00:00Z",
                    "inventory": {"site_assets": {"north": ["pump", "tank"]}, "points": 5}})
ASSET = json.dumps({"site": "north", "asset": "pump", "state": "degraded", "open_gaps": 1,
                    "points_total": 3, "points_by_state": {"online": 2, "offline": 1}})
GAPS = json.dumps({"open": [{"id": "g1", "site": "north", "asset": "pump", "point": "p",
                             "cause": "stale", "start": "2026-11-22T07:59:00Z", "end": None}],
                   "recent": [{"id": "g0", "site": "north", "asset": "tank", "point": "q",
                               "cause": "timeout", "start": "2026-11-22T07:50:00Z",
                               "end": "2026-11-22T07:51:00Z"}]})
COVERAGE = json.dumps({"site": {"north": {"coverage": 0.9}},
                       "asset": {"north/pump": {"coverage": 0.8}}, "window_s": 3600})
MESSAGES = [
    ("ot/_gateway/gw1", BIRTH),
    ("ot/_gateway/gw1/assets/north/pump", ASSET),
    ("ot/_gateway/gw1/gaps", GAPS),
    ("ot/_gateway/gw1/coverage", COVERAGE),
]


def _fleet(messages: list[tuple[str, str]]) -> FleetState:
    fleet = FleetState()
    for topic, payload in messages:
        assert fleet.apply(topic, payload.encode(), NOW)
    return fleet


@settings(max_examples=30, deadline=None)
@given(st.permutations(MESSAGES))
def test_retained_messages_in_any_order_give_the_same_view(order: list[tuple[str, str]]) -> None:
    fleet = _fleet(order)
    assert fleet.asset_rows() == _fleet(MESSAGES).asset_rows()
    rows = {r["id"]: r for r in fleet.asset_rows()}
    assert rows["pump"]["state"] == "degraded"
    assert rows["pump"]["coverage"] == 0.8
    assert rows["tank"]["state"] == "unknown"  # in the birth, no state message yet
    [site] = fleet.site_rows()
    assert site["state"] == "degraded"
    assert site["coverage"] == 0.9
    assert site["open_gaps"] == 1
    assert [g["id"] for g in fleet.gap_rows()] == ["g0", "g1"]
    assert [g["id"] for g in fleet.gap_rows(open=True)] == ["g1"]


def test_death_makes_every_asset_unknown_and_birth_restores() -> None:
    fleet = _fleet(MESSAGES)
    death = json.dumps({"status": "offline", "reason": "connection lost"}).encode()
    assert fleet.apply("ot/_gateway/gw1", death, NOW)
    assert [r["state"] for r in fleet.asset_rows()] == ["unknown", "unknown"]
    assert [r["reported_state"] for r in fleet.asset_rows()] == ["degraded", "unknown"]
    [gw] = fleet.gateway_rows()
    assert (gw["status"], gw["reason"]) == ("offline", "connection lost")
    assert fleet.site_rows()[0]["state"] == "unknown"
    assert fleet.apply("ot/_gateway/gw1", BIRTH.encode(), NOW)
    assert [r["state"] for r in fleet.asset_rows()] == ["degraded", "unknown"]
    fleet.gateway_lost(NOW)  # the fleet's own link dropped: nobody can be vouched for
    assert {r["state"] for r in fleet.asset_rows()} == {"unknown"}


def test_bad_messages_are_counted_never_raised() -> None:
    fleet = _fleet(MESSAGES)
    before = fleet.asset_rows()
    bad = [
        ("ot/_gateway/gw1", b"{not json"),
        ("ot/_gateway/gw1", b"\xff\xfe"),
        ("ot/_gateway/gw1", b"[1, 2]"),
        ("ot/_gateway/gw1", b'{"status": "maybe"}'),
        ("ot/_gateway/gw1/assets/north/pump", b'{"state": 7}'),
        ("ot/_gateway/gw1/gaps", b'{"open": 1}'),
        ("ot/_gateway/gw1/what/ever", b"{}"),
        ("elsewhere/x", b"{}"),
        ("ot/_gateway/gw1", b"[" * 100_000),
    ]
    for topic, payload in bad:
        assert not fleet.apply(topic, payload, NOW)
    assert fleet.asset_rows() == before
    assert fleet.rejected == {"json": 3, "shape": 5, "topic": 1}


def test_empty_retained_payload_forgets_a_gateway() -> None:
    fleet = _fleet(MESSAGES)
    assert fleet.apply("ot/_gateway/gw1", b"", NOW)
    assert fleet.gateway_rows() == []
    assert fleet.asset_rows() == []


def test_fleet_cli_bad_config_names_key_paths(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("broker: {host: '', port: 70000}\napi: {port: 1}\nextra: 1\n")
    out = subprocess.run([sys.executable, "-m", "gateway", "fleet", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "broker.host" in out.stderr
    assert "broker.port" in out.stderr
    assert "extra" in out.stderr
    assert "Traceback" not in out.stderr
