"""Sites: the roll-up of assets per site."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from gateway.api.cache import ViewCache, join_json
from gateway.api.deps import CtxDep, SiteId, ViewsDep
from gateway.api.schemas import AssetOut, ErrorOut, SiteDetailOut, SiteOut
from inventory.views import SiteView

router = APIRouter(prefix="/sites", tags=["sites"])


def site_json(views: ViewCache, view: SiteView) -> bytes:
    """The JSON of one `SiteOut`, re-encoded only when the inventory's view changed."""
    return views.fragment(
        ("site", view.id), view, lambda: SiteOut.from_view(view).model_dump_json().encode()
    )


@router.get("", summary="List sites", response_model=list[SiteOut])
async def list_sites(ctx: CtxDep, views: ViewsDep) -> Response:
    """All configured sites with their state, assets by state, open gaps and last seen time.

    Always current: the inventory keeps the roll-ups as counters, and the encoded answer is
    kept only while nothing in it changed (see `gateway.api.cache`).
    """
    now = ctx.now()
    inventory = ctx.inventory
    body = views.versioned(
        "sites",
        inventory.summary_version(now),
        lambda: join_json(site_json(views, v) for v in inventory.sites(now)),
    )
    return Response(body, media_type="application/json")


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
    assets = [
        AssetOut.from_view(a) for a in ctx.inventory.assets(now, site=site, with_points=False)
    ]
    base = SiteOut.from_view(view)
    return SiteDetailOut(**base.model_dump(), assets=assets)
