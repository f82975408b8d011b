"""Prometheus metrics in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.deps import CtxDep
from gateway.api.schemas import ErrorOut

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        404: {"model": ErrorOut, "description": "Metrics are disabled"},
    },
)
async def metrics(ctx: CtxDep) -> Response:
    """The gateway's Prometheus registry (text format); 404 when metrics are disabled."""
    registry = ctx.metrics_registry()
    if registry is None:
        raise HTTPException(status_code=404, detail="metrics are disabled")
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
