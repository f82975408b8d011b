"""Shared dependencies and parameter types of the routes."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Request

from gateway.api.context import ApiContext

SLUG = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""Ids of sites, assets, points and devices: lower-case slug, 1..63 characters."""


async def get_ctx(request: Request) -> ApiContext:
    """The `ApiContext` the app was created with (``app.state.ctx``)."""
    return cast("ApiContext", request.app.state.ctx)


CtxDep = Annotated[ApiContext, Depends(get_ctx)]

SiteId = Annotated[
    str, Path(pattern=SLUG, description="Site id (slug `[a-z0-9][a-z0-9_.-]{0,62}`)")
]
AssetId = Annotated[str, Path(pattern=SLUG, description="Asset id within its site (slug)")]
