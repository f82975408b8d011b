"""Sparkplug B: topic parsing, metric decoding, and the host session state machine (R24, B10, B11)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.mqtt import sparkplug_b_pb2 as pb
from connectors.mqtt.codec import PayloadRejected
from connectors.mqtt.sparkplug import (
    DataType,
    MessageType,
    SparkplugError,
    Topic,
    birth_death_seq,
    decode_payload,
    encode_rebirth,
    metric_value,
    ms_to_datetime,
    parse_topic,
    rebirth_topic,
)
from connectors.mqtt.sparkplug_session import SparkplugSessions
from gateway.quality import Q

RX = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# -- helpers ------------------------------------------------------------------------------


def metric(
    name: str | None = None, alias: int | None = None, dt: int | None = None, **value: Any
) -> dict[str, Any]:
    return {"name": name, "alias": alias, "datatype": dt, **value}


def payload(
    metrics: list[dict[str, Any]], seq: int | None = None, ts: int | None = 1_767_323_045_000
) -> pb.Payload:
    p = pb.Payload()
    if ts is not None:
        p.timestamp = ts
    if seq is not None:
        p.seq = seq
    for m in metrics:
        pm = p.metrics.add()
        for key, val in m.items():
            if val is None:
                continue
            if key == "quality":
                pm.properties.keys.append("Quality")
                pv = pm.properties.values.add()
                pv.type = DataType.INT32
                pv.int_value = val
            else:
                setattr(pm, key, val)
    return p


def birth(bd: int, seq: int = 0, extra: list[dict[str, Any]] | None = None) -> pb.Payload:
    return payload(
        [
            metric("bdSeq", dt=DataType.INT64, long_value=bd),
            metric("Node Control/Rebirth", dt=DataType.BOOLEAN, boolean_value=False),
            metric("Temp", alias=1, dt=DataType.DOUBLE, double_value=20.0),
            metric("Running", alias=2, dt=DataType.BOOLEAN, boolean_value=True),
            *(extra or []),
        ],
        seq=seq,
    )


def death(bd: int) -> pb.Payload:
    return payload([metric("bdSeq", dt=DataType.INT64, long_value=bd)], ts=None)


def ndata(seq: int, temp: float = 21.0, alias: int = 1) -> pb.Payload:
    return payload([metric(alias=alias, double_value=temp)], seq=seq)


def T(kind: str, device: str = "") -> Topic:
    return Topic("g1", MessageType(kind), "edge1", device)


# -- topics and values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("spBv1.0/g1/NBIRTH/e1", Topic("g1", MessageType.NBIRTH, "e1", "")),
        ("spBv1.0/g1/DDATA/e1/d1", Topic("g1", MessageType.DDATA, "e1", "d1")),
        ("spBv1.0/STATE/host1", Topic("", MessageType.STATE, "host1", "")),
        ("spBv1.0/g1/NDATA/e1/d1", None),  # node type with a device
        ("spBv1.0/g1/DDATA/e1", None),  # device type without one
        ("spBv1.0/g1/XDATA/e1", None),
        ("spBv1.0/g1//e1", None),
        ("spAv1.0/g1/NDATA/e1", None),
        ("spBv1.0/g1/NDATA/e1/d1/x", None),
    ],
)
def test_parse_topic(topic: str, expected: Topic | None) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    ("dt", "field", "raw", "value"),
    [
        (DataType.INT8, "int_value", 0xFFFFFFFF, -1),  # 32-bit two's complement
        (DataType.INT8, "int_value", 0xFF, -1),  # 8-bit two's complement (lenient)
        (DataType.INT16, "int_value", 0xFFFF8000, -32768),
        (DataType.INT32, "int_value", 0x80000000, -(2**31)),
        (DataType.INT64, "long_value", 2**64 - 5, -5),
        (DataType.UINT8, "int_value", 255, 255),
        (DataType.UINT32, "int_value", 2**32 - 1, 2**32 - 1),
        (DataType.UINT64, "long_value", 2**64 - 1, 2**64 - 1),
        (DataType.FLOAT, "float_value", 1.5, 1.5),
        (DataType.DOUBLE, "double_value", -2.25, -2.25),
        (DataType.BOOLEAN, "boolean_value", True, True),
        (DataType.STRING, "string_value", "run", "run"),
        (DataType.TEXT, "string_value", "t", "t"),
        (DataType.DATETIME, "long_value", 1_767_323_045_000, 1_767_323_045_000),
    ],
)
def test_metric_values(dt: int, field: str, raw: object, value: object) -> None:
    m = pb.Payload.Metric(datatype=dt)
    setattr(m, field, raw)
    decoded = metric_value(m, dt)
    assert (decoded.value, decoded.quality, decoded.reason) == (value, Q.GOOD, None)


def test_metric_value_failures() -> None:
    m = pb.Payload.Metric(datatype=DataType.DOUBLE, int_value=3)
    with pytest.raises(SparkplugError, match="datatype_mismatch"):
        metric_value(m, DataType.DOUBLE)
    with pytest.raises(SparkplugError, match="datatype_mismatch"):
        metric_value(pb.Payload.Metric(int_value=1000), DataType.INT8)
    with pytest.raises(SparkplugError, match="unsupported_type"):
        metric_value(pb.Payload.Metric(bytes_value=b"x"), DataType.BYTES)
    nan = metric_value(pb.Payload.Metric(double_value=float("nan")), DataType.DOUBLE)
    assert (nan.value, nan.quality, nan.reason) == (None, Q.BAD, "non_finite")
    null = metric_value(pb.Payload.Metric(is_null=True), DataType.DOUBLE)
    assert (null.value, null.quality, null.reason) == (None, Q.BAD, "null_value")
    p = payload([metric("x", dt=DataType.DOUBLE, double_value=1.0, quality=500)])
    stale = metric_value(p.metrics[0], DataType.DOUBLE)
    assert (stale.value, stale.quality) == (1.0, Q.UNCERTAIN_LAST_USABLE_VALUE)
    p = payload([metric("x", dt=DataType.DOUBLE, double_value=1.0, quality=0)])
    assert metric_value(p.metrics[0], DataType.DOUBLE).reason == "bad_quality"


def test_decode_payload_and_rebirth_encoding() -> None:
    data = birth(7).SerializeToString()
    decoded = decode_payload(data, 1 << 20)
    assert birth_death_seq(decoded) == 7
    assert decoded.seq == 0
    with pytest.raises(SparkplugError, match="invalid_protobuf"):
        decode_payload(b"\x0a\xff\xff\xff", 1 << 20)
    with pytest.raises(SparkplugError, match="oversized"):
        decode_payload(data, 3)
    ncmd = pb.Payload()
    ncmd.ParseFromString(encode_rebirth(1_767_323_045_000))
    (m,) = ncmd.metrics
    assert (m.name, m.datatype, m.boolean_value) == ("Node Control/Rebirth", DataType.BOOLEAN, True)
    assert not ncmd.HasField("seq")
    assert rebirth_topic("g1", "e1") == "spBv1.0/g1/NCMD/e1"
    assert ms_to_datetime(1_767_323_045_678) == datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    assert ms_to_datetime(0) is None


# -- session state machine: the R24 scripted table ---------------------------------------


def run_script(steps: list[tuple[float, str, Any]], reorder: float = 5.0) -> list[dict[str, Any]]:
    """Feed (time, kind|'tick', payload) steps; return what each step produced."""
    sessions = SparkplugSessions(reorder)
    out: list[dict[str, Any]] = []
    for now, kind, body in steps:
        if kind == "tick":
            res = sessions.tick(now)
        else:
            topic = T(kind, "d1" if kind.startswith("D") else "")
            res = sessions.handle(topic, body, now, RX)
        node = sessions.nodes.get(("g1", "edge1"))
        out.append(
            {
                "values": [(v.device, v.name, v.value, v.quality) for v in res.values],
                "dead": sorted(res.dead),
                "rebirth": len(res.rebirth),
                "counts": dict(res.counts),
                "online": node.online if node else None,
                "bd": node.bd_seq if node else None,
            }
        )
    return out


def test_r24_birth_data_death() -> None:
    out = run_script(
        [(0, "NBIRTH", birth(3)), (1, "NDATA", ndata(1, 22.0)), (2, "NDEATH", death(3))]
    )
    assert out[0]["values"] == [("", "Temp", 20.0, Q.GOOD), ("", "Running", True, Q.GOOD)]
    assert (out[0]["online"], out[0]["bd"], out[0]["counts"]) == (True, 3, {"nbirth": 1})
    assert out[1]["values"] == [("", "Temp", 22.0, Q.GOOD)]
    assert out[1]["counts"] == {}
    assert out[2]["online"] is False
    assert out[2]["dead"] == [("", "Running"), ("", "Temp")]
    assert out[2]["counts"] == {"ndeath": 1}


def test_r24_stale_bdseq_death_ignored() -> None:
    # old session n, new session n+1, then the old session's will NDEATH(n) arrives late
    out = run_script(
        [
            (0, "NBIRTH", birth(4)),
            (1, "NBIRTH", birth(5)),
            (2, "NDEATH", death(4)),
            (3, "NDATA", ndata(1)),
        ]
    )
    assert out[2]["counts"] == {"stale_death": 1}
    assert out[2]["dead"] == []
    assert out[2]["online"] is True
    assert out[2]["bd"] == 5
    assert out[3]["values"] == [("", "Temp", 21.0, Q.GOOD)]


def test_r24_data_before_birth_one_rebirth_per_window() -> None:
    out = run_script(
        [
            (0, "NDATA", ndata(1)),
            (1, "NDATA", ndata(2)),
            (4.9, "NDATA", ndata(3)),
            (5.0, "NDATA", ndata(4)),
        ]
    )
    assert [o["rebirth"] for o in out] == [1, 0, 0, 1]
    assert all(o["values"] == [] for o in out)  # not stored as unknown metrics
    assert out[1]["counts"] == {"data_before_birth": 1, "rebirth_suppressed": 1}


def test_r24_seq_gap_rebirth_after_reorder_timeout() -> None:
    out = run_script(
        [
            (0, "NBIRTH", birth(1)),
            (1, "NDATA", ndata(1)),
            (2, "NDATA", ndata(3)),  # 2 missing: timer starts, data still used
            (3, "NDATA", ndata(4)),
            (6.9, "tick", None),
            (7.0, "tick", None),  # 2 + 5 s
            (7.5, "NDATA", ndata(6)),  # another gap: a new timer
            (8.0, "NDATA", ndata(9)),  # and more gaps inside it: no second timer
            (12.5, "tick", None),  # 7.5 + 5 s; the last request was 5.5 s ago: allowed
            (12.6, "NDATA", ndata(11)),  # gap again...
            (17.6, "tick", None),  # ...fires 5.1 s after the last request: allowed
        ],
        reorder=5.0,
    )
    assert out[2]["counts"] == {"seq_gap": 1}
    assert out[2]["values"]
    assert [o["rebirth"] for o in out] == [0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1]
    assert out[5]["counts"] == {"reorder_timeout": 1, "rebirth_requested": 1}


def test_rebirth_requests_never_closer_than_reorder_timeout() -> None:
    sessions = SparkplugSessions(5.0)
    sessions.handle(T("NBIRTH"), birth(1), 0, RX)
    sessions.handle(T("NDATA"), ndata(3), 0, RX)  # gap -> deadline 5
    assert sessions.tick(5).rebirth == [("g1", "edge1")]
    sessions.handle(T("NDATA"), ndata(9), 5, RX)  # gap -> deadline 10 ...
    res = sessions.handle(T("NDATA"), ndata(1, alias=77), 6, RX)  # unknown alias at 6
    assert res.rebirth == []
    assert res.counts["rebirth_suppressed"] == 1


def test_r24_reordered_message_cancels_timer() -> None:
    sessions = SparkplugSessions(5.0)
    sessions.handle(T("NBIRTH"), birth(1), 0, RX)
    sessions.handle(T("NDATA"), ndata(2), 1, RX)  # 1 missing
    assert sessions.next_deadline() == 6.0
    res = sessions.handle(T("NDATA"), ndata(1), 2, RX)
    assert res.counts == Counter({"seq_reordered": 1})
    assert sessions.next_deadline() is None
    assert sessions.tick(10).rebirth == []
    assert sessions.handle(T("NDATA"), ndata(3), 3, RX).counts == Counter()


def test_seq_wraps_and_duplicates() -> None:
    sessions = SparkplugSessions(5.0)
    sessions.handle(T("NBIRTH"), birth(1, seq=254), 0, RX)
    assert sessions.handle(T("NDATA"), ndata(255), 1, RX).counts == Counter()
    assert sessions.handle(T("NDATA"), ndata(0), 1, RX).counts == Counter()
    dup = sessions.handle(T("NDATA"), ndata(255), 1, RX)
    assert dup.counts == Counter({"seq_duplicate": 1})


def test_devices_birth_data_death_and_unknown_alias() -> None:
    sessions = SparkplugSessions(5.0)
    sessions.handle(T("NBIRTH"), birth(1), 0, RX)
    early = sessions.handle(
        T("DDATA", "d1"), payload([metric(alias=10, double_value=1.0)], seq=1), 0.5, RX
    )
    assert early.counts["data_before_birth"] == 1
    assert early.rebirth == [("g1", "edge1")]
    dbirth = payload([metric("Level", alias=10, dt=DataType.FLOAT, float_value=2.5)], seq=2)
    res = sessions.handle(T("DBIRTH", "d1"), dbirth, 1, RX)
    assert [(v.device, v.name, v.value) for v in res.values] == [("d1", "Level", 2.5)]
    res = sessions.handle(
        T("DDATA", "d1"), payload([metric(alias=10, float_value=3.5)], seq=3), 2, RX
    )
    assert [(v.name, v.value) for v in res.values] == [("Level", 3.5)]
    # B10: unknown alias and a datatype mismatch: counted, one rebirth request per window
    res = sessions.handle(
        T("DDATA", "d1"),
        payload([metric(alias=99, float_value=1.0), metric(alias=10, int_value=1)], seq=4),
        3,
        RX,
    )
    assert res.values == []
    assert res.counts == Counter(
        {"unknown_metric": 1, "datatype_mismatch": 1, "rebirth_suppressed": 1}
    )
    res = sessions.handle(T("DDEATH", "d1"), payload([], seq=5), 4, RX)
    assert res.dead == [("d1", "Level")]
    snap = sessions.snapshot()["g1/edge1"]
    assert snap["online"] is True
    assert snap["devices"] == {
        "d1": {
            "online": False,
            "birth_time": "2026-01-02T03:04:05.000000Z",
            "death_time": "2026-01-02T03:04:05.000000Z",
            "metrics": 1,
        }
    }
    res = sessions.handle(T("NDEATH"), death(1), 5, RX)
    assert ("", "Temp") in res.dead
    assert ("d1", "Level") not in res.dead  # the device was already dead


def test_commands_and_state_are_ignored() -> None:
    sessions = SparkplugSessions(5.0)
    assert sessions.handle(T("NCMD"), None, 0, RX).counts == Counter({"ignored_command": 1})
    assert sessions.handle(Topic("", MessageType.STATE, "h", ""), None, 0, RX).counts == Counter(
        {"ignored_state": 1}
    )
    assert sessions.nodes == {}


def test_rebirth_can_be_disabled() -> None:
    sessions = SparkplugSessions(5.0, rebirth=False)
    res = sessions.handle(T("NDATA"), ndata(1), 0, RX)
    assert res.rebirth == []
    assert res.counts["rebirth_disabled"] == 1


def test_link_lost_kills_online_nodes() -> None:
    sessions = SparkplugSessions(5.0)
    sessions.handle(T("NBIRTH"), birth(1), 0, RX)
    res = sessions.link_lost(RX)
    assert ("", "Temp") in res.dead
    assert sessions.nodes[("g1", "edge1")].online is False


# -- fuzzing (B10, B11) -------------------------------------------------------------------

_FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(
    st.binary(max_size=200),
    st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"]),
)
def test_fuzz_sparkplug_bytes_only_typed_errors(data: bytes, kind: str) -> None:
    sessions = SparkplugSessions(1.0)
    sessions.handle(T("NBIRTH"), birth(1), 0, RX)
    try:
        decoded = decode_payload(data, 1 << 16)
    except PayloadRejected as exc:
        assert exc.reason == "invalid_protobuf"  # noqa: PT017
        return
    res = sessions.handle(T(kind, "d1" if kind.startswith("D") else ""), decoded, 1, RX)
    for v in res.values:
        assert (v.value is None) == bool(v.quality & 0x80000000)


_metric_st = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["Temp", "Running", "bdSeq", "x", ""]),
        "alias": st.integers(0, 5),
        "datatype": st.integers(0, 40),
        "is_null": st.booleans(),
        "int_value": st.integers(0, 2**32 - 1),
        "long_value": st.integers(0, 2**64 - 1),
        "double_value": st.floats(),
        "float_value": st.floats(width=32),
        "string_value": st.text(max_size=5),
        "boolean_value": st.booleans(),
        "timestamp": st.integers(0, 2**64 - 1),
    },
)


@_FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"]),
            st.lists(_metric_st, max_size=4),
            st.one_of(st.none(), st.integers(0, 300)),
        ),
        max_size=8,
    )
)
def test_fuzz_sparkplug_sequences_only_typed_errors(
    steps: list[tuple[str, list[dict[str, Any]], int | None]],
) -> None:
    sessions = SparkplugSessions(1.0)
    for i, (kind, metrics, seq) in enumerate(steps):
        p = pb.Payload()
        if seq is not None:
            p.seq = seq
        for m in metrics:
            pm = p.metrics.add()
            for key, val in m.items():
                setattr(pm, key, val)  # the last value field set wins (oneof)
        decoded = decode_payload(p.SerializeToString(), 1 << 16)
        res = sessions.handle(T(kind, "d1" if kind.startswith("D") else ""), decoded, float(i), RX)
        sessions.tick(float(i))
        assert len(res.rebirth) <= 1
        for v in res.values:
            assert (v.value is None) == bool(v.quality & 0x80000000)
