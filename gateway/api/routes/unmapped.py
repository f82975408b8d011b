"""Unmapped sources: data that arrives but matches no configured point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from gateway.api.deps import CtxDep
from gateway.api.schemas import jsonable

router = APIRouter(prefix="/unmapped", tags=["unmapped"])


@router.get("", summary="List unmapped sources")
async def list_unmapped(ctx: CtxDep) -> list[dict[str, Any]]:
    """Sources seen without a configured point (e.g. MQTT topics), newest first.

    Each item names its `device`; the other fields are the connector's (e.g. `topic`,
    `messages`, `first_seen`, `last_seen`, `sample`, `reason`). Empty when no connector reports
    any.
    """
    listing: Callable[[], list[dict[str, object]]] | None = getattr(ctx, "unmapped", None)
    if listing is None:
        return []
    return [jsonable(item) for item in listing()]
