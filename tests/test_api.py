"""HTTP API: shapes, status codes, strict JSON, injection ids (S8), safe defaults (S9), server.

A real `Inventory` is fed with real `Reading`s; the only double is the store boundary
(`usable_counts`, computed from the same readings).
"""

from __future__ import annotations

import json
import math
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from gateway import __version__
from gateway.api.app import create_app
from gateway.api.schemas import finite, jsonable
from gateway.api.server import ApiServer, ApiServerError
from gateway.model import Reading
from gateway.quality import Q, is_usable
from gateway.store import Store
from inventory.inventory import Inventory
from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec
from inventory.views import State

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOST = "test"
TIME_KEYS = {
    "start",
    "end",
    "last_seen",
    "last_good",
    "first_bad",
    "since",
    "window_start",
    "window_end",
    "monitored_since",
    "started",
}

SPEC = InventorySpec(
    sites=(SiteSpec("plant1", "Plant One"), SiteSpec("plant2", "Plant Two")),
    assets=(
        AssetSpec("plant1", "pump1", "Pump 1", "pump"),
        AssetSpec("plant1", "pump2", "Pump 2", "pump"),
        AssetSpec("plant2", "tank1", "Tank 1", "tank"),
    ),
    points=(
        PointSpec("plant1", "pump1", "temp", "plc1", 1.0, "Cel", "modbus://127.0.0.1:5020/1/hr/0"),
        PointSpec(
            "plant1", "pump1", "pressure", "plc1", 1.0, "kPa", "modbus://127.0.0.1:5020/1/hr/2"
        ),
        PointSpec("plant1", "pump2", "flow", "plc1", 1.0, "m3/h", "modbus://127.0.0.1:5020/1/hr/4"),
        PointSpec("plant2", "tank1", "level", "plc2", 1.0, "m", "modbus://127.0.0.1:5021/1/hr/0"),
    ),
    devices=(
        DeviceSpec("plc1", "modbus", "127.0.0.1:5020"),
        DeviceSpec("plc2", "modbus", "127.0.0.1:5021"),
    ),
)


def reading(point: str, t: float, value: float | None, quality: int = Q.GOOD) -> Reading:
    spec = next(p for p in SPEC.points if p.point == point)
    when = T0 + timedelta(seconds=t)
    return Reading(spec.site, spec.asset, point, value, spec.unit, quality, when, when, spec.source)


@dataclass
class Ctx:
    """A minimal `ApiContext`: real inventory, settable clock; store counts from the readings."""

    inventory: Inventory
    monitored_since: datetime
    clock: datetime
    readings: list[Reading] = field(default_factory=list)
    ready: bool = True
    registry: CollectorRegistry | None = None
    fail_readiness: bool = False
    fail_counts: bool = False
    store: Store | None = None
    listeners: list[Callable[[Sequence[Reading]], None]] = field(default_factory=list)

    def now(self) -> datetime:
        return self.clock

    def add_listener(self, callback: Callable[[Sequence[Reading]], None]) -> None:
        self.listeners.append(callback)

    def remove_listener(self, callback: Callable[[Sequence[Reading]], None]) -> None:
        if callback in self.listeners:
            self.listeners.remove(callback)

    async def usable_counts(self, since: datetime) -> dict[str, int]:
        if self.fail_counts:
            msg = "store closed"
            raise RuntimeError(msg)
        return dict(
            Counter(r.key for r in self.readings if is_usable(r.quality) and r.source_time >= since)
        )

    def health(self) -> dict[str, object]:
        return {"uptime_s": 60.0, "started": T0, "nan": math.nan}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        if self.fail_readiness:
            msg = "secret internal detail"
            raise RuntimeError(msg)
        return self.ready, {"store": "ok", "devices_up": 1, "devices_total": 2, "alarms": []}

    def metrics_registry(self) -> CollectorRegistry | None:
        return self.registry

    def feed(self, readings: list[Reading]) -> None:
        """What the runtime's writer does after a commit: inventory, then listeners."""
        self.readings.extend(readings)
        self.inventory.observe(readings)
        for listener in list(self.listeners):
            listener(readings)


def build_ctx() -> Ctx:
    """plc1 up; temp and pressure good for 60 s; flow good 0..20 s then Bad; plc2 never seen."""
    inv = Inventory(SPEC, now=T0)
    registry = CollectorRegistry()
    polls = PromCounter("otgw_test_polls", "Polls", registry=registry)
    polls.inc(3)
    ctx = Ctx(inv, T0, T0, registry=registry)
    inv.link_up("plc1", T0)
    for s in range(60):
        now = T0 + timedelta(seconds=s)
        batch = [reading("temp", s, 20.0 + s / 10), reading("pressure", s, 101.3)]
        if s < 20:
            batch.append(reading("flow", s, 5.0))
        else:
            batch.append(reading("flow", s, None, Q.BAD_TIMEOUT))
        ctx.feed(batch)
        inv.tick(now)
    ctx.clock = T0 + timedelta(seconds=60)
    inv.tick(ctx.clock)
    return ctx


def strict_json(text: str) -> Any:
    def reject(name: str) -> None:
        msg = f"non-strict JSON constant {name}"
        raise ValueError(msg)

    return json.loads(text, parse_constant=reject)


def check_times(obj: Any) -> None:
    """Every time field is RFC 3339 UTC ending in Z (or null)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in TIME_KEYS and isinstance(value, str):
                assert value.endswith("Z"), (key, value)
                assert datetime.fromisoformat(value).utcoffset() == timedelta(0)
            check_times(value)
    elif isinstance(obj, list):
        for item in obj:
            check_times(item)


@pytest.fixture
def ctx() -> Ctx:
    return build_ctx()


@pytest.fixture
async def client(ctx: Ctx) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ctx, allowed_hosts=(HOST,))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as c:
        yield c


async def get_json(client: httpx.AsyncClient, url: str, status: int = 200) -> Any:
    r = await client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    body = strict_json(r.text)
    check_times(body)
    return body


# -- resources ---------------------------------------------------------------------------------


async def test_sites(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/api/v1/sites")
    assert [s["id"] for s in body] == [v.id for v in ctx.inventory.sites(ctx.clock)]
    by_id = {s["id"]: s for s in body}
    p1 = by_id["plant1"]
    assert set(p1) == {
        "id",
        "name",
        "state",
        "assets_total",
        "assets_by_state",
        "points_total",
        "open_gaps",
        "last_seen",
    }
    assert p1["name"] == "Plant One"
    assert p1["assets_total"] == 2
    assert p1["points_total"] == 3
    assert p1["state"] in {s.value for s in State}
    assert p1["last_seen"] is not None
    assert sum(p1["assets_by_state"].values()) == p1["assets_total"]
    assert by_id["plant2"]["last_seen"] is None
    view = ctx.inventory.site("plant1", ctx.clock)
    assert view is not None
    assert p1["open_gaps"] == view.open_gaps
    assert p1["state"] == view.state.value


async def test_site_detail(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/api/v1/sites/plant1")
    assert body["id"] == "plant1"
    assert [a["id"] for a in body["assets"]] == [
        a.id for a in ctx.inventory.assets(ctx.clock, site="plant1")
    ]
    assert {a["id"] for a in body["assets"]} == {"pump1", "pump2"}
    assert all("points" not in a for a in body["assets"])


async def test_unknown_site_and_asset_404(client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/api/v1/sites/nosuch", 404) == {
        "detail": "unknown site 'nosuch'"
    }
    assert await get_json(client, "/api/v1/assets/nosuch/pump1", 404) == {
        "detail": "unknown site 'nosuch'"
    }
    assert await get_json(client, "/api/v1/assets/plant1/nosuch", 404) == {
        "detail": "unknown asset 'plant1/nosuch'"
    }
    assert (await get_json(client, "/api/v1/nothing", 404))["detail"]


async def test_assets_list_and_filters(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/api/v1/assets")
    assert {(a["site"], a["id"]) for a in body} == {
        ("plant1", "pump1"),
        ("plant1", "pump2"),
        ("plant2", "tank1"),
    }
    only = await get_json(client, "/api/v1/assets?site=plant2")
    assert [a["id"] for a in only] == ["tank1"]
    assert await get_json(client, "/api/v1/assets?site=nosuch") == []
    for state in State:
        got = await get_json(client, f"/api/v1/assets?state={state.value}")
        want = ctx.inventory.assets(ctx.clock, state=state)
        assert [(a["site"], a["id"]) for a in got] == [(a.site, a.id) for a in want]
        assert all(a["state"] == state.value for a in got)
    # tank1 was never seen
    assert any(a["id"] == "tank1" for a in await get_json(client, "/api/v1/assets?state=unknown"))


async def test_asset_detail_points(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/api/v1/assets/plant1/pump1")
    assert body["site"] == "plant1"
    assert body["id"] == "pump1"
    assert body["kind"] == "pump"
    points = {p["id"]: p for p in body["points"]}
    assert set(points) == {"temp", "pressure"}
    temp = points["temp"]
    assert set(temp) >= {
        "value",
        "unit",
        "quality",
        "quality_name",
        "severity",
        "last_seen",
        "last_good",
        "state",
        "source",
        "open_gap",
        "device",
        "expected_interval_s",
    }
    assert temp["unit"] == "Cel"
    assert temp["value"] == pytest.approx(25.9)
    assert temp["quality"] == 0
    assert temp["quality_name"] == "Good"
    assert temp["severity"] == "good"
    assert temp["source"] == "modbus://127.0.0.1:5020/1/hr/0"
    assert temp["device"] == "plc1"
    assert temp["last_seen"] == "2026-01-01T00:00:59.000000Z"
    assert temp["open_gap"] is None

    flow = (await get_json(client, "/api/v1/assets/plant1/pump2"))["points"][0]
    assert flow["id"] == "flow"
    assert flow["value"] is None
    assert flow["quality"] == Q.BAD_TIMEOUT
    assert flow["quality_name"] == "BadTimeout"
    assert flow["severity"] == "bad"
    assert flow["last_good"] == "2026-01-01T00:00:19.000000Z"
    gap = flow["open_gap"]
    assert gap is not None
    assert gap["end"] is None
    assert gap["open"] is True
    assert gap["point"] == "flow"

    never = (await get_json(client, "/api/v1/assets/plant2/tank1"))["points"][0]
    assert never["state"] == "unknown"
    assert never["quality"] is None
    assert never["quality_name"] is None
    assert never["severity"] is None
    assert never["last_seen"] is None


async def test_non_finite_value_renders_null(client: httpx.AsyncClient, ctx: Ctx) -> None:
    ctx.feed([reading("pressure", 60, math.nan), reading("temp", 60, math.inf)])
    ctx.clock = T0 + timedelta(seconds=60.5)
    body = await get_json(client, "/api/v1/assets/plant1/pump1")
    assert all(p["value"] is None for p in body["points"])
    assert finite(math.nan) is None
    assert finite(-math.inf) is None
    assert finite(1.5) == 1.5
    assert jsonable({"a": [math.inf, T0, State.ONLINE], 1: (2, None)}) == {
        "a": [None, "2026-01-01T00:00:00.000000Z", "online"],
        "1": [2, None],
    }


async def test_devices(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/api/v1/devices")
    devs = {d["id"]: d for d in body}
    assert set(devs) == {"plc1", "plc2"}
    plc1 = devs["plc1"]
    assert set(plc1) == {
        "id",
        "protocol",
        "endpoint",
        "state",
        "link_up",
        "since",
        "last_seen",
        "last_good",
        "last_error",
        "reconnects",
        "poll_latency_s",
        "polls",
        "overruns",
        "points_total",
    }
    assert plc1["link_up"] is True
    assert plc1["protocol"] == "modbus"
    assert plc1["points_total"] == 3
    assert devs["plc2"]["link_up"] is False

    ctx.inventory.link_down("plc1", ctx.clock, "connection refused")
    plc1 = {d["id"]: d for d in await get_json(client, "/api/v1/devices")}["plc1"]
    assert plc1["link_up"] is False
    assert plc1["last_error"] == "connection refused"
    assert plc1["since"] == "2026-01-01T00:01:00.000000Z"


async def test_gaps(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/api/v1/gaps")
    assert [g["id"] for g in body] == [g.id for g in ctx.inventory.gaps()]
    flow = [g for g in body if g["point"] == "flow"]
    assert len(flow) == 1
    gap = flow[0]
    assert set(gap) == {
        "id",
        "site",
        "asset",
        "point",
        "cause",
        "start",
        "end",
        "open",
        "duration_s",
        "last_good",
        "first_bad",
        "expected_interval_s",
        "samples_missed",
    }
    assert (gap["site"], gap["asset"]) == ("plant1", "pump2")
    assert gap["end"] is None
    assert gap["open"] is True
    assert gap["cause"] == "timeout"
    assert gap["first_bad"] == "2026-01-01T00:00:20.000000Z"
    start = datetime.fromisoformat(gap["start"])
    assert gap["duration_s"] == pytest.approx((ctx.clock - start).total_seconds())
    inv_gap = next(g for g in ctx.inventory.gaps() if g.point == "flow")
    assert gap["samples_missed"] == inv_gap.samples_missed(ctx.clock)

    # close it with a good reading
    ctx.feed([reading("flow", 61, 5.0)])
    ctx.clock = T0 + timedelta(seconds=62)
    closed = await get_json(client, "/api/v1/gaps?open=false&point=flow")
    assert len(closed) == 1
    assert closed[0]["end"] == "2026-01-01T00:01:01.000000Z"
    assert closed[0]["open"] is False
    assert closed[0]["duration_s"] == pytest.approx(
        (datetime.fromisoformat(closed[0]["end"]) - start).total_seconds()
    )
    assert all(g["open"] for g in await get_json(client, "/api/v1/gaps?open=true"))
    plant2 = await get_json(client, "/api/v1/gaps?site=plant2")
    assert [g["id"] for g in plant2] == [g.id for g in ctx.inventory.gaps(site="plant2")]
    assert all(g["site"] == "plant2" for g in plant2)
    assert await get_json(client, "/api/v1/gaps?site=plant1&asset=pump1&point=temp") == []


async def test_gaps_time_filters_pass_through(client: httpx.AsyncClient, ctx: Ctx) -> None:
    since = T0 + timedelta(seconds=10)
    until = T0 + timedelta(seconds=30)
    url = "/api/v1/gaps?since=2026-01-01T00:00:10Z&until=2026-01-01T01:00:30%2B01:00"
    body = await get_json(client, url)
    assert [g["id"] for g in body] == [g.id for g in ctx.inventory.gaps(since=since, until=until)]
    late = await get_json(client, "/api/v1/gaps?since=2027-01-01T00:00:00Z")
    assert [g["id"] for g in late] == [
        g.id for g in ctx.inventory.gaps(since=datetime(2027, 1, 1, tzinfo=UTC))
    ]


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "since=2026-01-01T00:00:00",  # naive: rejected, not guessed
        "until=2026-13-01T00:00:00Z",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",  # since > until
        "since=0001-01-01T00:00:00%2B01:00",  # out of range in UTC
        "until=9999-12-31T23:59:59-01:00",
        "open=maybe",
        "site=Plant1",
        "point=" + "a" * 100,
    ],
)
async def test_gaps_bad_params_422(client: httpx.AsyncClient, query: str) -> None:
    body = await get_json(client, f"/api/v1/gaps?{query}", 422)
    assert isinstance(body["detail"], list)
    assert body["detail"][0]["loc"][0] == "query"


async def test_coverage_passes_through(client: httpx.AsyncClient, ctx: Ctx) -> None:
    for group_by in ("site", "asset", "point"):
        body = await get_json(client, f"/api/v1/coverage?window=30&group_by={group_by}")
        assert body["window_s"] == 30
        assert body["group_by"] == group_by
        assert body["window_end"] == "2026-01-01T00:01:00.000000Z"
        assert body["window_start"] == "2026-01-01T00:00:30.000000Z"
        assert body["monitored_since"] == "2026-01-01T00:00:00.000000Z"
        start = ctx.clock - timedelta(seconds=30)
        want = ctx.inventory.coverage(
            await ctx.usable_counts(start),
            window_start=start,
            now=ctx.clock,
            monitored_since=T0,
            group_by=group_by,
        )
        assert [(r["group"], r["expected"], r["received"]) for r in body["rows"]] == [
            (r.group, r.expected, r.received) for r in want
        ]
        assert [r["coverage"] for r in body["rows"]] == pytest.approx([r.coverage for r in want])
    rows = {
        r["group"]: r
        for r in (await get_json(client, "/api/v1/coverage?window=30&group_by=point"))["rows"]
    }
    assert rows["plant1/pump1/temp"]["received"] == 30
    assert rows["plant1/pump2/flow"]["received"] == 0
    assert rows["plant1/pump2/flow"]["coverage"] == 0.0
    default = await get_json(client, "/api/v1/coverage")
    assert default["window_s"] == 3600
    assert default["group_by"] == "site"


@pytest.mark.parametrize(
    "query",
    ["window=0", "window=-5", "window=2592001", "window=abc", "window=1.5", "group_by=device"],
)
async def test_coverage_bad_params_422(client: httpx.AsyncClient, query: str) -> None:
    await get_json(client, f"/api/v1/coverage?{query}", 422)


async def test_coverage_window_bounds_ok(client: httpx.AsyncClient) -> None:
    await get_json(client, "/api/v1/coverage?window=1")
    await get_json(client, "/api/v1/coverage?window=2592000&group_by=asset")


@pytest.mark.parametrize("query", ["state=bogus", "state=ONLINE", "site=../etc", "site="])
async def test_assets_bad_params_422(client: httpx.AsyncClient, query: str) -> None:
    await get_json(client, f"/api/v1/assets?{query}", 422)


# -- S8: injection ids ----------------------------------------------------------------------------

BAD_IDS = [
    "../etc",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "%2E%2E%2F",
    "%00",
    "plant1%00",
    "plant1%0A",
    "' OR 1=1",
    "'%20OR%201=1--",
    "x" * 10 * 1024,
    "plänt",
    "%EF%BD%90lant1",  # fullwidth p
    "💥",
    "PLANT1",
    ".hidden",
    "-dash",
    "a;b",
    "%25",
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda s: s[:20])
async def test_injection_ids_never_5xx(client: httpx.AsyncClient, bad: str) -> None:
    urls = [
        f"/api/v1/sites/{bad}",
        f"/api/v1/assets/{bad}/pump1",
        f"/api/v1/assets/plant1/{bad}",
        f"/api/v1/assets/{bad}/{bad}",
        f"/api/v1/assets?site={bad}",
        f"/api/v1/gaps?site={bad}&asset={bad}&point={bad}",
        f"/api/v1/coverage?window={bad}&group_by={bad}",
    ]
    for url in urls:
        r = await client.get(url)
        assert r.status_code in (404, 422), (url[:80], r.status_code)
        body = strict_json(r.text)
        assert "detail" in body
        assert "Traceback" not in r.text


async def test_trailing_slash_is_not_redirected(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/sites/")).status_code == 404
    assert (await client.get("/api/v1/sites/%2E%2E/")).status_code == 404


# -- health, readiness, metrics ---------------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/healthz")
    assert body["status"] == "ok"
    assert body["details"]["started"] == "2026-01-01T00:00:00.000000Z"
    assert body["details"]["nan"] is None


async def test_readyz(client: httpx.AsyncClient, ctx: Ctx) -> None:
    body = await get_json(client, "/readyz")
    assert body == {
        "ready": True,
        "status": "ready",
        "details": {"store": "ok", "devices_up": 1, "devices_total": 2, "alarms": []},
    }
    ctx.ready = False
    body = await get_json(client, "/readyz", 503)
    assert body["ready"] is False
    assert body["status"] == "not_ready"
    assert body["details"]["devices_total"] == 2
    ctx.fail_readiness = True
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert "secret" not in r.text


async def test_metrics(client: httpx.AsyncClient, ctx: Ctx) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE otgw_test_polls" in r.text
    assert "otgw_test_polls_total 3.0" in r.text
    ctx.registry = None
    assert await get_json(client, "/metrics", 404) == {"detail": "metrics are disabled"}


# -- app: OpenAPI, page, defaults, errors -----------------------------------------------------


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    spec = await get_json(client, "/openapi.json")
    assert spec["info"]["title"] == "ot-gateway"
    assert spec["info"]["version"] == __version__
    paths = spec["paths"]
    for path in (
        "/api/v1/sites",
        "/api/v1/sites/{site}",
        "/api/v1/assets",
        "/api/v1/assets/{site}/{asset}",
        "/api/v1/devices",
        "/api/v1/gaps",
        "/api/v1/coverage",
        "/api/v1/readings",
        "/api/v1/stream",
        "/api/v1/sinks",
        "/api/v1/unmapped",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    op_ids = {op["operationId"] for item in paths.values() for op in item.values()}
    assert {
        "list_sites",
        "get_site",
        "list_assets",
        "get_asset",
        "list_gaps",
        "query_readings",
        "stream",
        "list_sinks",
    } <= op_ids
    assert "/" not in paths
    gap = spec["components"]["schemas"]["GapOut"]["properties"]
    assert "[s]" in gap["duration_s"]["description"]
    r = await client.get("/docs")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]


async def test_docs_can_be_disabled(ctx: Ctx) -> None:
    app = create_app(ctx, docs=False, allowed_hosts=(HOST,))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as c:
        assert (await c.get("/docs")).status_code == 404
        assert (await c.get("/redoc")).status_code == 404
        page = await c.get("/")
        assert 'href="docs"' not in page.text


async def test_trusted_host_defaults_to_loopback(ctx: Ctx) -> None:
    app = create_app(ctx)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/healthz", headers={"host": "127.0.0.1:8080"})).status_code == 200
        r = await c.get("/api/v1/sites", headers={"host": "evil.example"})
        assert r.status_code == 400
        # no CORS headers (CORS is off)
        r = await c.get("/api/v1/sites", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_home_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    text = r.text
    assert "<title>ot-gateway</title>" in text
    assert 'href="docs"' in text
    assert f"v{__version__}" in text
    assert '<script src="static/app.js" defer></script>' in text
    assert "<script>" not in text  # no inline script
    assert "<style" not in text
    assert "style=" not in text
    assert "https://" not in text
    assert "http://" not in text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "media_type", "needle"),
    [
        ("app.js", "text/javascript", 'api("api/v1/sites")'),
        ("style.css", "text/css", "@media (max-width: 820px)"),
        ("favicon.svg", "image/svg+xml", "<svg"),
    ],
)
async def test_static_files(
    client: httpx.AsyncClient, name: str, media_type: str, needle: str
) -> None:
    r = await client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media_type)
    assert needle in r.text
    assert "https://" not in r.text.replace("http://www.w3.org/2000/svg", "")
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    again = await client.get(f"/static/{name}", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize(
    "name", ["nosuch.js", "..%2Fapp.py", "%2e%2e%2f%2e%2e%2fpyproject.toml", "index.html", "app.js%00"]
)
async def test_static_unknown_or_traversal_404(client: httpx.AsyncClient, name: str) -> None:
    r = await client.get(f"/static/{name}")
    assert r.status_code == 404
    assert "detail" in strict_json(r.text)


async def test_sinks_empty_without_sink_status(client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/api/v1/sinks") == []


async def test_unmapped_sources(ctx: Ctx, client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/api/v1/unmapped") == []

    def unmapped() -> list[dict[str, object]]:
        return [{"device": "broker", "topic": "plant/x/y", "messages": 3, "last_seen": T0}]

    ctx.unmapped = unmapped  # type: ignore[attr-defined]
    assert await get_json(client, "/api/v1/unmapped") == [
        {"device": "broker", "topic": "plant/x/y", "messages": 3,
         "last_seen": "2026-01-01T00:00:00.000000Z"}
    ]


async def test_sinks_from_runtime(ctx: Ctx) -> None:
    def sink_status() -> list[dict[str, object]]:
        return [{"name": "influx", "backlog": 3, "last_ok": T0, "lag_s": math.inf}]

    ctx.sink_status = sink_status  # type: ignore[attr-defined]
    app = create_app(ctx, allowed_hosts=(HOST,))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}"
    ) as c:
        body = await get_json(c, "/api/v1/sinks")
    assert body == [
        {"name": "influx", "backlog": 3, "last_ok": "2026-01-01T00:00:00.000000Z", "lag_s": None}
    ]


async def test_method_not_allowed_is_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/sites")
    assert r.status_code == 405
    assert strict_json(r.text)["detail"]


async def test_unhandled_error_is_opaque_json(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_now: datetime) -> list[Any]:
        msg = "secret database path /var/lib/x"
        raise RuntimeError(msg)

    monkeypatch.setattr(ctx.inventory, "sites", broken)
    app = create_app(ctx, allowed_hosts=(HOST,))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as c:
        r = await c.get("/api/v1/sites")
    assert r.status_code == 500
    assert strict_json(r.text) == {"detail": "internal server error"}


# -- server ---------------------------------------------------------------------------------


async def test_api_server_real_tcp(ctx: Ctx) -> None:
    server = ApiServer(create_app(ctx), "127.0.0.1", 0)
    port = await server.start()
    assert port > 0
    assert server.port == port
    assert server.url == f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(ApiServerError):
            await server.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/healthz")
            assert r.status_code == 200
            assert r.json()["status"] == "ok"
            assert "server" not in r.headers
            assert (await c.get("/api/v1/sites")).status_code == 200
    finally:
        await server.stop()
    assert server.port is None
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as c:
            await c.get(f"http://127.0.0.1:{port}/healthz")
    await server.stop()  # idempotent


async def test_api_server_port_in_use(ctx: Ctx) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ApiServer(create_app(ctx), "127.0.0.1", port)
        with pytest.raises(ApiServerError, match="failed to start"):
            await server.start()
        assert server.port is None
    # the server can be started again afterwards (state was reset)
    async with ApiServer(create_app(ctx), "127.0.0.1", 0) as again:
        assert again.port


def test_create_app_has_no_module_level_app() -> None:
    import gateway.api.app as mod

    assert not any(type(v).__name__ == "FastAPI" for v in vars(mod).values())


# -- view cache -------------------------------------------------------------------------------


def test_view_cache_reuses_only_expensive_views_for_a_bounded_time() -> None:
    from gateway.api.cache import ViewCache

    clock = [0.0]
    cache = ViewCache(min_cost=0.01, factor=10, max_age=5, clock=lambda: clock[0])
    builds: list[int] = []

    def build(cost: float) -> Any:
        def run() -> list[int]:
            clock[0] += cost  # the build takes `cost` seconds
            builds.append(1)
            return [len(builds)]

        return run

    cheap = cache.get("cheap", build(0.001))
    assert cache.get("cheap", build(0.001)) is not cheap  # cheap: always rebuilt
    first = cache.get("big", build(0.2))  # expensive: reused for 10 x 0.2 s = 2 s
    clock[0] += 1.9
    assert cache.get("big", build(0.2)) is first
    body = cache.derive("big?x", first, lambda: b"[1]")
    assert cache.derive("big?x", first, lambda: b"other") is body  # same view: same bytes
    clock[0] += 0.2
    second = cache.get("big", build(0.2))
    assert second is not first
    assert cache.derive("big?x", second, lambda: b"[2]") == b"[2]"
    huge = cache.get("huge", build(3.0))  # capped at max_age = 5 s, not 30 s
    clock[0] += 5.1
    assert cache.get("huge", build(3.0)) is not huge


async def test_list_endpoints_are_fresh_for_a_small_inventory(
    client: httpx.AsyncClient, ctx: Ctx
) -> None:
    """A cheap view is never served from the cache: a change shows on the next request."""
    before = await get_json(client, "/api/v1/assets?site=plant2")
    assert before[0]["state"] == "unknown"
    ctx.inventory.link_up("plc2", ctx.clock)
    ctx.feed([reading("level", 60, 1.0)])
    after = await get_json(client, "/api/v1/assets?site=plant2")
    assert after[0]["state"] != "unknown"
    assert (await get_json(client, "/api/v1/sites"))[1]["last_seen"] is not None


# -- incremental lists and the answer cache (issues #6, #8) ------------------------------------


async def test_list_bodies_equal_the_views_of_every_point(
    client: httpx.AsyncClient, ctx: Ctx
) -> None:
    """`/sites` and `/assets` (counters, cached encodings) == the views built point by point."""
    from pydantic import TypeAdapter

    from gateway.api.schemas import AssetOut, SiteOut

    assets_adapter = TypeAdapter(list[AssetOut])
    sites_adapter = TypeAdapter(list[SiteOut])
    for step in range(4):
        if step == 1:
            ctx.feed([reading("level", 60, 2.0)])  # plc2 never linked: tank1 changes
        elif step == 2:
            ctx.inventory.link_down("plc1", ctx.clock, "reset")
        elif step == 3:
            ctx.clock += timedelta(seconds=30)  # everything stale, no tick in between
        full = ctx.inventory.assets(ctx.clock)  # every point evaluated now
        for query, want in (
            ("", full),
            ("?site=plant1", [a for a in full if a.site == "plant1"]),
            ("?state=offline", [a for a in full if a.state is State.OFFLINE]),
        ):
            r = await client.get(f"/api/v1/assets{query}")
            assert r.content == assets_adapter.dump_json(
                [AssetOut.from_view(a) for a in want]
            ), (step, query)
        r = await client.get("/api/v1/sites")
        sites = ctx.inventory.sites(ctx.clock)
        assert r.content == sites_adapter.dump_json([SiteOut.from_view(s) for s in sites])
        for site in sites:
            members = [a for a in full if a.site == site.id]
            assert site.assets_by_state == {
                st.value: sum(1 for a in members if a.state is st)
                for st in (State.ONLINE, State.DEGRADED, State.OFFLINE, State.UNKNOWN)
            }


async def test_lists_show_a_point_gone_stale_before_the_tick(
    client: httpx.AsyncClient, ctx: Ctx
) -> None:
    before = {a["id"]: a for a in await get_json(client, "/api/v1/assets?site=plant1")}
    assert before["pump1"]["state"] == "online"
    ctx.clock += timedelta(seconds=10)  # no reading, no tick: stale by the gateway clock
    after = {a["id"]: a for a in await get_json(client, "/api/v1/assets?site=plant1")}
    assert after["pump1"]["state"] == "offline"
    assert after["pump1"]["points_by_state"]["offline"] == 2
    site = (await get_json(client, "/api/v1/sites"))[0]
    assert site["state"] == "offline"
    assert site["assets_by_state"]["offline"] == 2


def test_view_cache_versioned_bodies_and_fragments() -> None:
    from gateway.api.cache import ViewCache, join_json

    cache = ViewCache()
    built: list[str] = []

    def body(text: str) -> Callable[[], bytes]:
        def run() -> bytes:
            built.append(text)
            return text.encode()

        return run

    assert cache.versioned("a", 1, body("one")) == b"one"
    assert cache.versioned("a", 1, body("two")) == b"one"  # same version: kept
    assert cache.versioned("a", 2, body("three")) == b"three"  # new version: rebuilt
    assert cache.versioned("a", None, body("four")) == b"four"  # no version: never kept
    assert cache.versioned("a", None, body("five")) == b"five"
    assert cache.versioned("a", 2, body("six")) == b"three"
    assert built == ["one", "three", "four", "five"]
    view, other = object(), object()
    assert cache.fragment("x", view, lambda: b"1") == b"1"
    assert cache.fragment("x", view, lambda: b"2") == b"1"  # the same object: reused
    assert cache.fragment("x", other, lambda: b"3") == b"3"  # another object: re-encoded
    assert join_json([b"1", b'{"a":2}']) == b'[1,{"a":2}]'
    assert join_json([]) == b"[]"
    cache.clear()
    assert cache.versioned("a", 2, body("seven")) == b"seven"


async def test_metrics_coverage_equals_the_coverage_api(
    client: httpx.AsyncClient, ctx: Ctx
) -> None:
    """The coverage series are `/api/v1/coverage`'s figures (same clock: exactly)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = await client.get("/metrics")
    assert r.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert samples[("otgw_test_polls_total", ())] == 3  # the context's own registry first
    for level in ("site", "asset"):
        body = await get_json(client, f"/api/v1/coverage?window=3600&group_by={level}")
        labels = ("site",) if level == "site" else ("site", "asset")
        for row in body["rows"]:
            key = tuple(sorted(zip(labels, row["group"].split("/"), strict=True)))
            assert samples[(f"otgw_{level}_coverage_ratio", key)] == row["coverage"]
            assert samples[(f"otgw_{level}_expected_samples", key)] == row["expected"]
            assert samples[(f"otgw_{level}_received_samples", key)] == row["received"]
        assert sum(1 for name, _ in samples if name == f"otgw_{level}_coverage_ratio") == len(
            body["rows"]
        )
    assert samples[("otgw_coverage_window_seconds", ())] == 3600
    assert samples[("otgw_coverage_window_end_timestamp_seconds", ())] == ctx.clock.timestamp()
    assert samples[("otgw_coverage_window_start_timestamp_seconds", ())] == T0.timestamp()


async def test_metrics_coverage_failure_keeps_the_other_metrics(
    client: httpx.AsyncClient, ctx: Ctx
) -> None:
    ctx.fail_counts = True  # e.g. the store is closing
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "otgw_test_polls_total 3.0" in r.text
    assert "otgw_site_coverage_ratio" not in r.text  # never computed: nothing to show
    ctx.fail_counts = False
    assert "otgw_site_coverage_ratio" in (await client.get("/metrics")).text
