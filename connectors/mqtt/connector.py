"""MQTT input connector: one broker session (aiomqtt 2.5 over paho-mqtt 2.x).

Lifecycle (DESIGN.md §3): ``async with MqttConnector(device, points):`` connects, subscribes
(SUBACK checked) or raises `ConnectError`; `MqttConnector.samples` yields one batch per burst
of received messages and raises `LinkLost` when the broker link drops (after yielding what
was already received). The connector never sleeps on errors and never reconnects.

Hot path: the connector reads the socket itself (`MqttConnector._on_readable` replaces
aiomqtt's reader callback once connected): one ``recv`` of up to `RECV_BYTES` per readable
event, every complete QoS 0 PUBLISH frame in it parsed in place into a ``(topic, payload, qos,
retain, mid)`` tuple on the inbox, every other frame (CONNACK, SUBACK, PINGRESP, QoS 1/2
PUBLISH, DISCONNECT, anything malformed) handed to paho unchanged through a buffered
``_sock_recv``. paho's own read loop takes one packet per event loop iteration with three
``recv`` calls and builds an `MQTTMessage` (with a `threading.Condition`) and MQTT 5
`Properties` per message; measured here that was most of the cost of a QoS 0 stream
(bench/mqtt_ingest.py, docs/benchmarks.md). The consumer is woken once per burst and yields
at most one batch per `BATCH_INTERVAL_S` (10 ms; not with ``ack: commit``, whose broker
in-flight window would throttle); `samples` swaps the inbox out and decodes it into one batch,
so the per-message cost is one topic lookup in a cache (topic -> mapping and point keys) plus
the decoder. aiomqtt's message
queue and `Message` objects are bypassed (set up through ``aiomqtt.Client._client``, the paho
client, and paho's ``_sock``/``_sock_recv``/``_in_packet``: pinned by ``aiomqtt~=2.5`` and
``paho-mqtt>=2.1,<3``).

Routing: a topic is matched against the mappings in order (first match wins); a Sparkplug B
topic (``spBv1.0/...``) goes through `SparkplugSessions`. A topic that matches no mapping, or
whose resolved point key is not a configured point of this device, is an *unmapped source*
(`MqttConnector.unmapped`). Commands (``.../set``, NCMD, DCMD) are never acted on (S13).

Per-message failures never stop the connector: they are counted in ``stats.errors`` by
reason (see `connectors.mqtt.codec` and `connectors.mqtt.sparkplug_session`). Samples:

===================================  ====================================================
event                                sample
===================================  ====================================================
decoded value                        Good, ``source_time`` from the payload (or None)
``wrong_type`` / ``huge_number``     ``BadTypeMismatch`` / ``BadOutOfRange``
NaN/Inf, JSON null                   ``Bad``
Sparkplug NDEATH / DDEATH            ``BadNoCommunication`` at receipt time, every metric
                                     of the node (device) that maps to a point
Sparkplug Quality property 500       ``UncertainLastUsableValue``
whole payload rejected               none (counted by reason)
===================================  ====================================================

Delivery guarantee (QoS 1). paho-mqtt sends PUBACK when its ``on_message`` callback returns,
i.e. when the message is in this connector's memory, *before* the gateway commits it to the
store (aiomqtt 2.5 exposes no manual acknowledgement; it arrives in aiomqtt 3). So:

* broker -> gateway memory: at least once. With ``clean_start: false`` (persistent session)
  the broker queues QoS 1 messages while the gateway is disconnected (up to the broker's
  ``max_queued_messages``) and redelivers un-acknowledged ones on reconnect.
* gateway memory -> store: a message received and acknowledged but not yet committed is lost
  if the gateway process dies in between (the window is one batch: milliseconds). A broker
  disconnect loses nothing already received: the burst is yielded before `LinkLost`.
* ``ack: commit`` (opt-in) switches paho to manual acknowledgement: PUBACKs are sent only by
  `MqttConnector.acknowledge` for batches the caller has committed (M2); unacknowledged
  messages are redelivered by the broker after a reconnect. The in-flight window then bounds
  QoS 1 delivery (backpressure, B6): the connector announces ``receive_maximum`` (MQTT 5
  Receive Maximum, default 1000) and enforces it itself: when more QoS 1 messages than that
  are unacknowledged (a broker that ignores the property: mosquitto 2.0.11 lets up to a window
  more out per PUBACK), it stops reading the socket (`_pause`, counted
  ``receive_window_full``) until acknowledgements bring the count back, so the rest waits in
  TCP and broker buffers. With 3.1.1 the broker's own limit applies too (mosquitto
  ``max_inflight_messages``). A caller that never acknowledges stalls input; paused longer
  than the keepalive, the link is dropped and the broker redelivers after the reconnect.

Flood (RELIABILITY B6). Received messages wait in one inbox list until `samples` takes them
(at least every `BATCH_INTERVAL_S`); the inbox holds at most ``inbox_max`` messages (config,
default 100,000). A message arriving when it is full is dropped and counted twice: as
received (``stats.requests``) and as ``stats.errors["inbox_overflow"]``, exported as
``otgw_requests_total`` and ``otgw_protocol_errors_total{kind="inbox_overflow"}``. So
``received = decoded + dropped`` holds exactly, and with one reading per message (and no
rejection) ``received = stored + dropped``. QoS 1 under ``ack: commit`` is never dropped:
the window bounds it (memory ≤ ``inbox_max`` + ``receive_maximum`` + 1 messages). Beyond the
connector the runtime's ingest queue is not bounded; at 20k msg/s the writer keeps up
(tests/test_mqtt_flood.py).

Link supervision: paho sends PINGREQ after ``keepalive`` seconds without traffic and closes
the link when no PINGRESP arrives within another ``keepalive``. The connector additionally
raises `LinkLost` when nothing at all arrived for 1.5 × ``keepalive`` (half-open link, R2).

Source: MQTT 3.1.1 §3.1 (CONNECT, clean session, keep alive), §3.3-3.4 (PUBLISH, PUBACK),
§3.8-3.9 (SUBSCRIBE, SUBACK return codes 0x80), §4.3.2 (QoS 1), §4.7 (topics);
MQTT 5.0 §3.1.2.11 (CONNECT properties: session expiry, maximum packet size), §4.4 (message
redelivery); Sparkplug 3.0.0 ch. 4-6.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.base import ConnectError, ConnectorStats, LinkLost
from connectors.mqtt.codec import (
    JsonLayout,
    PayloadRejected,
    TopicTemplate,
    compile_pointer,
    decode_json,
    decode_plain,
    render,
    slugify,
)
from connectors.mqtt.config import (
    Decoder,
    MqttAddress,
    MqttDeviceConfig,
    MqttMapping,
    MqttSubscription,
    MqttTls,
)
from connectors.mqtt.sparkplug import (
    NAMESPACE,
    MessageType,
    decode_payload,
    encode_rebirth,
    parse_topic,
    rebirth_topic,
)
from connectors.mqtt.sparkplug_session import SparkplugSessions
from gateway import clock as _clock
from gateway.model import Sample
from gateway.quality import Q

SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SAMPLE_BYTES = 256
"""Bytes of payload kept as the sample of an unmapped topic."""
MAX_ROUTE_CACHE = 100_000
"""Distinct topics whose routing is cached; the cache is cleared when full."""
MAX_PACKET_OVERHEAD = 65_600
"""Bytes added to ``max_payload_bytes`` for the MQTT 5 Maximum Packet Size (header + topic)."""
BATCH_INTERVAL_S = 0.01
"""Least time between two batches yielded by `MqttConnector.samples` [s] (not with ``ack:
commit``): messages arriving meanwhile join the next batch, so a steady stream costs one
batch (pipeline, commit, inventory update) per 10 ms instead of one per TCP segment."""
BATCH_MAX = 5_000
"""Messages waiting that end the `BATCH_INTERVAL_S` wait early [count] (so does a full inbox)."""
RECV_BYTES = 262_144
"""Bytes read from the socket per readable event (≈ 2,500 small messages) [bytes]; a frame
larger than this is accumulated by paho."""

_Msg = tuple[str | None, bytes, int, bool, int]
"""A received PUBLISH: (topic, or None when not UTF-8; payload; QoS; retain; packet id)."""


class Clock(Protocol):
    """Time sources of the connector (the `gateway.clock` module fits)."""

    def monotonic(self) -> float:
        """Monotonic seconds."""
        ...

    def utc_now(self) -> datetime:
        """Aware UTC wall time."""
        ...


@dataclass(frozen=True, slots=True)
class MqttPoint:
    """A point served through an MQTT device.

    Attributes:
        key: Point key ``site/asset/point``.
        address: The point's own topic rule, or None when a device mapping resolves it.
        expected_interval: Seconds between messages when healthy [s]; None = the mapping's.
    """

    key: str
    address: MqttAddress | None = None
    expected_interval: float | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    """A compiled mapping."""

    mapping: MqttMapping
    template: TopicTemplate | None
    layout: JsonLayout | None


class _Route(NamedTuple):
    """Where one concrete topic goes (cached per topic)."""

    rule: _Rule
    keys: tuple[tuple[str, str], ...]  # (field name, point key) of the mapped fields
    unmapped: tuple[str, ...]  # keys resolved but not configured (or invalid)
    by_field: dict[str, str]  # field name -> point key (``keys`` as a dict)


@dataclass(slots=True)
class _Unmapped:
    messages: int
    first_seen: datetime
    last_seen: datetime
    sample: bytes
    reason: str


def _invert(template: str, value: str) -> dict[str, str] | None:
    """Variables that make ``template`` render ``value``; None if impossible or ambiguous."""
    if "{" not in template:
        return {} if template == value else None
    match = re.fullmatch(r"\{([a-z_][a-z0-9_]*)\}", template)
    return {match.group(1): value} if match else None


def _merge(*parts: dict[str, str] | None) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for part in parts:
        if part is None:
            return None
        for name, value in part.items():
            if out.setdefault(name, value) != value:
                return None
    return out


def build_tls_context(tls: MqttTls | None, endpoint: str) -> ssl.SSLContext | None:
    """The TLS context for a broker (CA, client certificate, hostname check), or None.

    Verification is always on (CERT_REQUIRED, TLS >= 1.2); ``verify_hostname: false`` only
    skips the name check.

    Args:
        tls: TLS settings, None for plaintext.
        endpoint: Broker locator, for error messages.

    Raises:
        ConnectError: A certificate or key file cannot be loaded.
    """
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        msg = f"{endpoint}: TLS files: {exc}"
        raise ConnectError(msg) from exc
    context.check_hostname = tls.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class MqttConnector:
    """Subscribes to one broker and turns messages into samples (a `Connector`).

    Args:
        device: Broker, credentials, session, subscriptions and mappings.
        points: The device's configured points; resolved keys outside this set are unmapped.
        clock: Monotonic and UTC time source; default `gateway.clock`.
        ack: ``receipt`` (default): paho acknowledges QoS 1 on receipt. ``commit``: only
            `acknowledge` sends PUBACKs (see the module docstring).

    Attributes:
        device_id: The device id.
        stats: ``polls`` = bursts yielded, ``requests`` = messages received (counted when
            decoded, or when dropped by a full inbox), ``errors`` = rejections and events by
            reason (``inbox_overflow`` = messages dropped by a full inbox,
            ``receive_window_full`` = reading paused by the QoS 1 window).
        batches: Number of the last batch yielded (1-based), for `acknowledge`.
    """

    def __init__(
        self,
        device: MqttDeviceConfig,
        points: Sequence[MqttPoint],
        *,
        clock: Clock = _clock,
        ack: str = "receipt",
    ) -> None:
        if ack not in ("receipt", "commit"):
            msg = f"ack: 'receipt' or 'commit', not {ack!r}"
            raise ValueError(msg)
        self.device_id = device.id
        self.stats = ConnectorStats()
        self.batches = 0
        self._device = device
        self._clock = clock
        self._manual_ack = ack == "commit"
        self._keys = frozenset(p.key for p in points)
        mappings = list(device.mappings)
        for p in points:
            if p.address is not None:
                site, asset, point = p.key.split("/")
                mappings.insert(0, p.address.to_mapping(site, asset, point))
        self._rules = [self._compile(m) for m in mappings if m.decoder is not Decoder.SPARKPLUG_B]
        self._sp_rules = [self._compile(m) for m in mappings if m.decoder is Decoder.SPARKPLUG_B]
        self._sessions = SparkplugSessions(device.reorder_timeout, rebirth=device.rebirth)
        self._sp_keys: dict[tuple[str, str, str, str], str | None] = {}
        self._routes: dict[str, _Route | None] = {}
        self._unmapped: dict[str, _Unmapped] = {}
        self._sources, self._intervals = self._describe(points, mappings)
        own = len(mappings) - len(device.mappings)
        self._subscriptions = self._subscription_list(mappings, own)
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None
        self._inbox: list[_Msg] = []
        self._inbox_max = device.inbox_max
        self._v5 = device.mqtt_version == "5"
        self._rbuf = b""  # bytes read from the socket, not yet parsed from ``_rpos`` on
        self._rpos = 0
        self._rx_error: Exception | None = None  # EOF/error seen by our recv, for paho
        self._last_rx = 0.0  # monotonic time of the last bytes received (PINGRESP included)
        self._waiter: asyncio.Future[None] | None = None
        self._disconnected: asyncio.Future[None] | None = None
        self._unacked: deque[tuple[int, list[int]]] = deque()
        self._pending_mids: list[int] = []
        self._window = device.receive_maximum
        self._inflight = 0  # QoS 1 messages kept under ``ack: commit``, not yet acknowledged
        self._paused = False  # reading stopped: the broker overran the window
        self._reader_fd: int | None = None
        self._last_in = 0.0
        self._max_future = timedelta(seconds=device.max_future_skew)

    # -- description ------------------------------------------------------------------------

    @staticmethod
    def _compile(mapping: MqttMapping) -> _Rule:
        template = TopicTemplate.compile(mapping.topic) if mapping.topic is not None else None
        layout = None
        if mapping.decoder is Decoder.JSON:
            fields = mapping.fields or {mapping.point: mapping.value}
            layout = JsonLayout(
                tuple((name, compile_pointer(ptr)) for name, ptr in fields.items()),
                compile_pointer(mapping.timestamp) if mapping.timestamp is not None else None,
                mapping.timestamp_unit,
                mapping.value_type,
            )
        return _Rule(mapping, template, layout)

    def _describe(
        self, points: Sequence[MqttPoint], mappings: list[MqttMapping]
    ) -> tuple[dict[str, str], dict[str, float]]:
        """Source URI and expected interval of each point.

        Both come from the first mapping that can produce the point's key; topic variables
        that the key does not determine become ``+``.
        """
        endpoint = self._device.endpoint
        sources: dict[str, str] = {}
        intervals: dict[str, float] = {}
        for p in points:
            site, asset, point = p.key.split("/")
            ranked = sorted(
                mappings,
                key=lambda m: (
                    -sum(
                        "{" not in t
                        for t in (m.site, m.asset, *(m.fields or {}), *m.metrics.values(), m.point)
                    )
                ),
            )
            for m in ranked:
                names = list(m.fields) if m.decoder is Decoder.JSON and m.fields else [m.point]
                if m.decoder is Decoder.SPARKPLUG_B:
                    names = [*m.metrics.values(), *([m.point] if m.other_metrics else [])]
                found = None
                for name in names:
                    found = _merge(
                        _invert(m.site, site), _invert(m.asset, asset), _invert(name, point)
                    )
                    if found is not None:
                        break
                if found is None:
                    continue
                if m.decoder is Decoder.SPARKPLUG_B:
                    group = m.group
                    if group == "+":
                        group = found.get("group", found.get("site", "+"))
                    metric = next((k for k, v in m.metrics.items() if v == point), None)
                    tail = f"/{m.device}" if m.device else ("" if m.device == "" else "/#")
                    sources[p.key] = f"{endpoint}/{NAMESPACE}/{group}/+/{m.node}{tail}" + (
                        f"#{metric}" if metric else ""
                    )
                else:
                    assert m.topic is not None  # noqa: S101 - non-Sparkplug mappings have one
                    topic = "/".join(
                        found.get(level[1:-1], "+") if level.startswith("{") else level
                        for level in m.topic.split("/")
                    )
                    sources[p.key] = f"{endpoint}/{topic}"
                interval = p.expected_interval or m.expected_interval
                if interval is not None:
                    intervals[p.key] = interval
                break
            else:
                sources[p.key] = f"{endpoint}/?"
                if p.expected_interval is not None:
                    intervals[p.key] = p.expected_interval
        return sources, intervals

    def _subscription_list(self, mappings: list[MqttMapping], own: int) -> list[MqttSubscription]:
        """The device's subscriptions plus one per point-level rule, no duplicate filters.

        Point-level rules are the first ``own`` mappings.
        """
        subs = self._device.effective_subscriptions() if self._device.subscriptions else []
        chosen = mappings[:own] if self._device.subscriptions else mappings
        qos: dict[str, int] = {s.topic: s.qos for s in subs}
        for m in chosen:
            topic = m.subscription_filter
            qos[topic] = max(qos.get(topic, 0), m.qos)
        return [MqttSubscription(topic=t, qos=1 if q else 0) for t, q in qos.items()]

    def point_sources(self) -> dict[str, str]:
        """Map point key -> its locator URI.

        ``mqtt://host:port/<topic>`` with ``+`` where the topic varies; Sparkplug metrics as
        ``mqtt://host:port/spBv1.0/<group>/+/<node>/<device>#<metric>``.
        """
        return dict(self._sources)

    def expected_intervals(self) -> dict[str, float]:
        """Point key -> expected seconds between messages, for the points that have one."""
        return dict(self._intervals)

    def unmapped(self) -> list[dict[str, object]]:
        """Topics seen that map to no configured point, most recent first.

        Returns:
            One dict per topic (Sparkplug metrics as ``<topic>#<metric>``): ``topic``,
            ``messages`` (count), ``first_seen``, ``last_seen`` (RFC 3339 UTC), ``sample``
            (the last payload's first 256 bytes as text, invalid UTF-8 replaced),
            ``sample_bytes`` (its full size is not kept: the excerpt's length) and
            ``reason`` (``no_mapping``, ``unknown_point``, ``invalid_id``).
        """
        items = sorted(self._unmapped.items(), key=lambda kv: kv[1].last_seen, reverse=True)
        return [
            {
                "topic": topic,
                "messages": u.messages,
                "first_seen": _clock.to_rfc3339(u.first_seen),
                "last_seen": _clock.to_rfc3339(u.last_seen),
                "sample": u.sample.decode("utf-8", errors="replace"),
                "sample_bytes": len(u.sample),
                "reason": u.reason,
            }
            for topic, u in items
        ]

    def nodes(self) -> dict[str, dict[str, object]]:
        """Sparkplug B edge nodes seen, ``"group/node"`` -> link state.

        See `SparkplugSessions.snapshot` (online, bdSeq, seq, birth/death times, devices).
        """
        return self._sessions.snapshot()

    # -- lifecycle --------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        device = self._device
        v5 = device.mqtt_version == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0 if device.clean_start else device.session_expiry
            properties.MaximumPacketSize = min(
                device.max_payload_bytes + MAX_PACKET_OVERHEAD, 268_435_455
            )
            properties.ReceiveMaximum = device.receive_maximum
        password = device.password.get_secret_value() if device.password is not None else None
        client = aiomqtt.Client(
            device.host,
            device.effective_port,
            username=device.username,
            password=password,
            identifier=device.effective_client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else device.clean_start,
            clean_start=device.clean_start if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=device.keepalive,
            timeout=device.connect_timeout,
            properties=properties,
            tls_context=build_tls_context(device.tls, device.endpoint),
        )
        inner: paho.Client = client._client
        inner.on_message = self._on_message
        setattr(inner, "_sock_recv", self._buffered_recv)  # noqa: B010 - overrides a method
        if self._manual_ack:
            inner.manual_ack_set(True)
        self._paho = inner
        return client

    async def __aenter__(self) -> Self:
        """Connect and subscribe.

        Raises:
            ConnectError: Refused (CONNACK reason, e.g. bad credentials), unreachable, TLS
                verification failed, timed out, or a subscription was refused (SUBACK 0x80+).
        """
        await self._close()
        device = self._device
        client = self._make_client()
        self._inbox = []
        self._unacked.clear()
        self._pending_mids = []
        self._inflight, self._paused, self._reader_fd = 0, False, None
        self._rbuf, self._rpos, self._rx_error = b"", 0, None
        self._last_in = self._last_rx = self._clock.monotonic()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            msg = f"{device.endpoint}: connect failed: {exc}"
            raise ConnectError(msg) from exc
        self._client = client
        self._disconnected = client._disconnected
        self._install_reader()
        subscriptions = self._subscriptions
        if subscriptions:
            try:
                topics: list[tuple[str, int]] = [(s.topic, s.qos) for s in subscriptions]
                codes = await client.subscribe(topics, timeout=device.connect_timeout)
            except aiomqtt.MqttError as exc:
                await self._close()
                msg = f"{device.endpoint}: subscribe failed: {exc}"
                raise ConnectError(msg) from exc
            for sub, code in zip(subscriptions, codes, strict=False):
                raw = getattr(code, "value", code)
                value = raw if isinstance(raw, int) else 0x80
                if value >= 0x80:
                    await self._close()
                    msg = f"{device.endpoint}: subscription {sub.topic!r} refused (0x{value:02X})"
                    raise ConnectError(msg)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect (DISCONNECT when the link is still up); never raises."""
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)
        inner = self._paho
        if inner is not None:
            with contextlib.suppress(Exception):
                inner.disconnect()
        # retrieve a stored exception so asyncio does not log "never retrieved"
        fut = self._disconnected
        if fut is not None and fut.done() and not fut.cancelled():
            fut.exception()

    # -- receiving --------------------------------------------------------------------------

    def _install_reader(self) -> None:
        """Replace aiomqtt's reader callback on the connected socket with `_on_readable`."""
        inner = self._paho
        sock = inner.socket() if inner is not None else None
        if sock is None:
            return
        self._reader_fd = sock.fileno()
        asyncio.get_running_loop().add_reader(self._reader_fd, self._on_readable)

    def _pause(self) -> None:
        """Stop reading the socket: more QoS 1 messages than the window are unacknowledged.

        A broker that honours the Receive Maximum never gets here; mosquitto 2.0.11 does not
        (each PUBACK lets up to a window more out). Unread bytes stay in the kernel's and the
        broker's buffers (TCP backpressure) until `acknowledge` brings the count back.
        """
        if self._paused or self._reader_fd is None:
            return
        self._paused = True
        self.stats.errors["receive_window_full"] += 1
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._reader_fd)

    def _resume(self) -> None:
        """Read again, starting with the bytes `_parse` left in the buffer when it paused."""
        self._paused = False
        if self._reader_fd is None or self._client is None:
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(self._reader_fd, self._on_readable)
        loop.call_soon(self._on_readable)

    def _buffered_recv(self, bufsize: int) -> bytes:
        """Serve paho's ``_sock_recv`` from the buffer while `_on_readable` reads the socket.

        Before the reader is installed (connecting) the buffer is empty and the socket is read
        directly, as paho does.
        """
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf):
            end = min(len(buf), pos + bufsize)
            self._rpos = end
            return buf[pos:end]
        if self._rx_error is not None:
            error, self._rx_error = self._rx_error, None
            if isinstance(error, EOFError):
                return b""
            raise error
        inner = self._paho
        if inner is None or inner._sock is None:
            msg = "socket closed"
            raise ConnectionError(msg)
        if self._client is not None and self._disconnected is not None:
            raise BlockingIOError  # the reader owns the socket: wait for the next event
        try:
            return inner._sock.recv(bufsize)
        except ssl.SSLWantReadError as err:
            raise BlockingIOError from err
        except ssl.SSLWantWriteError as err:
            inner._call_socket_register_write()
            raise BlockingIOError from err

    def _on_readable(self) -> None:
        """The socket is readable: read once, parse QoS 0 PUBLISH frames, hand the rest to paho."""
        try:
            self._read_socket()
        except Exception as exc:  # a broken link: the same outcome as aiomqtt's callback
            disconnected = self._disconnected
            if disconnected is not None and not disconnected.done():
                disconnected.set_exception(exc)

    def _read_socket(self) -> None:
        inner = self._paho
        sock = inner._sock if inner is not None else None
        if inner is None or sock is None:
            return
        data = b""
        while True:  # one recv; more only while TLS holds decrypted bytes epoll cannot see
            try:
                chunk = sock.recv(RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                inner._call_socket_register_write()
                break
            except OSError as exc:
                self._rx_error = exc
                break
            if not chunk:
                self._rx_error = EOFError()  # paho reads b"" and handles the loss
                break
            data += chunk
            pending = getattr(sock, "pending", None)
            if pending is None or not pending():
                break
        if data:
            now = self._clock.monotonic()
            self._last_rx = now
            with inner._msgtime_mutex:
                inner._last_bytes_received = time.monotonic()  # paho's keep-alive check
        buf = self._rbuf[self._rpos :] + data if self._rpos < len(self._rbuf) else data
        self._rbuf, self._rpos = buf, 0
        before = len(self._inbox)
        self._parse(inner, buf)
        if self._rx_error is not None and inner._sock is not None:
            inner.loop_read()  # paho reads the EOF/error and runs its disconnect handling
        if len(self._inbox) > before:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _parse(self, inner: paho.Client, buf: bytes) -> None:
        """Take complete frames from ``buf``; leave an incomplete tail in `_rbuf`/`_rpos`.

        Source: MQTT 3.1.1 §2.2 (fixed header, remaining length), §3.3 (PUBLISH); MQTT 5.0
        §3.3.2.3 (PUBLISH properties).
        """
        end = len(buf)
        pos = 0
        inbox = self._inbox
        inbox_max = self._inbox_max
        v5 = self._v5
        while pos < end and inner._sock is not None and not self._paused:
            if inner._in_packet["command"]:  # paho is inside a frame: let it continue
                self._rpos = pos
                inner.loop_read()
                if self._rpos == pos:
                    break
                pos = self._rpos
                continue
            first = buf[pos]
            i = pos + 1
            length = 0
            shift = 0
            while i < end and i - pos <= 4:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                if i - pos <= 4:  # header incomplete: wait for more bytes
                    break
                length = -1  # malformed remaining length: paho rejects it
            frame_end = i + length
            if length >= 0 and frame_end > end and length <= RECV_BYTES:
                break  # a small incomplete frame: keep it for the next read
            if (first & 0xF6) == 0x30 and length >= 2 and frame_end <= end:
                msg = self._publish_qos0(buf, first, i, frame_end, v5)
                if msg is not None:
                    pos = frame_end
                    if len(inbox) >= inbox_max:
                        self._overflow()
                    else:
                        inbox.append(msg)
                    continue
            self._rpos = pos  # any other frame (or a large one) goes through paho
            inner.loop_read()
            if self._rpos == pos:
                break
            pos = self._rpos
        self._rbuf, self._rpos = buf, pos

    @staticmethod
    def _publish_qos0(buf: bytes, first: int, start: int, end: int, v5: bool) -> _Msg | None:
        """A QoS 0 PUBLISH frame's content, or None for paho to handle (topic alias, bad length)."""
        t0 = start + 2
        t1 = t0 + (buf[start] << 8 | buf[start + 1])
        if t1 == t0 or t1 > end:
            return None
        p = t1
        if v5:  # skip the properties (a topic alias only comes with an empty topic)
            size = shift = 0
            while p < end:
                byte = buf[p]
                p += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                return None
            p += size
            if p > end:
                return None
        try:
            topic: str | None = buf[t0:t1].decode("utf-8")
        except UnicodeDecodeError:
            topic = None
        return (topic, buf[p:end], 0, bool(first & 1), 0)

    def _overflow(self) -> None:
        """Count a message dropped because the inbox is full: received, and dropped (B6)."""
        self.stats.requests += 1
        self.stats.errors["inbox_overflow"] += 1

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:  # noqa: ANN401
        """Callback of paho for every frame `_parse` leaves to it (QoS 1, topic aliases...).

        A QoS 1 message under ``ack: commit`` is always kept: at most ``receive_maximum`` + 1
        of them wait for their acknowledgement (beyond the window, reading pauses; see
        `_pause`). Any other message is dropped and counted when the inbox holds
        ``inbox_max``.
        """
        inbox = self._inbox
        owed = self._manual_ack and message.qos == 1  # acknowledged after the commit
        if owed:
            self._inflight += 1
            if self._inflight > self._window:
                self._pause()
        elif len(inbox) >= self._inbox_max:
            self._overflow()
            return
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        inbox.append((topic, bytes(message.payload), message.qos, message.retain, message.mid))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def acknowledge(self, batch: int) -> int:
        """Send the PUBACKs of every QoS 1 message in batches up to ``batch`` (``ack: commit``).

        Call it after the samples of those batches are committed. A no-op with
        ``ack: receipt`` or when the link is gone (the broker then redelivers).

        Args:
            batch: A value of `batches` read right after the batch was yielded.

        Returns:
            The number of PUBACKs sent.
        """
        sent = 0
        while self._unacked and self._unacked[0][0] <= batch:
            _, mids = self._unacked.popleft()
            sent += self._send_acks(mids)
        return sent

    def _send_acks(self, mids: list[int]) -> int:
        """PUBACK ``mids`` (if the link is up); read again once back within the window."""
        inner = self._paho
        if inner is None or self._client is None:
            return 0
        for mid in mids:
            inner.ack(mid, 1)
        self._inflight = max(0, self._inflight - len(mids))
        if self._paused and self._inflight <= self._window:
            self._resume()
        return len(mids)

    async def samples(self) -> AsyncIterator[list[Sample]]:
        """Yield one batch of samples per burst of received messages, forever.

        Yields:
            Samples of the burst in arrival order; bursts that produce no sample (all
            rejected or unmapped) are not yielded.

        Raises:
            LinkLost: The broker closed the link, the socket failed, or nothing arrived for
                1.5 × keepalive. Messages received before the loss are yielded first.
        """
        client = self._client
        disconnected = self._disconnected
        if client is None or disconnected is None:
            msg = f"{self._device.endpoint}: not connected"
            raise LinkLost(msg)
        loop = asyncio.get_running_loop()
        monotonic = self._clock.monotonic
        silence = 1.5 * self._device.keepalive
        sessions = self._sessions
        batch_max = min(BATCH_MAX, self._inbox_max)
        last_yield = 0.0
        while True:
            if not self._inbox and not disconnected.done():
                waiter = loop.create_future()
                self._waiter = waiter
                timeout = 1.0
                deadline = sessions.next_deadline()
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - monotonic()))
                try:
                    await asyncio.wait(
                        (waiter, disconnected), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    self._waiter = None
            if self._inbox and not self._manual_ack and len(self._inbox) < batch_max:
                delay = last_yield + BATCH_INTERVAL_S - monotonic()
                if delay > 0:  # let a stream of small bursts gather into one batch
                    await asyncio.sleep(delay)
            now = monotonic()
            batch: list[Sample] = []
            if self._inbox:
                self._last_in = now
                inbox, self._inbox = self._inbox, []
                await self._process(inbox, batch)
            else:
                self._last_in = max(self._last_in, self._last_rx)
            if sessions.next_deadline() is not None:
                await self._apply_tick(now, batch)
            if batch:
                last_yield = now
                self.stats.polls += 1
                self.batches += 1
                if self._manual_ack and self._pending_mids:
                    self._unacked.append((self.batches, self._pending_mids))
                    self._pending_mids = []
                yield batch
            elif self._manual_ack and self._pending_mids:
                # nothing to commit (rejected, unmapped): acknowledge now, or they would hold
                # the window until the next batch, which a full window never lets in
                mids, self._pending_mids = self._pending_mids, []
                self._send_acks(mids)
            if disconnected.done() and not self._inbox:
                await self._close()
                cause = disconnected.exception() if not disconnected.cancelled() else None
                msg = f"{self._device.endpoint}: connection lost" + (f": {cause}" if cause else "")
                raise LinkLost(msg) from cause
            if not self._inbox and now - self._last_in > silence:
                await self._close()
                msg = f"{self._device.endpoint}: nothing received for {silence:g} s (half-open)"
                raise LinkLost(msg)

    async def _apply_tick(self, now: float, batch: list[Sample]) -> None:
        outcome = self._sessions.tick(now)
        self.stats.errors.update(outcome.counts)
        for group, node in outcome.rebirth:
            await self._send_rebirth(group, node)
        del batch

    async def _send_rebirth(self, group: str, node: str) -> None:
        client = self._client
        if client is None:
            return
        payload = encode_rebirth(int(time.time() * 1000))
        try:
            await client.publish(rebirth_topic(group, node), payload, qos=0, timeout=2.0)
        except aiomqtt.MqttError:
            self.stats.errors["rebirth_publish_failed"] += 1

    async def _process(self, messages: list[_Msg], batch: list[Sample]) -> None:
        """Decode a burst into ``batch`` (the hot path)."""
        stats = self.stats
        errors = stats.errors
        stats.requests += len(messages)
        routes = self._routes
        device = self._device
        max_bytes = device.max_payload_bytes
        received = self._clock.utc_now()
        latest = received + self._max_future
        manual = self._manual_ack
        append = batch.append
        sparkplug = bool(self._sp_rules)
        for topic, payload, qos, retain, mid in messages:
            if manual and qos == 1:
                self._pending_mids.append(mid)
            if topic is None:
                errors["invalid_topic"] += 1
                continue
            if sparkplug and topic.startswith(NAMESPACE):
                await self._sparkplug(topic, payload, received, batch)
                continue
            if topic in routes:
                route = routes[topic]
            else:
                route = self._route(topic)
                if len(routes) >= MAX_ROUTE_CACHE:
                    routes.clear()
                routes[topic] = route
            if route is None:
                self._note_unmapped(topic, payload, received, "no_mapping")
                continue
            if route.unmapped:
                self._note_unmapped(topic, payload, received, route.unmapped[0])
                if not route.keys:
                    continue
            rule = route.rule
            try:
                if rule.layout is None:
                    field = decode_plain(payload, rule.mapping.value_type, max_bytes)
                    key = route.keys[0][1]
                    if field.reason is not None:
                        errors[field.reason] += 1
                    if rule.mapping.retained_max_age is not None and retain:
                        errors["retained_no_timestamp"] += 1
                        continue
                    append(Sample(key, field.value, field.quality, None))
                    continue
                result = decode_json(payload, rule.layout, max_bytes)
            except PayloadRejected as exc:
                errors[exc.reason] += 1
                continue
            source_time = result.source_time
            if result.timestamp_error is not None:
                errors[result.timestamp_error] += 1
            elif source_time is not None and source_time > latest:
                errors["ts_adjusted"] += 1
                source_time = None
            max_age = rule.mapping.retained_max_age
            if max_age is not None and retain:
                if source_time is None:
                    errors["retained_no_timestamp"] += 1
                    continue
                if (received - source_time).total_seconds() > max_age:
                    errors["retained_stale"] += 1
                    continue
            if result.missing:
                errors["missing_field"] += len(result.missing)
            keys = route.by_field
            for field in result.fields:
                field_key = keys.get(field.name)
                if field_key is None:
                    continue
                if field.reason is not None:
                    errors[field.reason] += 1
                append(Sample(field_key, field.value, field.quality, source_time))

    def _route(self, topic: str) -> _Route | None:
        """Match a topic against the mappings; resolve and check its point keys."""
        for rule in self._rules:
            assert rule.template is not None  # noqa: S101 - non-Sparkplug rules have one
            variables = rule.template.match(topic)
            if variables is None:
                continue
            m = rule.mapping
            site = render(m.site, variables)
            asset = render(m.asset, variables)
            json_fields = m.fields is not None and m.decoder is Decoder.JSON
            names = list(m.fields or ()) if json_fields else [m.point]
            keys: list[tuple[str, str]] = []
            unmapped: list[str] = []
            for name in names:
                point = render(name, variables)
                key = f"{site}/{asset}/{point}"
                if not (SLUG.match(site) and SLUG.match(asset) and SLUG.match(point)):
                    unmapped.append("invalid_id")
                elif key not in self._keys:
                    unmapped.append("unknown_point")
                else:
                    keys.append((name if m.decoder is Decoder.JSON else m.point, key))
            return _Route(rule, tuple(keys), tuple(unmapped), dict(keys))
        return None

    def _note_unmapped(self, topic: str, payload: bytes, when: datetime, reason: str) -> None:
        entry = self._unmapped.get(topic)
        if entry is None:
            if len(self._unmapped) >= self._device.max_unmapped:
                self.stats.errors["unmapped_overflow"] += 1
                return
            self._unmapped[topic] = _Unmapped(1, when, when, bytes(payload[:SAMPLE_BYTES]), reason)
            self.stats.errors["unmapped"] += 1
            return
        entry.messages += 1
        entry.last_seen = when
        entry.sample = bytes(payload[:SAMPLE_BYTES])
        self.stats.errors["unmapped"] += 1

    # -- Sparkplug B ------------------------------------------------------------------------

    def _sp_key(self, group: str, node: str, device: str, name: str) -> str | None:
        cache_key = (group, node, device, name)
        if cache_key in self._sp_keys:
            return self._sp_keys[cache_key]
        key: str | None = None
        metric_slug = slugify(name)
        variables = {
            "group": group,
            "node": node,
            "device": device,
            "metric": metric_slug,
            "site": group,
            "asset": device or node,
            "point": metric_slug,
        }
        for rule in self._sp_rules:
            m = rule.mapping
            if (m.group not in ("+", group)) or (m.node not in ("+", node)):
                continue
            if m.device is not None and m.device != device:
                continue
            template = m.metrics.get(name)
            if template is None:
                if not m.other_metrics:
                    continue
                template = m.point
            candidate = (
                f"{render(m.site, variables)}/{render(m.asset, variables)}/"
                f"{render(template, variables)}"
            )
            if candidate in self._keys:
                key = candidate
                break
        if len(self._sp_keys) >= MAX_ROUTE_CACHE:
            self._sp_keys.clear()
        self._sp_keys[cache_key] = key
        return key

    def _sp_wanted(self, group: str, node: str) -> bool:
        return any(
            r.mapping.group in ("+", group) and r.mapping.node in ("+", node)
            for r in self._sp_rules
        )

    async def _sparkplug(
        self, topic: str, payload: bytes, received: datetime, batch: list[Sample]
    ) -> None:
        errors = self.stats.errors
        parsed = parse_topic(topic)
        if parsed is None:
            errors["invalid_topic"] += 1
            self._note_unmapped(topic, payload, received, "no_mapping")
            return
        if parsed.kind is not MessageType.STATE and not self._sp_wanted(parsed.group, parsed.node):
            self._note_unmapped(topic, payload, received, "no_mapping")
            return
        decoded = None
        if parsed.kind not in (MessageType.NCMD, MessageType.DCMD, MessageType.STATE):
            try:
                decoded = decode_payload(payload, self._device.max_payload_bytes)
            except PayloadRejected as exc:
                errors[exc.reason] += 1
                return
        now = self._clock.monotonic()
        outcome = self._sessions.handle(parsed, decoded, now, received)
        errors.update(outcome.counts)
        latest = received + self._max_future
        group, node = parsed.group, parsed.node
        for value in outcome.values:
            key = self._sp_key(group, node, value.device, value.name)
            if key is None:
                self._note_unmapped(
                    f"{topic}#{value.name}", payload, received, "unknown_point"
                )
                continue
            source_time = value.source_time
            if source_time is not None and source_time > latest:
                errors["ts_adjusted"] += 1
                source_time = None
            batch.append(Sample(key, value.value, value.quality, source_time))
        for device, name in outcome.dead:
            key = self._sp_key(group, node, device, name)
            if key is not None:
                batch.append(Sample(key, None, Q.BAD_NO_COMMUNICATION, received))
        for rebirth_group, rebirth_node in outcome.rebirth:
            await self._send_rebirth(rebirth_group, rebirth_node)
