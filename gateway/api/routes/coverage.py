"""Coverage: received usable samples / expected samples over a window."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import CtxDep
from gateway.api.schemas import CoverageOut, CoverageRowOut, GroupBy, ts

router = APIRouter(prefix="/coverage", tags=["coverage"])

MAX_WINDOW_S = 2_592_000
"""30 days [s]."""


@router.get("", summary="Coverage over a window")
async def get_coverage(
    ctx: CtxDep,
    window: Annotated[
        int, Query(ge=1, le=MAX_WINDOW_S, description="Window ending now [s, 1..2592000]")
    ] = 3600,
    group_by: Annotated[GroupBy, Query(description="Group rows by site, asset or point")] = "site",
) -> CoverageOut:
    """Good/Uncertain samples received vs expected per group over the last `window` seconds.

    Nothing is expected before the gateway started monitoring (`monitored_since`).
    """
    now = ctx.now()
    window_start = now - timedelta(seconds=window)
    received = await ctx.usable_counts(window_start)
    rows = await asyncio.to_thread(  # O(points): off the event loop
        ctx.inventory.coverage,
        received,
        window_start=window_start,
        now=now,
        monitored_since=ctx.monitored_since,
        group_by=group_by,
    )
    return CoverageOut(
        window_s=window,
        window_start=ts(window_start) or "",
        window_end=ts(now) or "",
        monitored_since=ts(ctx.monitored_since) or "",
        group_by=group_by,
        rows=[CoverageRowOut.from_row(r) for r in rows],
    )
