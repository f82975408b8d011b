"""Northbound MQTT publisher: normalized readings and the gateway's own state to a broker.

Readings (one JSON object per reading, or JSON arrays per asset with ``batch_size > 1``)::

    topic   ot/{site}/{asset}/{point}
    payload {"site": "north", "asset": "pump-7", "point": "flow", "value": 12.5,
             "unit": "m3/h", "quality": 0, "quality_name": "Good", "severity": "good",
             "source_time": "2026-01-02T03:04:05.123000Z",
             "gateway_time": "2026-01-02T03:04:05.130000Z",
             "source": "modbus://10.0.4.21:502/1/hr/0", "gateway": "gw-north"}

Gateway state (all retained, QoS 1):

* ``ot/_gateway/{gateway}`` — birth ``{"status": "online", "gateway", "time", "inventory"}`` on
  every connect; the last will ``{"status": "offline", "reason": "connection lost"}`` set in
  CONNECT, published by the broker when the gateway vanishes; ``{"status": "offline",
  "reason": "stopped"}`` on a clean stop.
* ``ot/_gateway/{gateway}/assets/{site}/{asset}`` — ``{"state": "online", "time"}`` on each
  change (`MqttPublisher.set_asset_state`), re-published after every reconnect.

A consumer subscribing to ``ot/_gateway/#`` therefore learns at once which gateways, sites
and assets are connected. The publisher subscribes to nothing: commands sent to the gateway's
topics are never read (S13).

Flow control: `MqttPublisher.publish` never blocks; readings go into a bounded queue
(``queue_max``; when full the *oldest* are dropped and counted in ``stats.dropped``). A sender
task hands messages to paho directly (no per-message awaiting: aiomqtt's ``publish`` waits for
each message's confirmation, about 1.4k msg/s at a full core) and waits when more than
``max_outstanding`` are unconfirmed (QoS 0: not yet written to the socket; QoS 1: no PUBACK
yet). While the broker is away the sender reconnects with capped exponential backoff and
jitter; messages handed to paho but unconfirmed at a link loss are counted in
``stats.lost_in_flight`` (QoS 0) — QoS 1 ones are too, since the session is clean.

Source: MQTT 3.1.1 §3.1.2.5 (will flag, will retain), §3.3.1.3 (RETAIN), §4.3 (QoS);
MQTT 5.0 §3.1.3.2 (will properties).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from connectors.base import ConnectError
from connectors.mqtt.codec import render
from connectors.mqtt.config import MqttPublisherConfig
from connectors.mqtt.connector import build_tls_context
from gateway.clock import to_rfc3339, utc_now
from gateway.model import Reading
from gateway.quality import quality_name, severity

log = logging.getLogger("ot_gateway.mqtt.publisher")

CHUNK = 256
"""Messages handed to paho between two yields to the event loop."""


@dataclass(slots=True)
class PublisherStats:
    """Counters of the publisher.

    Attributes:
        queued: Readings accepted by `MqttPublisher.publish`.
        published: Readings handed to the broker connection (in ``messages`` messages).
        messages: MQTT messages handed to paho.
        confirmed: Messages written (QoS 0) or acknowledged (QoS 1).
        dropped: Readings dropped because the queue was full (oldest first).
        lost_in_flight: Messages unconfirmed when a link dropped.
        connects: Successful connections.
        connect_failures: Failed connection attempts.
        connected: Link state now.
        last_error: Last connection error text, or None.
    """

    queued: int = 0
    published: int = 0
    messages: int = 0
    confirmed: int = 0
    dropped: int = 0
    lost_in_flight: int = 0
    connects: int = 0
    connect_failures: int = 0
    connected: bool = False
    last_error: str | None = None


def reading_object(reading: Reading, gateway: str) -> dict[str, Any]:
    """The JSON object of one reading (see the module docstring for the fields)."""
    return {
        "site": reading.site,
        "asset": reading.asset,
        "point": reading.point,
        "value": reading.value,
        "unit": reading.unit,
        "quality": reading.quality,
        "quality_name": quality_name(reading.quality),
        "severity": severity(reading.quality).value,
        "source_time": to_rfc3339(reading.source_time),
        "gateway_time": to_rfc3339(reading.gateway_time),
        "source": reading.source,
        "gateway": gateway,
    }


def _dumps(obj: object) -> bytes:
    """Strict JSON (no NaN/Infinity tokens): a non-finite value becomes null."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        if isinstance(obj, dict):
            return _dumps({**obj, "value": None})
        if isinstance(obj, list):
            return _dumps([{**o, "value": None} if isinstance(o, dict) else o for o in obj])
        raise


class MqttPublisher:
    """Publishes readings and gateway state to one broker.

    Args:
        cfg: Broker, topics, QoS, batching and queue limits.
        gateway: Gateway name (``{gateway}`` in topics).

    Attributes:
        stats: `PublisherStats`.
    """

    def __init__(self, cfg: MqttPublisherConfig, gateway: str = "ot-gateway") -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.stats = PublisherStats()
        self._queue: deque[Reading] = deque()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None
        self._outstanding = 0
        self._drained = asyncio.Event()
        self._inventory: Mapping[str, object] = {}
        self._assets: dict[tuple[str, str], tuple[str, dict[str, object]]] = {}
        self._documents: dict[str, bytes] = {}
        self._connected = asyncio.Event()
        self._state_topic = render(cfg.state_topic, {"gateway": gateway})
        endpoint_scheme = "mqtts" if cfg.tls is not None else "mqtt"
        self.endpoint = f"{endpoint_scheme}://{cfg.host}:{cfg.effective_port}"
        self._topic_cache: dict[tuple[str, str, str], str] = {}

    # -- API ---------------------------------------------------------------------------------

    async def start(
        self, inventory: Mapping[str, object] | None = None, *, wait: float | None = None
    ) -> None:
        """Start the sender task (it connects, publishes the birth, then readings).

        Args:
            inventory: Summary put into the retained birth message (JSON-able), e.g. counts
                of sites/assets/points and the site -> asset list.
            wait: Seconds to wait for the first connection; None = do not wait.

        Raises:
            ConnectError: ``wait`` given and no connection within it (the task keeps
                retrying in the background).
        """
        self._inventory = dict(inventory or {})
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt-publisher")
        if wait is not None:
            try:
                await asyncio.wait_for(self._connected.wait(), wait)
            except TimeoutError:
                msg = f"{self.endpoint}: not connected after {wait} s: {self.stats.last_error}"
                raise ConnectError(msg) from None

    def publish(self, readings: Iterable[Reading]) -> None:
        """Queue readings for publishing; never blocks (drops the oldest when full).

        Safe to call from a runtime reading listener on the event loop.
        """
        queue = self._queue
        before = len(queue)
        queue.extend(readings)
        added = len(queue) - before
        self.stats.queued += added
        overflow = len(queue) - self.cfg.queue_max
        if overflow > 0:
            for _ in range(overflow):
                queue.popleft()
            self.stats.dropped += overflow
        if added:
            self._wake.set()

    async def set_asset_state(
        self, site: str, asset: str, state: str, details: Mapping[str, object] | None = None
    ) -> None:
        """Publish an asset's connectivity state (retained, QoS 1); kept for reconnects.

        Args:
            site: Site id.
            asset: Asset id.
            state: ``online``, ``degraded``, ``offline`` or ``unknown``.
            details: More JSON-able fields for the message (e.g. ``points_by_state``,
                ``open_gaps``, ``last_seen``); they cannot override the fields above.
        """
        self._assets[(site, asset)] = (state, dict(details or {}))
        client = self._client
        if client is not None and self.stats.connected:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish_asset(client, site, asset)

    async def set_document(self, topic: str, body: Mapping[str, object]) -> None:
        """Publish a retained JSON document (QoS 1) on ``topic``; re-sent after reconnects.

        Used for the gateway's gap records (``gaps_topic``). The latest body per topic is
        kept; while disconnected it is sent on the next connect.
        """
        payload = _dumps(dict(body))
        self._documents[topic] = payload
        client = self._client
        if client is not None and self.stats.connected:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish_retained(client, topic, payload)

    async def stop(self, flush_s: float = 5.0) -> None:
        """Stop: flush, publish the retained offline state, disconnect cleanly (no will).

        Args:
            flush_s: Upper bound of the whole stop [s]; after it the task is cancelled and
                what is still queued is not published.
        """
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), flush_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- internals ---------------------------------------------------------------------------

    def _state_payload(self, status: str, reason: str | None = None) -> bytes:
        body: dict[str, object] = {
            "status": status,
            "gateway": self.gateway,
            "time": to_rfc3339(utc_now()),
        }
        if reason is not None:
            body["reason"] = reason
        if status == "online":
            body["inventory"] = self._inventory
        return _dumps(body)

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.cfg
        v5 = cfg.mqtt_version == "5"
        will = aiomqtt.Will(
            self._state_topic,
            self._state_payload("offline", "connection lost"),
            qos=1,
            retain=True,
        )
        client = aiomqtt.Client(
            cfg.host,
            cfg.effective_port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=cfg.client_id or f"otgw-pub-{self.gateway}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=cfg.keepalive,
            will=will,
            tls_context=build_tls_context(cfg.tls, self.endpoint),
            max_inflight_messages=min(cfg.max_outstanding, 65535),
        )
        inner: paho.Client = client._client
        aio_on_publish = inner.on_publish

        def on_publish(*args: Any) -> None:  # noqa: ANN401
            if aio_on_publish is not None:
                aio_on_publish(*args)
            self._outstanding -= 1
            self.stats.confirmed += 1
            if self._outstanding <= self.cfg.max_outstanding // 2:
                self._drained.set()

        inner.on_publish = on_publish
        self._paho = inner
        return client

    async def _run(self) -> None:
        backoff = self.cfg.reconnect_initial
        while True:
            try:
                client = self._make_client()
                await client.__aenter__()
            except (aiomqtt.MqttError, ConnectError) as exc:
                self.stats.connect_failures += 1
                if self.stats.last_error != str(exc):
                    log.warning("%s: cannot connect: %s", self.endpoint, exc)
                self.stats.last_error = str(exc)
                if self._stopping.is_set():
                    return
                await self._sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.cfg.reconnect_max)
                continue
            backoff = self.cfg.reconnect_initial
            self._client = client
            self._outstanding = 0
            self.stats.connects += 1
            self.stats.connected = True
            self.stats.last_error = None
            self._connected.set()
            log.info("%s: connected", self.endpoint)
            try:
                await self._session(client)
                return  # stopped cleanly
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.warning("%s: link lost: %s", self.endpoint, exc)
            finally:
                self.stats.connected = False
                self._connected.clear()
                self._client = None
                self.stats.lost_in_flight += max(0, self._outstanding)
                self._outstanding = 0
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)
            if self._stopping.is_set():
                return
            await self._sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.cfg.reconnect_max)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _publish_asset(self, client: aiomqtt.Client, site: str, asset: str) -> None:
        state, details = self._assets[(site, asset)]
        topic = render(
            self.cfg.asset_state_topic, {"gateway": self.gateway, "site": site, "asset": asset}
        )
        body = {
            **details,
            "site": site,
            "asset": asset,
            "state": state,
            "time": to_rfc3339(utc_now()),
        }
        await self._publish_retained(client, topic, _dumps(body))

    async def _publish_retained(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """Publish retained at QoS 1 and wait for the PUBACK (counted as outstanding)."""
        self._outstanding += 1
        await client.publish(topic, payload, qos=1, retain=True, timeout=5.0)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Birth, asset states, then readings until stopped. Raises MqttError on link loss."""
        await self._publish_retained(client, self._state_topic, self._state_payload("online"))
        for site, asset in list(self._assets):
            await self._publish_asset(client, site, asset)
        for topic, payload in list(self._documents.items()):
            await self._publish_retained(client, topic, payload)
        disconnected: asyncio.Future[None] = client._disconnected
        while True:
            if not self._queue:
                if self._stopping.is_set():
                    await self._flush(disconnected)
                    await self._publish_retained(
                        client, self._state_topic, self._state_payload("offline", "stopped")
                    )
                    return
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait((wake, disconnected), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
            if disconnected.done():
                raise aiomqtt.MqttError("disconnected") from _exception(disconnected)
            await self._send_some(disconnected)

    async def _flush(self, disconnected: asyncio.Future[None]) -> None:
        """Wait until paho confirmed everything handed to it (bounded by stop's timeout)."""
        while self._outstanding > 0 and not disconnected.done():
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 0.05)

    async def _send_some(self, disconnected: asyncio.Future[None]) -> None:
        """Hand up to `CHUNK` messages to paho, waiting while too many are unconfirmed."""
        inner = self._paho
        assert inner is not None  # noqa: S101 - set with the client
        cfg = self.cfg
        limit = cfg.max_outstanding
        while self._outstanding >= limit and not disconnected.done():
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)
        if disconnected.done():
            return
        queue = self._queue
        qos = cfg.qos
        gateway = self.gateway
        stats = self.stats
        sent = 0
        if cfg.batch_size == 1:
            while queue and sent < CHUNK and self._outstanding < limit:
                reading = queue.popleft()
                info = inner.publish(
                    self._topic(reading), _dumps(reading_object(reading, gateway)), qos
                )
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    queue.appendleft(reading)
                    return
                self._outstanding += 1
                sent += 1
                stats.published += 1
                stats.messages += 1
        else:
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            take = min(len(queue), CHUNK * cfg.batch_size)
            for _ in range(take):
                reading = queue.popleft()
                groups.setdefault((reading.site, reading.asset), []).append(
                    reading_object(reading, gateway)
                )
            for (site, asset), objects in groups.items():
                topic = render(cfg.batch_topic, {"gateway": gateway, "site": site, "asset": asset})
                for i in range(0, len(objects), cfg.batch_size):
                    part = objects[i : i + cfg.batch_size]
                    info = inner.publish(topic, _dumps(part), qos)
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        stats.lost_in_flight += 1
                        continue
                    self._outstanding += 1
                    stats.published += len(part)
                    stats.messages += 1
        await asyncio.sleep(0)

    def _topic(self, reading: Reading) -> str:
        key = (reading.site, reading.asset, reading.point)
        topic = self._topic_cache.get(key)
        if topic is None:
            if len(self._topic_cache) > 100_000:
                self._topic_cache.clear()
            topic = render(
                self.cfg.topic,
                {
                    "gateway": self.gateway,
                    "site": reading.site,
                    "asset": reading.asset,
                    "point": reading.point,
                },
            )
            self._topic_cache[key] = topic
        return topic


def _exception(fut: asyncio.Future[None]) -> BaseException | None:
    if fut.cancelled():
        return None
    return fut.exception()
