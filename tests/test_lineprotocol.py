"""Line protocol: escaping (B7), typed fields that never change type, no NaN/Inf (B3, DESIGN §5).

A reference parser written from the line-protocol spec checks the encoder over generated
inputs (hypothesis); a round trip through the real victoria-metrics checks that a server reads
the tags back exactly and that no input injects an extra point.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Reading
from gateway.sinks.influx import InfluxSink
from gateway.sinks.lineprotocol import (
    VT_BIGINT,
    VT_BOOL,
    LineProtocolError,
    encode_fields,
    encode_rows,
    escape_tag,
    join_lines,
    reading_line,
    tag_prefix,
)
from tests.vm_helpers import VictoriaMetrics

T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# A reference parser (from the spec, independent of the encoder)


def _read_until(text: str, i: int, stops: str) -> tuple[str, int]:
    """Read an escaped token up to an unescaped char in `stops`; return (unescaped, index)."""
    out = []
    while i < len(text) and text[i] not in stops:
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, Any], int]:
    assert "\n" not in line, "a value injected a line break"
    assert "\r" not in line, "a value injected a line break"
    measurement, i = _read_until(line, 0, ", ")
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _read_until(line, i + 1, "=")
        value, i = _read_until(line, i + 1, ", ")
        assert key not in tags, f"duplicate tag {key}"
        tags[key] = value
    assert line[i] == " "
    fields: dict[str, Any] = {}
    i += 1
    while True:
        key, i = _read_until(line, i, "=")
        i += 1
        if line[i] == '"':
            i += 1
            out = []
            while line[i] != '"':
                if line[i] == "\\" and line[i + 1] in '"\\':
                    out.append(line[i + 1])
                    i += 2
                else:
                    out.append(line[i])
                    i += 1
            fields[key] = "".join(out)
            i += 1
        else:
            raw, i = _read_until(line, i, ", ")
            if raw.endswith("i"):
                fields[key] = int(raw[:-1])
            elif raw in ("true", "false"):
                fields[key] = raw == "true"
            else:
                number = float(raw)
                assert math.isfinite(number), f"non-finite number written: {raw}"
                fields[key] = number
        if line[i] == " ":
            break
        assert line[i] == ","
        i += 1
    ts = int(line[i + 1 :])
    return measurement, tags, fields, ts


def shown(text: str) -> str:
    """What a reader gets back: newlines are written as the two characters backslash-n/-r."""
    return text.replace("\n", "\\n").replace("\r", "\\r")


FIELD_TYPES = {"value": float, "state": bool, "text": str, "quality": int}

identifiers = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(st.characters(codec="utf-8"), max_size=30),
)


# ---------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(site=identifiers, asset=identifiers, point=identifiers, value=values,
       quality=st.integers(min_value=0, max_value=2**32 - 1))
def test_b7_round_trip_and_typed_fields(site: str, asset: str, point: str, value: Any,
                                        quality: int) -> None:
    r = Reading(site, asset, point, value, None, quality, T0, T0, "test://")
    line = reading_line(r)
    measurement, tags, fields, ts = parse_line(line)
    assert measurement == "reading"
    assert tags == {"site": shown(site), "asset": shown(asset), "point": shown(point)}
    assert ts == 1772600767891011000  # source time in ns, never re-stamped
    assert fields["quality"] == quality
    for key, v in fields.items():
        assert isinstance(v, FIELD_TYPES[key]), (key, v)
        assert key != "value" or type(v) is float, (key, v)
    if isinstance(value, bool):
        assert fields == {"state": value, "quality": quality}
    elif isinstance(value, float):
        if math.isfinite(value):
            assert fields["value"] == value
        else:
            assert set(fields) == {"quality"}  # NaN/Inf never written
    elif isinstance(value, int):
        assert fields["value"] == float(value)
        if abs(value) > 2**53:
            assert int(fields["text"]) == value  # exact digits kept
        else:
            assert "text" not in fields
    elif isinstance(value, str):
        assert fields == {"text": shown(value), "quality": quality}
    else:
        assert fields == {"quality": quality}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(values, st.integers(0, 2**32 - 1)), min_size=1, max_size=30))
def test_encode_rows_matches_field_encoder(items: list[tuple[Any, int]]) -> None:
    rows = []
    expected = []
    for i, (value, q) in enumerate(items):
        vt = VT_BOOL if isinstance(value, bool) else None
        stored = int(value) if isinstance(value, bool) else value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            stored, vt = str(value), VT_BIGINT
        rows.append((i + 1, 1_000 + i, 7, stored, vt, q))
        expected.append(f"reading,site=s,asset=a,point=p {encode_fields(stored, vt, q)} {1_000 + i}")
    assert encode_rows(rows, {7: tag_prefix("s", "a", "p")}) == expected


def test_examples_and_errors() -> None:
    assert escape_tag('a b,c=d"e\\') == 'a\\ b\\,c\\=d"e\\\\'
    assert tag_prefix("north", "pump 1", "flow,raw") == (
        "reading,site=north,asset=pump\\ 1,point=flow\\,raw "
    )
    assert encode_fields(21.5, None, 0) == "value=21.5,quality=0i"
    assert encode_fields(3, None, 0) == "value=3.0,quality=0i"  # ints as floats: one type
    assert encode_fields(1, VT_BOOL, 0) == "state=true,quality=0i"
    assert encode_fields('say "hi"\n', None, 0) == 'text="say \\"hi\\"\\\\n",quality=0i'
    assert encode_fields(None, None, 2147483648) == "quality=2147483648i"
    assert encode_fields(math.nan, None, 0) == "quality=0i"
    assert encode_fields(str(2**70), VT_BIGINT, 0) == (
        f'value={float(2**70)!r},text="{2**70}",quality=0i'
    )
    with pytest.raises(LineProtocolError):
        tag_prefix("s", "", "p")
    with pytest.raises(LineProtocolError):
        encode_fields(object(), None, 0)


# ---------------------------------------------------------------------------------------------
# The same through a real server


TRICKY = [
    "plain", "with space", "comma,here", "equals=here", 'quote"here', "back\\slash",
    "trailing\\", "\\", "line\nbreak", "carriage\rreturn", "tab\there", "../etc/passwd",
    "plus+hash#", "ünïcödé", "日本語", "emoji😀", "=", ",", " lead", "trail ", "a\\,b",
    "%2e%2e", "' OR 1=1", "\"", "x=1 y=2",
]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_b7_tags_round_trip_through_victoria_metrics(tmp_path: Path) -> None:
    """Each input gives exactly one point whose tags read back as written (B7, real server)."""
    rnd = random.Random(7)
    pool = "ab ,=\\\"'\t\n\rü日😀/#+%.-_"
    generated = ["".join(rnd.choice(pool) for _ in range(rnd.randint(1, 12))) for _ in range(60)]
    names = list(dict.fromkeys(TRICKY + generated))
    readings = [
        Reading("site one", f"asset,{i}", name, float(i), None, 0,
                T0 + timedelta(milliseconds=i), T0, "test://")
        for i, name in enumerate(names)
    ]
    lines = [reading_line(r) for r in readings]
    assert all("\n" not in ln for ln in lines)

    async def write(url: str) -> str:
        sink = InfluxSink(name="vm", url=url, org="o", bucket="b", token=None, timeout=10)
        try:
            return await sink.write(join_lines(lines))
        finally:
            await sink.close()

    with VictoriaMetrics(tmp_path) as vm:
        assert asyncio.run(write(vm.url)) == "204"
        series = vm.export_raw('{__name__="reading_quality"}')
        values = vm.export_raw('{__name__="reading_value"}')
    assert len(series) == len(names)  # no injected points or tags
    got = {(s["metric"]["asset"], s["metric"]["point"]) for s in series}
    assert got == {(f"asset,{i}", shown(n)) for i, n in enumerate(names)}
    assert {s["metric"]["site"] for s in series} == {"site one"}
    by_point = {s["metric"]["point"]: s["values"] for s in values}
    for i, n in enumerate(names):
        assert by_point[shown(n)] == [float(i)]
