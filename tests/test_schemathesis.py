"""S6: schemathesis over the OpenAPI schema, in-process over ASGI, with a real Inventory/Store.

Every operation gets up to 50 positive and 50 negative Hypothesis examples (operations without
parameters have fewer distinct requests; Hypothesis stops when it has tried them all). Checks:
no 5xx, responses conform to the schema (status codes, content types, bodies), and no body
leaks a traceback or an internal path. The live stream is cut after a short read timeout (it
never ends by itself); what it sent by then is validated.

With and without tokens (issue #7): the default app (no tokens: reads open, writes 401), an app
with ``api.auth`` tokens and ``read_requires_token`` fuzzed with an admin token, a viewer token
and none, and the write route of a real gateway process writing to the simulator, fuzzed with
an operator token on its writable points (values in and out of range, every type): 0 server
errors, and one audit entry per attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.model import Reading
from gateway.quality import Q
from gateway.store import Store
from tests.test_api import SPEC, T0, build_ctx
from tests.test_writeback import ADMIN, OPERATOR, Plant, start_plant

pytestmark = pytest.mark.timeout(120)

EXAMPLES = 50
_PATHS = create_app(build_ctx()).openapi()["paths"]
OPERATIONS = sorted((method.upper(), path) for path, item in _PATHS.items() for method in item)
WITH_PARAMETERS = {
    (method.upper(), path)
    for path, item in _PATHS.items()
    for method, op in item.items()
    if op.get("parameters")
}
"""Operations with parameters: the only ones negative data can be generated for."""
CASES = [
    pytest.param(method, path, mode, id=f"{method}-{path}-{mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) in WITH_PARAMETERS
]
LEAKS = ("Traceback", "/work/", "site-packages", "sqlite3.", "secret")


def not_a_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    return None


def no_leaks(ctx: Any, response: Any, case: Any) -> bool | None:
    body = bytes(response.content)
    for needle in LEAKS:
        assert needle.encode() not in body, f"{needle!r} in the body of {case.method} {case.path}"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_leaks,
]


def _schema(tmp_path_factory: pytest.TempPathFactory, config: GatewayConfig | None) -> Iterator[Any]:
    """The app (with `config`) on a real store with an hour of readings of the test points."""
    path: Path = tmp_path_factory.mktemp("schemathesis") / "gw.db"

    async def open_store() -> Store:
        st = await Store.open(path, retention_hours=1e6, max_bytes=1 << 30)
        batch = []
        for i in range(600):
            when = T0 - timedelta(seconds=i * 6)
            for p in SPEC.points:
                bad = i % 11 == 0
                batch.append(Reading(p.site, p.asset, p.point, None if bad else float(i), p.unit,
                                     Q.BAD_TIMEOUT if bad else Q.GOOD, when, when, p.source))
        await st.append(batch)
        return st

    store = asyncio.run(open_store())
    ctx = build_ctx()
    ctx.store = store
    app = create_app(ctx, config=config, allowed_hosts=("testserver",), stream_heartbeat=0.02)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    asyncio.run(store.close())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The default app: no tokens configured (reads open, writes and audit answer 401)."""
    yield from _schema(tmp_path_factory, None)


VIEWER_TOKEN = "schemathesis-viewer-token-0001"  # noqa: S105 - test token
AUTH_CONFIG = parse_config(
    "api: "
    + json.dumps(
        {
            "auth": {
                "read_requires_token": True,
                "failed_auth_limit": 10_000,
                "tokens": [
                    {"name": "vera", "role": "viewer",
                     "token_sha256": hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest()},
                    {"name": "ada", "role": "admin",
                     "token_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()},
                ],
            }
        }
    )
)
"""Tokens, reads need one; writes stay disabled (no device here: the live test writes)."""


@pytest.fixture(scope="module")
def api_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with `AUTH_CONFIG`."""
    yield from _schema(tmp_path_factory, AUTH_CONFIG)


_AUTH_PATHS = create_app(build_ctx(), config=AUTH_CONFIG).openapi()["paths"]
AUTH_CASES = [
    pytest.param(method.upper(), path, who, mode,
                 id=f"{method.upper()}-{path}-{who or 'no'}-token-{mode.value}")
    for path, item in _AUTH_PATHS.items()
    for method in item
    for who in ("admin", "viewer", None)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (who == "admin" and item[method].get("parameters"))
]
AUTH_EXAMPLES = 25


def test_every_operation_is_fuzzed() -> None:
    assert ("GET", "/api/v1/readings") in OPERATIONS
    assert ("GET", "/api/v1/stream") in OPERATIONS
    assert len(OPERATIONS) >= 13


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzz_operation(api: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api[path][method]
    calls: list[int] = []
    timeout = 0.1 if path.endswith("/stream") else 30

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(timeout=timeout)
        calls.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert calls, "no request was made"
    if (method, path) in WITH_PARAMETERS:
        assert len(calls) >= EXAMPLES, (path, mode, len(calls))


@pytest.mark.parametrize(("method", "path", "who", "mode"), AUTH_CASES)
def test_fuzz_operation_with_tokens(
    api_auth: Any, method: str, path: str, who: str | None, mode: GenerationMode
) -> None:
    """`read_requires_token`: every operation fuzzed with an admin, a viewer and no token."""
    operation = api_auth[path][method]
    secret = {"admin": ADMIN, "viewer": VIEWER_TOKEN, None: None}[who]
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    statuses: list[int] = []
    timeout = 0.1 if path.endswith("/stream") else 30
    protected = path.startswith("/api/v1/") or path == "/metrics"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=AUTH_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=timeout)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)
        if who is None and protected:
            assert response.status_code == 401, (case.path, response.status_code)
        if who == "viewer" and path.startswith("/api/v1/audit"):
            assert response.status_code == 403

    run()
    assert statuses, "no request was made"
    if who == "admin" and method == "POST":  # writes are disabled
        # (negative mode also sends broken Authorization headers of its own: 401)
        allowed = {403, 404, 413, 422} | ({401} if mode is GenerationMode.NEGATIVE else set())
        assert set(statuses) <= allowed, set(statuses)
        assert 403 in statuses


LIVE_POINTS = ["setpoint", "flow-sp", "pump-on", "alarm-ack", "mode", "audit-a", "audit-b"]
"""Writable points of the plant whose device answers (no scripted exception or timeout)."""
WRITE_PATH = "/api/v1/assets/{site}/{asset}/points/{point}/write"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plant, Any]]:
    """A real gateway writing to the simulator, and its schema loaded over HTTP."""
    with start_plant(tmp_path_factory.mktemp("live"), writes={"enabled": True}) as plant:
        yield plant, schemathesis.openapi.from_url(plant.gw.url + "/openapi.json")


@pytest.mark.integration
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_live_writes(live: tuple[Plant, Any], mode: GenerationMode) -> None:
    """The write route of a real gateway, fuzzed on real writable points: 0 server errors."""
    plant, schema = live
    operation = schema[WRITE_PATH]["POST"]
    before = plant.get("/api/v1/audit", limit=1).json()["total"]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode), point=st.sampled_from(LIVE_POINTS))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any, point: str) -> None:
        case.path_parameters = {"site": "plant", "asset": "boiler", "point": point}
        response = case.call(base_url=plant.gw.url,
                             headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert len(statuses) >= EXAMPLES
    assert all(s < 500 for s in statuses)
    after = plant.get("/api/v1/audit", limit=1).json()["total"]
    assert after - before == len(statuses)  # S4: one entry per attempt
    print(f"live write fuzz ({mode.value}): {len(statuses)} requests, statuses "
          f"{dict(sorted(Counter(statuses).items()))}")
    assert httpx.get(plant.gw.url + "/healthz", timeout=10).status_code == 200
