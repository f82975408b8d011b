"""MqttPublisher against a real mosquitto: every reading read back by independent clients
(aiomqtt and Debian's ``mosquitto_sub``), retained birth and asset state, last will on SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from connectors.mqtt.config import MqttPublisherConfig
from connectors.mqtt.publisher import MqttPublisher
from gateway.model import Reading
from gateway.quality import Q
from tests.mosquitto_helpers import Mosquitto

pytestmark = pytest.mark.integration
DEADLINE = 10.0
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def reading(i: int, point: str = "flow", quality: int = Q.GOOD) -> Reading:
    return Reading(
        site="north",
        asset=f"pump-{i % 3}",
        point=point,
        value=None if quality & 0x80000000 else float(i),
        unit="m3/h",
        quality=quality,
        source_time=T0 + timedelta(milliseconds=i),
        gateway_time=T0 + timedelta(milliseconds=i, microseconds=500),
        source=f"modbus://10.0.0.1:502/1/hr/{i}",
    )


def mosquitto_sub(port: int, topic: str, count: int, timeout: int = 5) -> list[str]:
    out = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            topic,
            "-C",
            str(count),
            "-W",
            str(timeout),
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
        check=False,
    )
    return out.stdout.splitlines()


async def receive(
    port: int, topic: str, count: int, started: asyncio.Event
) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="independent-sub") as sub:
        await sub.subscribe(topic, qos=1)
        started.set()
        async with asyncio.timeout(DEADLINE):
            async for msg in sub.messages:
                if str(msg.topic).startswith("ot/_"):
                    continue  # gateway state topics
                got.append((str(msg.topic), json.loads(bytes(msg.payload))))  # type: ignore[arg-type]
                readings = sum(len(o) if isinstance(o, list) else 1 for _, o in got)
                if readings >= count:
                    return got
    return got


@pytest.mark.parametrize(("qos", "batch_size"), [(1, 1), (0, 1), (1, 50)])
async def test_every_reading_arrives_as_json(tmp_path: Path, qos: int, batch_size: int) -> None:
    n = 1000
    with Mosquitto(tmp_path / "mq") as broker:
        cfg = MqttPublisherConfig(
            host="127.0.0.1", port=broker.port, qos=qos, batch_size=batch_size
        )
        pub = MqttPublisher(cfg, gateway="gw1")
        started = asyncio.Event()
        topic = "ot/+/+/+" if batch_size == 1 else "ot/+/+"
        task = asyncio.create_task(receive(broker.port, topic, n, started))
        await asyncio.wait_for(started.wait(), DEADLINE)
        await pub.start({"sites": 1, "assets": 3, "points": 3}, wait=DEADLINE)
        readings = [reading(i) for i in range(n - 1)] + [reading(n - 1, quality=Q.BAD_TIMEOUT)]
        for i in range(0, n, 100):
            pub.publish(readings[i : i + 100])
            await asyncio.sleep(0)
        got = await task
        await pub.stop()
    if batch_size == 1:
        objects = [obj for _, obj in got]
        assert [t for t, _ in got][:3] == [
            "ot/north/pump-0/flow",
            "ot/north/pump-1/flow",
            "ot/north/pump-2/flow",
        ]
    else:
        objects = [obj for _, batch in got for obj in batch]
        assert max(len(batch) for _, batch in got) <= batch_size
        assert {t for t, _ in got} == {"ot/north/pump-0", "ot/north/pump-1", "ot/north/pump-2"}
    assert sorted(o["source"] for o in objects) == sorted(r.source for r in readings)
    first = next(o for o in objects if o["source"].endswith("/hr/0"))
    assert first == {
        "site": "north",
        "asset": "pump-0",
        "point": "flow",
        "value": 0.0,
        "unit": "m3/h",
        "quality": 0,
        "quality_name": "Good",
        "severity": "good",
        "source_time": "2026-01-02T03:04:05.000000Z",
        "gateway_time": "2026-01-02T03:04:05.000500Z",
        "source": "modbus://10.0.0.1:502/1/hr/0",
        "gateway": "gw1",
    }
    last = next(o for o in objects if o["source"].endswith(f"/hr/{n - 1}"))
    assert (last["value"], last["quality_name"], last["severity"]) == (None, "BadTimeout", "bad")
    assert pub.stats.published == n
    assert pub.stats.dropped == 0


async def test_birth_asset_state_retained_and_clean_stop(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "mq") as broker:
        pub = MqttPublisher(MqttPublisherConfig(host="127.0.0.1", port=broker.port), gateway="gw1")
        await pub.start({"sites": ["north"], "points": 12}, wait=DEADLINE)
        await pub.set_asset_state("north", "pump-1", "degraded")
        lines = await asyncio.to_thread(mosquitto_sub, broker.port, "ot/_gateway/#", 2)
        by_topic = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in lines}
        birth = by_topic["ot/_gateway/gw1"]
        assert (birth["status"], birth["gateway"], birth["inventory"]) == (
            "online",
            "gw1",
            {"sites": ["north"], "points": 12},
        )
        asset = by_topic["ot/_gateway/gw1/assets/north/pump-1"]
        assert (asset["state"], asset["site"], asset["asset"]) == ("degraded", "north", "pump-1")
        await pub.stop()
        (line,) = await asyncio.to_thread(mosquitto_sub, broker.port, "ot/_gateway/gw1", 1)
        assert json.loads(line.split(" ", 1)[1])["status"] == "offline"
        assert json.loads(line.split(" ", 1)[1])["reason"] == "stopped"


async def test_queue_bound_drops_oldest_and_reconnect(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "mq") as broker:
        cfg = MqttPublisherConfig(
            host="127.0.0.1",
            port=broker.port,
            queue_max=100,
            reconnect_initial=0.1,
            reconnect_max=0.5,
        )
        pub = MqttPublisher(cfg, gateway="gw1")
        pub.publish([reading(i) for i in range(250)])  # not started yet: only the queue bound
        assert (pub.stats.queued, pub.stats.dropped) == (250, 150)
        started = asyncio.Event()
        task = asyncio.create_task(receive(broker.port, "ot/+/+/+", 100, started))
        await asyncio.wait_for(started.wait(), DEADLINE)
        await pub.start(wait=DEADLINE)
        got = await task
        assert sorted(o["source"] for _, o in got) == sorted(
            reading(i).source for i in range(150, 250)
        )
        broker.kill()
        broker.start()  # same port: the publisher reconnects with backoff, births again
        deadline = time.monotonic() + DEADLINE
        while pub.stats.connects < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        (line,) = await asyncio.to_thread(mosquitto_sub, broker.port, "ot/_gateway/gw1", 1)
        assert json.loads(line.split(" ", 1)[1])["status"] == "online"
        await pub.stop()


async def test_last_will_on_sigkill(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "mq") as broker:
        ready = tmp_path / "ready"
        script = textwrap.dedent(f"""
            import asyncio, pathlib
            from connectors.mqtt.config import MqttPublisherConfig
            from connectors.mqtt.publisher import MqttPublisher
            async def main():
                pub = MqttPublisher(MqttPublisherConfig(host="127.0.0.1", port={broker.port}), gateway="gw9")
                await pub.start({{"points": 1}}, wait=10)
                pathlib.Path({str(ready)!r}).write_text("ok")
                await asyncio.sleep(3600)
            asyncio.run(main())
        """)
        proc = subprocess.Popen(  # noqa: ASYNC220 - stopped by PID below
            [sys.executable, "-c", script], cwd=Path(__file__).parent.parent
        )
        try:
            deadline = time.monotonic() + DEADLINE
            while not ready.exists():
                assert proc.poll() is None
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            (line,) = await asyncio.to_thread(mosquitto_sub, broker.port, "ot/_gateway/gw9", 1)
            assert json.loads(line.split(" ", 1)[1])["status"] == "online"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            deadline = time.monotonic() + DEADLINE
            while True:  # the broker publishes the will once it notices the closed socket
                (line,) = await asyncio.to_thread(mosquitto_sub, broker.port, "ot/_gateway/gw9", 1)
                state = json.loads(line.split(" ", 1)[1])
                if state["status"] == "offline" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert (state["status"], state["reason"]) == ("offline", "connection lost")
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
