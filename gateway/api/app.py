"""The FastAPI application factory: `create_app(ctx)`.

No module-level app: the runtime (or a test) builds one per `ApiContext`. Safe defaults (S9):
no CORS middleware, `TrustedHostMiddleware` limited to loopback names, docs can be switched off.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.middleware.trustedhost import TrustedHostMiddleware

from gateway import __version__
from gateway.api.cache import ViewCache
from gateway.api.context import ApiContext
from gateway.api.routes import (
    assets,
    coverage,
    devices,
    gaps,
    health,
    home,
    metrics,
    readings,
    sinks,
    sites,
    stream,
    unmapped,
)
from gateway.stream import DEFAULT_BUFFER, DEFAULT_MAX_SUBSCRIBERS, ListenerSource, StreamHub

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
"""Host header values accepted by default (the API binds to loopback by default)."""

_DESCRIPTION = """\
Read-only HTTP API of ot-gateway: sites, assets, points, devices, data gaps and coverage;
readings history and exports (JSON, CSV, Parquet) and a live stream (Server-Sent Events).

Times are RFC 3339 UTC strings ending in `Z`; durations are seconds; quality is the OPC UA
StatusCode (uint32) with its name and severity. Values are `null` when the quality is Bad.
"""


def _operation_id(route: APIRoute) -> str:
    """Clean OpenAPI operation ids: the handler name, e.g. ``list_sites``."""
    return route.name


class StreamCollector(Collector):
    """Live-stream figures of the newest app built on a registry (see `create_app`)."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Yield the stream metric families."""
        st = self.hub.stats()
        yield GaugeMetricFamily(
            "otgw_stream_subscribers", "Live stream (SSE) clients", value=st.subscribers
        )
        yield CounterMetricFamily(
            "otgw_stream_subscriptions", "Live streams opened", value=st.subscribed
        )
        yield CounterMetricFamily(
            "otgw_stream_dropped_subscribers",
            "Live stream clients dropped for falling behind (slow consumers)",
            value=st.dropped,
        )
        yield CounterMetricFamily(
            "otgw_stream_readings_delivered",
            "Readings handed to live stream clients",
            value=st.delivered,
        )


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, StreamCollector] = (
    weakref.WeakKeyDictionary()
)


def _register_stream_metrics(ctx: ApiContext, hub: StreamHub) -> None:
    """Expose the hub on the context's registry (once per registry; the newest hub wins)."""
    try:
        registry = ctx.metrics_registry()
    except Exception:
        logger.exception("api: metrics registry unavailable")
        return
    if registry is None:
        return
    existing = _COLLECTORS.get(registry)
    if existing is not None:
        existing.hub = hub
        return
    collector = StreamCollector(hub)
    try:
        registry.register(collector)
    except ValueError:  # names taken by something else: run without these metrics
        logger.warning("api: stream metrics not registered (duplicate names)")
        return
    _COLLECTORS[registry] = collector


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    logger.info("api: started (%s %s)", app.title, app.version)
    yield
    logger.info("api: stopped")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """500 as JSON without internals; the traceback goes to the log only."""
    logger.error("api: unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def create_app(
    ctx: ApiContext,
    *,
    docs: bool = True,
    allowed_hosts: Sequence[str] | None = DEFAULT_ALLOWED_HOSTS,
    stream_buffer: int = DEFAULT_BUFFER,
    max_streams: int = DEFAULT_MAX_SUBSCRIBERS,
    stream_heartbeat: float = 15.0,
    stream_send_timeout: float = 30.0,
) -> FastAPI:
    """Build the API application for one gateway.

    Args:
        ctx: The running gateway as the API sees it.
        docs: Serve Swagger UI at ``/docs`` (the schema stays at ``/openapi.json``).
        allowed_hosts: Accepted ``Host`` header names (``TrustedHostMiddleware``; a request
            with another host gets 400). None or ``["*"]`` accepts any host, e.g. when bound
            to a public address behind a proxy that checks the host.
        stream_buffer: Readings a live-stream client may fall behind before it is dropped.
        max_streams: Concurrent live-stream clients at most (more get 503).
        stream_heartbeat: Keep-alive comment interval of an idle live stream [s].
        stream_send_timeout: A live-stream client that accepts no data for this long is
            disconnected [s].

    Returns:
        A FastAPI app; routes under ``/api/v1`` plus ``/healthz``, ``/readyz``, ``/metrics``
        and the page at ``/``.
    """
    app = FastAPI(
        title="ot-gateway",
        version=__version__,
        description=_DESCRIPTION,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=_lifespan,
        generate_unique_id_function=_operation_id,
        redirect_slashes=False,  # `/sites/../` must be a 404, not a redirect to `/sites/..`
    )
    app.state.ctx = ctx
    app.state.views = ViewCache()
    source = cast("ListenerSource", ctx) if hasattr(ctx, "add_listener") else None
    hub = StreamHub(source, buffer=stream_buffer, max_subscribers=max_streams)
    app.state.stream_hub = hub
    app.state.stream_heartbeat = stream_heartbeat
    app.state.stream_send_timeout = stream_send_timeout
    _register_stream_metrics(ctx, hub)
    app.add_exception_handler(Exception, _unhandled)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    resources = (sites, assets, devices, gaps, coverage, readings, stream, sinks, unmapped)
    for resource in resources:
        app.include_router(resource.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(home.router)
    return app
