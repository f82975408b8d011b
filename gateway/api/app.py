"""The FastAPI application factory: `create_app(ctx)`.

No module-level app: the runtime (or a test) builds one per `ApiContext`. Safe defaults (S9):
no CORS middleware, `TrustedHostMiddleware` limited to loopback names, docs can be switched off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.middleware.trustedhost import TrustedHostMiddleware

from gateway import __version__
from gateway.api.context import ApiContext
from gateway.api.routes import assets, coverage, devices, gaps, health, home, metrics, sites

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
"""Host header values accepted by default (the API binds to loopback by default)."""

_DESCRIPTION = """\
Read-only HTTP API of ot-gateway: sites, assets, points, devices, data gaps and coverage.

Times are RFC 3339 UTC strings ending in `Z`; durations are seconds; quality is the OPC UA
StatusCode (uint32) with its name and severity. Values are `null` when the quality is Bad.
"""


def _operation_id(route: APIRoute) -> str:
    """Clean OpenAPI operation ids: the handler name, e.g. ``list_sites``."""
    return route.name


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
) -> FastAPI:
    """Build the API application for one gateway.

    Args:
        ctx: The running gateway as the API sees it.
        docs: Serve Swagger UI at ``/docs`` (the schema stays at ``/openapi.json``).
        allowed_hosts: Accepted ``Host`` header names (``TrustedHostMiddleware``; a request
            with another host gets 400). None or ``["*"]`` accepts any host, e.g. when bound
            to a public address behind a proxy that checks the host.

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
    app.add_exception_handler(Exception, _unhandled)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    for resource in (sites, assets, devices, gaps, coverage):
        app.include_router(resource.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(home.router)
    return app
