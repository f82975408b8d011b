"""Sites: the roll-up of assets per site."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from gateway.api.deps import CtxDep, SiteId
from gateway.api.schemas import AssetOut, ErrorOut, SiteDetailOut, SiteOut

router = APIRouter(prefix="/sites", tags=["sites"])


@router.get("", summary="List sites")
async def list_sites(ctx: CtxDep) -> list[SiteOut]:
    """All configured sites with their state, assets by state, open gaps and last seen time."""
    now = ctx.now()
    return [SiteOut.from_view(v) for v in ctx.inventory.sites(now)]


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
