"""Prometheus metrics in the text exposition format."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.api.deps import CtxDep
from gateway.api.schemas import ErrorOut
from gateway.metrics import CoverageCollector

logger = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])


def coverage_collector(request: Request) -> tuple[CoverageCollector, CollectorRegistry]:
    """The app's `CoverageCollector` and the registry holding only it (made on first use)."""
    state = request.app.state
    found: tuple[CoverageCollector, CollectorRegistry] | None = getattr(
        state, "coverage_metrics", None
    )
    if found is None:
        collector = CoverageCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        found = (collector, registry)
        state.coverage_metrics = found
    return found


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        404: {"model": ErrorOut, "description": "Metrics are disabled"},
    },
)
async def metrics(request: Request, ctx: CtxDep) -> Response:
    """The gateway's Prometheus registry (text format); 404 when metrics are disabled.

    Followed by coverage per site and asset over the last hour (`gateway.metrics.
    CoverageCollector`), refreshed before the answer; if that fails (e.g. the store is
    closing) the previous coverage figures are served.
    """
    registry = ctx.metrics_registry()
    if registry is None:
        raise HTTPException(status_code=404, detail="metrics are disabled")
    collector, coverage = coverage_collector(request)
    try:
        await collector.refresh(ctx)
    except Exception:  # e.g. the store is closing: keep serving the other metrics
        if not collector.failing:
            logger.warning("metrics: coverage refresh failed; serving the previous figures",
                           exc_info=True)
        collector.failing = True
    else:
        collector.failing = False
    return Response(
        content=generate_latest(registry) + generate_latest(coverage),
        media_type=CONTENT_TYPE_LATEST,
    )
