"""API security against a real gateway process and the simulator: S7, S8, S9, S12, S15, M10/M11.

- S7/M11: request bodies over ``api.max_body_bytes`` get 413 before they are read (declared and
  chunked), and a 10 MiB body does not grow the gateway's memory.
- S8: injection-shaped ids on the write route give 404/422, never 5xx.
- S9/M10: the default config listens on 127.0.0.1 only, CORS is off, unknown Host headers are
  refused; CORS answers only for configured origins.
- S12: sentinel secrets (API tokens from the environment and as a hash, an InfluxDB token for a
  sink that answers 401) never appear in the log, any response, /metrics, the audit log or the
  store file; the store file is mode 0600.
- S15: an API flood (bad tokens, reads, dry runs) answers only 2xx/4xx, and the device's
  polling goes on without a gap.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.gw_helpers import wait_for
from tests.test_writeback import OPERATOR, SITE, VIEWER, Plant, sha256_hex, start_plant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WRITE = f"/api/v1/assets/{SITE}/boiler/points/setpoint/write"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    """Default API settings (host, CORS, body limit); writes enabled."""
    with start_plant(tmp_path_factory.mktemp("sec"), writes={"enabled": True}) as p:
        yield p


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


# ---------------------------------------------------------------------------------------------
# S9 / M10: safe defaults


def test_s9_default_config_listens_on_loopback_only(plant: Plant) -> None:
    assert plant.gw.proc is not None
    listening = [
        c.laddr for c in psutil.Process(plant.gw.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening == [("127.0.0.1", plant.gw.port)]


def test_s9_cors_is_off_by_default(plant: Plant) -> None:
    origin = {"Origin": "http://evil.example"}
    resp = httpx.get(plant.gw.url + "/api/v1/sites", headers=origin, timeout=10)
    assert resp.status_code == 200
    assert not any(h.startswith("access-control-") for h in resp.headers)
    preflight = httpx.options(
        plant.gw.url + WRITE, timeout=10,
        headers={**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers


def test_s9_unknown_host_header_is_refused(plant: Plant) -> None:
    resp = httpx.get(plant.gw.url + "/api/v1/sites", headers={"Host": "evil.example"}, timeout=10)
    assert resp.status_code == 400


def test_s9_cors_answers_configured_origins_only(tmp_path: Path) -> None:
    allowed = "https://hmi.plant.example"
    with start_plant(tmp_path, writes=None, cors_origins=[allowed]) as p:
        ok = httpx.options(
            p.gw.url + WRITE, timeout=10,
            headers={"Origin": allowed, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-credentials" not in ok.headers
        other = httpx.get(p.gw.url + "/api/v1/sites", headers={"Origin": "http://evil.example"},
                          timeout=10)
        assert "access-control-allow-origin" not in other.headers
        same = httpx.get(p.gw.url + "/api/v1/sites", headers={"Origin": allowed}, timeout=10)
        assert same.headers["access-control-allow-origin"] == allowed


# ---------------------------------------------------------------------------------------------
# S7 / M11: body size limit


def test_s7_oversized_body_is_413_without_reading_it(plant: Plant) -> None:
    assert plant.gw.proc is not None
    pid = plant.gw.proc.pid
    before_rss = rss(pid)
    before = plant.writes()
    big = b'{"value": 1, "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    resp = httpx.post(plant.gw.url + WRITE, content=big, timeout=30,
                      headers={"Authorization": f"Bearer {OPERATOR}",
                               "Content-Type": "application/json"})
    assert resp.status_code == 413
    assert "too large" in resp.json()["detail"]
    grown = rss(pid) - before_rss
    assert grown < 20 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB"
    assert plant.writes() == before
    print(f"S7: 10 MiB body -> 413; gateway RSS change {grown / 2**20:+.1f} MiB")


def test_s7_chunked_body_over_the_limit_is_413(plant: Plant) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"value": 1, "pad": "'
        for _ in range(64):
            yield b"y" * 4096
        yield b'"}'

    resp = httpx.post(plant.gw.url + WRITE, content=chunks(), timeout=30,
                      headers={"Authorization": f"Bearer {OPERATOR}"})
    assert resp.status_code == 413


@pytest.mark.parametrize("chunked", [False, True])
def test_s7_body_within_the_limit_reaches_the_route(plant: Plant, chunked: bool) -> None:
    body = b'{"value": 21, "pad": "' + b"z" * 60_000 + b'"}'
    content: Any = iter([body[:30_000], body[30_000:]]) if chunked else body
    resp = httpx.post(plant.gw.url + WRITE, content=content, timeout=30,
                      headers={"Authorization": f"Bearer {OPERATOR}"})
    assert resp.status_code == 422  # the extra key, not the size
    assert resp.json()["detail"][0]["loc"] == ["body", "pad"]


# ---------------------------------------------------------------------------------------------
# S8: injection-shaped ids on the write route


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/assets/plant/boiler/points/..%2f..%2fetc/write",
        "/api/v1/assets/plant/boiler/points/%2e%2e/write",
        "/api/v1/assets/plant/boiler/points/a%00b/write",
        "/api/v1/assets/plant/boiler/points/%C3%A9t%C3%A9/write",
        "/api/v1/assets/plant/boiler/points/'%20OR%201=1--/write",
        "/api/v1/assets/plant/boiler/points/" + "a" * 10240 + "/write",
        "/api/v1/assets/plant/../boiler/points/setpoint/write",
        "/api/v1/assets/plant%2Fboiler/x/points/setpoint/write",
    ],
)
def test_s8_injection_ids_on_the_write_route(plant: Plant, path: str) -> None:
    before = plant.writes()
    resp = httpx.post(plant.gw.url + path, json={"value": 21},
                      headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10)
    assert resp.status_code in (404, 405, 422), resp.text[:200]
    assert "Traceback" not in resp.text
    assert plant.writes() == before


# ---------------------------------------------------------------------------------------------
# S12: secrets hygiene


class Unauthorized(http.server.BaseHTTPRequestHandler):
    """An InfluxDB stand-in that refuses every write with 401 and records what it got."""

    seen: list[str] = []  # noqa: RUF012 - shared by the handler instances of one test

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append(self.headers.get("Authorization") or "")
        body = b'{"code":"unauthorized","message":"unauthorized access"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_s12_sentinel_secrets_never_leak(tmp_path: Path) -> None:
    api_token = "SENTINEL-api-token-7f3a9c1e5b"  # noqa: S105 - the sentinel
    hashed_token = "SENTINEL-hashed-token-2d8e4f6a"  # noqa: S105 - the sentinel
    influx_token = "SENTINEL-influx-token-9b1c3d5e"  # noqa: S105 - the sentinel
    sentinels = ("SENTINEL", api_token, hashed_token, influx_token)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    Unauthorized.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen_text: list[str] = []
    try:
        sink = {"type": "influxdb", "name": "tsdb", "org": "o", "bucket": "b",
                "url": f"http://127.0.0.1:{server.server_address[1]}",
                "token": "${OTGW_TEST_INFLUX_TOKEN}", "flush_interval": 0.2}
        extra = [
            {"name": "sentry", "role": "admin", "token": "${OTGW_TEST_ADMIN_TOKEN}"},
            {"name": "hashy", "role": "operator", "token_sha256": sha256_hex(hashed_token)},
        ]
        env = {"OTGW_TEST_ADMIN_TOKEN": api_token, "OTGW_TEST_INFLUX_TOKEN": influx_token}
        with start_plant(tmp_path, writes={"enabled": True}, extra_tokens=extra, env=env,
                         config_extra={"sinks": [sink]}) as p:
            responses: list[httpx.Response] = []

            def call(method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
                resp = httpx.request(method, p.gw.url + path, headers=headers, timeout=15, **kw)
                responses.append(resp)
                return resp

            assert call("GET", "/api/v1/audit", api_token).status_code == 200
            assert call("POST", WRITE, hashed_token, json={"value": 22}).status_code == 200
            assert call("POST", WRITE, api_token, json={"value": 23, "dry_run": True}
                        ).status_code == 200
            assert call("POST", WRITE, api_token, json={"value": 99}).status_code == 422
            for wrong in (api_token + "x", api_token[:-1], f"{hashed_token} {api_token}",
                          sha256_hex(hashed_token)):
                assert call("POST", WRITE, wrong, json={"value": 22}).status_code == 401
                assert call("GET", "/api/v1/audit", wrong).status_code == 401
            call("GET", "/api/v1/audit", VIEWER)
            call("GET", "/api/v1/sinks", None)
            call("GET", "/readyz", None)
            call("GET", "/healthz", None)
            call("GET", "/openapi.json", None)
            # the sink has been refused with 401 at least twice (with the real token)
            wait_for(lambda: len(Unauthorized.seen) >= 2, timeout=30, what="sink attempts")
            assert influx_token in Unauthorized.seen[0]
            wait_for(lambda: "401" in p.gw.log() or "nauthorized" in p.gw.log(), timeout=30,
                     what="the sink failure in the log")
            call("GET", "/api/v1/sinks", None)
            call("GET", "/metrics", None)
            audit = call("GET", "/api/v1/audit", api_token, params={"limit": 1000})
            assert audit.json()["total"] == 7  # 1 write, 1 dry run, 1 invalid, 4 denied
            for resp in responses:
                seen_text.append(resp.text)
                seen_text.extend(f"{k}: {v}" for k, v in resp.headers.items())
        # after a clean stop: the log, the store file (and WAL), every file in the data dir
        seen_text.append(p.gw.log())
        data_files = [f for f in (tmp_path / "data").rglob("*") if f.is_file()]
        assert data_files
        for f in data_files:
            seen_text.append(f.read_bytes().decode("latin-1"))
        store = tmp_path / "data" / "gateway.db"
        assert os.stat(store).st_mode & 0o777 == 0o600
        config_text = p.gw.config_path.read_text()
        assert "${OTGW_TEST_ADMIN_TOKEN}" in config_text
        seen_text.append(config_text)
    finally:
        server.shutdown()
        server.server_close()
    everything = "\n".join(seen_text)
    for sentinel in sentinels:
        at = everything.find(sentinel)
        assert at < 0, f"{sentinel!r} leaked: ...{everything[max(0, at - 200):at + 100]!r}"


# ---------------------------------------------------------------------------------------------
# S15: an API flood does not disturb acquisition


def test_s15_api_flood_answers_4xx_and_polling_goes_on(plant: Plant) -> None:
    gaps_before = {g["id"] for g in plant.get("/api/v1/gaps").json()
                   if g["point"] in ("setpoint", "flow-sp")}
    start_requests = plant.device()["requests"]

    async def flood() -> list[int]:
        # no keep-alive: a pooled connection reused just as uvicorn closes it for idleness
        # (timeout_keep_alive 5 s) fails on the client side, which is not what is tested here
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        attacker = httpx.AsyncClient(
            base_url=plant.gw.url, limits=limits, timeout=60,
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3", limits=limits),
        )
        friend = httpx.AsyncClient(base_url=plant.gw.url, limits=limits, timeout=60)
        async with attacker, friend:
            calls = []
            for i in range(500):
                kind = i % 4
                if kind == 0:
                    calls.append(attacker.post(WRITE, json={"value": 21},
                                               headers={"Authorization": f"Bearer bad-{i}"}))
                elif kind == 1:
                    calls.append(friend.get("/api/v1/assets"))
                elif kind == 2:
                    calls.append(friend.post(WRITE, json={"value": 20, "dry_run": True},
                                             headers={"Authorization": f"Bearer {OPERATOR}"}))
                else:
                    calls.append(friend.get("/api/v1/readings", params={"points": "*/*/*"}))
            results = await asyncio.gather(*calls, return_exceptions=True)
        statuses = []
        for r in results:
            assert not isinstance(r, BaseException), repr(r)
            statuses.append(r.status_code)
        return statuses

    statuses = asyncio.run(flood())
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert set(statuses) <= {200, 401, 429}
    assert statuses.count(429) > 0
    # acquisition went on: the device keeps being polled, no new gap on its points
    plant.sim.wait_stats(
        lambda s: s["devices"]["plc"]["requests"] > start_requests + 10, timeout=15
    )
    gaps_after = {g["id"] for g in plant.get("/api/v1/gaps").json()
                  if g["point"] in ("setpoint", "flow-sp")}
    assert gaps_after == gaps_before
    device = next(d for d in plant.get("/api/v1/devices").json() if d["id"] == "plc")
    assert device["link_up"] is True
    print(f"S15: 500 concurrent requests: {statuses.count(200)} x 200, "
          f"{statuses.count(401)} x 401, {statuses.count(429)} x 429; "
          f"device overruns so far {device['overruns']}")
