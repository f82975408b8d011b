"""MqttConnector against a real mosquitto subprocess (no fakes): mapping, decoders, rejects,
unmapped topics, link loss, persistent sessions, manual acks, Sparkplug B and TLS/auth (S11).

Every wait is bounded by a deadline; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from connectors.base import ConnectError, LinkLost
from connectors.mqtt import sparkplug_b_pb2 as pb
from connectors.mqtt.config import MqttAddress, MqttDeviceConfig
from connectors.mqtt.connector import MqttConnector, MqttPoint
from connectors.mqtt.sparkplug import DataType
from gateway.model import Sample
from gateway.quality import Q
from tests.mosquitto_helpers import Mosquitto, make_password_file, make_pki

pytestmark = pytest.mark.integration
DEADLINE = 10.0  # s, upper bound of every wait


def device(port: int, **extra: Any) -> MqttDeviceConfig:
    base: dict[str, Any] = {"id": "broker-1", "host": "127.0.0.1", "port": port}
    return MqttDeviceConfig.model_validate(base | extra)


async def collect(
    samples: AsyncIterator[list[Sample]],
    done: Callable[[list[Sample]], bool],
    limit: float = DEADLINE,
) -> list[Sample]:
    """Gather batches until ``done(all samples)``; TimeoutError at the deadline."""
    got: list[Sample] = []
    deadline = time.monotonic() + limit
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(got)} samples: {got[-5:]}")
        got += await asyncio.wait_for(samples.__anext__(), left)
    return got


async def wait_until(predicate: Callable[[], bool], limit: float = DEADLINE) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


async def publish(port: int, messages: list[tuple[str, bytes]], qos: int = 1, **kw: Any) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{time.monotonic_ns()}") as pub:
        for topic, payload in messages:
            await pub.publish(topic, payload, qos=qos, **kw)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path / "mq") as b:
        yield b


POINTS = [
    MqttPoint("north/pump-1/flow"),
    MqttPoint("north/pump-1/speed"),
    MqttPoint("north/meter-7/kw"),
    MqttPoint("north/meter-7/kvar"),
    MqttPoint("north/meter-7/state"),
]
MAPPINGS = [
    {"topic": "plant/{site}/{asset}/{point}", "decoder": "plain", "expected_interval": 5},
    {
        "topic": "json/{site}/{asset}",
        "decoder": "json",
        "fields": {"kw": "/p/active", "kvar": "/p/reactive"},
        "timestamp": "/ts",
        "timestamp_unit": "ms",
    },
]


async def test_wildcard_and_json_mapping_timestamps_and_unmapped(broker: Mosquitto) -> None:
    state = MqttPoint(
        "north/meter-7/state",
        MqttAddress(
            topic="f/meter7/status",
            decoder="json",
            value="/s",
            value_type="string",
            timestamp="/t",
            timestamp_unit="rfc3339",
        ),
    )
    conn = MqttConnector(device(broker.port, mappings=MAPPINGS), [*POINTS[:4], state])
    sources = conn.point_sources()
    assert sources["north/pump-1/flow"] == f"mqtt://127.0.0.1:{broker.port}/plant/north/pump-1/flow"
    assert sources["north/meter-7/kw"] == f"mqtt://127.0.0.1:{broker.port}/json/north/meter-7"
    assert sources["north/meter-7/state"] == f"mqtt://127.0.0.1:{broker.port}/f/meter7/status"
    assert conn.expected_intervals() == {"north/pump-1/flow": 5, "north/pump-1/speed": 5}
    async with conn:
        it = conn.samples()
        await publish(
            broker.port,
            [
                ("plant/north/pump-1/flow", b"12.5"),
                ("plant/north/pump-1/speed", b"1450"),
                (
                    "json/north/meter-7",
                    json.dumps(
                        {"ts": 1_767_323_045_678, "p": {"active": 7.5, "reactive": -1}}
                    ).encode(),
                ),
                ("f/meter7/status", b'{"s": "RUN", "t": "2026-01-02T04:04:05.678+01:00"}'),
                ("plant/north/pump-1/unknown", b"1"),  # resolves to a key not configured
                ("other/topic", b"x" * 1000),  # matches no mapping (not subscribed either)
            ],
        )
        got = await collect(it, lambda s: len(s) >= 5)
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    assert [(s.point_id, s.value, s.quality, s.source_time) for s in got] == [
        ("north/pump-1/flow", 12.5, Q.GOOD, None),
        ("north/pump-1/speed", 1450, Q.GOOD, None),
        ("north/meter-7/kw", 7.5, Q.GOOD, t0),
        ("north/meter-7/kvar", -1, Q.GOOD, t0),
        ("north/meter-7/state", "RUN", Q.GOOD, t0),
    ]
    (unmapped,) = conn.unmapped()
    assert unmapped["topic"] == "plant/north/pump-1/unknown"
    assert (unmapped["messages"], unmapped["sample"], unmapped["reason"]) == (
        1,
        "1",
        "unknown_point",
    )
    assert conn.stats.requests == 5


async def test_unmapped_topics_from_a_broad_subscription(broker: Mosquitto) -> None:
    conn = MqttConnector(
        device(
            broker.port, mappings=MAPPINGS, subscriptions=[{"topic": "#", "qos": 1}], max_unmapped=2
        ),
        POINTS,
    )
    async with conn:
        it = conn.samples()
        await publish(
            broker.port,
            [
                ("misc/a", b"A" * 1000),
                ("misc/a", b"a2"),
                ("misc/b", b"\xff\xfe"),
                ("misc/c", b"c"),
                ("plant/north/pump-1/flow", b"1"),
            ],
        )
        await collect(it, lambda s: len(s) >= 1)
    rows = {r["topic"]: r for r in conn.unmapped()}
    assert set(rows) == {"misc/a", "misc/b"}  # max_unmapped = 2; the third only counted
    assert rows["misc/a"]["messages"] == 2
    assert rows["misc/a"]["sample"] == "a2"
    assert rows["misc/b"]["sample"] == "\ufffd\ufffd"
    assert conn.stats.errors["unmapped_overflow"] == 1


BAD_PAYLOADS: list[tuple[bytes, str]] = [  # B1-B5 (and what the next valid message must survive)
    (b'{"p": {"active": 1', "truncated_json"),
    (b"not json", "invalid_json"),
    (b"", "empty"),
    (b'\xef\xbb\xbf{"p": {"active": 1}}', "bom"),
    (b'{"p": {"active": "\xff"}}', "invalid_utf8"),
    (b'{"p": {"active": ' + b"9" * 5000 + b"}}", "huge_number"),
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    (b'{"p": {"active": NaN}}', "non_finite"),
    (b'{"p": {"active": 1e400}}', "non_finite"),
    (b'{"p": {"active": "12.3"}}', "wrong_type"),
    (b'{"p": {"active": null}}', "null_value"),
    (b'{"p": {"active": [1, 2]}}', "wrong_type"),
    (b'{"p": {}}', "missing_field"),
    (b'{"p": {"active": 1}, "ts": "never"}', "bad_timestamp"),
    (
        json.dumps({"p": {"active": 1}, "ts": int(time.time() * 1000) + 86_400_000}).encode(),
        "ts_adjusted",
    ),  # a day in the future
    (b'{"x": "' + b"y" * 300_000 + b'"}', "oversized"),
]


async def test_bad_payloads_counted_by_reason_and_next_valid_gets_through(
    broker: Mosquitto,
) -> None:
    mappings = [
        {
            "topic": "json/{site}/{asset}",
            "decoder": "json",
            "fields": {"kw": "/p/active"},
            "timestamp": "/ts",
            "timestamp_unit": "auto",
        }
    ]
    conn = MqttConnector(device(broker.port, mappings=mappings, max_payload_bytes=262_144), POINTS)
    expected: dict[str, int] = {}
    for _, reason in BAD_PAYLOADS:
        expected[reason] = expected.get(reason, 0) + 1
    async with conn:
        it = conn.samples()
        messages = []
        for i, (bad, _) in enumerate(BAD_PAYLOADS):
            messages.append(("json/north/meter-7", bad))
            messages.append(
                ("json/north/meter-7", json.dumps({"p": {"active": 1000 + i}}).encode())
            )
        await publish(broker.port, messages)
        last = 1000 + len(BAD_PAYLOADS) - 1
        got = await collect(it, lambda s: any(x.value == last for x in s))
        await wait_until(lambda: conn.stats.requests == len(messages))
    good = [s.value for s in got if s.quality == Q.GOOD]
    # every valid message after a bad one arrived, in order
    assert [v for v in good if isinstance(v, int) and v >= 1000] == [
        1000 + i for i in range(len(BAD_PAYLOADS))
    ]
    assert good.count(1) == 2  # bad_timestamp and ts_adjusted keep the value, with gateway time
    errors = {k: v for k, v in conn.stats.errors.items() if k in expected}
    assert errors == expected
    bad = {s.quality for s in got if s.value is None}
    assert bad == {Q.BAD, Q.BAD_TYPE_MISMATCH, Q.BAD_OUT_OF_RANGE}


async def test_retained_max_age_b8(broker: Mosquitto) -> None:
    now_ms = int(time.time() * 1000)
    await publish(
        broker.port,
        [
            (
                "json/north/meter-7",
                json.dumps({"p": {"active": 1}, "ts": now_ms - 3 * 86_400_000}).encode(),
            ),
            ("json/north/pump-1", json.dumps({"p": {"active": 2}, "ts": now_ms}).encode()),
        ],
        retain=True,
    )
    mappings = [
        {
            "topic": "json/{site}/{asset}",
            "decoder": "json",
            "fields": {"kw": "/p/active", "flow": "/p/active"},
            "timestamp": "/ts",
            "timestamp_unit": "ms",
            "retained_max_age": 3600,
        }
    ]
    conn = MqttConnector(device(broker.port, mappings=mappings), POINTS)
    async with conn:
        got = await collect(conn.samples(), lambda s: len(s) >= 1)
    assert [(s.point_id, s.value) for s in got] == [("north/pump-1/flow", 2)]
    assert conn.stats.errors["retained_stale"] == 1


async def test_broker_sigkill_raises_link_lost(broker: Mosquitto) -> None:
    conn = MqttConnector(device(broker.port, mappings=MAPPINGS), POINTS)
    async with conn:
        it = conn.samples()
        await publish(broker.port, [("plant/north/pump-1/flow", b"1")])
        await collect(it, lambda s: len(s) == 1)
        broker.kill()
        with pytest.raises(LinkLost, match="connection lost"):
            await collect(it, lambda s: False)
    with pytest.raises(ConnectError):
        async with MqttConnector(device(broker.port, mappings=MAPPINGS), POINTS):
            pass


async def test_persistent_session_delivers_queued_qos1_r1(broker: Mosquitto) -> None:
    dev = device(
        broker.port,
        mappings=MAPPINGS,
        client_id="otgw-persist",
        clean_start=False,
        session_expiry=600,
    )
    async with MqttConnector(dev, POINTS) as first:  # creates the session and subscription
        it = first.samples()
        await publish(broker.port, [("plant/north/pump-1/flow", b"0")])
        await collect(it, lambda s: len(s) == 1)
    # gateway away: 300 QoS 1 messages are queued by the broker for its session
    await publish(
        broker.port, [("plant/north/pump-1/flow", str(i).encode()) for i in range(1, 301)]
    )
    second = MqttConnector(dev, POINTS)
    async with second:
        got = await collect(second.samples(), lambda s: len(s) >= 300)
    assert [s.value for s in got] == list(range(1, 301))  # exact: no loss, no duplicates


async def test_persistent_session_survives_broker_restart_r1(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "mq", persistence=True) as b:
        dev = device(b.port, mappings=MAPPINGS, client_id="otgw-r1", clean_start=False)
        async with MqttConnector(dev, POINTS):
            pass
        await publish(b.port, [("plant/north/pump-1/flow", str(i).encode()) for i in range(50)])
        b.stop()  # clean stop: mosquitto saves sessions and queues
        b.start()
        conn = MqttConnector(dev, POINTS)
        async with conn:
            got = await collect(conn.samples(), lambda s: len(s) >= 50)
        assert [s.value for s in got] == list(range(50))


async def test_manual_ack_redelivers_uncommitted_messages(broker: Mosquitto) -> None:
    dev = device(broker.port, mappings=MAPPINGS, client_id="otgw-ack", clean_start=False)
    async with MqttConnector(dev, POINTS, ack="commit"):
        pass
    await publish(broker.port, [("plant/north/pump-1/flow", str(i).encode()) for i in range(10)])
    first = MqttConnector(dev, POINTS, ack="commit")
    async with first:
        got = await collect(first.samples(), lambda s: len(s) >= 10)
        batch = first.batches
        # nothing acknowledged: "crash" before commit
    assert [s.value for s in got] == list(range(10))
    second = MqttConnector(dev, POINTS, ack="commit")
    async with second:
        again = await collect(second.samples(), lambda s: len(s) >= 10)
        assert second.acknowledge(second.batches) == 10
    assert sorted(s.value for s in again) == list(range(10))  # redelivered (DUP)
    assert batch >= 1
    third = MqttConnector(dev, POINTS, ack="commit")
    async with third:
        await publish(broker.port, [("plant/north/pump-1/flow", b"99")])
        fresh = await collect(third.samples(), lambda s: len(s) >= 1)
    assert [s.value for s in fresh] == [99]  # the acknowledged ones did not come back


async def test_inbox_bound_drops_and_counts_exactly_b6(broker: Mosquitto) -> None:
    """A full inbox drops new messages and counts them: received = decoded + dropped."""
    mappings = [{"topic": "plant/{site}/{asset}/{point}", "decoder": "plain", "qos": 0}]
    conn = MqttConnector(device(broker.port, mappings=mappings, inbox_max=10), POINTS)
    async with conn:
        # nobody takes batches yet: the reader fills the inbox up to its bound
        await publish(broker.port, [("plant/north/pump-1/flow", str(i).encode())
                                    for i in range(50)], qos=0)
        await wait_until(lambda: conn.stats.errors["inbox_overflow"] >= 40)
        got = await collect(conn.samples(), lambda s: len(s) >= 10)
    assert [s.value for s in got] == list(range(10))  # the first ten, in order
    assert conn.stats.errors["inbox_overflow"] == 40
    assert conn.stats.requests == 50 == len(got) + conn.stats.errors["inbox_overflow"]


async def test_manual_ack_window_bounds_unacknowledged_messages_b6(broker: Mosquitto) -> None:
    """``ack: commit``: at most ``receive_maximum`` (+1) messages wait for acknowledgement.

    mosquitto 2.0.11 honours the Receive Maximum only until the first PUBACK (then it lets a
    window more out per PUBACK); the connector stops reading until its acknowledgements bring
    the count back, so the bound holds anyway, and every message arrives exactly once.
    """
    window = 5
    mappings = [{"topic": "plant/{site}/{asset}/{point}", "decoder": "plain", "qos": 1}]
    dev = device(broker.port, mappings=mappings, receive_maximum=window, clean_start=True)
    conn = MqttConnector(dev, POINTS, ack="commit")
    values: list[object] = []
    most = 0
    async with conn:
        await publish(broker.port, [("plant/north/pump-1/flow", str(i).encode())
                                    for i in range(60)])
        samples = conn.samples()
        deadline = time.monotonic() + DEADLINE
        while len(values) < 60:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(values)} of 60"
            batch = await asyncio.wait_for(samples.__anext__(), left)
            values += [s.value for s in batch]
            most = max(most, len(batch))  # everything yielded since the last acknowledgement
            conn.acknowledge(conn.batches)
    assert values == list(range(60))
    assert most <= window + 1


async def test_manual_ack_messages_without_samples_do_not_hold_the_window(
    broker: Mosquitto,
) -> None:
    """``ack: commit``: messages that give no sample (unmapped) are acknowledged at once.

    Otherwise they would wait for the next batch, and a window full of them never lets one in.
    """
    mappings = [{"topic": "plant/{site}/{asset}/{point}", "decoder": "plain", "qos": 1}]
    dev = device(broker.port, mappings=mappings, receive_maximum=3, clean_start=True)
    conn = MqttConnector(dev, POINTS, ack="commit")
    async with conn:
        await publish(broker.port, [("plant/north/pump-9/flow", str(i).encode())
                                    for i in range(20)]
                      + [("plant/north/pump-1/flow", b"7")])
        got = await collect(conn.samples(), lambda s: len(s) >= 1)
    assert [s.value for s in got] == [7]
    assert conn.stats.errors["unmapped"] == 20


async def test_oversized_payloads_b5(broker: Mosquitto) -> None:
    dev = device(broker.port, mappings=MAPPINGS, max_payload_bytes=1000)
    conn = MqttConnector(dev, POINTS)
    async with conn:
        it = conn.samples()
        await publish(
            broker.port,
            [
                ("plant/north/pump-1/flow", b"1" * 2000),  # over our limit: counted
                (
                    "plant/north/pump-1/flow",
                    b"2" * 200_000,
                ),  # over the MQTT 5 max packet: broker drops
                ("plant/north/pump-1/flow", b"3"),
            ],
        )
        got = await collect(it, lambda s: len(s) >= 1)
    assert [s.value for s in got] == [3]
    assert conn.stats.errors["oversized"] == 1
    assert conn.stats.requests == 2


# -- Sparkplug B --------------------------------------------------------------------------


def sp_payload(
    metrics: list[tuple[str | None, int | None, int | None, str, Any]], seq: int | None
) -> bytes:
    p = pb.Payload(timestamp=int(time.time() * 1000))
    if seq is not None:
        p.seq = seq
    for name, alias, dt, field, value in metrics:
        m = p.metrics.add()
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        if dt is not None:
            m.datatype = dt
        setattr(m, field, value)
    return p.SerializeToString()


async def test_sparkplug_birth_data_gap_rebirth_and_death(broker: Mosquitto) -> None:
    dev = device(
        broker.port,
        reorder_timeout=0.3,
        mappings=[
            {
                "decoder": "sparkplug_b",
                "group": "plant1",
                "site": "north",
                "metrics": {"Flow Rate": "flow"},
            }
        ],
    )
    points = [MqttPoint("north/pump-1/flow"), MqttPoint("north/pump-1/speed")]
    conn = MqttConnector(dev, points)
    base = "spBv1.0/plant1"
    ncmds: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="ncmd-watch") as watch:
        await watch.subscribe(f"{base}/NCMD/#", qos=1)

        async def watcher() -> None:
            async for msg in watch.messages:
                ncmds.append(bytes(msg.payload))  # type: ignore[arg-type]

        watch_task = asyncio.create_task(watcher())
        try:
            async with conn:
                it = conn.samples()
                await publish(
                    broker.port,
                    [
                        (
                            f"{base}/NDATA/pump-1",
                            sp_payload([(None, 1, None, "double_value", 1.0)], 1),
                        ),  # before birth
                        (
                            f"{base}/NBIRTH/pump-1",
                            sp_payload(
                                [
                                    ("bdSeq", None, DataType.INT64, "long_value", 0),
                                    ("Flow Rate", 1, DataType.DOUBLE, "double_value", 10.0),
                                    ("Speed", 2, DataType.INT32, "int_value", 1450),
                                    ("Extra/Thing", 3, DataType.FLOAT, "float_value", 1.0),
                                ],
                                0,
                            ),
                        ),
                        (
                            f"{base}/NDATA/pump-1",
                            sp_payload([(None, 1, None, "double_value", 11.0)], 1),
                        ),
                        (
                            f"{base}/NDATA/pump-1",
                            sp_payload([(None, 2, None, "int_value", 1500)], 3),
                        ),  # gap
                    ],
                )
                got = await collect(it, lambda s: len(s) >= 4)
                # keep pulling (as the runtime does): the reorder timer runs inside samples()
                dead_task = asyncio.create_task(collect(it, lambda s: len(s) >= 2))
                await wait_until(lambda: len(ncmds) >= 2)  # before birth + reorder timeout
                assert conn.nodes()["plant1/pump-1"]["online"] is True
                await publish(
                    broker.port,
                    [
                        (
                            f"{base}/NDEATH/pump-1",
                            sp_payload([("bdSeq", None, DataType.INT64, "long_value", 5)], None),
                        ),
                        (
                            f"{base}/NDEATH/pump-1",
                            sp_payload([("bdSeq", None, DataType.INT64, "long_value", 0)], None),
                        ),
                    ],
                )
                dead = await dead_task
        finally:
            watch_task.cancel()
    assert [(s.point_id, s.value) for s in got] == [
        ("north/pump-1/flow", 10.0),
        ("north/pump-1/speed", 1450),
        ("north/pump-1/flow", 11.0),
        ("north/pump-1/speed", 1500),
    ]
    assert {s.point_id for s in dead} == {"north/pump-1/flow", "north/pump-1/speed"}
    assert all(s.quality == Q.BAD_NO_COMMUNICATION and s.value is None for s in dead)
    errors = conn.stats.errors
    assert errors["data_before_birth"] == 1
    assert errors["seq_gap"] == 1
    assert errors["stale_death"] == 1
    assert errors["ndeath"] == 1
    assert errors["rebirth_requested"] == len(ncmds) == 2
    rebirth = pb.Payload()
    rebirth.ParseFromString(ncmds[0])
    assert rebirth.metrics[0].name == "Node Control/Rebirth"
    assert any(u["topic"].endswith("#Extra/Thing") for u in conn.unmapped())
    assert conn.nodes()["plant1/pump-1"]["online"] is False


# -- TLS and authentication matrix (S11) ----------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def try_connect(dev: MqttDeviceConfig) -> str:
    try:
        async with MqttConnector(dev, POINTS):
            return "ok"
    except ConnectError as exc:
        return f"refused: {exc}"


async def test_tls_and_auth_matrix_s11(tmp_path: Path, pki: Any) -> None:
    pw = make_password_file(tmp_path / "passwd", {"gateway": "SENTINEL-good"})
    with Mosquitto(tmp_path / "tls", tls=pki.server(), password_file=pw) as b:

        def dev(**kw: Any) -> MqttDeviceConfig:
            base = {
                "username": "gateway",
                "password": "SENTINEL-good",
                "tls": {"ca_file": str(pki.ca)},
            }
            return device(b.port, mappings=MAPPINGS, connect_timeout=3, **(base | kw))

        assert await try_connect(dev()) == "ok"
        wrong_ca = await try_connect(dev(tls={"ca_file": str(pki.other_ca)}))
        assert "refused" in wrong_ca
        assert "CERTIFICATE_VERIFY_FAILED" in wrong_ca
        wrong_pw = await try_connect(dev(password="SENTINEL-bad"))  # noqa: S106
        assert "refused" in wrong_pw
        assert "SENTINEL" not in wrong_pw
        anonymous = await try_connect(dev(username=None, password=None))
        assert "refused" in anonymous
        plaintext = await try_connect(dev(tls=None))  # never falls back: plaintext to a TLS port
        assert "refused" in plaintext
        # hostname: the certificate names 127.0.0.1/localhost; 'localhost' also verifies
        ok_name = MqttDeviceConfig.model_validate(
            dev().model_dump() | {"host": "localhost", "password": "SENTINEL-good"}
        )
        assert await try_connect(ok_name) == "ok"
    with Mosquitto(tmp_path / "tls-wrong-name", tls=pki.server_wrong_name()) as b:
        wrong_host = await try_connect(
            device(b.port, mappings=MAPPINGS, connect_timeout=3, tls={"ca_file": str(pki.ca)})
        )
        assert "refused" in wrong_host
        assert "hostname" in wrong_host.lower() or "IP address mismatch" in wrong_host
        skip_name = device(
            b.port, mappings=MAPPINGS, tls={"ca_file": str(pki.ca), "verify_hostname": False}
        )
        assert await try_connect(skip_name) == "ok"
    with Mosquitto(tmp_path / "mtls", tls=pki.server(), require_certificate=True) as b:
        no_cert = await try_connect(
            device(b.port, mappings=MAPPINGS, connect_timeout=3, tls={"ca_file": str(pki.ca)})
        )
        assert "refused" in no_cert
        with_cert = device(
            b.port,
            mappings=MAPPINGS,
            tls={
                "ca_file": str(pki.ca),
                "cert_file": str(pki.client_cert),
                "key_file": str(pki.client_key),
            },
        )
        assert await try_connect(with_cert) == "ok"
    with Mosquitto(tmp_path / "plain") as b:  # TLS config against a plaintext listener
        assert "refused" in await try_connect(
            device(b.port, mappings=MAPPINGS, connect_timeout=3, tls={"ca_file": str(pki.ca)})
        )


# -- the MQTT simulator as the field side ----------------------------------------------------


async def test_simulator_json_and_sparkplug_with_faults(broker: Mosquitto, tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    profile = {
        "broker": {"host": "127.0.0.1", "port": broker.port},
        "publishers": [
            {
                "id": "meters",
                "kind": "json",
                "topic": "sim/north/{asset}",
                "assets": ["meter-7"],
                "points": ["kw"],
                "interval": 0.05,
                "faults": [{"kind": "malformed", "start": 0.3, "count": 3}],
            },
            {
                "id": "edge",
                "kind": "sparkplug_b",
                "group": "north",
                "node": "edge-1",
                "assets": ["pump-1"],
                "points": ["flow"],
                "interval": 0.05,
                "faults": [{"kind": "death", "start": 0.6, "duration": 0.5}],
            },
        ],
    }
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(profile))
    dev = device(
        broker.port,
        reorder_timeout=0.5,
        mappings=[
            {
                "topic": "sim/{site}/{asset}",
                "decoder": "json",
                "fields": {"kw": "/kw"},
                "timestamp": "/ts",
                "timestamp_unit": "ms",
            },
            {"decoder": "sparkplug_b", "group": "north"},
        ],
    )
    conn = MqttConnector(dev, [MqttPoint("north/meter-7/kw"), MqttPoint("north/pump-1/flow")])
    async with conn:
        it = conn.samples()
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, stopped by PID
            [
                sys.executable,
                "-m",
                "simulator.mqtt_publisher",
                "-c",
                str(tmp_path / "sim.yaml"),
                "--truth",
                str(tmp_path / "truth.jsonl"),
                "--ready-file",
                str(tmp_path / "ready.json"),
            ],
            cwd=Path(__file__).parent.parent,
        )
        try:
            got = await collect(
                it,
                lambda s: (
                    any(x.quality == Q.BAD_NO_COMMUNICATION for x in s)
                    and s[-1].point_id == "north/pump-1/flow"
                    and s[-1].quality == Q.GOOD
                    and sum(x.point_id.endswith("kw") for x in s) > 30
                ),
                limit=20,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    kw = [s.value for s in got if s.point_id == "north/meter-7/kw"]
    assert kw == [float(i) for i in range(int(kw[0]), int(kw[0]) + len(kw))]  # seq oracle: no loss
    assert (
        conn.stats.errors["truncated_json"]
        + conn.stats.errors["invalid_utf8"]
        + conn.stats.errors["invalid_json"]
        == 3
    )
    assert conn.stats.errors["ndeath"] == 1
    assert conn.stats.errors["nbirth"] == 2
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert {t["kind"] for t in truth} == {"malformed", "death"}
    assert conn.nodes()["north/edge-1"]["bd_seq"] == 1
