"""The FastAPI application factory: `create_app(ctx)`.

No module-level app: the runtime (or a test) builds one per `ApiContext`. Safe defaults (S9):
no CORS middleware unless ``api.cors_origins`` lists origins, `TrustedHostMiddleware` limited
to loopback names, a request body limit (``api.max_body_bytes``, 413), docs can be switched off.

Security (issue #7, docs/security.md): bearer tokens with roles from ``api.auth``
(`gateway.api.auth`); with ``read_requires_token`` every ``/api/v1`` read and ``/metrics``
need a token of any role (``/healthz``, ``/readyz``, the page, its files and the OpenAPI schema
stay open: they carry no plant data). Writes (`gateway.api.routes.write`) need ``operator``,
the audit log (`gateway.api.routes.audit`) ``admin``, whatever ``read_requires_token`` says.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.api.auth import Authenticator, require_reader
from gateway.api.cache import ViewCache
from gateway.api.context import ApiContext
from gateway.api.routes import (
    assets,
    audit,
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
    write,
)
from gateway.api.schemas import ErrorOut
from gateway.audit import RESULTS, AuditLog
from gateway.config import GatewayConfig
from gateway.model import Value
from gateway.stream import DEFAULT_BUFFER, DEFAULT_MAX_SUBSCRIBERS, ListenerSource, StreamHub
from gateway.writeback import WriteService, close_quietly

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
"""Host header values accepted by default (the API binds to loopback by default)."""

_DESCRIPTION = """\
HTTP API of ot-gateway: sites, assets, points, devices, data gaps and coverage; readings history
and exports (JSON, CSV, Parquet) and a live stream (Server-Sent Events). Read-only by default;
guarded write-back of writable points (`operator` token, `writes.enabled`, range and type checks,
audited) and the audit log (`admin` token). Tokens: `Authorization: Bearer <token>` (RFC 6750).

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


class SecurityCollector(Collector):
    """Audit and authentication figures of the newest app built on a registry."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Yield ``otgw_audit_events_total{result}`` and the authentication counters."""
        state = self.app.state
        auth: Authenticator = state.auth
        log: AuditLog | None = state.audit_log_current
        counts = log.counts if log is not None else {}
        events = CounterMetricFamily(
            "otgw_audit_events",
            "Write attempts recorded in the audit log since start, by result",
            labels=["result"],
        )
        for result in RESULTS:
            events.add_metric([result], counts.get(result, 0))
        yield events
        yield CounterMetricFamily(
            "otgw_api_auth_failures",
            "Requests with an invalid bearer token (401 invalid_token)",
            value=auth.limiter.failures_total,
        )
        yield CounterMetricFamily(
            "otgw_api_auth_rate_limited",
            "Requests refused with 429 for too many failed authentications",
            value=auth.limiter.limited_total,
        )


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, StreamCollector] = (
    weakref.WeakKeyDictionary()
)
_SECURITY: weakref.WeakKeyDictionary[CollectorRegistry, SecurityCollector] = (
    weakref.WeakKeyDictionary()
)


def _registry(ctx: ApiContext) -> CollectorRegistry | None:
    try:
        return ctx.metrics_registry()
    except Exception:
        logger.exception("api: metrics registry unavailable")
        return None


def _register_stream_metrics(ctx: ApiContext, hub: StreamHub) -> None:
    """Expose the hub on the context's registry (once per registry; the newest hub wins)."""
    registry = _registry(ctx)
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


def _register_security_metrics(ctx: ApiContext, app: FastAPI) -> None:
    """Expose audit/auth counters on the context's registry (the newest app wins)."""
    registry = _registry(ctx)
    if registry is None:
        return
    existing = _SECURITY.get(registry)
    if existing is not None:
        existing.app = app
        return
    collector = SecurityCollector(app)
    try:
        registry.register(collector)
    except ValueError:
        logger.warning("api: security metrics not registered (duplicate names)")
        return
    _SECURITY[registry] = collector


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before the app reads them (M11, S7).

    A ``Content-Length`` over the limit is refused at once, without reading the body. A body
    of unknown length (chunked) on POST/PUT/PATCH/DELETE is read here up to the limit: over it,
    413 and the rest is never read; within it, the app gets the body as one message. Starlette
    has no limit of its own.

    Args:
        app: The ASGI app.
        max_bytes: Largest body accepted [bytes].
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                too_large = True
            if too_large:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body too large (limit {self.max_bytes} bytes)"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive callable that returns ``messages`` first, then defers to ``receive``."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    logger.info("api: started (%s %s)", app.title, app.version)
    yield
    await close_quietly(app.state.audit_log_current)
    logger.info("api: stopped")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """500 as JSON without internals; the traceback goes to the log only."""
    logger.error("api: unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def _audit_provider(app: FastAPI, ctx: ApiContext) -> None:
    """Set ``app.state.audit_log``: returns the audit log in the store's file, or None.

    Resolved at each call (the store opens when the runtime starts, possibly after the app is
    built); one `AuditLog` per store path.
    """
    app.state.audit_log_current = None

    def provider() -> AuditLog | None:
        store = getattr(ctx, "store", None)
        path = getattr(store, "path", None)
        if path is None:
            return None
        current: AuditLog | None = app.state.audit_log_current
        if current is None or current.path != Path(path):
            current = AuditLog(Path(path))
            app.state.audit_log_current = current
        return current

    app.state.audit_log = provider


def _last_value(ctx: ApiContext) -> Any:  # noqa: ANN401 - a callable for WriteService
    def last_value(site: str, asset: str, point: str) -> tuple[Value, int | None]:
        view = ctx.inventory.point(site, asset, point, ctx.now())
        if view is None:
            return None, None
        return view.value, view.quality

    return last_value


def create_app(
    ctx: ApiContext,
    *,
    config: GatewayConfig | None = None,
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
        config: The gateway config (``api`` security settings, ``writes``, points); default
            ``ctx.cfg`` when the context has one (the runtime does), else the defaults (no
            tokens, open reads, writes disabled).
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
        A FastAPI app; routes under ``/api/v1`` (reads, the write route, the audit log) plus
        ``/healthz``, ``/readyz``, ``/metrics`` and the page at ``/``.
    """
    cfg = config if config is not None else getattr(ctx, "cfg", None)
    if not isinstance(cfg, GatewayConfig):
        cfg = GatewayConfig()
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
    auth = Authenticator(cfg.api.auth)
    app.state.auth = auth
    _audit_provider(app, ctx)
    run_states: Mapping[str, object] = getattr(ctx, "devices", None) or {}
    # The runtime keeps only its writable points' configs (`Runtime.writable_points`).
    from_ctx = config is None and hasattr(ctx, "writable_points")
    app.state.writes = WriteService(
        cfg,
        run_states,
        app.state.audit_log,
        _last_value(ctx),
        writable=getattr(ctx, "writable_points", None) if from_ctx else None,
        known=getattr(ctx, "has_point", None) if from_ctx else None,
    )
    _register_security_metrics(ctx, app)
    app.add_exception_handler(Exception, _unhandled)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.api.max_body_bytes)
    if cfg.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.api.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
            allow_credentials=False,
        )
    reads: dict[str, Any] = {}
    if auth.read_requires_token:
        reads = {
            "dependencies": [Depends(require_reader)],
            "responses": {
                401: {"model": ErrorOut, "description": "Missing or invalid token"},
                429: {"model": ErrorOut, "description": "Too many failed authentications"},
            },
        }
    resources = (sites, assets, devices, gaps, coverage, readings, stream, sinks, unmapped)
    for resource in resources:
        app.include_router(resource.router, prefix=API_PREFIX, **reads)
    app.include_router(write.router, prefix=API_PREFIX)
    app.include_router(audit.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics.router, **reads)
    app.include_router(home.router)
    return app
