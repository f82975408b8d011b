"""Gaps: intervals in which a point had no usable data although it was expected."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime

from gateway.api.deps import SLUG, TIME_DOC, CtxDep, utc_query_time
from gateway.api.schemas import GapOut

router = APIRouter(prefix="/gaps", tags=["gaps"])


@router.get("", summary="List data gaps")
async def list_gaps(
    ctx: CtxDep,
    site: Annotated[str | None, Query(pattern=SLUG, description="Site id")] = None,
    asset: Annotated[str | None, Query(pattern=SLUG, description="Asset id")] = None,
    point: Annotated[str | None, Query(pattern=SLUG, description="Point id")] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description=f"Only gaps still open at or ending after this time; {TIME_DOC}"),
    ] = None,
    until: Annotated[
        AwareDatetime | None,
        Query(description=f"Only gaps starting before this time; {TIME_DOC}"),
    ] = None,
    open: Annotated[
        bool | None, Query(description="true: only open gaps; false: only closed gaps")
    ] = None,
) -> list[GapOut]:
    """Data gaps matching every given filter, with cause, times, duration and samples missed.

    The time filters select gaps overlapping [since, until) as the inventory defines it.
    """
    lo, hi = utc_query_time("since", since), utc_query_time("until", until)
    if lo is not None and hi is not None and lo > hi:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "until"),
                    "msg": "Value error, 'until' must not be before 'since'",
                    "input": hi.isoformat(),
                }
            ]
        )
    now = ctx.now()
    gaps = ctx.inventory.gaps(site=site, asset=asset, point=point, since=lo, until=hi, open=open)
    return [GapOut.from_gap(g, now) for g in gaps]
