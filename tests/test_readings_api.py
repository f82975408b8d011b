"""Readings API: raw and bucketed queries, quality filter, globs, JSON/CSV/Parquet, row limit.

In-process tests run the app over ASGI on a real `Store` (SQLite on disk) filled through
`Store.append`; CSV and Parquet are read back with pyarrow. The contract tests at the end run a
gateway process polling the simulator.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gateway.api.app import create_app
from gateway.model import Reading
from gateway.quality import Q
from gateway.readings_query import (
    BUCKET_COLUMNS,
    PAGE_ROWS,
    RAW_COLUMNS,
    ReadingsQuery,
    ReadingsReader,
)
from gateway.store import Store
from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import start_simulator
from tests.test_api import HOST, build_ctx

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N = 60  # seconds of history per point
BASE = "/api/v1/readings"
WINDOW = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z"}


def _r(site: str, asset: str, point: str, t: float, value: Any, quality: int = Q.GOOD,
       unit: str | None = None) -> Reading:
    when = T0 + timedelta(seconds=t)
    return Reading(site, asset, point, value, unit, quality, when, when + timedelta(milliseconds=3),
                   f"modbus://127.0.0.1:5020/1/hr/{abs(hash(point)) % 100}")


def history() -> list[Reading]:
    """60 s of: a float with a Bad reading every 7th second, a bool, a big int, a string, ints."""
    out: list[Reading] = []
    for i in range(N):
        bad = i % 7 == 3
        out += [
            _r("plant1", "pump1", "temp", i, None if bad else 20.0 + i / 2,
               Q.BAD_TIMEOUT if bad else Q.GOOD, "Cel"),
            _r("plant1", "pump1", "running", i, i % 4 != 0),
            _r("plant1", "pump2", "energy", i, 2**60 + i, unit="kW.h"),
            _r("plant2", "tank1", "mode", i, "auto" if i < 30 else "manual"),
            _r("plant2", "tank1", "level", i, i * 10, Q.UNCERTAIN_LAST_USABLE_VALUE if i == 5 else Q.GOOD,
               "mm"),
        ]
    return out


READINGS = history()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    st = await Store.open(tmp_path / "gw.db", retention_hours=1e6, max_bytes=1 << 30)
    await st.append(READINGS)
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    ctx = build_ctx()
    ctx.store = store
    app = create_app(ctx, allowed_hosts=(HOST,))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}") as c:
        yield c


async def get(client: httpx.AsyncClient, status: int = 200, **params: Any) -> httpx.Response:
    r = await client.get(BASE, params={**WINDOW, **params})
    assert r.status_code == status, (params, r.status_code, r.text[:500])
    return r


async def rows(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await get(client, **params)
    assert r.headers["content-type"].startswith("application/json")
    body: list[dict[str, Any]] = json.loads(r.text, parse_constant=lambda c: pytest.fail(c))
    return body


def ts(t: float) -> str:
    return (T0 + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- raw ---------------------------------------------------------------------------------------


async def test_raw_rows_columns_types_and_order(client: httpx.AsyncClient) -> None:
    body = await rows(client, points="*")
    assert all(list(r) == list(RAW_COLUMNS) for r in body)
    good = [r for r in READINGS if r.quality < 2**31]
    assert len(body) == len(good)  # default quality=good drops the Bad temps
    assert [r["time"] for r in body] == sorted(r["time"] for r in body)
    by_key = {(r["point"], r["time"]): r for r in body}
    temp = by_key[("temp", ts(4))]
    assert temp == {
        "time": ts(4), "site": "plant1", "asset": "pump1", "point": "temp", "value": 22.0,
        "state": None, "text": None, "unit": "Cel", "quality": 0, "quality_name": "Good",
        "severity": "good", "gateway_time": (T0 + timedelta(seconds=4, milliseconds=3)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"), "source": temp["source"],
    }
    assert by_key[("running", ts(1))]["state"] is True
    assert by_key[("running", ts(4))]["state"] is False
    assert by_key[("running", ts(4))]["value"] is None
    energy = by_key[("energy", ts(2))]
    assert energy["text"] == str(2**60 + 2)  # exact, beyond float precision
    assert energy["value"] == float(2**60 + 2)
    assert by_key[("mode", ts(31))]["text"] == "manual"
    level = by_key[("level", ts(5))]
    assert (level["value"], level["quality_name"], level["severity"]) == (
        50, "UncertainLastUsableValue", "uncertain")


async def test_quality_all_includes_bad_with_null_value(client: httpx.AsyncClient) -> None:
    body = await rows(client, points="plant1/pump1/temp", quality="all")
    assert len(body) == N
    bad = [r for r in body if r["severity"] == "bad"]
    assert [r["time"] for r in bad] == [ts(i) for i in range(N) if i % 7 == 3]
    assert all(r["value"] is None and r["quality_name"] == "BadTimeout" for r in bad)


@pytest.mark.parametrize(
    ("glob", "keys"),
    [
        ("plant1/*/temp", {"plant1/pump1/temp"}),
        ("plant1/*", {"plant1/pump1/temp", "plant1/pump1/running", "plant1/pump2/energy"}),
        ("*/tank1/*", {"plant2/tank1/mode", "plant2/tank1/level"}),
        ("plant?/pump[12]/[!t]*", {"plant1/pump1/running", "plant1/pump2/energy"}),
        ("plant1/pump1/temp,plant2/*/level", {"plant1/pump1/temp", "plant2/tank1/level"}),
        ("*/*/nothing", set()),
        ("plant3/*", set()),
    ],
)
async def test_globs_select_points(client: httpx.AsyncClient, glob: str, keys: set[str]) -> None:
    body = await rows(client, points=glob, quality="all")
    assert {f"{r['site']}/{r['asset']}/{r['point']}" for r in body} == keys


async def test_time_range_is_half_open_and_defaults(client: httpx.AsyncClient) -> None:
    body = await rows(client, points="plant2/tank1/level", start=ts(10), end=ts(20))
    assert [r["time"] for r in body] == [ts(i) for i in range(10, 20)]
    # offsets are honoured
    shifted = await rows(client, points="plant2/tank1/level", start="2026-01-01T01:00:10+01:00",
                         end="2026-01-01T01:00:12+01:00")
    assert [r["value"] for r in shifted] == [100, 110]
    # default: the hour before now (the test clock is 2026-01-01T00:01:00Z)
    r = await client.get(BASE, params={"points": "plant2/tank1/level"})
    assert len(r.json()) == N


# -- buckets -----------------------------------------------------------------------------------


def expected_buckets(point: str, every: int, agg: str, quality: str) -> list[tuple[str, Any, int]]:
    groups: dict[int, list[Reading]] = defaultdict(list)
    for r in READINGS:
        if r.point == point and (quality == "all" or r.quality < 2**31):
            groups[int((r.source_time - T0).total_seconds()) // every * every].append(r)
    out = []
    for b in sorted(groups):
        rs = groups[b]
        nums = [float(r.value) for r in rs if isinstance(r.value, int | float) and r.value is not None]
        if agg == "count":
            v: Any = float(len(rs))
        elif agg == "last":
            last = max(rs, key=lambda r: r.source_time).value
            v = float(last) if isinstance(last, int | float) else None
        elif not nums:
            v = None
        else:
            v = {"mean": sum(nums) / len(nums), "min": min(nums), "max": max(nums)}[agg]
        out.append((ts(b), v, len(rs)))
    return out


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last", "count"])
@pytest.mark.parametrize("quality", ["good", "all"])
@pytest.mark.parametrize("point", ["temp", "running", "level", "mode"])
async def test_bucket_aggregates(client: httpx.AsyncClient, agg: str, quality: str, point: str) -> None:
    body = await rows(client, points=f"*/*/{point}", every=10, agg=agg, quality=quality)
    assert all(list(r) == list(BUCKET_COLUMNS) for r in body)
    got = [(r["time"], r["value"], r["count"]) for r in body]
    want = expected_buckets(point, 10, agg, quality)
    assert [(t, c) for t, _, c in got] == [(t, c) for t, _, c in want]
    for (_, g, _), (_, w, _) in zip(got, want, strict=True):
        assert g == pytest.approx(w) if w is not None else g is None


async def test_bad_readings_ignored_by_aggregates_unless_asked(client: httpx.AsyncClient) -> None:
    good = await rows(client, points="plant1/pump1/temp", every=60, agg="count")
    every = await rows(client, points="plant1/pump1/temp", every=60, agg="count", quality="all")
    n_bad = sum(1 for i in range(N) if i % 7 == 3)
    assert good[0]["count"] == N - n_bad
    assert every[0]["count"] == N
    # the mean is over numbers either way (Bad values are null), so it is the same
    m_good = await rows(client, points="plant1/pump1/temp", every=60, agg="mean")
    m_all = await rows(client, points="plant1/pump1/temp", every=60, agg="mean", quality="all")
    assert m_good[0]["value"] == pytest.approx(m_all[0]["value"])
    # last: the last usable value; with quality=all the last reading, here Bad (59 % 7 == 3)
    last = await rows(client, points="plant1/pump1/temp", every=60, agg="last")
    assert last[0]["value"] == pytest.approx(20.0 + 58 / 2)
    last = await rows(client, points="plant1/pump1/temp", every=60, agg="last", quality="all")
    assert last[0]["value"] is None


async def test_buckets_are_epoch_aligned_and_sorted_by_time_then_key(client: httpx.AsyncClient) -> None:
    body = await rows(client, points="*", every=7, agg="count", start=ts(3), end=ts(17))
    times = sorted({r["time"] for r in body})
    assert times == [ts(0), ts(7), ts(14)]  # T0 is a multiple of 7 s since the epoch? check below
    assert (T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() % 7 == 0
    assert body == sorted(body, key=lambda r: (r["time"], r["site"], r["asset"], r["point"]))
    first = [r for r in body if r["time"] == ts(0) and r["point"] == "level"]
    assert first[0]["count"] == 4  # seconds 3..6 only: the range clips the bucket


async def test_subsecond_buckets(client: httpx.AsyncClient) -> None:
    body = await rows(client, points="plant2/tank1/level", every=0.5, agg="max", start=ts(0), end=ts(3))
    assert [(r["time"], r["value"]) for r in body] == [(ts(0), 0.0), (ts(1), 10.0), (ts(2), 20.0)]


# -- CSV and Parquet round trips ---------------------------------------------------------------


def csv_table(data: bytes) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(data),
        convert_options=pacsv.ConvertOptions(
            column_types={"text": pa.string(), "unit": pa.string(), "state": pa.bool_(),
                          "value": pa.float64()},
            strings_can_be_null=True,
        ),
    )


async def test_csv_round_trip_equals_json(client: httpx.AsyncClient) -> None:
    want = await rows(client, points="*", quality="all")
    r = await get(client, points="*", quality="all", format="csv")
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="readings.csv"'
    assert r.text.splitlines()[0] == ",".join(RAW_COLUMNS)
    table = csv_table(r.content)
    assert table.column_names == list(RAW_COLUMNS)
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC") or str(
        table.schema.field("time").type).startswith("timestamp")
    got = table.to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["time"].strftime("%Y-%m-%dT%H:%M:%S.%fZ") == w["time"]
        assert (g["site"], g["asset"], g["point"]) == (w["site"], w["asset"], w["point"])
        assert g["quality"] == w["quality"]
        assert g["state"] == w["state"]
        assert g["text"] == w["text"]
        assert g["unit"] == w["unit"]
        if w["value"] is None:
            assert g["value"] is None
        else:
            assert g["value"] == pytest.approx(w["value"], rel=1e-15)


async def test_parquet_round_trip_equals_json(client: httpx.AsyncClient) -> None:
    want = await rows(client, points="*", quality="all")
    r = await get(client, points="*", quality="all", format="parquet")
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    assert r.content[:4] == b"PAR1"
    assert r.content[-4:] == b"PAR1"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("state").type == pa.bool_()
    assert table.schema.field("quality").type == pa.uint32()
    got = table.to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["time"].strftime("%Y-%m-%dT%H:%M:%S.%fZ") == w["time"]
        for col in ("site", "asset", "point", "state", "text", "unit", "quality", "quality_name",
                    "severity", "source"):
            assert g[col] == w[col], col
        assert g["value"] == (None if w["value"] is None else pytest.approx(w["value"]))
    # nanosecond source time kept exactly
    stamps = table.column("time").cast(pa.int64()).to_pylist()
    assert stamps[0] == int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**9


async def test_bucketed_csv_and_parquet(client: httpx.AsyncClient) -> None:
    want = await rows(client, points="plant1/*", every=15, agg="mean")
    csv_rows = csv_table((await get(client, points="plant1/*", every=15, agg="mean",
                                    format="csv")).content).to_pylist()
    pq_rows = pq.read_table(io.BytesIO((await get(client, points="plant1/*", every=15, agg="mean",
                                                  format="parquet")).content)).to_pylist()
    for got in (csv_rows, pq_rows):
        assert [(g["point"], g["count"]) for g in got] == [(w["point"], w["count"]) for w in want]
        for g, w in zip(got, want, strict=True):
            assert g["value"] == (None if w["value"] is None else pytest.approx(w["value"]))


@pytest.mark.parametrize("every", [None, 10])
async def test_empty_results_are_valid_in_every_format(client: httpx.AsyncClient, every: int | None) -> None:
    extra = {} if every is None else {"every": every}
    assert await rows(client, points="nothing/*", **extra) == []
    text = (await get(client, points="nothing/*", format="csv", **extra)).text
    assert text.strip() == ",".join(BUCKET_COLUMNS if every else RAW_COLUMNS)
    table = pq.read_table(io.BytesIO((await get(client, points="nothing/*", format="parquet",
                                                **extra)).content))
    assert table.num_rows == 0
    assert table.column_names == list(BUCKET_COLUMNS if every else RAW_COLUMNS)


# -- limits, large results, errors -------------------------------------------------------------


async def test_row_limit(client: httpx.AsyncClient) -> None:
    n = len([r for r in READINGS if r.point == "level"])
    assert len(await rows(client, points="*/*/level", limit=n)) == n  # exactly at the limit
    for fmt in ("json", "csv", "parquet"):
        r = await get(client, 400, points="*/*/level", limit=n - 1, format=fmt)
        assert r.headers["content-type"].startswith("application/json")
        detail = r.json()["detail"]
        assert f"more than {n - 1} rows" in detail
        assert "limit" in detail
        assert "every" in detail
    # buckets: 6 buckets x 5 points = 30 rows
    assert len(await rows(client, points="*", every=10, agg="count", quality="all", limit=30)) == 30
    r = await get(client, 400, points="*", every=10, agg="count", quality="all", limit=29)
    assert "more than 29 rows" in r.json()["detail"]


async def test_large_result_streams_in_pages(tmp_path: Path) -> None:
    """More rows than a page, many with equal timestamps: every row once, in order."""
    st = await Store.open(tmp_path / "big.db", retention_hours=1e6, max_bytes=1 << 30)
    try:
        n_points, n_ticks = 7, 4000  # 28,000 rows, 7 per timestamp: pages split ties
        batch = [_r("s", "a", f"p{p}", t / 10, float(t * 10 + p)) for t in range(n_ticks)
                 for p in range(n_points)]
        await st.append(batch)
        assert len(batch) > 2 * PAGE_ROWS
        ctx = build_ctx()
        ctx.store = st
        app = create_app(ctx, allowed_hosts=(HOST,))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=f"http://{HOST}") as c:
            params = {"points": "s/a/*", "start": ts(0), "end": ts(n_ticks), "limit": 1_000_000}
            body = (await c.get(BASE, params=params)).json()
            assert [r["value"] for r in body] == [float(t * 10 + p) for t in range(n_ticks)
                                                  for p in range(n_points)]
            table = pq.read_table(io.BytesIO((await c.get(BASE, params={**params, "format": "parquet"})).content))
            assert table.num_rows == len(batch)
            assert pq.ParquetFile(io.BytesIO((await c.get(BASE, params={**params, "format": "parquet"})).content)).num_row_groups >= 3
            assert table.column("value").to_pylist() == [r["value"] for r in body]
            csv_lines = (await c.get(BASE, params={**params, "format": "csv"})).text.splitlines()
            assert len(csv_lines) == len(batch) + 1
            agg = (await c.get(BASE, params={**params, "every": 1, "agg": "count"})).json()
            assert len(agg) == n_points * n_ticks // 10
            assert all(r["count"] == 10 for r in agg)
    finally:
        await st.close()


async def test_reader_is_pinned_to_a_snapshot(store: Store) -> None:
    query = ReadingsQuery(patterns=("plant2/tank1/level",), start=T0, end=T0 + timedelta(hours=1))
    reader = ReadingsReader(store, query)
    await reader.prepare()
    await store.append([_r("plant2", "tank1", "level", 100 + i, i) for i in range(5)])
    got = [row async for page in reader.pages() for row in page]
    assert len(got) == N  # the 5 later readings are not part of this result
    again = ReadingsReader(store, query)
    await again.prepare()
    assert len([row async for page in again.pages() for row in page]) == N + 5


@pytest.mark.parametrize(
    "params",
    [
        {"agg": "mean"},  # agg without every
        {"every": 0},
        {"every": -1},
        {"every": "nan"},
        {"every": "inf"},
        {"every": 40_000_000},
        {"agg": "median", "every": 10},
        {"quality": "bad"},
        {"format": "xml"},
        {"limit": 0},
        {"limit": 1_000_001},
        {"points": ""},
        {"points": "Plant1/*"},
        {"points": "plant1/*;drop table readings"},
        {"points": "../*"},  # '.' and '/' are key characters: valid glob, matches nothing
        {"points": ",".join(["a"] * 65)},
        {"points": "a" * 300},
        {"start": "2026-01-01T00:00:00"},  # naive
        {"start": "yesterday"},
        {"start": "2026-01-01T00:01:00Z", "end": "2026-01-01T00:00:00Z"},
        {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        {"start": "0001-01-01T00:00:00+01:00"},
    ],
)
async def test_bad_params_422(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    r = await client.get(BASE, params=params)
    if params.get("points") == "../*":
        assert r.status_code == 200
        assert r.json() == []
        return
    assert r.status_code == 422, (params, r.status_code, r.text)
    body = r.json()
    assert body["detail"][0]["loc"][0] == "query"
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "params",
    [
        {"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"},  # beyond int64 ns
        {"end": "0001-01-01T00:30:00Z"},  # default start would underflow
        {"start": "1900-01-01T00:00:00Z", "every": 31_622_400, "agg": "count"},
    ],
)
async def test_extreme_times_are_not_errors(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    r = await client.get(BASE, params={"points": "plant2/*", **params})
    assert r.status_code == 200, r.text


async def test_store_closed_503() -> None:
    ctx = build_ctx()
    app = create_app(ctx, allowed_hosts=(HOST,))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}") as c:
        r = await c.get(BASE)
    assert r.status_code == 503
    assert r.json() == {"detail": "the store is not open"}


# -- contract on a running gateway with the simulator -----------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_readings_contract_on_gateway_process(tmp_path: Path) -> None:
    profile = {"seed": 1, "devices": [{
        "id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "faults": [],
        "registers": [
            {"table": "holding", "address": 0, "type": "uint16", "signal": {"kind": "counter", "period": 1}},
            {"table": "holding", "address": 1, "type": "float32", "signal": {"kind": "constant", "value": 12.25}},
            {"table": "coil", "address": 0, "signal": {"kind": "constant", "value": 1}},
            {"table": "input", "address": 0, "type": "string", "length": 2, "signal": {"kind": "constant", "value": "OK"}},
        ],
    }]}
    with start_simulator(profile, tmp_path) as sim:
        cfg = {
            "gateway": {"name": "rq-gw", "data_dir": str(tmp_path / "data")},
            "api": {"host": "127.0.0.1", "port": 0},
            "devices": [{"id": "plc", "host": "127.0.0.1", "port": sim.ports["plc"],
                         "poll_interval": 0.1, "timeout": 0.08}],
            "sites": [{"id": "site-1", "assets": [{"id": "plc", "points": [
                {"id": "count", "device": "plc", "register": "holding", "address": 0, "type": "uint16", "unit": "s"},
                {"id": "temp", "device": "plc", "register": "holding", "address": 1, "type": "float32", "unit": "Cel"},
                {"id": "run", "device": "plc", "register": "coil", "address": 0, "type": "bool"},
                {"id": "tag", "device": "plc", "register": "input", "address": 0, "type": "string", "length": 2},
            ]}]}],
        }
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            start = datetime.now(UTC) - timedelta(minutes=1)

            def enough() -> list[dict[str, Any]] | None:
                body = gw.get(BASE, points="site-1/plc/temp", start=start.isoformat())
                return body if len(body) >= 30 else None

            wait_for(enough, timeout=30, what="30 temp readings")
            end = datetime.now(UTC)
            window = {"start": start.isoformat(), "end": end.isoformat()}
            raw = gw.get(BASE, points="site-1/plc/*", **window)
            assert {r["point"] for r in raw} == {"count", "temp", "run", "tag"}
            for r in raw:
                assert r["quality"] == 0
                assert r["source"].startswith("modbus://127.0.0.1:")
                if r["point"] == "temp":
                    assert (r["value"], r["unit"]) == (12.25, "Cel")
                elif r["point"] == "run":
                    assert (r["value"], r["state"]) == (None, True)
                elif r["point"] == "tag":
                    assert r["text"] == "OK"
                else:
                    assert isinstance(r["value"], int)
            # The counter signal: value = floor(source time) mod 65536 (±1 for poll timing).
            for r in (x for x in raw if x["point"] == "count"):
                t = datetime.fromisoformat(r["time"]).timestamp()
                assert abs(r["value"] - math.floor(t) % 65536) <= 1
            # Aggregates agree with the raw rows.
            counts = gw.get(BASE, points="site-1/plc/temp", every=5, agg="count", **window)
            assert sum(b["count"] for b in counts) == sum(1 for r in raw if r["point"] == "temp")
            means = gw.get(BASE, points="site-1/plc/temp", every=5, agg="mean", **window)
            assert all(b["value"] == pytest.approx(12.25) for b in means)
            # CSV and Parquet carry the same rows.
            csv_body = httpx.get(gw.url + BASE, params={"points": "site-1/plc/*", "format": "csv", **window}, timeout=10)
            assert csv_body.status_code == 200
            assert len(csv_table(csv_body.content)) == len(raw)
            pq_body = httpx.get(gw.url + BASE, params={"points": "site-1/plc/*", "format": "parquet", **window}, timeout=10)
            table = pq.read_table(io.BytesIO(pq_body.content))
            assert table.column("time").to_pylist()[0].strftime("%Y-%m-%dT%H:%M:%S.%fZ") == raw[0]["time"]
            assert table.num_rows == len(raw)
            # The limit guards the gateway.
            over = httpx.get(gw.url + BASE, params={"points": "*", "limit": 3, **window}, timeout=10)
            assert over.status_code == 400
            assert "row limit" in over.json()["detail"]
            assert gw.get("/api/v1/sinks") == [] or isinstance(gw.get("/api/v1/sinks"), list)
        finally:
            assert gw.stop() == 0, gw.log()
