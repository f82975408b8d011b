"""Sinks: where the gateway forwards readings (e.g. InfluxDB), and how far behind it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from gateway.api.deps import CtxDep
from gateway.api.schemas import jsonable

router = APIRouter(prefix="/sinks", tags=["sinks"])


@router.get("", summary="List sinks")
async def list_sinks(ctx: CtxDep) -> list[dict[str, Any]]:
    """Each configured sink's state as the runtime reports it; empty when none is configured.

    The fields are the runtime's (free-form JSON: times RFC 3339 UTC, durations in seconds).
    """
    status: Callable[[], list[dict[str, object]]] | None = getattr(ctx, "sink_status", None)
    if status is None:
        return []
    return [jsonable(s) for s in status()]
