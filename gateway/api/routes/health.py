"""Liveness (`/healthz`) and readiness (`/readyz`) probes."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.api.deps import CtxDep
from gateway.api.schemas import HealthOut, ReadyOut, jsonable

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness probe")
async def healthz(ctx: CtxDep) -> HealthOut:
    """200 with ``{"status": "ok"}`` while the process runs; details never fail the probe."""
    try:
        details = jsonable(ctx.health())
    except Exception:
        logger.exception("api: health details failed")
        details = {"error": "health details unavailable"}
    return HealthOut(status="ok", details=details)


@router.get(
    "/readyz",
    summary="Readiness probe",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready"}},
)
async def readyz(ctx: CtxDep) -> JSONResponse:
    """200 when the gateway is ready (store open, tasks running), else 503; both with details."""
    try:
        flag, raw = ctx.readiness()
        ready, details = bool(flag), jsonable(raw)
    except Exception:
        logger.exception("api: readiness check failed")
        ready, details = False, {"error": "readiness check failed"}
    body = ReadyOut(ready=ready, status="ready" if ready else "not_ready", details=details)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
