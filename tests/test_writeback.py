"""Guarded write-back end to end: simulator process <- gateway process <- HTTP API (issue #7).

Rows: S1 (no/invalid token), S2 (viewer), S3 (writes disabled, point not writable), S4 (audit
complete, read-only, hash chain), R26 (a offline, b device exception, c timeout, d invalid
value), R17 (single-connection device), M9 (all of it). The simulator counts every write it
receives (stats ``writes``, ``write_log``), so "nothing reached the device" is asserted on the
device side, from a stats snapshot taken after the HTTP answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import GatewayConfig
from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import SimProcess, start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SITE, ASSET = "plant", "boiler"
BASE = f"/api/v1/assets/{SITE}/{ASSET}/points"
INTERVAL = 0.5
DEVICE_TIMEOUT = 0.4

VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef0123"
TOKEN_ENV = "OTGW_TEST_OPERATOR_TOKEN"  # noqa: S105 - a variable name


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def const(value: Any) -> dict[str, Any]:
    return {"kind": "constant", "value": value}


# The simulated device: (point id, simulator register, gateway point keys)
REGISTERS: list[dict[str, Any]] = [
    {"table": "holding", "address": 0, "type": "int16", "signal": const(200)},
    {"table": "holding", "address": 2, "type": "float32", "byte_order": "CDAB",
     "signal": const(12.5)},
    {"table": "holding", "address": 4, "type": "uint16", "signal": const(7)},
    {"table": "holding", "address": 5, "type": "bool", "bit": 0, "signal": const(True)},
    {"table": "holding", "address": 5, "type": "bool", "bit": 3, "signal": const(False)},
    {"table": "coil", "address": 0, "signal": const(False)},
    {"table": "holding", "address": 10, "type": "string", "length": 4, "signal": const("idle")},
    {"table": "holding", "address": 20, "type": "uint16", "signal": const(1), "on_write": 3},
    {"table": "holding", "address": 21, "type": "uint16", "signal": const(1), "on_write": 2},
    {"table": "holding", "address": 22, "type": "uint16", "signal": const(1),
     "on_write": "unanswered"},
    {"table": "holding", "address": 30, "type": "uint16", "signal": const(0)},
    {"table": "holding", "address": 31, "type": "uint16", "signal": const(0)},
    {"table": "input", "address": 0, "type": "uint16", "signal": const(3)},
]

POINTS: list[dict[str, Any]] = [
    {"id": "setpoint", "device": "plc", "register": "holding", "address": 0, "type": "int16",
     "scale": 0.1, "unit": "Cel", "writable": True, "write_range": [5, 30]},
    {"id": "flow-sp", "device": "plc", "register": "holding", "address": 2, "type": "float32",
     "byte_order": "CDAB", "unit": "m3/h", "writable": True, "range": [0, 100]},
    {"id": "locked", "device": "plc", "register": "holding", "address": 4, "type": "uint16"},
    {"id": "heater-ok", "device": "plc", "register": "holding", "address": 5, "type": "bool",
     "bit": 0},
    {"id": "alarm-ack", "device": "plc", "register": "holding", "address": 5, "type": "bool",
     "bit": 3, "writable": True, "write_range": [0, 1]},
    {"id": "pump-on", "device": "plc", "register": "coil", "address": 0, "type": "bool",
     "writable": True, "write_range": [0, 1]},
    {"id": "mode", "device": "plc", "register": "holding", "address": 10, "type": "string",
     "length": 4, "writable": True, "write_range": [0, 1]},
    {"id": "exc3", "device": "plc", "register": "holding", "address": 20, "type": "uint16",
     "writable": True, "write_range": [0, 100]},
    {"id": "exc2", "device": "plc", "register": "holding", "address": 21, "type": "uint16",
     "writable": True, "write_range": [0, 100]},
    {"id": "lost", "device": "plc", "register": "holding", "address": 22, "type": "uint16",
     "writable": True, "write_range": [0, 100]},
    {"id": "audit-a", "device": "plc", "register": "holding", "address": 30, "type": "uint16",
     "writable": True, "write_range": [0, 1000]},
    {"id": "audit-b", "device": "plc", "register": "holding", "address": 31, "type": "uint16",
     "writable": True, "write_range": [0, 1000], "offset": 100},
    {"id": "readonly", "device": "plc", "register": "input", "address": 0, "type": "uint16"},
    {"id": "remote", "device": "gone", "register": "holding", "address": 0, "type": "uint16",
     "writable": True, "write_range": [0, 10]},
]


def tokens() -> list[dict[str, Any]]:
    """One token per role: the operator's from the environment, the others as hashes."""
    return [
        {"name": "vera", "role": "viewer", "token_sha256": sha256_hex(VIEWER)},
        {"name": "otto", "role": "operator", "token": "${" + TOKEN_ENV + "}"},
        {"name": "ada", "role": "admin", "token_sha256": sha256_hex(ADMIN)},
    ]


def gateway_config(
    sim_port: int,
    data_dir: Path,
    *,
    writes: dict[str, Any] | None,
    extra_tokens: list[dict[str, Any]] | None = None,
    **api: Any,
) -> dict[str, Any]:
    auth = {"tokens": tokens() + (extra_tokens or []), **api.pop("auth", {})}
    cfg: dict[str, Any] = {
        "gateway": {"name": "write-gw", "data_dir": str(data_dir)},
        "api": {"port": 0, "auth": auth, **api},
        "reconnect": {"initial": 0.1, "max": 0.5},
        "devices": [
            {"id": "plc", "host": "127.0.0.1", "port": sim_port, "poll_interval": INTERVAL,
             "timeout": DEVICE_TIMEOUT},
            {"id": "gone", "host": "127.0.0.1", "port": free_port(), "poll_interval": INTERVAL,
             "timeout": DEVICE_TIMEOUT},
        ],
        "sites": [{"id": SITE, "assets": [{"id": ASSET, "points": POINTS}]}],
    }
    if writes is not None:
        cfg["writes"] = writes
    return cfg


@dataclass
class Plant:
    """A simulator and a gateway writing to it."""

    sim: SimProcess
    gw: GatewayProcess

    def post(self, point: str, body: Any, token: str | None = OPERATOR,
             **headers: str) -> httpx.Response:
        hdrs = dict(headers)
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        return httpx.post(f"{self.gw.url}{BASE}/{point}/write", headers=hdrs, timeout=15,
                          **kwargs)

    def get(self, path: str, token: str | None = ADMIN, **params: Any) -> httpx.Response:
        hdrs = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.gw.url + path, headers=hdrs, params=params, timeout=15)

    def device(self, after: float | None = None) -> dict[str, Any]:
        """The device's counters from a stats snapshot taken after ``after`` (default: now)."""
        since = time.time() if after is None else after
        stats = self.sim.wait_stats(lambda s: s["time"] > since, timeout=10)
        dev: dict[str, Any] = stats["devices"]["plc"]
        return dev

    def writes(self) -> int:
        return int(self.device()["writes"])

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        resp = self.get("/api/v1/audit", limit=1000, **params)
        assert resp.status_code == 200, resp.text
        entries: list[dict[str, Any]] = resp.json()["entries"]
        return entries

    def audit_of(self, resp: httpx.Response) -> dict[str, Any]:
        rid = resp.headers["X-Request-ID"]
        found = [e for e in self.audit() if e["request_id"] == rid]
        assert len(found) == 1, (rid, found)
        return found[0]

    def value(self, point: str) -> Any:
        resp = self.get(f"/api/v1/assets/{SITE}/{ASSET}")
        resp.raise_for_status()
        return next(p for p in resp.json()["points"] if p["id"] == point)["value"]


@contextlib.contextmanager
def start_plant(tmp: Path, *, writes: dict[str, Any] | None,
                sim_extra: dict[str, Any] | None = None,
                config_extra: dict[str, Any] | None = None,
                extra_tokens: list[dict[str, Any]] | None = None,
                env: dict[str, str] | None = None, **api: Any) -> Iterator[Plant]:
    """Simulator + gateway; ``api`` goes to the ``api`` section, ``config_extra`` to the top."""
    profile = {"devices": [{"id": "plc", "registers": REGISTERS, **(sim_extra or {})}]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, OPERATOR)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        with start_simulator(profile, tmp / "sim") as sim:
            cfg = gateway_config(sim.ports["plc"], tmp / "data", writes=writes,
                                 extra_tokens=extra_tokens, **api)
            cfg.update(config_extra or {})
            gw = GatewayProcess(cfg, tmp)
            gw.start()
            try:
                plant = Plant(sim, gw)
                wait_for(lambda: plant.value("setpoint") is not None, timeout=20,
                         what="first reading of the setpoint")
                yield plant
            finally:
                gw.stop()


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    """Writes enabled (timeout 3 s), the device polled every 0.5 s."""
    with start_plant(tmp_path_factory.mktemp("plant"),
                     writes={"enabled": True, "timeout": 3.0}) as p:
        yield p


# ---------------------------------------------------------------------------------------------
# S1-S3: refused before anything is sent


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token-0000000000000", "Basic b3R0bzpwdw==",
     f"Token {OPERATOR}", f"Bearer {OPERATOR}x", f"bearer  {OPERATOR} extra"],
    ids=["none", "empty", "no-token", "wrong", "basic", "other-scheme", "suffix", "two-words"],
)
def test_s1_unauthenticated_write_is_401_and_never_reaches_the_device(
    plant: Plant, authorization: str | None
) -> None:
    before = plant.writes()
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = httpx.post(f"{plant.gw.url}{BASE}/setpoint/write", json={"value": 21.0},
                      headers=headers, timeout=15)
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="ot-gateway"')
    body = resp.json()
    assert body["outcome"] == "not_sent"
    assert OPERATOR not in resp.text
    assert plant.writes() == before
    entry = plant.audit_of(resp)
    assert entry["result"] == "denied"
    assert entry["principal"] is None
    assert entry["status"] == 401
    assert entry["point"] == "setpoint"
    assert entry["client"] == "127.0.0.1"


def test_s2_viewer_token_is_403_and_never_reaches_the_device(plant: Plant) -> None:
    before = plant.writes()
    resp = plant.post("setpoint", {"value": 21.0}, token=VIEWER)
    assert resp.status_code == 403, resp.text
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert plant.writes() == before
    entry = plant.audit_of(resp)
    assert (entry["result"], entry["principal"], entry["role"]) == ("denied", "vera", "viewer")


def test_s3_point_not_writable_is_403(plant: Plant) -> None:
    before = plant.writes()
    resp = plant.post("locked", {"value": 8}, token=ADMIN)
    assert resp.status_code == 403, resp.text
    assert resp.json()["code"] == "not_writable"
    assert plant.writes() == before
    entry = plant.audit_of(resp)
    assert (entry["result"], entry["principal"]) == ("refused", "ada")


def test_s3_writes_disabled_by_default(tmp_path: Path) -> None:
    assert GatewayConfig().writes.enabled is False
    with start_plant(tmp_path, writes=None) as p:
        for point in ("setpoint", "locked", "pump-on"):
            resp = p.post(point, {"value": 21.0, "dry_run": True}, token=ADMIN)
            assert resp.status_code == 403, resp.text
            assert resp.json()["code"] == "writes_disabled"
            assert "writes are disabled" in resp.json()["detail"]
        assert p.device()["writes"] == 0
        assert p.device()["by_function"].keys() <= {"1", "3", "4"}
        assert [e["result"] for e in p.audit()] == ["refused"] * 3


def test_unknown_point_is_404(plant: Plant) -> None:
    resp = plant.post("nope", {"value": 1})
    assert resp.status_code == 404
    assert plant.audit_of(resp)["result"] == "refused"


# ---------------------------------------------------------------------------------------------
# R26 (d): invalid values are refused with 422 before the wire


INVALID: list[tuple[str, Any, str]] = [
    ("setpoint", {"value": 35}, "outside the point's write range [5, 30] Cel"),
    ("setpoint", {"value": 4.99}, "outside the point's write range"),
    ("setpoint", {"value": 21.53}, "not a multiple of the point's resolution"),
    ("setpoint", {"value": "21"}, "needs a number"),
    ("setpoint", {"value": True}, "needs a number"),
    ("setpoint", {"value": None}, ""),
    ("setpoint", {"dry_run": True}, "Field required"),
    ("setpoint", {"value": 21, "extra": 1}, "Extra inputs are not permitted"),
    ("setpoint", {"value": [21]}, ""),
    ("setpoint", b'{"value": NaN}', ""),
    ("setpoint", b'{"value": 1e400}', ""),
    ("setpoint", b"not json", ""),
    ("setpoint", b"", ""),
    ("flow-sp", {"value": 100.5}, "outside the point's write range [0, 100]"),
    ("flow-sp", {"value": "x"}, "needs a number"),
    ("pump-on", {"value": 1}, "needs true or false"),
    ("alarm-ack", {"value": "yes"}, "needs a number"),
    ("mode", {"value": 5}, "needs text"),
    ("mode", {"value": "too long text"}, "does not fit 4 registers"),
    ("mode", {"value": "caf\u00e9"}, "ASCII"),
    ("audit-a", {"value": 2.5}, "not a multiple"),
]


@pytest.mark.parametrize(("point", "body", "message"), INVALID)
def test_r26d_invalid_value_is_422_and_nothing_is_sent(
    plant: Plant, point: str, body: Any, message: str
) -> None:
    before = plant.writes()
    resp = plant.post(point, body)
    assert resp.status_code == 422, resp.text
    data = resp.json()
    assert data["outcome"] == "not_sent"
    assert message in data["detail"][0]["msg"]
    assert data["detail"][0]["loc"][0] == "body"
    assert plant.writes() == before
    entry = plant.audit_of(resp)
    assert entry["result"] == "invalid"
    assert entry["status"] == 422
    assert entry["principal"] == "otto"
    assert entry["encoded"] is None


# ---------------------------------------------------------------------------------------------
# Dry runs and real writes of every encoding


DRY: list[tuple[str, Any, Any, str, list[int]]] = [
    # point, value, raw, encoded, registers
    ("setpoint", 21.5, 215, "FC6 unit_id=1 holding 0 = 0x00D7", [0x00D7]),
    ("setpoint", 5, 50, "FC6 unit_id=1 holding 0 = 0x0032", [0x0032]),
    ("flow-sp", 42.25, 42.25, "FC16 unit_id=1 holding 2..3 = [0x0000, 0x4229]",
     [0x0000, 0x4229]),
    ("pump-on", True, True, "FC5 unit_id=1 coil 0 = ON", [1]),
    ("alarm-ack", True, True, "FC22 unit_id=1 holding 5 and_mask=0xFFF7 or_mask=0x0008",
     [0xFFF7, 0x0008]),
    ("mode", "run", "run", "FC16 unit_id=1 holding 10..13 = [0x7275, 0x6E00, 0x0000, 0x0000]",
     [0x7275, 0x6E00, 0, 0]),
    ("audit-b", 350, 250, "FC6 unit_id=1 holding 31 = 0x00FA", [250]),
]


@pytest.mark.parametrize(("point", "value", "raw", "encoded", "registers"), DRY)
def test_dry_run_shows_the_request_and_sends_nothing(
    plant: Plant, point: str, value: Any, raw: Any, encoded: str, registers: list[int]
) -> None:
    before = plant.writes()
    resp = plant.post(point, {"value": value, "dry_run": True})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["outcome"] == "dry_run"
    assert body["dry_run"] is True
    assert body["raw_value"] == raw
    assert body["encoded"] == encoded
    assert body["registers"] == registers
    assert body["confirmed_value"] is None
    assert plant.writes() == before
    entry = plant.audit_of(resp)
    assert entry["result"] == "dry_run"
    assert entry["encoded"] == encoded
    assert entry["requested"] == value


WRITES: list[tuple[str, Any, int, list[int]]] = [
    # point, value, function code, values the device received
    ("setpoint", 21.5, 6, [215]),
    ("flow-sp", 42.25, 16, [0x0000, 0x4229]),
    ("pump-on", True, 5, [1]),
    ("alarm-ack", True, 22, [0xFFF7, 0x0008]),
    ("mode", "run", 16, [0x7275, 0x6E00, 0, 0]),
]


@pytest.mark.parametrize(("point", "value", "fc", "received"), WRITES)
def test_write_reaches_the_device_once_and_is_read_back(
    plant: Plant, point: str, value: Any, fc: int, received: list[int]
) -> None:
    before = plant.device()
    resp = plant.post(point, {"value": value})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["outcome"] == "written"
    assert body["confirmed_value"] == value
    assert body["matches_request"] is True
    assert body["quality_name"] == "Good"
    after = plant.device()
    assert after["writes"] == before["writes"] + 1
    assert after["writes_applied"] == before["writes_applied"] + 1
    last = after["write_log"][-1]
    assert (last["fc"], last["values"], last["result"]) == (fc, received, "applied")
    # the polled readings show the new value too
    wait_for(lambda: plant.value(point) == value, timeout=10, what=f"{point} polled as {value}")
    entry = plant.audit_of(resp)
    assert entry["result"] == "written"
    assert entry["confirmed_value"] == value
    assert entry["encoded"] == body["encoded"]


def test_mask_write_leaves_the_other_bits_alone(plant: Plant) -> None:
    assert plant.value("heater-ok") is True
    resp = plant.post("alarm-ack", {"value": False})
    assert resp.status_code == 200, resp.text
    assert resp.json()["confirmed_value"] is False
    resp = plant.post("alarm-ack", {"value": True})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: plant.value("alarm-ack") is True, timeout=10, what="alarm-ack polled")
    assert plant.value("heater-ok") is True


def test_old_value_is_the_last_reading(plant: Plant) -> None:
    wait_for(lambda: plant.value("audit-b") == 100, timeout=10, what="audit-b reading 100")
    resp = plant.post("audit-b", {"value": 130})
    assert resp.status_code == 200, resp.text
    entry = plant.audit_of(resp)
    assert (entry["old_value"], entry["requested"], entry["raw"]) == (100, 130, 30)
    assert entry["confirmed_value"] == 130


# ---------------------------------------------------------------------------------------------
# R26 (a)-(c): failures with a clear error


@pytest.mark.parametrize(("point", "code"), [("exc3", "exception_03"), ("exc2", "exception_02")])
def test_r26b_device_exception_is_502_with_the_protocol_code(
    plant: Plant, point: str, code: str
) -> None:
    before = plant.device()
    resp = plant.post(point, {"value": 5})
    assert resp.status_code == 502, resp.text
    body = resp.json()
    assert (body["code"], body["outcome"]) == (code, "rejected")
    assert f"exception {code[-2:]}" in body["detail"]
    after = plant.device()
    assert after["writes"] == before["writes"] + 1
    assert after["writes_refused"] == before["writes_refused"] + 1
    assert after["writes_applied"] == before["writes_applied"]
    entry = plant.audit_of(resp)
    assert (entry["result"], entry["code"], entry["status"]) == ("failed", code, 502)


def test_r26c_timeout_is_outcome_unknown_and_never_resent(plant: Plant) -> None:
    before = plant.device()
    resp = plant.post("lost", {"value": 9})
    assert resp.status_code == 504, resp.text
    body = resp.json()
    assert (body["outcome"], body["code"]) == ("unknown", "timeout")
    assert "not resent" in body["detail"]
    # the device applied it but never answered; the read-back attempted after the timeout shows it
    assert body["read_back"] == {"value": 9, "quality": 0, "quality_name": "Good"}
    answered = plant.device()
    assert answered["writes"] == before["writes"] + 1
    # no resend later either: many poll cycles on, still exactly one write
    requests = answered["requests"]
    later = plant.sim.wait_stats(lambda s: s["devices"]["plc"]["requests"] >= requests + 20,
                                 timeout=30)["devices"]["plc"]
    assert later["writes"] == before["writes"] + 1
    assert later["write_log"][-1]["result"] == "applied_unanswered"
    entry = plant.audit_of(resp)
    assert (entry["result"], entry["status"], entry["code"]) == ("unknown", 504, "timeout")
    assert entry["confirmed_value"] == 9


def test_r26a_offline_device_is_503_and_nothing_is_sent(plant: Plant) -> None:
    resp = plant.post("remote", {"value": 3})
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert (body["code"], body["outcome"]) == ("offline", "not_sent")
    assert "offline" in body["detail"]
    entry = plant.audit_of(resp)
    assert (entry["result"], entry["status"]) == ("failed", 503)


def test_read_only_table_is_refused_at_config_time_and_403_at_write_time(plant: Plant) -> None:
    """A writable input/discrete point is a config error (before anything connects)."""
    from gateway.config import ConfigError, parse_config

    for table in ("input", "discrete"):
        kind = "uint16" if table == "input" else "bool"
        text = (
            "devices: [{id: d, host: 127.0.0.1, port: 5020}]\n"
            "sites: [{id: s, assets: [{id: a, points: [{id: p, device: d, "
            f"register: {table}, address: 0, type: {kind}, writable: true, "
            "write_range: [0, 1]}]}]}]\n"
        )
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert any(m.startswith("sites[0].assets[0].points[0].writable: ") and "read-only" in m
                   for m in err.value.messages), err.value.messages
    before = plant.writes()
    resp = plant.post("readonly", {"value": 3})
    assert resp.status_code == 403, resp.text
    assert plant.writes() == before


# S4: the audit log is complete, read-only and verifiable


def test_s4_every_attempt_is_audited_and_the_log_cannot_be_changed(plant: Plant) -> None:
    attempts = [
        plant.post("audit-a", {"value": 1}),  # written
        plant.post("audit-a", {"value": 2, "dry_run": True}),  # dry run
        plant.post("audit-a", {"value": 1001}),  # invalid
        plant.post("audit-a", {"value": 3}, token=None),  # denied
        plant.post("audit-a", {"value": 3}, token=VIEWER),  # denied
        plant.post("locked", {"value": 3}),  # refused
        plant.post("exc2", {"value": 3}),  # failed
        plant.post("remote", {"value": 3}),  # failed (offline)
    ]
    expected = ["written", "dry_run", "invalid", "denied", "denied", "refused", "failed",
                "failed"]
    by_id = {e["request_id"]: e for e in plant.audit()}
    got = [by_id[r.headers["X-Request-ID"]]["result"] for r in attempts]
    assert got == expected
    for resp in attempts:
        entry = by_id[resp.headers["X-Request-ID"]]
        assert entry["status"] == resp.status_code
        assert entry["at"].endswith("Z")
        assert entry["client"] == "127.0.0.1"
        assert entry["site"] == SITE
        assert resp.json()["audit_id"] == entry["id"]
    before = plant.audit()
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        for path in ("/api/v1/audit", "/api/v1/audit/verify", f"/api/v1/audit/{before[0]['id']}"):
            resp = httpx.request(method, plant.gw.url + path, json={"result": "written"},
                                 headers={"Authorization": f"Bearer {ADMIN}"}, timeout=15)
            assert resp.status_code in (404, 405), (method, path, resp.status_code)
    assert plant.audit() == before
    verify = plant.get("/api/v1/audit/verify").json()
    assert verify["ok"] is True
    assert verify["entries"] >= len(before)
    metrics = plant.get("/metrics").text
    for result in ("written", "dry_run", "invalid", "denied", "refused", "failed"):
        line = next(x for x in metrics.splitlines()
                    if x.startswith(f'otgw_audit_events_total{{result="{result}"}}'))
        assert float(line.split()[-1]) >= 1
    # read access: admin only
    assert plant.get("/api/v1/audit", token=OPERATOR).status_code == 403
    assert plant.get("/api/v1/audit", token=VIEWER).status_code == 403
    assert plant.get("/api/v1/audit", token=None).status_code == 401


def test_s4_audit_paging(plant: Plant) -> None:
    for v in range(3):
        assert plant.post("audit-a", {"value": v, "dry_run": True}).status_code == 200
    first = plant.get("/api/v1/audit", limit=2).json()
    assert len(first["entries"]) == 2
    ids = [e["id"] for e in first["entries"]]
    assert ids == sorted(ids, reverse=True)
    second = plant.get("/api/v1/audit", limit=2, before=first["next_before"]).json()
    assert second["entries"][0]["id"] < ids[-1]
    assert first["total"] == second["total"] >= 3
    dry = plant.get("/api/v1/audit", result="dry_run").json()["entries"]
    assert dry
    assert all(e["result"] == "dry_run" for e in dry)
    assert plant.get("/api/v1/audit", limit=0).status_code == 422
    assert plant.get("/api/v1/audit", result="bogus").status_code == 422


# ---------------------------------------------------------------------------------------------
# R17: a single-connection device is polled and written over one connection


def test_r17_single_connection_device_shares_the_connection(tmp_path: Path) -> None:
    """Concurrent writes while polling a device that accepts one connection and answers each
    request after 50 ms: one connection, never two requests outstanding on it, all written."""
    slow = {"kind": "latency", "start": 0, "duration": 3600, "delay": 0.05}
    with start_plant(tmp_path, writes={"enabled": True, "timeout": 10.0},
                     sim_extra={"max_connections": 1, "faults": [slow]}) as p:
        values = [5 + i for i in range(12)]
        started = time.monotonic()

        def write(v: int) -> tuple[int, float]:
            t0 = time.monotonic()
            resp = p.post("audit-a", {"value": v})
            return resp.status_code, time.monotonic() - t0

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(write, values))
        elapsed = time.monotonic() - started
        assert [s for s, _ in results] == [200] * len(values)
        dev = p.device()
        assert dev["writes"] == len(values)
        assert dev["peak_connections"] == 1
        assert dev["refused_connections"] == 0
        assert dev["connections"] == 1
        assert dev["max_outstanding"] == 1  # reads and writes serialized, never pipelined
        assert sorted(w["values"][0] for w in dev["write_log"]) == values
        # polling went on over the same connection
        requests = dev["requests"]
        p.sim.wait_stats(lambda s: s["devices"]["plc"]["requests"] > requests + 5, timeout=10)
        latencies = sorted(d for _, d in results)
        print(f"R17: {len(values)} writes (6 concurrent) in {elapsed:.2f} s; per write "
              f"median {latencies[len(latencies) // 2]:.3f} s, max {latencies[-1]:.3f} s "
              f"(poll {INTERVAL} s, timeout {DEVICE_TIMEOUT} s, device answers after 50 ms)")


# ---------------------------------------------------------------------------------------------
# Units: the write encoding (pure) and the audit table (SQLite)


@pytest.mark.parametrize("order", ["ABCD", "DCBA", "BADC", "CDAB"])
@pytest.mark.parametrize(
    ("dtype", "value"),
    [("int16", -1234), ("uint16", 54321), ("int32", -123456789), ("uint32", 3_000_000_001),
     ("int64", -(2**40) - 7), ("uint64", 2**63 + 5), ("float32", 98765.5),
     ("float64", 6.02214076e23)],
)
def test_encode_write_round_trips_through_decode(order: str, dtype: str, value: Any) -> None:
    from connectors.modbus.codec import decode, encode_write
    from connectors.modbus.config import ModbusAddress

    addr = ModbusAddress.model_validate(
        {"register": "holding", "address": 7, "type": dtype, "byte_order": order}
    )
    request = encode_write(value, addr)
    assert request.function_code == (6 if addr.width == 1 else 16)
    assert request.address == 7
    assert decode(list(request.values), addr) == (value, 0)


def test_encode_write_refuses_what_it_cannot_write() -> None:
    from connectors.modbus.codec import ReadOnlyTableError, encode_write
    from connectors.modbus.config import ModbusAddress

    def addr(**kw: Any) -> ModbusAddress:
        return ModbusAddress.model_validate({"address": 0, **kw})

    with pytest.raises(ReadOnlyTableError):
        encode_write(1, addr(register="input"))
    with pytest.raises(ReadOnlyTableError):
        encode_write(True, addr(register="discrete", type="bool"))
    for value, kw in [
        (1, {"register": "coil", "type": "bool"}),  # 1 is not a bool
        (True, {"register": "holding", "type": "int16"}),  # a bool is not a number
        (1.5, {"register": "holding", "type": "int32"}),  # not an integer
        (float("nan"), {"register": "holding", "type": "float32"}),
        (float("inf"), {"register": "holding", "type": "float64"}),
        (70000, {"register": "holding", "type": "uint16"}),
        (-1, {"register": "holding", "type": "uint32"}),
        ("x", {"register": "holding", "type": "float32"}),
        (3, {"register": "holding", "type": "string", "length": 2}),
        ("abcde", {"register": "holding", "type": "string", "length": 2}),
    ]:
        with pytest.raises(ValueError):
            encode_write(value, addr(**kw))
    long_string = addr(register="holding", type="string", length=125)
    with pytest.raises(ValueError, match="123"):
        encode_write("a", long_string)


def test_audit_table_refuses_update_and_delete_and_the_chain_detects_edits(
    tmp_path: Path,
) -> None:
    import asyncio
    import sqlite3

    from gateway.audit import AuditLog, AuditRecord

    path = tmp_path / "gw.db"

    def record(i: int) -> AuditRecord:
        return AuditRecord(
            at=f"2026-01-01T00:00:0{i}Z", request_id=f"r{i}", principal="otto",
            role="operator", client="127.0.0.1", site="s", asset="a", point="p",
            old_value=1.5, old_quality=0, requested=i, raw=i * 10, encoded="FC6",
            registers=[i], dry_run=False, result="written", status=200, code=None,
            message=None, confirmed_value=i, confirmed_quality=0,
        )

    async def fill() -> None:
        log = AuditLog(path)
        for i in range(3):
            entry = await log.append(record(i))
            assert entry.id == i + 1
        check = await log.verify()
        assert (check.ok, check.entries, check.first_bad_id) == (True, 3, None)
        await log.close()

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    for stmt in ("UPDATE audit SET result = 'denied' WHERE id = 2",
                 "DELETE FROM audit WHERE id = 3", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(stmt)
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 3
    # an edit behind SQLite's back (triggers dropped) is caught by the hash chain
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET requested = '99' WHERE id = 2")
    conn.commit()
    conn.close()

    async def check() -> None:
        log = AuditLog(path)
        result = await log.verify()
        assert (result.ok, result.first_bad_id) == (False, 2)
        entries, total = await log.page(limit=10)
        assert total == 3
        assert [e.id for e in entries] == [3, 2, 1]
        assert entries[1].record.requested == 99
        await log.close()

    asyncio.run(check())


# ---------------------------------------------------------------------------------------------
# The same route for an OPC UA point (the connector's Write service; inverse scale applies)


def test_write_to_an_opcua_point_through_the_api(tmp_path: Path) -> None:
    variables = [
        {"name": "Line/Setpoint", "type": "Double", "signal": const(50.0), "writable": True},
        {"name": "Line/Count", "type": "UInt32", "signal": const(3), "writable": True},
        {"name": "Line/Fixed", "type": "Double", "signal": const(1.0)},
    ]
    profile = {"devices": [{"id": "opc", "protocol": "opcua", "variables": variables}]}
    with pytest.MonkeyPatch.context() as mp, start_simulator(profile, tmp_path / "sim") as sim:
        mp.setenv(TOKEN_ENV, OPERATOR)
        cfg = {
            "gateway": {"data_dir": str(tmp_path / "data")},
            "api": {"port": 0, "auth": {"tokens": tokens()}},
            "writes": {"enabled": True},
            "devices": [{"id": "opc", "protocol": "opcua",
                         "endpoint": sim.ready["devices"]["opc"]["endpoint"],
                         "security_policy": "None", "insecure": True, "timeout": 1.0,
                         "discover": False}],
            "sites": [{"id": "s", "assets": [{"id": "a", "points": [
                {"id": "sp", "device": "opc", "node_id": "ns=2;s=Line.Setpoint", "scale": 2.0,
                 "writable": True, "write_range": [0, 100]},
                {"id": "count", "device": "opc", "node_id": "ns=2;s=Line.Count",
                 "writable": True, "write_range": [0, 100]},
                {"id": "fixed", "device": "opc", "node_id": "ns=2;s=Line.Fixed",
                 "writable": True, "write_range": [0, 100]},
            ]}]}],
        }
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            wait_for(lambda: all(p["value"] is not None
                                 for p in gw.get("/api/v1/assets/s/a")["points"]),
                     timeout=30, what="first OPC UA readings")

            def post(point: str, body: dict[str, Any]) -> httpx.Response:
                return httpx.post(f"{gw.url}/api/v1/assets/s/a/points/{point}/write", json=body,
                                  headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=20)

            ok = post("sp", {"value": 30})
            assert ok.status_code == 200, ok.text
            body = ok.json()
            assert (body["raw_value"], body["confirmed_value"]) == (15.0, 30.0)
            assert body["encoded"] == "Write ns=2;s=Line.Setpoint Double 15.0"
            assert body["registers"] is None
            assert post("count", {"value": 7}).json()["confirmed_value"] == 7
            assert post("count", {"value": 7.5}).status_code == 422  # not an integer (UInt32)
            refused = post("fixed", {"value": 3})
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "BadNotWritable"
            assert post("sp", {"value": 101}).status_code == 422
        finally:
            gw.stop()
