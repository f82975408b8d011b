"""Devices: link state and polling statistics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import TypeAdapter

from gateway.api.deps import CtxDep, ViewsDep
from gateway.api.schemas import DeviceOut

router = APIRouter(prefix="/devices", tags=["devices"])

_LIST = TypeAdapter(list[DeviceOut])


@router.get("", summary="List devices", response_model=list[DeviceOut])
async def list_devices(ctx: CtxDep, views: ViewsDep) -> Response:
    """Every configured device: link state, since, last seen/good, errors and poll statistics."""
    every = views.get(
        "devices", lambda: [DeviceOut.from_view(d) for d in ctx.inventory.devices(ctx.now())]
    )
    return Response(
        views.derive("devices", every, lambda: _LIST.dump_json(every)),
        media_type="application/json",
    )
