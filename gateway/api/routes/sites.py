"""Sites: the roll-up of assets per site."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import TypeAdapter

from gateway.api.deps import CtxDep, SiteId, ViewsDep
from gateway.api.schemas import AssetOut, ErrorOut, SiteDetailOut, SiteOut

router = APIRouter(prefix="/sites", tags=["sites"])

_LIST = TypeAdapter(list[SiteOut])


@router.get("", summary="List sites", response_model=list[SiteOut])
async def list_sites(ctx: CtxDep, views: ViewsDep) -> Response:
    """All configured sites with their state, assets by state, open gaps and last seen time.

    With a very large inventory the answer may be a snapshot up to a few seconds old (see
    `gateway.api.cache`).
    """
    every = views.get(
        "sites", lambda: [SiteOut.from_view(v) for v in ctx.inventory.sites(ctx.now())]
    )
    return Response(
        views.derive("sites", every, lambda: _LIST.dump_json(every)), media_type="application/json"
    )


@router.get(
    "/{site}",
    summary="Get a site with its assets",
    responses={404: {"model": ErrorOut, "description": "Unknown site"}},
)
async def get_site(ctx: CtxDep, site: SiteId) -> SiteDetailOut:
    """One site and summaries of its assets (without points)."""
    now = ctx.now()
    view = ctx.inventory.site(site, now)
    if view is None:
        raise HTTPException(status_code=404, detail=f"unknown site '{site}'")
    assets = [AssetOut.from_view(a) for a in ctx.inventory.assets(now, site=site)]
    base = SiteOut.from_view(view)
    return SiteDetailOut(**base.model_dump(), assets=assets)
