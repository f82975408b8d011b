"""The demo's in-process MQTT broker: amqtt on 127.0.0.1, on the caller's event loop.

`ot-gateway demo` needs an MQTT broker without any external service: the simulated MQTT
publishers send to it, the gateway subscribes to it, and the gateway's northbound publisher
sends normalized readings back to it (``mosquitto_sub -t 'ot/#'``). amqtt is an asyncio broker,
so it runs as a few tasks on the demo's event loop next to the gateway.

We accept the TCP connections ourselves (``asyncio.start_server``) and hand each stream to
amqtt through its *external* listener (`amqtt.broker.Broker.external_connected`), so the bound
port is known even when the OS picks it, without reading amqtt internals.

Limits (fine for the demo, not for benchmarks; DESIGN §8): MQTT 3.1.1 only (a client asking
for MQTT 5 gets CONNACK "unacceptable protocol version"), ≈ 1-3k messages/s at a full core,
no persistence, anonymous access.

Source: amqtt 0.12 `amqtt/broker.py` (`Broker`, `external_connected`, `ListenerType.EXTERNAL`),
`amqtt/mqtt/protocol/handler.py` (the read timeout is exactly the client's keep alive; we add
`KEEPALIVE_GRACE_S` so a client that pings a little late is not dropped; MQTT 3.1.1 §3.1.2.10
allows 1.5 × keep alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from typing import Any

from amqtt.adapters import (  # type: ignore[import-untyped]  # amqtt ships no py.typed
    StreamReaderAdapter,
    StreamWriterAdapter,
)
from amqtt.broker import Broker  # type: ignore[import-untyped]

log = logging.getLogger("ot_gateway.demo_broker")

DEFAULT_PORT = 1883
"""The port the demo broker tries first (the MQTT default), so ``mosquitto_sub`` needs no -p."""

KEEPALIVE_GRACE_S = 5
"""Seconds amqtt waits beyond a client's keep alive before dropping it [s]."""

LISTENER = "default"
STOP_TIMEOUT_S = 5.0
"""Seconds `DemoBroker.stop` waits for client connections to end before cancelling them."""


class DemoBrokerError(Exception):
    """The broker could not start (no port could be bound, or amqtt refused to start)."""


class DemoBroker:
    """An amqtt MQTT 3.1.1 broker listening on ``host`` (loopback), run on the current loop.

    Args:
        host: Bind address; the demo uses 127.0.0.1 only.
        port: Preferred TCP port [0..65535]; 0 = any free port.
        fallback: When ``port`` is taken (or not allowed), bind any free port instead of failing.

    Use ``port = await broker.start()`` and ``await broker.stop()`` from the same event loop.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, fallback: bool = True
    ) -> None:
        self.host = host
        self.preferred_port = port
        self.fallback = fallback
        self.port: int | None = None
        self.fell_back = False
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (port None before `start`)."""
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> int:
        """Start amqtt and listen.

        Returns:
            The bound TCP port.

        Raises:
            DemoBrokerError: No port could be bound, or amqtt failed to start.
        """
        config: dict[str, Any] = {
            "listeners": {LISTENER: {"type": "external"}},
            "timeout_disconnect_delay": KEEPALIVE_GRACE_S,
            # Only anonymous access: no $SYS topics and no per-packet logging plugins (CPU).
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        try:
            self._server = await self._listen()
        except OSError as exc:
            msg = f"cannot listen on {self.host}: {exc}"
            raise DemoBrokerError(msg) from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        try:
            self._broker = Broker(config)
            await self._broker.start()
        except Exception as exc:  # amqtt raises BrokerError and plugin errors
            self._server.close()
            msg = f"amqtt broker did not start: {exc}"
            raise DemoBrokerError(msg) from exc
        log.info("demo MQTT broker (amqtt) on %s", self.url)
        return self.port

    async def _listen(self) -> asyncio.Server:
        try:
            return await asyncio.start_server(self._on_client, self.host, self.preferred_port)
        except OSError as exc:
            if not self.fallback or self.preferred_port == 0:
                raise
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            self.fell_back = True
            log.info("port %d is taken (%s): using a free port", self.preferred_port, exc)
            return await asyncio.start_server(self._on_client, self.host, 0)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if self._broker is None:  # a connection before amqtt has started
                writer.close()
                return
            await self._broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), LISTENER
            )
        except Exception as exc:  # one bad client must not reach the loop's handler
            log.debug("demo broker: client connection ended with %r", exc)
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)

    def clients(self) -> int:
        """Number of MQTT clients connected now."""
        if self._broker is None:
            return 0
        sessions: dict[str, tuple[Any, Any]] = self._broker.sessions
        return sum(1 for session, _h in sessions.values() if session.transitions.is_connected())

    async def stop(self) -> None:
        """Stop accepting, end every session (no wills for a clean stop), shut amqtt down.

        Idempotent; never raises (problems are logged).
        """
        if self._server is not None:
            self._server.close()
            self._server = None
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                await broker.shutdown()
            except Exception:  # stopping must finish
                log.exception("demo broker: shutdown failed")
        if self._clients:
            _done, pending = await asyncio.wait(set(self._clients), timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("demo MQTT broker stopped")
