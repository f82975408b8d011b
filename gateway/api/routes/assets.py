"""Assets: roll-up of points per asset, and each asset's points."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from gateway.api.cache import ViewCache, join_json
from gateway.api.deps import SLUG, AssetId, CtxDep, SiteId, ViewsDep
from gateway.api.schemas import AssetDetailOut, AssetOut, ErrorOut
from inventory.views import AssetView, State

router = APIRouter(prefix="/assets", tags=["assets"])


def asset_json(views: ViewCache, view: AssetView) -> bytes:
    """The JSON of one `AssetOut`, re-encoded only when the inventory's view changed."""
    return views.fragment(
        ("asset", view.site, view.id),
        view,
        lambda: AssetOut.from_view(view).model_dump_json().encode(),
    )


@router.get("", summary="List assets", response_model=list[AssetOut])
async def list_assets(
    ctx: CtxDep,
    views: ViewsDep,
    site: Annotated[
        str | None, Query(pattern=SLUG, description="Only assets of this site (slug)")
    ] = None,
    state: Annotated[State | None, Query(description="Only assets in this state")] = None,
) -> Response:
    """Asset summaries, optionally filtered; an unknown site gives an empty list.

    Always current: the inventory keeps the roll-ups as counters, and the encoded answer is
    kept only while nothing in it changed (see `gateway.api.cache`).
    """
    now = ctx.now()
    inventory = ctx.inventory
    body = views.versioned(
        f"assets?site={site}&state={state}",
        inventory.summary_version(now),
        lambda: join_json(
            asset_json(views, a)
            for a in inventory.assets(now, site=site, state=state, with_points=False)
        ),
    )
    return Response(body, media_type="application/json")


@router.get(
    "/{site}/{asset}",
    summary="Get an asset with its points",
    responses={404: {"model": ErrorOut, "description": "Unknown site or asset"}},
)
async def get_asset(ctx: CtxDep, site: SiteId, asset: AssetId) -> AssetDetailOut:
    """One asset with every point's last value, quality, times, state, source and open gap."""
    now = ctx.now()
    view = ctx.inventory.asset(site, asset, now)
    if view is None:
        if ctx.inventory.site(site, now) is None:
            raise HTTPException(status_code=404, detail=f"unknown site '{site}'")
        raise HTTPException(status_code=404, detail=f"unknown asset '{site}/{asset}'")
    return AssetDetailOut.from_detail(view, now)
