"""Live readings as Server-Sent Events (``text/event-stream``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, cast

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.api.deps import CtxDep, query_error
from gateway.api.schemas import ErrorOut, finite_value, ts
from gateway.model import Reading
from gateway.quality import quality_name, severity
from gateway.readings_query import PATTERNS_SCHEMA_RE, parse_patterns
from gateway.stream import (
    StreamHub,
    StreamUnavailableError,
    SubscriberDroppedError,
    Subscription,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/stream", tags=["stream"])

RETRY_MS = 3000
"""Reconnect delay suggested to EventSource clients [ms]."""
_ENCODE_IN_THREAD = 500
"""Batches larger than this are encoded off the event loop [readings]."""

_DESCRIPTION = """\
Server-Sent Events of committed readings whose key `site/asset/point` matches `points`.

Events:
- `reading` — `data` is one normalized reading (schema `StreamEventOut`): site, asset, point,
  value, unit, quality, quality_name, severity, source_time, gateway_time, source.
- `dropped` — the client fell behind by more than the stream buffer (a slow consumer); the
  stream ends and the gateway counts it (`otgw_stream_dropped_subscribers_total`). Reconnect.
- `end` — the gateway is shutting down; the stream ends.

Comment lines (`: keep-alive`) are sent while idle. There is no replay: a reconnecting client
gets readings committed after it reconnects; use `/api/v1/readings` to fill the hole.
"""


def event_data(r: Reading) -> dict[str, object]:
    """The ``data`` of a ``reading`` event (the fields of `StreamEventOut`)."""
    return {
        "site": r.site,
        "asset": r.asset,
        "point": r.point,
        "value": finite_value(r.value),
        "unit": r.unit,
        "quality": r.quality,
        "quality_name": quality_name(r.quality),
        "severity": severity(r.quality).value,
        "source_time": ts(r.source_time),
        "gateway_time": ts(r.gateway_time),
        "source": r.source,
    }


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def encode_batch(batch: Sequence[Reading]) -> bytes:
    """SSE ``reading`` events of a batch."""
    return "".join(_sse("reading", event_data(r)) for r in batch).encode()


async def _events(sub: Subscription, heartbeat: float) -> AsyncIterator[bytes]:
    """The SSE body of one subscription: events, keep-alives, and a final event."""
    yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
    while True:
        try:
            batch = await sub.next_batch(heartbeat)
        except SubscriberDroppedError as exc:
            yield _sse("dropped", {"reason": str(exc)}).encode()
            return
        if batch is None:
            yield _sse("end", {"reason": "the gateway is shutting down"}).encode()
            return
        if not batch:
            yield b": keep-alive\n\n"
        elif len(batch) > _ENCODE_IN_THREAD:
            yield await asyncio.to_thread(encode_batch, batch)
        else:
            yield encode_batch(batch)


class EventStreamResponse(StreamingResponse):
    """A streaming response whose every send must complete within `send_timeout` seconds.

    A client that stops reading (its TCP window full) would otherwise keep the response
    coroutine blocked forever; after the timeout the connection is closed instead.
    """

    media_type = "text/event-stream"

    def __init__(self, sub: Subscription, heartbeat: float, *, send_timeout: float) -> None:
        super().__init__(
            _events(sub, heartbeat),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.sub = sub
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream; the subscription is closed however the response ends."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.sub.close()

    async def stream_response(self, send: Send) -> None:
        """Send the start, then every chunk, each bounded by `send_timeout`."""
        try:
            with anyio.fail_after(self.send_timeout):
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
            async for chunk in self.body_iterator:
                with anyio.fail_after(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            logger.warning("stream: client not reading for %.0f s; closing", self.send_timeout)


@router.get(
    "",
    summary="Live readings (Server-Sent Events)",
    description=_DESCRIPTION,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An endless `text/event-stream`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        503: {"model": ErrorOut, "description": "Too many live streams, or shutting down"},
    },
)
async def stream(
    request: Request,
    ctx: CtxDep,
    points: Annotated[
        str,
        Query(
            min_length=1,
            max_length=4096,
            description="Comma-separated fnmatch globs over point keys `site/asset/point`",
            json_schema_extra={"pattern": PATTERNS_SCHEMA_RE},
        ),
    ] = "*",
) -> StreamingResponse:
    """Subscribe to live readings (see the operation description for the events)."""
    del ctx  # the hub listens to the context; declared for the dependency only
    try:
        patterns = parse_patterns(points)
    except ValueError as exc:
        raise query_error("points", str(exc), points) from None
    state = request.app.state
    hub = cast("StreamHub", state.stream_hub)
    try:
        sub = hub.subscribe(patterns)
    except StreamUnavailableError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return EventStreamResponse(
        sub, float(state.stream_heartbeat), send_timeout=float(state.stream_send_timeout)
    )
