"""The audit log of write attempts, read-only, for ``admin`` tokens: ``GET /api/v1/audit``.

Only GET routes exist here, so PUT, PATCH, POST and DELETE on them answer 405; the log itself
is append-only (`gateway.audit`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import require
from gateway.api.schemas import ErrorOut, PointValue
from gateway.audit import AuditEntry, AuditLog

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/audit",
    tags=["audit"],
    dependencies=[Depends(require("admin"))],
    responses={
        401: {"model": ErrorOut, "description": "Missing or invalid token"},
        403: {"model": ErrorOut, "description": "The token's role is not admin"},
        429: {"model": ErrorOut, "description": "Too many failed authentications"},
        503: {"model": ErrorOut, "description": "No audit log (the store is not open)"},
    },
)

AuditResultName = Literal[
    "written", "dry_run", "denied", "rate_limited", "refused", "invalid", "failed", "unknown"
]
JsonScalar = bool | int | float | str | None


class AuditEntryOut(BaseModel):
    """One write attempt as recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(description="Entry id, increasing in the order of the attempts")
    at: str = Field(description="RFC 3339 UTC time of the attempt")
    request_id: str = Field(description="Id of the HTTP request (its `X-Request-ID`)")
    principal: str | None = Field(description="Token name; null when not authenticated")
    role: str | None = Field(description="Role of the token")
    client: str | None = Field(description="Client address")
    site: str | None
    asset: str | None
    point: str | None
    old_value: PointValue = Field(description="Last reading before the attempt (engineering)")
    old_quality: int | None = Field(description="Its quality (OPC UA StatusCode)")
    requested: JsonScalar = Field(description="Requested value (malformed bodies as text)")
    raw: JsonScalar = Field(description="Raw value after the inverse of scale/offset")
    encoded: str | None = Field(description="Protocol request, e.g. `FC6 unit_id=1 holding 3`")
    registers: list[int] | None = Field(description="Modbus words sent (or that a dry run shows)")
    dry_run: bool
    result: AuditResultName = Field(description="What became of the attempt")
    status: int = Field(description="HTTP status answered")
    code: str | None = Field(description="Protocol or refusal code, e.g. `exception_02`")
    message: str | None = Field(description="Detail of a refusal or failure")
    confirmed_value: PointValue = Field(description="Value read back after the write")
    confirmed_quality: int | None = Field(description="Its quality")
    prev_hash: str = Field(description="Hash of the previous entry (hash chain)")
    hash: str = Field(description="SHA-256 over prev_hash and this entry's content")

    @classmethod
    def from_entry(cls, entry: AuditEntry) -> AuditEntryOut:
        """The API shape of a stored entry."""
        r = entry.record
        return cls(
            id=entry.id,
            at=r.at,
            request_id=r.request_id,
            principal=r.principal,
            role=r.role,
            client=r.client,
            site=r.site,
            asset=r.asset,
            point=r.point,
            old_value=r.old_value,
            old_quality=r.old_quality,
            requested=r.requested,
            raw=r.raw,
            encoded=r.encoded,
            registers=r.registers,
            dry_run=r.dry_run,
            result=r.result,
            status=r.status,
            code=r.code,
            message=r.message,
            confirmed_value=r.confirmed_value,
            confirmed_quality=r.confirmed_quality,
            prev_hash=entry.prev_hash,
            hash=entry.hash,
        )


class AuditPageOut(BaseModel):
    """A page of the audit log, newest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entries: list[AuditEntryOut]
    total: int = Field(description="Entries in the whole log")
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page"
    )


class AuditVerifyOut(BaseModel):
    """Result of checking the audit log's hash chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool = Field(description="Every entry matches its hash and links to the previous one")
    entries: int = Field(description="Entries checked")
    first_bad_id: int | None = Field(description="First entry that does not verify")


def _log(request: Request) -> AuditLog:
    provider: Callable[[], AuditLog | None] = request.app.state.audit_log
    audit = provider()
    if audit is None:
        raise HTTPException(status_code=503, detail="no audit log: the store is not open")
    return audit


@router.get("", summary="Read the audit log")
async def list_audit(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000, description="Entries per page [1..1000]")] = 100,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="Only entries with a smaller id (paging cursor)"),
    ] = None,
    result: Annotated[AuditResultName | None, Query(description="Only this result")] = None,
) -> AuditPageOut:
    """Write attempts, newest first.

    Each entry: who, from where, which point, old/requested/raw/encoded value, read-back and
    result. Admin only; the log cannot be changed through the API.
    """
    audit = _log(request)
    try:
        entries, total = await audit.page(limit=limit, before=before, result=result)
    except sqlite3.Error as exc:
        logger.error("api: audit log unreadable: %s", type(exc).__name__)
        raise HTTPException(status_code=503, detail="the audit log cannot be read") from None
    next_before = entries[-1].id if len(entries) == limit and entries[-1].id > 1 else None
    return AuditPageOut(
        entries=[AuditEntryOut.from_entry(e) for e in entries],
        total=total,
        next_before=next_before,
    )


@router.get("/verify", summary="Verify the audit log's hash chain")
async def verify_audit(request: Request) -> AuditVerifyOut:
    """Walk the whole log and check every entry's hash and link (cost grows with the log)."""
    audit = _log(request)
    try:
        check = await audit.verify()
    except sqlite3.Error as exc:
        logger.error("api: audit log unreadable: %s", type(exc).__name__)
        raise HTTPException(status_code=503, detail="the audit log cannot be read") from None
    return AuditVerifyOut(ok=check.ok, entries=check.entries, first_bad_id=check.first_bad_id)
