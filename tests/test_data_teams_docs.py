"""docs/data-teams.md cannot rot: its Python blocks run against a live demo gateway.

The demo (`python -m gateway demo`: simulator + gateway + API, the plant the page's examples
name) runs in a subprocess on a free port. Every ```python block of the page is executed with
the documented base URL replaced by the demo's, each in a fresh namespace, and the frames it
builds must have the columns the page's tables document (which must also be the API's columns)
and plausible rows. The line-protocol examples of the InfluxDB section must be what the sink
writes for the same readings.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from gateway.model import Reading
from gateway.quality import Q
from gateway.readings_query import BUCKET_COLUMNS, RAW_COLUMNS
from gateway.sinks.lineprotocol import reading_line
from tests.gw_helpers import wait_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "data-teams.md"
DOC_URL = "http://127.0.0.1:8080"
STREAM_KEYS = {"site", "asset", "point", "value", "unit", "quality", "quality_name", "severity",
               "source_time", "gateway_time", "source"}


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def column_tables(text: str) -> list[list[str]]:
    """First-column names of every ``| column | type (Parquet) | content |`` table, in order."""
    tables: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("| column | type (Parquet) |"):
            current = []
            tables.append(current)
        elif current is not None and line.startswith("| `"):
            current.append(line.split("`")[1])
        elif current is not None and not line.startswith("|---"):
            current = None
    return tables


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running `gateway demo` with some history of every example's points; yields its URL."""
    data = tmp_path_factory.mktemp("docs") / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None

        def api_url() -> str | None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "API and page: " in line:
                return line.split("API and page: ")[1].split()[0].rstrip("/")
            if proc.poll() is not None:
                raise AssertionError("demo exited:\n" + "".join(lines))
            return None

        url = wait_for(api_url, timeout=60, interval=0, what="the demo's API line")

        def rows(points: str) -> int:
            resp = httpx.get(f"{url}/api/v1/readings", params={"points": points}, timeout=10)
            resp.raise_for_status()
            return len(resp.json())

        for points in ("north/boiler-1/supply_temp", "south/main-meter/active_power",
                       "south/packing-line/line_speed"):
            wait_for(lambda p=points: rows(p) >= 3, timeout=60, what=f"3 readings of {points}")
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def run_block(index: int, url: str) -> dict[str, Any]:
    """Execute the index-th python block of the page against `url`; its global namespace."""
    block = python_blocks(DOC.read_text(encoding="utf-8"))[index]
    assert DOC_URL in block, f"block {index} does not use the documented base URL"
    namespace: dict[str, Any] = {"__name__": f"data_teams_block_{index}"}
    code = compile(block.replace(DOC_URL, url), f"{DOC}:python block {index}", "exec")
    exec(code, namespace)  # noqa: S102 - the page's own examples, run on purpose
    return namespace


def test_documented_columns_are_the_apis() -> None:
    raw, bucketed = column_tables(DOC.read_text(encoding="utf-8"))
    assert tuple(raw) == RAW_COLUMNS
    assert tuple(bucketed) == BUCKET_COLUMNS


def test_page_has_the_examples_the_tests_run() -> None:
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    libraries = ["import pandas as pd", "import polars as pl", "import pyarrow.parquet as pq",
                 "import httpx"]
    assert len(blocks) == len(libraries)
    for block, library in zip(blocks, libraries, strict=True):
        assert library in block


def _recent(times: pd.Series[Any]) -> bool:
    now = pd.Timestamp(datetime.now(UTC))
    return bool(((times <= now) & (times > now - pd.Timedelta(hours=1))).all())


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_pandas_example(demo: str) -> None:
    ns = run_block(0, demo)
    df, wide, buckets, per_minute, raw, bad = (
        ns[k] for k in ("df", "wide", "buckets", "per_minute", "raw", "bad"))
    assert tuple(df.columns) == RAW_COLUMNS
    assert len(df) > 0
    assert set(df["site"]) == {"north"}
    assert isinstance(df["time"].dtype, pd.DatetimeTZDtype)
    assert str(df["time"].dtype.tz) == "UTC"
    assert _recent(df["time"])
    assert (df["quality"] < 2**31).all()  # usable data only by default
    temps = df[(df["asset"] == "boiler-1") & (df["point"] == "supply_temp")]
    assert len(temps) > 0
    assert all(0 <= v <= 150 for v in temps["value"])
    assert df.loc[df["point"] == "burner_running", "state"].isin([True, False]).all()
    assert ("boiler-1", "supply_temp") in wide.columns
    assert len(wide) > 0
    assert tuple(buckets.columns) == BUCKET_COLUMNS
    assert len(buckets) > 0
    assert str(buckets["time"].dtype) == "datetime64[ns, UTC]"
    assert (buckets["count"] >= 1).all()
    assert (buckets["time"].dt.second == 0).all()  # 60 s buckets aligned to the epoch
    assert ("boiler-1", "supply_temp") in per_minute.columns
    assert tuple(raw.columns) == RAW_COLUMNS
    assert set(raw["asset"]) == {"packing-line"}
    assert list(bad.columns) == ["time", "point", "quality_name"]
    assert all(name.startswith("Bad") for name in bad["quality_name"])


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_polars_example(demo: str) -> None:
    ns = run_block(1, demo)
    df, temps, hourly = ns["df"], ns["temps"], ns["hourly"]
    assert tuple(df.columns) == RAW_COLUMNS
    assert df.height > 0
    assert df["value"].dtype == pl.Float64
    assert df["state"].dtype == pl.Boolean
    assert df["quality"].dtype == pl.UInt32
    assert isinstance(df["time"].dtype, pl.Datetime)
    assert set(df["site"].unique()) == {"north"}
    assert tuple(temps.columns) == BUCKET_COLUMNS
    assert temps.height > 0
    assert all(p.endswith("_temp") for p in temps["point"])
    assert temps["unit"].unique().to_list() == ["Cel"]
    assert hourly.columns == ["time", "kw_mean"]
    assert 1 <= hourly.height <= 2  # the demo has run for minutes: one or two hours
    assert all(math.isfinite(v) for v in hourly["kw_mean"])


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_pyarrow_example(demo: str) -> None:
    table = run_block(2, demo)["table"]
    assert tuple(table.column_names) == RAW_COLUMNS
    assert table.num_rows > 0
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("quality").type == pa.uint32()
    assert {"north", "south"} <= set(table.column("site").to_pylist())


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_stream_example(demo: str) -> None:
    readings = run_block(3, demo)["readings"]
    assert len(readings) == 20
    for r in readings:
        assert set(r) >= STREAM_KEYS
        assert r["site"] == "north"
        assert r["asset"].startswith("boiler-")
        assert datetime.fromisoformat(r["source_time"]) > datetime.now(UTC) - timedelta(minutes=5)


def test_influxdb_examples_are_what_the_sink_writes() -> None:
    """The page's line-protocol lines are exactly the sink's lines for the same readings."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"^```text\n(reading,.*?)^```", text, flags=re.S | re.M)
    assert block is not None
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(seconds=1)
    readings = [
        Reading("north", "boiler-1", "supply_temp", 72.5, "Cel", Q.GOOD, t0, t0, "x"),
        Reading("north", "boiler-1", "burner_running", True, None, Q.GOOD, t0, t0, "x"),
        Reading("north", "pump-1", "flow", None, "m3/h", Q.BAD_NO_COMMUNICATION, t1, t1, "x"),
    ]
    assert block.group(1).splitlines() == [reading_line(r) for r in readings]
