"""MQTT codec: topic templates, plain and JSON decoding, timestamps, config validation (B1-B5, B11)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.mqtt.codec import (
    Field,
    JsonLayout,
    PayloadRejected,
    TopicTemplate,
    compile_pointer,
    decode_json,
    decode_plain,
    parse_json,
    parse_timestamp,
    render,
    resolve,
    slugify,
)
from connectors.mqtt.config import (
    MqttAddress,
    MqttDeviceConfig,
    MqttMapping,
    MqttPublisherConfig,
    TimestampUnit,
    ValueType,
)
from gateway.quality import Q

LIMIT = 65536


# -- topics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "topic", "expected"),
    [
        (
            "plant/{site}/{asset}/{point}",
            "plant/n/p1/flow",
            {"site": "n", "asset": "p1", "point": "flow"},
        ),
        ("plant/{site}/{asset}/{point}", "plant/n/p1", None),
        ("plant/{site}/{asset}/{point}", "plant/n/p1/flow/x", None),
        ("plant/+/{asset}", "plant/x/a", {"asset": "a"}),
        ("plant/#", "plant", {}),  # '#' also matches the parent level (MQTT 3.1.1 §4.7.1.2)
        ("plant/#", "plant/a/b/c", {}),
        ("#", "$SYS/broker/load", None),  # $ topics never match a leading wildcard
        ("+/x", "$SYS/x", None),
        ("{site}/x", "$SYS/x", None),
        ("a/b", "a/b", {}),
        ("a/b", "a/c", None),
        ("a/+/c", "a//c", {}),
    ],
)
def test_topic_template_match(template: str, topic: str, expected: dict[str, str] | None) -> None:
    assert TopicTemplate.compile(template).match(topic) == expected


def test_render_and_slugify() -> None:
    assert render("{site}-{x}", {"site": "n"}) == "n-"
    assert render("fixed", {}) == "fixed"
    assert slugify("Pump 7/Flow Rate") == "pump_7_flow_rate"
    assert slugify("///") == "_"
    assert len(slugify("x" * 200)) == 63


@pytest.mark.parametrize(
    "topic", ["a/#/b", "a/b#", "a/+b", "a/{site}x", "a/{site}/{site}", "", "a\x00b"]
)
def test_invalid_topic_templates_rejected(topic: str) -> None:
    with pytest.raises(ValidationError):
        MqttMapping(topic=topic)


def test_mapping_template_variables_must_come_from_topic() -> None:
    with pytest.raises(ValidationError, match="not a variable of the topic"):
        MqttMapping(topic="plant/{site}/{asset}")  # {point} unknown
    m = MqttMapping(topic="plant/{site}/{asset}", point="level")
    assert m.subscription_filter == "plant/+/+"
    sp = MqttMapping(decoder="sparkplug_b", group="g1")
    assert sp.subscription_filter == "spBv1.0/g1/+/+/#"
    with pytest.raises(ValidationError, match="implied"):
        MqttMapping(decoder="sparkplug_b", topic="spBv1.0/#")
    with pytest.raises(ValidationError, match="JSON pointer"):
        MqttMapping(topic="a/{site}/{asset}/{point}", decoder="json", value="value")


def test_device_config_defaults_and_subscriptions() -> None:
    dev = MqttDeviceConfig.model_validate(
        {
            "id": "b1",
            "host": "h",
            "mappings": [
                {"topic": "a/{site}/{asset}/{point}", "qos": 0},
                {"topic": "a/{site}/{asset}/{point}", "qos": 1},
                {"decoder": "sparkplug_b"},
            ],
        }
    )
    assert dev.effective_port == 1883
    assert dev.endpoint == "mqtt://h:1883"
    assert dev.effective_client_id == "otgw-b1"
    assert [(s.topic, s.qos) for s in dev.effective_subscriptions()] == [
        ("a/+/+/+", 1),
        ("spBv1.0/+/+/+/#", 1),
    ]
    tls = MqttDeviceConfig.model_validate({"id": "b2", "host": "h", "tls": {}})
    assert tls.effective_port == 8883
    assert tls.endpoint.startswith("mqtts://")
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        MqttDeviceConfig.model_validate({"id": "b", "host": "h", "tls": {"cert_file": "c"}})
    with pytest.raises(ValidationError, match="needs a username"):
        MqttDeviceConfig.model_validate({"id": "b", "host": "h", "password": "x"})
    secret = MqttDeviceConfig.model_validate(
        {"id": "b", "host": "h", "username": "u", "password": "SENTINEL-1"}
    )
    assert "SENTINEL" not in repr(secret)
    assert "SENTINEL" not in str(secret.model_dump())


def test_address_to_mapping() -> None:
    addr = MqttAddress(topic="f/l1/meter7", decoder="json", value="/kw", timestamp="/ts")
    m = addr.to_mapping("north", "meter7", "power")
    assert (m.topic, m.site, m.asset, m.point, m.value) == (
        "f/l1/meter7",
        "north",
        "meter7",
        "power",
        "/kw",
    )
    sp = MqttAddress(topic="g1/edge1/dev1", decoder="sparkplug_b", metric="Temp/PV")
    ms = sp.to_mapping("north", "dev1", "temp")
    assert (ms.group, ms.node, ms.device, ms.metrics, ms.other_metrics) == (
        "g1",
        "edge1",
        "dev1",
        {"Temp/PV": "temp"},
        False,
    )
    with pytest.raises(ValidationError, match="exact topic"):
        MqttAddress(topic="a/+/b")
    with pytest.raises(ValidationError, match="metric: required"):
        MqttAddress(topic="g/n", decoder="sparkplug_b")


def test_publisher_config_checks_templates() -> None:
    assert MqttPublisherConfig(host="h").topic == "ot/{site}/{asset}/{point}"
    with pytest.raises(ValidationError, match="unknown variables"):
        MqttPublisherConfig(host="h", topic="ot/{nope}")
    with pytest.raises(ValidationError, match="no \\+ or #"):
        MqttPublisherConfig(host="h", topic="ot/#")


# -- plain --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "value_type", "value", "quality", "reason"),
    [
        (b"21.5", ValueType.NUMBER, 21.5, Q.GOOD, None),
        (b" 42 \n", ValueType.NUMBER, 42, Q.GOOD, None),
        (b"-7", ValueType.INTEGER, -7, Q.GOOD, None),
        (b"1.5", ValueType.INTEGER, None, Q.BAD_TYPE_MISMATCH, "wrong_type"),
        (b"abc", ValueType.NUMBER, None, Q.BAD_TYPE_MISMATCH, "wrong_type"),
        (b"NaN", ValueType.NUMBER, None, Q.BAD, "non_finite"),
        (b"-inf", ValueType.NUMBER, None, Q.BAD, "non_finite"),
        (b"1e400", ValueType.NUMBER, None, Q.BAD, "non_finite"),
        (b"9" * 30, ValueType.NUMBER, None, Q.BAD_OUT_OF_RANGE, "huge_number"),
        (b"TRUE", ValueType.BOOL, True, Q.GOOD, None),
        (b"off", ValueType.BOOL, False, Q.GOOD, None),
        (b"maybe", ValueType.BOOL, None, Q.BAD_TYPE_MISMATCH, "wrong_type"),
        (b"RUNNING", ValueType.STRING, "RUNNING", Q.GOOD, None),
        (b"3", ValueType.ANY, 3, Q.GOOD, None),
        (b"true", ValueType.ANY, True, Q.GOOD, None),
        (b"hello", ValueType.ANY, "hello", Q.GOOD, None),
    ],
)
def test_decode_plain(
    payload: bytes, value_type: ValueType, value: object, quality: int, reason: str | None
) -> None:
    assert decode_plain(payload, value_type, LIMIT) == Field("", value, quality, reason)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "empty"), (b"\xff\xfe", "invalid_utf8"), (b"1" * 11, "oversized")],
)
def test_decode_plain_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadRejected) as info:
        decode_plain(payload, ValueType.NUMBER, 10)
    assert info.value.reason == reason


# -- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b'{"value": 1', "truncated_json"),  # B1 truncated
        (b'{"value": "ab', "truncated_json"),
        (b"[1, 2", "truncated_json"),
        (b"not json", "invalid_json"),  # B1 non-JSON
        (b'{"value": 1}}', "invalid_json"),
        (b'\xef\xbb\xbf{"value": 1}', "bom"),  # B1 UTF-8 BOM
        (b'{"value": "\xff"}', "invalid_utf8"),  # B1 invalid UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),  # B1 100k-deep nesting
        (b"[" * 65 + b"]" * 65, "too_deep"),
        (b"{" + b" " * 70_000 + b"}", "oversized"),  # B5
    ],
)
def test_parse_json_rejects_with_reason(payload: bytes, reason: str) -> None:
    limit = LIMIT if reason == "oversized" else 1 << 20
    with pytest.raises(PayloadRejected) as info:
        parse_json(payload, limit)
    assert info.value.reason == reason


def test_parse_json_depth_limit_is_exact() -> None:
    assert parse_json(b"[" * 64 + b"]" * 64, LIMIT) is not None
    # brackets inside strings do not count
    assert parse_json(json.dumps({"s": "[" * 500}).encode(), LIMIT) == {"s": "[" * 500}


def _layout(
    fields: dict[str, str], ts: str | None = None, unit: str = "auto", vt: str = "number"
) -> JsonLayout:
    return JsonLayout(
        tuple((k, compile_pointer(v)) for k, v in fields.items()),
        compile_pointer(ts) if ts is not None else None,
        TimestampUnit(unit),
        ValueType(vt),
    )


def test_json_several_points_per_message() -> None:
    payload = json.dumps(
        {
            "ts": 1_767_225_600_123,
            "temp": 21.5,
            "p": {"value": 3},
            "list": [10, 20],
            "a/b": 1,
            "m~n": 2,
        }
    ).encode()
    layout = _layout(
        {
            "t": "/temp",
            "p": "/p/value",
            "second": "/list/1",
            "slash": "/a~1b",
            "tilde": "/m~0n",
            "gone": "/nope",
        },
        ts="/ts",
        unit="ms",
    )
    result = decode_json(payload, layout, LIMIT)
    assert [(f.name, f.value) for f in result.fields] == [
        ("t", 21.5),
        ("p", 3),
        ("second", 20),
        ("slash", 1),
        ("tilde", 2),
    ]
    assert result.missing == ["gone"]
    assert result.source_time == datetime(2026, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)
    assert result.timestamp_error is None


@pytest.mark.parametrize(
    ("raw", "value_type", "quality", "reason"),
    [
        ('"12.3"', "number", Q.BAD_TYPE_MISMATCH, "wrong_type"),  # B2
        ("true", "number", Q.BAD_TYPE_MISMATCH, "wrong_type"),
        ("null", "number", Q.BAD, "null_value"),
        ("[1, 2]", "number", Q.BAD_TYPE_MISMATCH, "wrong_type"),
        ("{}", "number", Q.BAD_TYPE_MISMATCH, "wrong_type"),
        (str(2**70), "number", Q.BAD_OUT_OF_RANGE, "huge_number"),
        ("9" * 5000, "number", Q.BAD_OUT_OF_RANGE, "huge_number"),  # B1 5000-digit int
        ("NaN", "number", Q.BAD, "non_finite"),  # B3
        ("Infinity", "number", Q.BAD, "non_finite"),
        ("-Infinity", "number", Q.BAD, "non_finite"),
        ("1e400", "number", Q.BAD, "non_finite"),
        ("1.5", "integer", Q.BAD_TYPE_MISMATCH, "wrong_type"),
        ("1", "bool", Q.BAD_TYPE_MISMATCH, "wrong_type"),
        ('"on"', "string", Q.GOOD, None),
        ("false", "bool", Q.GOOD, None),
    ],
)
def test_json_value_types(raw: str, value_type: str, quality: int, reason: str | None) -> None:
    payload = ('{"value": ' + raw + "}").encode()
    result = decode_json(payload, _layout({"v": "/value"}, vt=value_type), LIMIT)
    (field,) = result.fields
    assert (field.quality, field.reason) == (quality, reason)
    assert (field.value is None) == (quality != Q.GOOD)


def test_json_pointer_rfc6901() -> None:
    doc = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, " ": 7}
    assert resolve(doc, compile_pointer("")) == doc
    assert resolve(doc, compile_pointer("/foo/0")) == "bar"
    assert resolve(doc, compile_pointer("/")) == 0
    assert resolve(doc, compile_pointer("/a~1b")) == 1
    assert resolve(doc, compile_pointer("/m~0n")) == 8
    assert resolve(doc, compile_pointer("/ ")) == 7
    for bad in ("/foo/01", "/foo/-", "/foo/2", "/foo/0/x", "/nope", "/foo/99999999999999"):
        with pytest.raises(PayloadRejected, match="missing_field"):
            resolve(doc, compile_pointer(bad))


# -- timestamps ---------------------------------------------------------------------------

T0 = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "unit"),
    [
        (1_767_323_045.678, "s"),
        (1_767_323_045_678, "ms"),
        (1_767_323_045_678_000, "us"),
        (1_767_323_045_678_000_000, "ns"),
        (1_767_323_045_678, "auto"),
        (1_767_323_045_678_000_000, "auto"),
        ("2026-01-02T03:04:05.678Z", "rfc3339"),
        ("2026-01-02T04:04:05.678+01:00", "auto"),
        ("2026-01-02t03:04:05.678123456z", "auto"),
    ],
)
def test_timestamp_units(raw: object, unit: str) -> None:
    ts = parse_timestamp(raw, TimestampUnit(unit))
    assert abs((ts - T0).total_seconds()) < 0.001
    assert ts.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "unit"),
    [
        ("2026-01-02T03:04:05", "rfc3339"),  # no offset
        ("yesterday", "auto"),
        (True, "ms"),
        (None, "ms"),
        (1_767_323_045_678, "rfc3339"),
        ("2026-01-02T03:04:05Z", "ms"),
        (1_767_323_045_678, "s"),  # ms read as s: year > 2200
        (10, "s"),  # 1970: before 1990
        (float("nan"), "s"),
        (10**30, "ns"),
        ("2026-13-02T03:04:05Z", "auto"),
    ],
)
def test_bad_timestamps(raw: object, unit: str) -> None:
    with pytest.raises(PayloadRejected, match="bad_timestamp"):
        parse_timestamp(raw, TimestampUnit(unit))


def test_json_timestamp_errors_keep_values() -> None:
    layout = _layout({"v": "/value"}, ts="/ts", unit="ms")
    missing = decode_json(b'{"value": 1}', layout, LIMIT)
    assert (missing.fields[0].value, missing.source_time, missing.timestamp_error) == (
        1,
        None,
        "missing_timestamp",
    )
    bad = decode_json(b'{"value": 1, "ts": "x"}', layout, LIMIT)
    assert (bad.fields[0].value, bad.timestamp_error) == (1, "bad_timestamp")


# -- fuzzing (B11) ------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


def _check_layout_result(payload: bytes, layout: JsonLayout) -> None:
    try:
        result = decode_json(payload, layout, LIMIT)
    except PayloadRejected as exc:
        assert exc.reason  # noqa: PT017
        return
    for field in result.fields:
        assert (field.value is None) == bool(field.quality & 0x80000000)
        if isinstance(field.value, float):
            assert math.isfinite(field.value)


_FUZZ_LAYOUT = _layout({"v": "/value", "a": "/a/0", "b": "/b/c"}, ts="/ts")
_FUZZ = settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=300))
def test_fuzz_json_bytes_only_typed_errors(payload: bytes) -> None:
    _check_layout_result(payload, _FUZZ_LAYOUT)


@_FUZZ
@given(_json_values, st.sampled_from(list(ValueType)))
def test_fuzz_json_documents_only_typed_errors(doc: object, value_type: ValueType) -> None:
    text = json.dumps({"value": doc, "a": [doc], "b": {"c": doc}, "ts": doc})
    layout = _layout({"v": "/value", "a": "/a/0", "b": "/b/c"}, ts="/ts", vt=value_type.value)
    _check_layout_result(text.encode(), layout)
    _check_layout_result(text.encode()[: len(text) // 2], layout)


@_FUZZ
@given(st.binary(max_size=64), st.sampled_from(list(ValueType)))
def test_fuzz_plain_only_typed_errors(payload: bytes, value_type: ValueType) -> None:
    try:
        field = decode_plain(payload, value_type, LIMIT)
    except PayloadRejected:
        return
    assert (field.value is None) == bool(field.quality & 0x80000000)


@_FUZZ
@given(
    st.one_of(st.integers(), st.floats(), st.text(max_size=40), st.booleans(), st.none()),
    st.sampled_from(list(TimestampUnit)),
)
def test_fuzz_timestamps_only_typed_errors(raw: object, unit: TimestampUnit) -> None:
    try:
        ts = parse_timestamp(raw, unit)
    except PayloadRejected:
        return
    assert ts.tzinfo is UTC
