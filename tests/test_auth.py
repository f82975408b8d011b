"""API authentication (RFC 6750 bearer tokens, roles, failed-auth rate limit): S1, S2, S5, S9.

Unit tests of `gateway.api.auth` (with an injected monotonic clock for the sliding window, no
sleeps), then the whole app served by uvicorn (`ApiServer`) on a loopback port with a real
`Inventory` and `Store`: two client addresses (127.0.0.1 and 127.0.0.2) show that a
brute-forcing client is limited while another keeps working.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.api.app import create_app
from gateway.api.auth import (
    AuthDenied,
    Authenticator,
    FailedAuthLimiter,
    Principal,
    TokenVerifier,
    token_digest,
)
from gateway.api.server import ApiServer
from gateway.config import ApiAuthConfig, ApiTokenConfig, GatewayConfig, parse_config
from gateway.store import Store
from tests.test_api import build_ctx

pytestmark = pytest.mark.timeout(60)

VIEWER = "viewer-secret-token-000000000001"
OPERATOR = "operator-secret-token-0000000002"
ADMIN = "admin-secret-token-00000000000003"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def auth_config(**extra: Any) -> ApiAuthConfig:
    return ApiAuthConfig(
        tokens=[
            ApiTokenConfig(name="vera", role="viewer", token_sha256=sha(VIEWER)),
            ApiTokenConfig(name="otto", role="operator", token=SecretStr(OPERATOR)),
            ApiTokenConfig(name="ada", role="admin", token_sha256=sha(ADMIN)),
        ],
        **extra,
    )


class Clock:
    """A settable monotonic clock for the sliding window."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------------------------------
# Tokens and roles


def test_digest_matches_the_documented_shell_one_liner() -> None:
    token = "my-Token/with+chars=ÄÖ"  # noqa: S105 - test data
    out = subprocess.run(
        ["sh", "-c", 'printf %s "$T" | sha256sum'], env={"T": token, "LC_ALL": "C.UTF-8"},
        capture_output=True, text=True, check=True,
    ).stdout.split()[0]
    assert out == token_digest(token).hex() == sha(token)


def test_verifier_accepts_plain_and_hashed_tokens_and_nothing_else() -> None:
    verifier = TokenVerifier(auth_config().tokens)
    assert len(verifier) == 3
    assert verifier.verify(VIEWER) == Principal("vera", "viewer")
    assert verifier.verify(OPERATOR) == Principal("otto", "operator")
    assert verifier.verify(ADMIN) == Principal("ada", "admin")
    for wrong in ("", VIEWER[:-1], VIEWER + "x", VIEWER.upper(), sha(VIEWER), " " + ADMIN):
        assert verifier.verify(wrong) is None
    assert TokenVerifier([]).verify(VIEWER) is None


def test_roles_are_ordered() -> None:
    viewer, operator, admin = Principal("v", "viewer"), Principal("o", "operator"), Principal(
        "a", "admin"
    )
    assert (viewer.may("viewer"), viewer.may("operator"), viewer.may("admin")) == (
        True, False, False)
    assert (operator.may("viewer"), operator.may("operator"), operator.may("admin")) == (
        True, True, False)
    assert (admin.may("viewer"), admin.may("operator"), admin.may("admin")) == (True, True, True)


@pytest.mark.parametrize(
    ("header", "status", "reason"),
    [
        (None, 401, "missing_token"),
        ("", 401, "missing_token"),
        ("   ", 401, "missing_token"),
        ("Bearer", 401, "invalid_token"),
        ("Bearer ", 401, "invalid_token"),
        (f"Basic {OPERATOR}", 401, "invalid_token"),
        (f"Bearer {OPERATOR} {OPERATOR}", 401, "invalid_token"),
        (f"Bearer {OPERATOR}", 200, None),
        (f"bearer {OPERATOR}", 200, None),
        (f"BEARER   {OPERATOR}  ", 200, None),
    ],
)
def test_authorization_header_parsing(header: str | None, status: int, reason: str | None) -> None:
    auth = Authenticator(auth_config())
    outcome = auth.authenticate("10.0.0.1", header)
    if status == 200:
        assert outcome == Principal("otto", "operator")
    else:
        assert isinstance(outcome, AuthDenied)
        assert (outcome.status, outcome.reason) == (status, reason)
        assert outcome.headers["WWW-Authenticate"].startswith('Bearer realm="ot-gateway"')
        assert ('error="invalid_token"' in outcome.headers["WWW-Authenticate"]) == (
            reason == "invalid_token"
        )
        assert OPERATOR not in outcome.detail


def test_insufficient_role_is_403_with_insufficient_scope() -> None:
    auth = Authenticator(auth_config())
    outcome = auth.authorize(auth.authenticate("c", f"Bearer {VIEWER}"), "operator")
    assert isinstance(outcome, AuthDenied)
    assert (outcome.status, outcome.reason) == (403, "insufficient_role")
    assert 'error="insufficient_scope"' in outcome.headers["WWW-Authenticate"]
    assert outcome.principal == Principal("vera", "viewer")


# ---------------------------------------------------------------------------------------------
# S5: the failed-authentication limit


def test_limiter_blocks_after_the_limit_and_releases_after_the_window() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(3, window=60.0, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.record_failure("a")
        clock.t += 1.0
    assert limiter.retry_after("a") == 57  # failures at t0, t0+1, t0+2; now t0+3; first out at t0+60
    assert limiter.retry_after("b") is None
    clock.t += 56.5
    assert limiter.retry_after("a") == 1
    clock.t += 0.6
    assert limiter.retry_after("a") is None  # one failure left the window
    limiter.record_failure("a")
    assert limiter.retry_after("a") is not None
    assert limiter.failures_total == 4


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(2, clock=clock, max_clients=100)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100
    limiter.record_failure("10.0.3.231")  # the most recent is still tracked
    assert limiter.retry_after("10.0.3.231") is not None


def test_while_limited_even_a_valid_token_gets_429() -> None:
    clock = Clock()
    auth = Authenticator(auth_config(failed_auth_limit=2), clock=clock)
    for _ in range(2):
        assert auth.authenticate("x", "Bearer nope-nope-nope-nope") != Principal("otto", "operator")
    outcome = auth.authenticate("x", f"Bearer {OPERATOR}")
    assert isinstance(outcome, AuthDenied)
    assert outcome.status == 429
    assert 1 <= int(outcome.headers["Retry-After"]) <= 60
    assert auth.authenticate("y", f"Bearer {OPERATOR}") == Principal("otto", "operator")
    clock.t += 61
    assert auth.authenticate("x", f"Bearer {OPERATOR}") == Principal("otto", "operator")


def test_missing_tokens_do_not_count_as_failures() -> None:
    auth = Authenticator(auth_config(failed_auth_limit=1))
    for _ in range(5):
        outcome = auth.authenticate("x", None)
        assert isinstance(outcome, AuthDenied)
        assert outcome.status == 401
    assert auth.authenticate("x", f"Bearer {OPERATOR}") == Principal("otto", "operator")


# ---------------------------------------------------------------------------------------------
# The app over HTTP (uvicorn on loopback)


def gateway_config(**auth: Any) -> GatewayConfig:
    tokens = [
        {"name": "vera", "role": "viewer", "token_sha256": sha(VIEWER)},
        {"name": "otto", "role": "operator", "token_sha256": sha(OPERATOR)},
        {"name": "ada", "role": "admin", "token_sha256": sha(ADMIN)},
    ]
    return parse_config("api: " + json.dumps({"auth": {"tokens": tokens, **auth}}))


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The app on uvicorn (``api.auth`` options from an indirect parameter); yields its URL."""
    options: dict[str, Any] = getattr(request, "param", {})
    store = await Store.open(tmp_path / "gw.db", retention_hours=1.0, max_bytes=1 << 26)
    ctx = build_ctx()
    ctx.store = store
    app = create_app(ctx, config=gateway_config(**options), allowed_hosts=None)
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        assert server.url is not None
        yield server.url
    finally:
        await server.stop()
        await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


READS = ["/api/v1/sites", "/api/v1/assets", "/api/v1/devices", "/api/v1/gaps",
         "/api/v1/coverage", "/api/v1/sinks", "/api/v1/unmapped",
         "/api/v1/assets/plant1/pump1", "/api/v1/readings?points=*", "/metrics"]
OPEN = ["/healthz", "/readyz", "/openapi.json", "/", "/docs"]


@pytest.mark.parametrize("served", [{"read_requires_token": True}], indirect=True)
async def test_read_requires_token_protects_every_read(served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        for path in READS:
            resp = await client.get(path)
            assert resp.status_code == 401, path
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="ot-gateway"'
            for token in (VIEWER, OPERATOR, ADMIN):
                assert (await client.get(path, headers=bearer(token))).status_code == 200, path
        for path in OPEN:
            assert (await client.get(path)).status_code in (200, 503), path
        schema = (await client.get("/openapi.json")).json()
        assert "bearer" in schema["components"]["securitySchemes"]
        assert "401" in schema["paths"]["/api/v1/sites"]["get"]["responses"]


async def test_reads_are_open_by_default_and_ignore_tokens(served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        for path in READS:
            assert (await client.get(path)).status_code == 200, path
            assert (await client.get(path, headers=bearer("garbage"))).status_code == 200, path
        schema = (await client.get("/openapi.json")).json()
        assert "401" not in schema["paths"]["/api/v1/sites"]["get"]["responses"]


async def test_audit_always_needs_an_admin_token(served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        assert (await client.get("/api/v1/audit")).status_code == 401
        assert (await client.get("/api/v1/audit", headers=bearer(VIEWER))).status_code == 403
        assert (await client.get("/api/v1/audit", headers=bearer(OPERATOR))).status_code == 403
        resp = await client.get("/api/v1/audit", headers=bearer(ADMIN))
        assert resp.status_code == 200
        assert resp.json() == {"entries": [], "total": 0, "next_before": None}


@pytest.mark.parametrize(
    "served", [{"failed_auth_limit": 5, "read_requires_token": True}], indirect=True
)
async def test_s5_brute_force_is_rate_limited_per_client(served: str) -> None:
    """200 bad tokens from one address: 429 from attempt N+1 on; another address unaffected."""
    port = int(served.rsplit(":", 1)[1])
    other = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
        timeout=10,
    )
    async with httpx.AsyncClient(base_url=served, timeout=10) as attacker, other:
        statuses = []
        for i in range(200):
            resp = await attacker.get("/api/v1/sites", headers=bearer(f"guess-{i:04d}-xxxxxxxxxx"))
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                retry = int(resp.headers["Retry-After"])
                assert 1 <= retry <= 60
        assert statuses[:5] == [401] * 5
        assert set(statuses[5:]) == {429}
        # the right token does not help the limited address (a 429 tells nothing)
        assert (await attacker.get("/api/v1/sites", headers=bearer(VIEWER))).status_code == 429
        assert (
            await attacker.post("/api/v1/assets/plant1/pump1/points/temp/write",
                                headers=bearer(OPERATOR), json={"value": 1})
        ).status_code == 429
        # another client keeps working, and has its own count
        assert (await other.get("/api/v1/sites", headers=bearer(VIEWER))).status_code == 200
        assert (await other.get("/api/v1/sites", headers=bearer("bad-bad-bad-bad"))).status_code \
            == 401
        metrics = (await other.get("/metrics", headers=bearer(ADMIN))).text
        assert "otgw_api_auth_failures_total 6.0" in metrics
        assert "otgw_api_auth_rate_limited_total" in metrics


async def test_write_without_config_or_store_fails_closed(tmp_path: Path) -> None:
    """A context without config and store: no token exists, so every write is 401."""
    app = create_app(build_ctx(), allowed_hosts=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.post("/api/v1/assets/plant1/pump1/points/temp/write",
                                 json={"value": 1}, headers=bearer(ADMIN))
        assert resp.status_code == 401
        assert resp.json()["audit_id"] is None
        assert resp.json()["outcome"] == "not_sent"
        resp = await client.get("/api/v1/audit", headers=bearer(ADMIN))
        assert resp.status_code == 401
