"""Assets: roll-up of points per asset, and each asset's points."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import TypeAdapter

from gateway.api.deps import SLUG, AssetId, CtxDep, SiteId, ViewsDep
from gateway.api.schemas import AssetDetailOut, AssetOut, ErrorOut
from inventory.views import State

router = APIRouter(prefix="/assets", tags=["assets"])

_LIST = TypeAdapter(list[AssetOut])


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

    With a very large inventory the answer may be a snapshot up to a few seconds old (see
    `gateway.api.cache`).
    """
    every = views.get(
        "assets", lambda: [AssetOut.from_view(a) for a in ctx.inventory.assets(ctx.now())]
    )
    body = views.derive(
        f"assets?site={site}&state={state}",
        every,
        lambda: _LIST.dump_json(
            [
                a
                for a in every
                if (site is None or a.site == site) and (state is None or a.state == state)
            ]
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
