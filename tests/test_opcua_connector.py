"""OpcUaConnector against the project's OPC UA simulator (asyncua server) as a real subprocess.

No mocks: every test starts ``python -m simulator`` with an OPC UA profile, talks to it over
loopback and stops it by PID. Server-side counters (sessions, reads, monitored items, user
tokens) come from the simulator's stats file. RELIABILITY rows: R18 (server restart), R19
(half-open), R21 (status pass-through), R22 (operation limits), R23 (clock skew), B9 (type
surprises), S10 (channel security).
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.base import ConnectError, LinkLost
from connectors.opcua.certs import generate_self_signed
from connectors.opcua.codec import BAD_NO_DATA
from connectors.opcua.config import OpcUaDeviceConfig
from connectors.opcua.connector import OpcUaConnector
from gateway.model import Sample
from gateway.quality import Q
from tests.opcua_helpers import (
    collect,
    const,
    counter,
    drain,
    flat,
    free_port,
    fresh_stats,
    insecure_device,
    of,
    point,
    profile,
    server,
    var,
)
from tests.sim_helpers import SimProcess, start_simulator, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BAD_SENSOR_FAILURE = 0x808C0000
UNCERTAIN_LAST_USABLE = 0x40900000
GOOD_LOCAL_OVERRIDE = 0x00960000
BAD_NODE_ID_UNKNOWN = 0x80340000


def detection_bound(device: OpcUaDeviceConfig) -> float:
    """RELIABILITY §6 D for OPC UA: max(publishing_interval × keepalive_count, watchdog) + 1 s."""
    return max(device.publishing_interval * device.keepalive_count, device.watchdog) + 1.0


def good(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.quality == Q.GOOD]


# ---------------------------------------------------------------------------------------------
# Acquisition.


async def test_subscription_values_match_counter_oracle(tmp_path: Path) -> None:
    variables = [var("Counter", counter(1.0), "UInt32"), var("Temp", const(21.5))]
    with start_simulator(profile(server(variables)), tmp_path) as sim:
        device = insecure_device(sim)
        points = [point("s/a/counter", "Counter"), point("s/a/temp", "Temp")]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda b: len(good(of(b, "s/a/counter"))) >= 4)
            assert conn.opcua_stats.monitored_items == 2
    counts = good(of(batches, "s/a/counter"))
    for sample in counts:
        assert sample.source_time is not None
        assert isinstance(sample.value, int)
        assert sample.value == math.floor(sample.source_time.timestamp())  # the oracle
    values = [s.value for s in counts]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    (temp,) = of(batches, "s/a/temp")  # constant: one notification, then silence
    assert (temp.value, temp.quality) == (21.5, Q.GOOD)


async def test_poll_mode_reads_value_status_and_source_time(tmp_path: Path) -> None:
    variables = [var("Counter", counter(1.0), "UInt32"), var("Label", const("FW-1.2"), "String")]
    with start_simulator(profile(server(variables)), tmp_path) as sim:
        device = insecure_device(sim)
        points = [
            point("s/a/counter", "Counter", mode="poll", poll_interval=0.2),
            point("s/a/label", "Label", mode="poll", poll_interval=0.2),
        ]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda _: conn.stats.polls >= 5)
            stats = sim.wait_stats(lambda s: s["devices"]["opc"]["reads"] >= 5)
    cycles = [b for b in batches if b]
    assert len(cycles) >= 5
    for cycle in cycles:
        assert sorted(s.point_id for s in cycle) == ["s/a/counter", "s/a/label"]
    for sample in of(batches, "s/a/counter"):
        assert sample.quality == Q.GOOD
        assert sample.source_time is not None
        assert sample.value == math.floor(sample.source_time.timestamp())
    assert {s.value for s in of(batches, "s/a/label")} == {"FW-1.2"}
    assert stats["devices"]["opc"]["monitored_items"] == 0  # poll points are not monitored


async def test_absolute_deadband_suppresses_small_changes_only(tmp_path: Path) -> None:
    wobble = {"kind": "sine", "amplitude": 0.4, "period": 2.0, "offset": 50.0}
    steps = {"kind": "step", "values": [0, 5, 10, 5], "every": 0.5}
    variables = [var("Wobble", wobble), var("Steps", steps)]
    with start_simulator(profile(server(variables)), tmp_path) as sim:
        device = insecure_device(sim)
        points = [
            point("s/a/raw", "Wobble"),
            point("s/a/damped", "Wobble", deadband_type="absolute", deadband_value=1.0),
            point("s/a/steps", "Steps", deadband_type="absolute", deadband_value=1.0),
        ]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda b: len(of(b, "s/a/steps")) >= 6)
    raw, damped, steps_seen = of(batches, "s/a/raw"), of(batches, "s/a/damped"), of(batches, "s/a/steps")
    assert len(damped) == 1  # the initial value; every later change is < 1.0 from it
    assert len(raw) >= 10
    values = [s.value for s in steps_seen]
    assert all(abs(b - a) >= 5 for a, b in itertools.pairwise(values))  # type: ignore[operator]


async def test_status_pass_through_including_status_only(tmp_path: Path) -> None:
    names = ["Sensor", "Hold", "Local", "Gone", "Empty"]
    variables = [var(n, const(7.0)) for n in names]
    faults = [
        {"kind": "status", "start": 1.0, "duration": 60, "status": "BadSensorFailure",
         "variables": ["Sensor"]},
        {"kind": "status", "start": 1.0, "duration": 60, "status": "UncertainLastUsableValue",
         "variables": ["Hold"]},
        {"kind": "status", "start": 1.0, "duration": 60, "status": "GoodLocalOverride",
         "variables": ["Local"]},
        {"kind": "status", "start": 1.0, "duration": 60, "status": "BadSensorFailure",
         "variables": ["Gone"], "null_value": True},
        {"kind": "status", "start": 1.0, "duration": 60, "status": 0, "variables": ["Empty"],
         "null_value": True},
    ]
    with start_simulator(profile(server(variables, faults)), tmp_path) as sim:
        device = insecure_device(sim)
        points = [point(f"s/a/{n.lower()}", n) for n in names]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(
                conn, lambda b: all(len(of(b, f"s/a/{n.lower()}")) >= 2 for n in names)
            )
            errors = dict(conn.stats.errors)
    last = {n: of(batches, f"s/a/{n.lower()}")[-1] for n in names}
    assert (last["Sensor"].value, last["Sensor"].quality) == (None, BAD_SENSOR_FAILURE)
    assert (last["Hold"].value, last["Hold"].quality) == (7.0, UNCERTAIN_LAST_USABLE)
    assert (last["Local"].value, last["Local"].quality) == (7.0, GOOD_LOCAL_OVERRIDE)
    assert (last["Gone"].value, last["Gone"].quality) == (None, BAD_SENSOR_FAILURE)
    assert (last["Empty"].value, last["Empty"].quality) == (None, BAD_NO_DATA)  # not dropped
    assert errors.get("no_value") == 1
    for n in names:  # before the window: Good 7.0
        first = of(batches, f"s/a/{n.lower()}")[0]
        assert (first.value, first.quality) == (7.0, Q.GOOD)


async def test_chunks_reads_and_monitored_items_to_operation_limits(tmp_path: Path) -> None:
    """R22: 1,000 polled and 1,000 monitored nodes with limits of 100 per call."""
    n = 1000
    variables = [var(f"V{i:04d}", const(float(i))) for i in range(n)]
    limits = {"max_nodes_per_read": 100, "max_monitored_items_per_call": 100}
    with start_simulator(profile(server(variables, limits=limits)), tmp_path) as sim:
        device = insecure_device(sim, timeout=5.0)
        polled = [
            point(f"s/p/v{i}", f"V{i:04d}", mode="poll", poll_interval=2.0, value_type="number")
            for i in range(n)
        ]
        monitored = [point(f"s/m/v{i}", f"V{i:04d}", value_type="number") for i in range(n)]
        async with OpcUaConnector(device, polled + monitored) as conn:
            assert conn.limits is not None
            assert (conn.limits.read, conn.limits.monitored_items) == (100, 100)
            batches = await collect(
                conn,
                lambda b: conn.stats.polls >= 1 and len({s.point_id for s in flat(b)}) >= 2 * n,
                within=30.0,
            )
            sim.wait_stats(lambda s: s["devices"]["opc"]["monitored_items"] == n)
            polls_before = conn.stats.polls
            await collect(conn, lambda _: conn.stats.polls >= polls_before + 1, within=10.0)
            polls = conn.stats.polls
        # closed: no more reads; the stats file catches up within 0.5 s
        after = sim.wait_stats(
            lambda s: s["devices"]["opc"]["reads_by_size"].get("100", 0) >= 10 * polls
        )
    dev = after["devices"]["opc"]
    assert dev["too_many_operations"] == 0
    assert dev["max_nodes_per_read_call"] <= 100
    assert dev["create_monitored_items"] == 10  # 1,000 items in 10 calls
    assert dev["max_items_per_call"] == 100
    assert dev["reads_by_size"]["100"] == 10 * polls  # each poll cycle: 10 Reads of 100 nodes
    samples = flat(batches)
    assert all(s.quality == Q.GOOD for s in samples)
    by_key = {s.point_id: s.value for s in samples}
    assert by_key["s/p/v999"] == 999.0
    assert by_key["s/m/v500"] == 500.0


async def test_type_surprises_are_bad_type_mismatch(tmp_path: Path) -> None:
    """B9: a String node on a numeric point, an array node, a String read as number."""
    variables = [
        var("Text", const("hello"), "String"),
        var("Vector", const(1.5), array=3),
        var("Number", const(2.5)),
    ]
    with start_simulator(profile(server(variables)), tmp_path) as sim:
        device = insecure_device(sim)
        points = [
            point("s/a/text", "Text", value_type="number"),
            point("s/a/vector", "Vector"),  # auto: ValueRank 1 -> unsupported
            point("s/a/number", "Number"),
            point("s/a/polled", "Text", mode="poll", poll_interval=0.2, value_type="bool"),
        ]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda b: len(of(b, "s/a/polled")) >= 2)
            errors = dict(conn.stats.errors)
    assert [(s.value, s.quality) for s in of(batches, "s/a/text")] == [(None, Q.BAD_TYPE_MISMATCH)]
    assert [(s.value, s.quality) for s in of(batches, "s/a/vector")] == [
        (None, Q.BAD_TYPE_MISMATCH)
    ]
    assert [(s.value, s.quality) for s in of(batches, "s/a/number")] == [(2.5, Q.GOOD)]
    assert {(s.value, s.quality) for s in of(batches, "s/a/polled")} == {
        (None, Q.BAD_TYPE_MISMATCH)
    }
    assert errors["type_mismatch"] >= 4


async def test_node_id_forms_browse_paths_and_unknown_nodes(tmp_path: Path) -> None:
    variables = [var("Line1/Speed", const(12.0)), var("Count", const(3), "Int32", node_id="i=5001")]
    with start_simulator(profile(server(variables, namespace="urn:test:plant")), tmp_path) as sim:
        device = insecure_device(sim)
        points = [
            point("s/a/by-nsu", node_id="nsu=urn:test:plant;s=Line1.Speed"),
            point("s/a/numeric", node_id="ns=2;i=5001"),
            point("s/a/by-path", browse_path="2:opc/2:Line1/2:Speed", mode="poll", poll_interval=0.2),
            point("s/a/missing", "Nope"),
            point("s/a/missing-polled", "Nope", mode="poll", poll_interval=0.2),
            point("s/a/no-path", browse_path="2:opc/2:Nope"),
            point("s/a/bad-ns", node_id="nsu=urn:not:there;s=X"),
        ]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda b: len(of(b, "s/a/missing-polled")) >= 2)
            sources = conn.point_sources()
    first = {s.point_id: (s.value, s.quality) for s in batches[0]}
    assert first == {  # subscription points that cannot be monitored: one Bad sample at start
        "s/a/missing": (None, BAD_NODE_ID_UNKNOWN),
        "s/a/no-path": (None, 0x806F0000),  # BadNoMatch
        "s/a/bad-ns": (None, BAD_NODE_ID_UNKNOWN),
    }
    assert of(batches, "s/a/by-nsu")[0].value == 12.0
    assert of(batches, "s/a/numeric")[0].value == 3
    assert {s.value for s in of(batches, "s/a/by-path")} == {12.0}
    assert {s.quality for s in of(batches, "s/a/missing-polled")} == {BAD_NODE_ID_UNKNOWN}
    port = sim.ports["opc"]
    assert sources["s/a/numeric"] == f"opc.tcp://127.0.0.1:{port}#ns=2;i=5001"
    assert sources["s/a/by-nsu"] == f"opc.tcp://127.0.0.1:{port}#nsu=urn:test:plant;s=Line1.Speed"
    assert sources["s/a/by-path"] == f"opc.tcp://127.0.0.1:{port}#path=2:opc/2:Line1/2:Speed"


async def test_implausible_source_times_are_replaced_and_counted(tmp_path: Path) -> None:
    """R23: SourceTimestamp now + 1 h, MinDateTime, absent -> replaced, ts_adjusted counted."""
    variables = [var(n, counter(0.5), "UInt32") for n in ("Ahead", "Min", "Absent", "Fine")]
    faults = [
        {"kind": "clock_skew", "start": 0, "duration": 60, "offset": 3600, "variables": ["Ahead"]},
        {"kind": "clock_skew", "start": 0, "duration": 60, "source_time": "min",
         "variables": ["Min"]},
        {"kind": "clock_skew", "start": 0, "duration": 60, "source_time": "null",
         "variables": ["Absent"]},
    ]
    with start_simulator(profile(server(variables, faults)), tmp_path) as sim:
        sim.wait_stats(lambda s: s["devices"]["opc"]["active_faults"] == ["clock_skew"] * 3)
        device = insecure_device(sim, max_future_skew=300)
        keys = ["ahead", "min", "absent", "fine"]
        points = [point(f"s/a/{k}", k.capitalize()) for k in keys]
        async with OpcUaConnector(device, points) as conn:
            batches = await collect(conn, lambda b: all(len(of(b, f"s/a/{k}")) >= 3 for k in keys))
            adjusted = conn.stats.errors["ts_adjusted"]
    limit = datetime.now(UTC) + timedelta(seconds=300)
    for sample in flat(batches):
        assert sample.source_time is not None
        assert datetime(2000, 1, 1, tzinfo=UTC) <= sample.source_time <= limit
    skewed = sum(len(of(batches, f"s/a/{k}")) for k in ("ahead", "min", "absent"))
    assert adjusted == skewed  # exactly the replaced ones
    for sample in of(batches, "s/a/fine"):  # untouched: the oracle holds
        assert sample.value == math.floor(sample.source_time.timestamp() / 0.5)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Liveness and link loss.


async def test_frozen_value_keeps_yielding_keepalives_without_link_loss(tmp_path: Path) -> None:
    """A silent report-by-exception point is alive: [] batches prove it (no gap)."""
    variables = [var("Level", {"kind": "ramp", "slope": 10, "min": 0, "max": 1000})]
    faults = [{"kind": "frozen", "start": 0.5, "duration": 60}]
    with start_simulator(profile(server(variables, faults)), tmp_path) as sim:
        sim.wait_stats(lambda s: s["devices"]["opc"]["active_faults"] == ["frozen"])
        device = insecure_device(sim, publishing_interval=0.1, keepalive_count=3)
        async with OpcUaConnector(device, [point("s/a/level", "Level")]) as conn:
            batches = await collect(conn, lambda b: sum(1 for x in b if x == []) >= 6)
            keepalives = conn.opcua_stats.keepalives
    assert len(of(batches, "s/a/level")) == 1  # the initial value only: frozen since
    assert keepalives >= 6
    assert batches[0] != []


async def test_server_kill_raises_link_lost_and_reconnect_recreates_items(tmp_path: Path) -> None:
    """R18: SIGKILL, restart on the same endpoint: LinkLost within D, items re-created."""
    port = free_port()
    variables = [var(f"C{i}", counter(1.0), "UInt32") for i in range(5)]
    prof = profile(server(variables, port=port))
    points = [point(f"s/a/c{i}", f"C{i}") for i in range(5)]
    sim = start_simulator(prof, tmp_path, name="first")
    try:
        device = insecure_device(sim)
        bound = detection_bound(device)
        async with OpcUaConnector(device, points) as conn:
            await collect(conn, lambda b: len(flat(b)) >= 10)
            before = sim.wait_stats(lambda s: s["devices"]["opc"]["monitored_items"] == 5)
            stream = conn.samples()
            sim.kill()
            killed = time.monotonic()
            with pytest.raises(LinkLost):
                await drain(stream, bound)
            assert time.monotonic() - killed <= bound
    finally:
        sim.kill()
    with start_simulator(prof, tmp_path, name="second") as sim2:
        assert sim2.ports["opc"] == port
        async with OpcUaConnector(device, points) as conn2:
            batches = await collect(conn2, lambda b: len(flat(b)) >= 5)
            after = sim2.wait_stats(lambda s: s["devices"]["opc"]["monitored_items"] == 5)
    assert {s.point_id for s in flat(batches)} == {p.key for p in points}
    assert after["devices"]["opc"]["subscriptions"] == before["devices"]["opc"]["subscriptions"] == 1


async def test_server_down_fault_then_back_on_same_endpoint(tmp_path: Path) -> None:
    """The simulator's offline fault: server stopped, later a new server on the same port."""
    faults = [{"kind": "offline", "start": 1.0, "duration": 2.0}]
    with start_simulator(profile(server([var("C", counter(1.0), "UInt32")], faults)), tmp_path) as sim:
        device = insecure_device(sim)
        async with OpcUaConnector(device, [point("s/a/c", "C")]) as conn:
            with pytest.raises(LinkLost):
                await collect(conn, lambda _: False, within=5.0 + detection_bound(device))
        (record,) = wait_for(lambda: sim.truth(), 10.0, what="offline truth record")
        assert record["kind"] == "offline"
        async with OpcUaConnector(device, [point("s/a/c", "C")]) as conn:
            batches = await collect(conn, lambda b: len(flat(b)) >= 2)
            stats = sim.wait_stats(
                lambda s: s["devices"]["opc"]["restarts"] == 1
                and s["devices"]["opc"]["subscriptions"] == 1
            )["devices"]["opc"]
    assert stats["monitored_items"] == 1
    assert all(s.quality == Q.GOOD for s in flat(batches))


async def test_half_open_link_detected_by_keepalive_watchdog(tmp_path: Path) -> None:
    """R19: the server process is paused (TCP up, no answers): LinkLost within D, close bounded."""
    with start_simulator(profile(server([var("C", counter(1.0), "UInt32")])), tmp_path) as sim:
        device = insecure_device(sim, publishing_interval=0.2, keepalive_count=3, watchdog=1.0)
        bound = detection_bound(device)
        conn = OpcUaConnector(device, [point("s/a/c", "C")])
        async with conn:
            await collect(conn, lambda b: len(flat(b)) >= 2)
            stream = conn.samples()
            sim.pause()
            paused = time.monotonic()
            with pytest.raises(LinkLost, match=r"keep-alive|closed|lost"):
                await drain(stream, bound)
            assert time.monotonic() - paused <= bound
            closing = time.monotonic()
        assert time.monotonic() - closing <= device.timeout + 1.0  # no await beyond its timeout
        sim.resume()


async def test_connect_refused_is_connect_error(tmp_path: Path) -> None:
    device = OpcUaDeviceConfig(
        id="opc",
        endpoint=f"opc.tcp://127.0.0.1:{free_port()}/x",
        security_policy="None",
        insecure=True,
        timeout=1.0,
    )
    with pytest.raises(ConnectError, match="connect"):
        async with OpcUaConnector(device, [point("s/a/x", "X")]):
            pass


# ---------------------------------------------------------------------------------------------
# Security (S10).


def client_pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "client" / "cert.der", tmp_path / "client" / "key.pem"
    generate_self_signed(cert, key, "urn:ot-gateway:test-client", "localhost")
    return cert, key


def secure_device(sim: SimProcess, tmp_path: Path, **extra: Any) -> OpcUaDeviceConfig:
    cert, key = client_pair(tmp_path)
    trusted, rejected = tmp_path / "pki" / "trusted", tmp_path / "pki" / "rejected"
    trusted.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "id": "opc",
        "endpoint": sim.ready["devices"]["opc"]["endpoint"],
        "certificate": str(cert),
        "private_key": str(key),
        "trust_dir": str(trusted),
        "timeout": 3.0,
        "publishing_interval": 0.1,
        "keepalive_count": 3,
        "watchdog": 1.0,
    }
    settings.update(extra)
    assert rejected == trusted.parent / "rejected"
    return OpcUaDeviceConfig(**settings)


def trust_server(sim: SimProcess, device: OpcUaDeviceConfig) -> None:
    source = Path(sim.ready["devices"]["opc"]["certificate"])
    assert device.trust_dir is not None
    shutil.copy(source, Path(device.trust_dir) / "server.der")


SECURE = {"policies": ["Basic256Sha256_SignAndEncrypt", "Aes256_Sha256_RsaPss_SignAndEncrypt"]}


@pytest.mark.parametrize("policy", ["None", "Basic128Rsa15", "Basic256"])
def test_insecure_policies_refused_by_config_unless_insecure(policy: str) -> None:
    base = {"id": "opc", "endpoint": "opc.tcp://127.0.0.1:4840", "security_policy": policy}
    with pytest.raises(ValidationError, match="security_policy"):
        OpcUaDeviceConfig(**base)
    extra = {} if policy == "None" else {"certificate": "c", "private_key": "k", "trust_dir": "t"}
    assert OpcUaDeviceConfig(**base, **extra, insecure=True).insecure


@pytest.mark.parametrize(
    ("offered", "listed"),
    [
        (["None"], "it offers None/None"),
        (["Basic128Rsa15_SignAndEncrypt", "Basic256_Sign"], "Basic128Rsa15/SignAndEncrypt"),
    ],
)
async def test_server_offering_only_insecure_policies_is_refused(
    tmp_path: Path, offered: list[str], listed: str
) -> None:
    """S10 (a), (b): a server with only None or only deprecated policies: no session."""
    security = {"policies": offered}
    with start_simulator(profile(server([var("C", const(1.0))], security=security)), tmp_path) as sim:
        device = secure_device(sim, tmp_path)
        with pytest.raises(ConnectError, match="offers no endpoint with Basic256Sha256") as info:
            async with OpcUaConnector(device, [point("s/a/c", "C")]):
                pass
        assert listed in str(info.value)
        assert fresh_stats(sim)["sessions_created"] == 0  # no session was created


async def test_policy_none_client_refused_by_secure_only_server(tmp_path: Path) -> None:
    security = {"policies": ["Basic256Sha256_SignAndEncrypt"]}
    with start_simulator(profile(server([var("C", const(1.0))], security=security)), tmp_path) as sim:
        with pytest.raises(ConnectError, match="offers no endpoint with None"):
            async with OpcUaConnector(insecure_device(sim), [point("s/a/c", "C")]):
                pass
        assert fresh_stats(sim)["sessions_created"] == 0


async def test_untrusted_server_certificate_refused_and_copied_then_trusted(
    tmp_path: Path,
) -> None:
    with start_simulator(profile(server([var("C", counter(1.0), "UInt32")], security=SECURE)), tmp_path) as sim:
        device = secure_device(sim, tmp_path)
        with pytest.raises(ConnectError, match="not trusted") as info:
            async with OpcUaConnector(device, [point("s/a/c", "C")]):
                pass
        rejected = tmp_path / "pki" / "rejected"
        (copied,) = rejected.iterdir()
        assert copied.suffix == ".der"
        assert str(copied) in str(info.value)
        assert fresh_stats(sim)["sessions_created"] == 0
        # the operator trusts it: move it into the trust directory
        assert device.trust_dir is not None
        shutil.move(copied, Path(device.trust_dir) / copied.name)
        conn = OpcUaConnector(device, [point("s/a/c", "C")])
        async with conn:
            await collect(conn, lambda b: len(good(flat(b))) >= 2)
        stats = sim.wait_stats(lambda s: s["devices"]["opc"]["activations"] != {})
        assert stats["devices"]["opc"]["activations"] == {"anonymous": 1}


@pytest.mark.parametrize(
    ("policy", "mode"),
    [("Basic256Sha256", "SignAndEncrypt"), ("Aes256_Sha256_RsaPss", "SignAndEncrypt")],
)
async def test_trusted_certificate_secure_channel_data_flows(
    tmp_path: Path, policy: str, mode: str
) -> None:
    with start_simulator(profile(server([var("C", counter(1.0), "UInt32")], security=SECURE)), tmp_path) as sim:
        device = secure_device(sim, tmp_path, security_policy=policy, security_mode=mode)
        trust_server(sim, device)
        async with OpcUaConnector(device, [point("s/a/c", "C")]) as conn:
            batches = await collect(conn, lambda b: len(good(flat(b))) >= 2)
    for sample in good(flat(batches)):
        assert sample.value == math.floor(sample.source_time.timestamp())  # type: ignore[union-attr]


async def test_expired_and_uri_mismatched_server_certificates_refused(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    expired_cert, expired_key = tmp_path / "expired.der", tmp_path / "expired.pem"
    generate_self_signed(
        expired_cert, expired_key, "urn:test:server", "127.0.0.1",
        not_before=now - timedelta(days=3), days=1,
    )
    other_cert, other_key = tmp_path / "other.der", tmp_path / "other.pem"
    generate_self_signed(other_cert, other_key, "urn:somebody:else", "127.0.0.1")
    cases = [(expired_cert, expired_key, "expired"), (other_cert, other_key, "ApplicationUri mismatch")]
    for n, (cert, key, reason) in enumerate(cases):
        security = {
            "policies": ["Basic256Sha256_SignAndEncrypt"],
            "certificate": str(cert),
            "private_key": str(key),
            "application_uri": "urn:test:server",
        }
        work = tmp_path / f"case{n}"
        with start_simulator(profile(server([var("C", const(1.0))], security=security)), work) as sim:
            device = secure_device(sim, work)
            assert device.trust_dir is not None
            shutil.copy(cert, Path(device.trust_dir) / "server.der")
            with pytest.raises(ConnectError, match=reason):
                async with OpcUaConnector(device, [point("s/a/c", "C")]):
                    pass
            assert fresh_stats(sim)["sessions_created"] == 0


async def test_password_only_over_encrypted_channel_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "SENTINEL-pw-4711"  # noqa: S105 - a sentinel searched for in the logs
    caplog.set_level(logging.DEBUG)
    # 1. Config: credentials with policy None are refused.
    with pytest.raises(ValidationError, match="username"):
        OpcUaDeviceConfig(
            id="opc", endpoint="opc.tcp://127.0.0.1:4840", security_policy="None", insecure=True,
            username="operator", password=secret,
        )
    users = {"operator": secret}
    none_only = server([var("C", const(1.0))], users=users)
    with start_simulator(profile(none_only), tmp_path / "none") as sim:
        # 2. Even a config built around the validator never sends them over None.
        bypass = OpcUaDeviceConfig.model_construct(
            **{**dict(insecure_device(sim)), "username": "operator", "password": secret}
        )
        with pytest.raises(ConnectError, match="credentials"):
            async with OpcUaConnector(bypass, [point("s/a/c", "C")]):
                pass
        stats = fresh_stats(sim)
        assert stats["usernames"] == []
        assert stats["sessions_created"] == 0
    secure = server([var("C", const(1.0))], users=users, security=SECURE, allow_anonymous=False)
    with start_simulator(profile(secure), tmp_path / "secure") as sim:
        # 3. SignAndEncrypt: the right password works, a wrong one is refused by name.
        device = secure_device(sim, tmp_path / "secure", username="operator", password=secret)
        trust_server(sim, device)
        async with OpcUaConnector(device, [point("s/a/c", "C")]) as conn:
            await collect(conn, lambda b: len(flat(b)) >= 1)
        wrong = device.model_copy(update={"password": device.password.__class__("nope")})
        with pytest.raises(ConnectError, match=r"BadUserAccessDenied|BadIdentityToken") as info:
            async with OpcUaConnector(wrong, [point("s/a/c", "C")]):
                pass
        stats = sim.wait_stats(
            lambda s: s["devices"]["opc"]["activations"].get("username", 0) >= 2
        )["devices"]["opc"]
    assert stats["usernames"] == ["operator"]
    assert stats["activations"].get("anonymous", 0) == 0
    assert secret not in str(info.value)
    assert secret not in caplog.text
    assert secret not in repr(device)
