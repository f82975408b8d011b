"""Devices: link state and polling statistics."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.deps import CtxDep
from gateway.api.schemas import DeviceOut

router = APIRouter(prefix="/devices", tags=["devices"])


@router.get("", summary="List devices")
async def list_devices(ctx: CtxDep) -> list[DeviceOut]:
    """Every configured device: link state, since, last seen/good, errors and poll statistics."""
    return [DeviceOut.from_view(d) for d in ctx.inventory.devices(ctx.now())]
