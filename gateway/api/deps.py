"""Shared dependencies and parameter types of the routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, cast

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError

from gateway.api.cache import ViewCache
from gateway.api.context import ApiContext

SLUG = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""Ids of sites, assets, points and devices: lower-case slug, 1..63 characters."""


async def get_ctx(request: Request) -> ApiContext:
    """The `ApiContext` the app was created with (``app.state.ctx``)."""
    return cast("ApiContext", request.app.state.ctx)


CtxDep = Annotated[ApiContext, Depends(get_ctx)]


async def get_views(request: Request) -> ViewCache:
    """The app's `ViewCache` (``app.state.views``)."""
    return cast("ViewCache", request.app.state.views)


ViewsDep = Annotated[ViewCache, Depends(get_views)]

SiteId = Annotated[
    str, Path(pattern=SLUG, description="Site id (slug `[a-z0-9][a-z0-9_.-]{0,62}`)")
]
AssetId = Annotated[str, Path(pattern=SLUG, description="Asset id within its site (slug)")]
PointId = Annotated[str, Path(pattern=SLUG, description="Point id within its asset (slug)")]

TIME_DOC = (
    "RFC 3339 time with an offset, e.g. `2026-01-02T03:04:05Z`; a time without an offset is "
    "rejected with 422"
)


def query_error(name: str, msg: str, value: object) -> RequestValidationError:
    """A 422 for query parameter `name`, shaped like FastAPI's own validation errors."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": msg, "input": str(value)[:200]}]
    )


def utc_query_time(name: str, value: datetime | None) -> datetime | None:
    """Normalise an aware query time to UTC; a value out of range in UTC is a 422."""
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
