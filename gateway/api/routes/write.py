"""Guarded write-back of one point: ``POST /api/v1/assets/{site}/{asset}/points/{point}/write``.

The route authenticates (an ``operator`` or ``admin`` token, RFC 6750 bearer) and hands the
attempt to `gateway.writeback.WriteService`, which checks, writes, reads back and audits. Every
attempt that reaches the route is audited, including the 401/403 refusals (and the first 429 of
a client per minute). The request body is read by the service after authentication, so an
unauthenticated client never gets a body error; its size is capped by the app's body limit
(413). Every answer carries ``X-Request-ID``, the id in the audit record.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import AuthDenied, AuthenticatorDep, BearerDep, client_address
from gateway.api.deps import AssetId, PointId, SiteId
from gateway.api.schemas import ErrorOut, PointValue
from gateway.writeback import WRITE_IN_SCHEMA, Caller, WriteService

router = APIRouter(prefix="/assets", tags=["write"])

RawValue = bool | int | float | str


class ReadBackOut(BaseModel):
    """A value read back from the device (engineering units)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: PointValue = Field(description="Value read back; null when the read failed (Bad)")
    quality: int = Field(description="OPC UA StatusCode of the read-back")
    quality_name: str = Field(description="Name of the StatusCode")


class WriteOut(BaseModel):
    """A write (or dry run) that was carried out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(description="Request id (also `X-Request-ID`, and in the audit log)")
    site: str
    asset: str
    point: str
    dry_run: bool = Field(description="True: validated and encoded only, nothing was sent")
    outcome: Literal["written", "dry_run"]
    requested_value: RawValue = Field(description="The requested value, engineering units")
    unit: str | None = Field(description="Unit of the point (UCUM-style code)")
    raw_value: RawValue = Field(description="Raw value after the inverse of scale/offset")
    encoded: str = Field(
        description="The protocol request, e.g. `FC6 unit_id=1 holding 3 = 0x00D7` or "
        "`Write ns=2;s=Setpoint Double 21.5`"
    )
    registers: list[int] | None = Field(
        description="Modbus: the words (or coil bit; FC 22: AND and OR masks) sent; else null"
    )
    confirmed_value: PointValue = Field(
        description="The point read back after the write (engineering units); null for a dry "
        "run or a failed read-back"
    )
    quality: int | None = Field(description="Quality (OPC UA StatusCode) of the read-back")
    quality_name: str | None = Field(description="Name of that StatusCode")
    matches_request: bool | None = Field(
        description="The read-back equals the requested value (numbers within 1e-6 relative); "
        "null without a read-back"
    )
    audit_id: int | None = Field(description="Id of the audit record; null if it failed")


class WriteErrorOut(BaseModel):
    """A write attempt that was refused, failed, or whose outcome is unknown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detail: str = Field(description="What happened, e.g. `writes are disabled on this gateway`")
    request_id: str = Field(description="Request id (also `X-Request-ID`, and in the audit log)")
    outcome: Literal["not_sent", "rejected", "unknown"] = Field(
        description="`not_sent`: nothing reached the device; `rejected`: the device answered "
        "an error (nothing applied); `unknown`: no answer, the write may or may not have been "
        "applied and is never resent"
    )
    code: str | None = Field(
        description="Machine code: `invalid_token`, `writes_disabled`, `not_writable`, "
        "`offline`, `exception_02`, `timeout`, ..."
    )
    read_back: ReadBackOut | None = Field(
        default=None, description="After a timeout: the read-back attempted, if any"
    )
    audit_id: int | None = Field(description="Id of the audit record; null if not recorded")


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": WriteErrorOut, "description": "Missing or invalid token"},
    403: {
        "model": WriteErrorOut,
        "description": "Role without write rights, writes disabled, or point not writable",
    },
    404: {"model": WriteErrorOut, "description": "Unknown point"},
    409: {"model": WriteErrorOut, "description": "The point cannot be written (e.g. read-only)"},
    413: {"model": ErrorOut, "description": "Request body too large"},
    429: {"model": WriteErrorOut, "description": "Too many failed authentications"},
    502: {"model": WriteErrorOut, "description": "The device answered an error (code)"},
    503: {"model": WriteErrorOut, "description": "Device offline, busy, or no audit log"},
    504: {"model": WriteErrorOut, "description": "No answer: outcome unknown, not resent"},
}

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The value in engineering units; `dry_run` only validates and encodes",
        "content": {"application/json": {"schema": WRITE_IN_SCHEMA}},
    }
}


@router.post(
    "/{site}/{asset}/points/{point}/write",
    summary="Write a point (guarded write-back)",
    response_model=WriteOut,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
)
async def write_point(
    request: Request,
    site: SiteId,
    asset: AssetId,
    point: PointId,
    auth: AuthenticatorDep,
    _bearer: BearerDep,
) -> JSONResponse:
    """Write a value (engineering units) to a writable point, read it back, audit the attempt.

    Needs an `operator` or `admin` token, `writes.enabled: true` and `writable: true` on the
    point. The value is checked against the point's type and `write_range` and converted with
    the inverse of scale/offset before anything is sent (422 otherwise). The write uses the
    device's own connection, serialized with its polling; a timeout answers 504 with
    `outcome: unknown` and the write is never resent. See docs/security.md.
    """
    service: WriteService = request.app.state.writes
    client = client_address(request)
    request_id = uuid.uuid4().hex
    outcome = auth.check(request, "operator")
    if isinstance(outcome, AuthDenied):
        principal = outcome.principal
        caller = Caller(
            request_id,
            client,
            principal.name if principal else None,
            principal.role if principal else None,
        )
        audit = outcome.reason != "rate_limited" or service.should_audit_rate_limited(client)
        reply = await service.refuse(
            caller,
            site,
            asset,
            point,
            status=outcome.status,
            result="rate_limited" if outcome.reason == "rate_limited" else "denied",
            code=outcome.reason,
            detail=outcome.detail,
            headers=outcome.headers,
            audit=audit,
        )
    else:
        caller = Caller(request_id, client, outcome.name, outcome.role)
        reply = await service.handle(caller, site, asset, point, await request.body())
    headers = {**reply.headers, "X-Request-ID": request_id, "Cache-Control": "no-store"}
    return JSONResponse(reply.body, status_code=reply.status, headers=headers)
