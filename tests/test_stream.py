"""Live stream: the fan-out hub, Server-Sent Events over real HTTP, slow consumers dropped.

In-process tests drive a real uvicorn server (`ApiServer`) on loopback with a real `Inventory`;
the integration test reads real events from a gateway process polling the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.app import create_app
from gateway.api.server import ApiServer
from gateway.model import Reading
from gateway.quality import Q
from gateway.stream import StreamHub, StreamUnavailableError, SubscriberDroppedError
from tests.gw_helpers import GatewayProcess
from tests.sim_helpers import start_simulator
from tests.test_api import build_ctx, reading

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def r(point: str, t: float, value: float | None = 1.0, quality: int = Q.GOOD) -> Reading:
    return reading(point, t, value, quality)


class Source:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_listener(self, cb: Any) -> None:
        self.listeners.append(cb)

    def remove_listener(self, cb: Any) -> None:
        self.listeners.remove(cb)


# -- the hub -----------------------------------------------------------------------------------


async def test_hub_filters_by_glob_and_listens_only_while_subscribed() -> None:
    src = Source()
    hub = StreamHub(src, buffer=100)
    assert src.listeners == []
    temps = hub.subscribe(("plant1/*/temp",))
    assert src.listeners == [hub.publish]
    every = hub.subscribe(("*",))
    plant2 = hub.subscribe(("plant2/tank1/*", "nothing/*"))
    assert src.listeners == [hub.publish]  # one listener however many subscribers

    batch = [r("temp", 0), r("pressure", 0), r("level", 0), r("temp", 1)]
    src.listeners[0](batch)
    got = await temps.next_batch(1)
    assert [(x.point, x.source_time) for x in got or []] == [
        ("temp", T0),
        ("temp", T0 + timedelta(seconds=1)),
    ]
    assert await every.next_batch(1) == batch
    assert [x.point for x in await plant2.next_batch(1) or []] == ["level"]
    assert await temps.next_batch(0.01) == []  # nothing new: empty after the wait

    for sub in (temps, every, plant2):
        sub.close()
    assert src.listeners == []
    stats = hub.stats()
    assert (stats.subscribers, stats.subscribed, stats.published, stats.delivered) == (0, 3, 4, 7)


async def test_slow_subscriber_is_dropped_and_counted_without_slowing_publish() -> None:
    src = Source()
    hub = StreamHub(src, buffer=10)
    slow = hub.subscribe(("*",))
    fast = hub.subscribe(("*",))
    for t in range(4):
        hub.publish([r("temp", t), r("pressure", t)])  # 8 pending: fits
        assert len(await fast.next_batch(1) or []) == 2
    assert slow.pending == 8
    hub.publish([r("temp", 4), r("pressure", 4), r("flow", 4)])  # 11 > 10: dropped
    assert slow.dropped
    assert slow.pending == 0  # its buffer is freed at once
    assert hub.stats().dropped == 1
    assert hub.stats().subscribers == 1
    with pytest.raises(SubscriberDroppedError, match="more than 10 readings"):
        await slow.next_batch(1)
    # the other subscriber is unaffected and the hub keeps listening for it
    assert len(await fast.next_batch(1) or []) == 3
    assert src.listeners == [hub.publish]
    fast.close()
    slow.close()  # idempotent after the drop
    assert src.listeners == []


async def test_hub_limits_subscribers_and_close_ends_streams() -> None:
    hub = StreamHub(None, max_subscribers=2)
    a = hub.subscribe(("*",))
    hub.subscribe(("*",))
    with pytest.raises(StreamUnavailableError, match="at most 2"):
        hub.subscribe(("*",))
    a.close()
    b = hub.subscribe(("*",))
    waiter = asyncio.create_task(b.next_batch(None))
    await asyncio.sleep(0)
    hub.close()
    assert await asyncio.wait_for(waiter, 5) is None  # woken: end of stream
    with pytest.raises(StreamUnavailableError, match="shutting down"):
        hub.subscribe(("*",))


# -- SSE over a real HTTP server ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(**kwargs: Any) -> AsyncIterator[tuple[Any, StreamHub, str]]:
    """A real uvicorn server on loopback; yields (ctx, the app's hub, base URL)."""
    ctx = build_ctx()
    app = create_app(ctx, **kwargs)
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield ctx, app.state.stream_hub, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def read_events(lines: AsyncIterator[str], n: int, *, kinds: tuple[str, ...] = ("reading",)
                      ) -> list[tuple[str, Any]]:
    """Parse SSE lines until `n` events of `kinds` arrived."""
    out: list[tuple[str, Any]] = []
    event, data = "message", []
    async for line in lines:
        if line == "":
            if data:
                out.append((event, json.loads("\n".join(data))))
                if sum(1 for e, _ in out if e in kinds) >= n:
                    return out
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return out


async def test_sse_delivers_normalized_readings_over_http() -> None:
    async with serve(allowed_hosts=None) as (ctx, hub, url), httpx.AsyncClient(
        base_url=url, timeout=10
    ) as client:
        async with client.stream("GET", "/api/v1/stream", params={"points": "plant1/pump*/*"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["cache-control"] == "no-store"
            lines = resp.aiter_lines()
            assert await anext(lines) == "retry: 3000"  # sent before any reading
            ctx.feed([r("temp", 61, 21.5), r("level", 61, 3.0), r("flow", 61, None, Q.BAD_TIMEOUT)])
            events = await read_events(lines, 2)
        assert [e for e, _ in events] == ["reading", "reading"]
        temp, flow = (d for _, d in events)
        assert temp == {
            "site": "plant1",
            "asset": "pump1",
            "point": "temp",
            "value": 21.5,
            "unit": "Cel",
            "quality": 0,
            "quality_name": "Good",
            "severity": "good",
            "source_time": "2026-01-01T00:01:01.000000Z",
            "gateway_time": "2026-01-01T00:01:01.000000Z",
            "source": "modbus://127.0.0.1:5020/1/hr/0",
        }
        assert flow["point"] == "flow"
        assert flow["value"] is None
        assert flow["quality_name"] == "BadTimeout"
        assert flow["severity"] == "bad"
        # the client went away: the subscription is gone and the listener removed
        await _until(lambda: hub.stats().subscribers == 0 and not ctx.listeners)


async def _until(pred: Any, limit: float = 10.0) -> None:
    """Await a condition on the event loop with a deadline (the server runs on this loop)."""
    deadline = asyncio.get_running_loop().time() + limit
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_sse_bad_glob_422_and_too_many_streams_503() -> None:
    async with serve(allowed_hosts=None, max_streams=1) as (_ctx, _hub, url), httpx.AsyncClient(
        base_url=url, timeout=10
    ) as client:
        bad = await client.get("/api/v1/stream", params={"points": "Plant1/*"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "points"]
        async with client.stream("GET", "/api/v1/stream") as first:
            assert first.status_code == 200
            second = await client.get("/api/v1/stream")
            assert second.status_code == 503
            assert "at most 1" in second.json()["detail"]


async def test_sse_keepalive_when_idle() -> None:
    async with serve(allowed_hosts=None, stream_heartbeat=0.05) as (_ctx, _hub, url), \
            httpx.AsyncClient(base_url=url, timeout=10) as client, \
            client.stream("GET", "/api/v1/stream") as resp:
        lines = resp.aiter_lines()
        seen = [await anext(lines) for _ in range(6)]
        assert ": keep-alive" in seen


async def test_slow_http_consumer_is_dropped_with_a_counter() -> None:
    """A client that stops reading is dropped; publishing never waits for it."""
    async with serve(allowed_hosts=None, stream_buffer=200) as (ctx, hub, url):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(
            sock, b"GET /api/v1/stream?points=* HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        await _until(lambda: bool(ctx.listeners))
        t = 0
        worst = 0.0
        while hub.stats().dropped == 0:
            assert t < 100_000, "never dropped"
            batch = [r("temp", 61 + t / 1000, float(t)), r("pressure", 61 + t / 1000, 1.0)]
            start = loop.time()
            hub.publish(batch)  # what the runtime's writer calls after a commit
            worst = max(worst, loop.time() - start)
            t += 1
            if t % 50 == 0:
                await asyncio.sleep(0)  # let the server write (until the socket is full)
        assert hub.stats().dropped == 1
        assert hub.stats().subscribers == 0
        assert not ctx.listeners  # no subscriber left: the hub stopped listening
        # Now read everything: the stream ends with a `dropped` event.
        received = b""
        while b"event: dropped" not in received:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert chunk, "connection closed before the dropped event"
            received += chunk
        assert b"fell behind by more than 200 readings" in received
        sock.close()
        assert worst < 1.0  # publish is a few list appends; a loose sanity bound only


async def test_stream_metrics_exposed() -> None:
    async with serve(allowed_hosts=None) as (ctx, _hub, url), httpx.AsyncClient(
        base_url=url, timeout=10
    ) as client, client.stream("GET", "/api/v1/stream") as resp:
        assert resp.status_code == 200
        await _until(lambda: bool(ctx.listeners))
        text = (await client.get("/metrics")).text
        assert "otgw_stream_subscribers 1.0" in text
        assert "otgw_stream_dropped_subscribers_total 0.0" in text


async def test_server_stop_ends_open_streams_promptly() -> None:
    ctx = build_ctx()
    server = ApiServer(create_app(ctx, allowed_hosts=None), "127.0.0.1", 0)
    port = await server.start()
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
        "GET", f"http://127.0.0.1:{port}/api/v1/stream"
    ) as resp:
        lines = resp.aiter_lines()
        assert await anext(lines) == "retry: 3000"
        stopping = asyncio.create_task(server.stop(grace=30))
        rest = [line async for line in lines]
        assert "event: end" in rest
        await asyncio.wait_for(stopping, 10)  # well before the 30 s grace


# -- a real gateway polling the simulator -----------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sse_from_gateway_process(tmp_path: Path) -> None:
    profile = {"seed": 1, "devices": [{
        "id": "plc", "host": "127.0.0.1", "port": 0, "unit_ids": [1], "faults": [],
        "registers": [
            {"table": "holding", "address": 0, "type": "uint16", "signal": {"kind": "counter", "period": 1}},
            {"table": "holding", "address": 1, "type": "float32", "signal": {"kind": "constant", "value": 42.5}},
            {"table": "coil", "address": 0, "signal": {"kind": "constant", "value": 1}},
        ],
    }]}
    with start_simulator(profile, tmp_path) as sim:
        cfg = {
            "gateway": {"name": "sse-gw", "data_dir": str(tmp_path / "data")},
            "api": {"host": "127.0.0.1", "port": 0},
            "devices": [{"id": "plc", "host": "127.0.0.1", "port": sim.ports["plc"],
                         "poll_interval": 0.2, "timeout": 0.15}],
            "sites": [{"id": "site-1", "assets": [{"id": "plc", "points": [
                {"id": "count", "device": "plc", "register": "holding", "address": 0, "type": "uint16"},
                {"id": "temp", "device": "plc", "register": "holding", "address": 1,
                 "type": "float32", "unit": "Cel"},
                {"id": "run", "device": "plc", "register": "coil", "address": 0, "type": "bool"},
            ]}]}],
        }
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            events: list[dict[str, Any]] = []
            with httpx.Client(base_url=gw.url, timeout=10) as client, client.stream(
                "GET", "/api/v1/stream", params={"points": "site-1/plc/temp,site-1/*/run"}
            ) as resp:
                assert resp.status_code == 200
                event = ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "reading":
                        events.append(json.loads(line[5:]))
                        if len(events) >= 10:
                            metrics = httpx.get(gw.url + "/metrics", timeout=10).text
                            assert "otgw_stream_subscribers 1.0" in metrics
                            break
            assert {e["point"] for e in events} <= {"temp", "run"}
            temps = [e for e in events if e["point"] == "temp"]
            runs = [e for e in events if e["point"] == "run"]
            assert temps
            assert runs
            for e in temps:
                assert e["value"] == 42.5
                assert e["unit"] == "Cel"
                assert e["quality"] == 0
                assert e["quality_name"] == "Good"
                assert e["source"].startswith(f"modbus://127.0.0.1:{sim.ports['plc']}/1/hr/1")
                assert e["source_time"].endswith("Z")
                assert e["gateway_time"].endswith("Z")
            assert all(e["value"] is True for e in runs)
            # each point's source times increase
            for pts in (temps, runs):
                times = [e["source_time"] for e in pts]
                assert times == sorted(times)
            # the same readings are in the history
            hist = httpx.get(gw.url + "/api/v1/readings", params={
                "points": "site-1/plc/temp", "start": temps[0]["source_time"],
                "end": (datetime.fromisoformat(temps[-1]["source_time"]) + timedelta(microseconds=1)).isoformat(),
            }, timeout=10).json()
            assert [h["time"] for h in hist] == [e["source_time"] for e in temps]
        finally:
            assert gw.stop() == 0, gw.log()
