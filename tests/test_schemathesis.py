"""S6: schemathesis over the OpenAPI schema, in-process over ASGI, with a real Inventory/Store.

Every operation gets up to 50 positive and 50 negative Hypothesis examples (operations without
parameters have fewer distinct requests; Hypothesis stops when it has tried them all). Checks:
no 5xx, responses conform to the schema (status codes, content types, bodies), and no body
leaks a traceback or an internal path. The live stream is cut after a short read timeout (it
never ends by itself); what it sent by then is validated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.app import create_app
from gateway.model import Reading
from gateway.quality import Q
from gateway.store import Store
from tests.test_api import SPEC, T0, build_ctx

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


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app on a real store with an hour of readings of the test inventory's points."""
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
    app = create_app(ctx, allowed_hosts=("testserver",), stream_heartbeat=0.02)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    asyncio.run(store.close())


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
