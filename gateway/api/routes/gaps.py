"""Gaps: intervals in which a point had no usable data although it was expected."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime

from gateway.api.deps import SLUG, CtxDep
from gateway.api.schemas import GapOut

router = APIRouter(prefix="/gaps", tags=["gaps"])

_TIME_DOC = (
    "RFC 3339 time with an offset, e.g. `2026-01-02T03:04:05Z`; a time without an offset is "
    "rejected with 422"
)


def _utc(name: str, value: datetime | None) -> datetime | None:
    """Normalise an aware query time to UTC; out-of-range values are a 422."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise RequestValidationError(
            [
                {
                    "type": "datetime_range",
                    "loc": ("query", name),
                    "msg": "Datetime out of range in UTC",
                    "input": value.isoformat(),
                }
            ]
        ) from None


@router.get("", summary="List data gaps")
async def list_gaps(
    ctx: CtxDep,
    site: Annotated[str | None, Query(pattern=SLUG, description="Site id")] = None,
    asset: Annotated[str | None, Query(pattern=SLUG, description="Asset id")] = None,
    point: Annotated[str | None, Query(pattern=SLUG, description="Point id")] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description=f"Only gaps still open at or ending after this time; {_TIME_DOC}"),
    ] = None,
    until: Annotated[
        AwareDatetime | None,
        Query(description=f"Only gaps starting before this time; {_TIME_DOC}"),
    ] = None,
    open: Annotated[
        bool | None, Query(description="true: only open gaps; false: only closed gaps")
    ] = None,
) -> list[GapOut]:
    """Data gaps matching every given filter, with cause, times, duration and samples missed.

    The time filters select gaps overlapping [since, until) as the inventory defines it.
    """
    lo, hi = _utc("since", since), _utc("until", until)
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
