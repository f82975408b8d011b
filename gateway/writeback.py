"""Guarded write-back: from a requested engineering value to a device write, audited.

`WriteService.handle` runs one attempt through these steps, and the first that fails answers
(nothing reaches the device before step 8):

1. (the route) authentication and role, 401/403/429, audited through `WriteService.refuse`;
2. ``writes.enabled`` — else **403** ``writes_disabled``;
3. the point exists — else 404 ``unknown_point``;
4. the point is ``writable`` — else **403** ``not_writable``. (403, not 409: both are policy
   refusals that no retry of the same request can change.)
5. the body is ``{"value": <number|bool|string>, "dry_run": <bool>}`` — else 422;
6. the value's kind fits the point (a bool for bool points, text for string points, a finite
   number for numeric points), it lies in ``effective_write_range`` (engineering units,
   inclusive), the inverse of scale/offset ``raw = (value - offset) / scale`` is finite and, for
   integer types, a whole number (within 1e-9 relative: ``21.53`` with scale 0.1 is refused, the
   answer names the nearest writable values) — else 422; bools and text are never scaled;
7. the audit log can be written — else 503 (fail closed: an attempt that cannot be recorded is
   not made);
8. the device's connector encodes the raw value (a value that does not fit the type is 422;
   ``dry_run`` stops here and answers the encoded request), then writes it on the device's own
   connection, serialized with its polling and with other writes to the same device, and reads
   the point back.

Errors after step 8 started (`connectors.base.WriteError`):

========================  ======  =============  ============================================
Connector says            HTTP    ``outcome``    meaning
========================  ======  =============  ============================================
``offline``               503     ``not_sent``   no link; nothing was sent
``unsupported``           409     ``not_sent``   the point cannot be written (read-only table)
``encode``                422     ``not_sent``   the raw value does not fit the point's type
``device``                502     ``rejected``   the device answered an error (``code``:
                                                 ``exception_02``... or an OPC UA status name)
``timeout``               504     ``unknown``    no answer: it may or may not have been applied;
                                                 **never resent**; ``read_back`` holds the
                                                 read-back the connector attempted, if any
(the whole write exceeds  504     ``unknown``    same, code ``gateway_timeout``
``writes.timeout``)
========================  ======  =============  ============================================

Every attempt — accepted, refused, failed, dry run — appends one `gateway.audit.AuditRecord`.
The record is committed after the outcome is known and before the HTTP answer is sent; the
answer carries its ``audit_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError

from connectors.base import WriteError, WriteResult
from connectors.modbus.config import DataType
from gateway.audit import AuditEntry, AuditLog, AuditRecord, AuditResult
from gateway.clock import to_rfc3339, utc_now
from gateway.config import AnyPoint, GatewayConfig
from gateway.model import Sample, Value
from gateway.quality import is_bad, quality_name

log = logging.getLogger("ot_gateway.writeback")

INTEGER_TOLERANCE = 1e-9
"""Relative distance from a whole number still treated as that number for integer types."""
_INTEGER_TYPES = frozenset(
    {
        DataType.INT16,
        DataType.UINT16,
        DataType.INT32,
        DataType.UINT32,
        DataType.INT64,
        DataType.UINT64,
    }
)
_FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})
_RATE_AUDIT_WINDOW_S = 60.0
_MAX_RATE_AUDIT_CLIENTS = 10_000

FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]


class WriteIn(BaseModel):
    """The body of a write request.

    Attributes:
        value: The value in engineering units (after scale/offset, as readings show it): a
            number for numeric points, true/false for bool points, text for string points.
        dry_run: Validate and encode only: show the request that would be sent, send nothing.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    value: bool | int | FiniteFloat | str = Field(
        description="Value in engineering units: number, true/false or text"
    )
    dry_run: bool = Field(default=False, description="Validate and encode only; nothing is sent")


WRITE_IN_SCHEMA: dict[str, Any] = WriteIn.model_json_schema()
"""JSON schema of `WriteIn` (the route documents its request body with it)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who attempts a write.

    Attributes:
        request_id: Id of the HTTP request (hex).
        client: Client address (TCP peer).
        principal: Token name, or None when not authenticated.
        role: The principal's role, or None.
    """

    request_id: str
    client: str
    principal: str | None = None
    role: str | None = None


@dataclass(slots=True)
class WriteReply:
    """The answer to one attempt.

    Attributes:
        status: HTTP status.
        body: JSON body (see the route's response models).
        headers: Extra response headers (``WWW-Authenticate``, ``Retry-After``).
        audit: The stored audit entry, or None when it could not be stored (logged).
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    audit: AuditEntry | None = None


@dataclass(slots=True)
class _Attempt:
    """What is known about an attempt so far (becomes the audit record)."""

    caller: Caller
    site: str
    asset: str
    point: str
    at: datetime
    old_value: Value = None
    old_quality: int | None = None
    requested: Any = None
    raw: Any = None
    encoded: str | None = None
    registers: list[int] | None = None
    dry_run: bool = False
    confirmed_value: Value = None
    confirmed_quality: int | None = None


class WriteRefusedError(Exception):
    """An attempt stops here with this HTTP answer (also the audit record's outcome).

    Attributes:
        status: HTTP status.
        result: Audit result.
        code: Short machine code, e.g. ``writes_disabled``, ``exception_02``.
        detail: Human-readable message (no secrets). For a 422 the body is a FastAPI-style
            validation error list built from it.
        outcome: ``not_sent``, ``rejected`` (the device refused) or ``unknown``.
        read_back: After a timeout, the read-back as ``{"value", "quality", "quality_name"}``.
        loc: For a 422, where the error is (``("body", "value")``).
    """

    def __init__(
        self,
        status: int,
        result: AuditResult,
        code: str | None,
        detail: str,
        *,
        outcome: str = "not_sent",
        read_back: dict[str, Any] | None = None,
        loc: tuple[str, ...] = ("body", "value"),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.result: AuditResult = result
        self.code = code
        self.detail = detail
        self.outcome = outcome
        self.read_back = read_back
        self.loc = loc


def _invalid(
    detail: str, code: str = "invalid_value", loc: tuple[str, ...] = ("body", "value")
) -> WriteRefusedError:
    return WriteRefusedError(422, "invalid", code, detail, loc=loc)


def _fmt(value: float) -> str:
    """A number as a human writes it (``21.5``, ``100``)."""
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def engineering_to_raw(
    point: AnyPoint, value: bool | int | float | str
) -> bool | int | float | str:
    """Check a requested engineering value against a point and convert it to the raw value.

    Args:
        point: The point's config (type when it is a Modbus point; ``scale``, ``offset`` and
            ``effective_write_range`` for all).
        value: The requested value in engineering units.

    Returns:
        The raw value for the connector: bools and text unchanged; a number becomes
        ``(value - offset) / scale`` — an int for Modbus integer types, a float for Modbus
        float types, and for other protocols the value itself when scale is 1 and offset 0
        (ints stay ints), else the float.

    Raises:
        WriteRefusedError: 422 for a wrong kind, a non-finite number, a value outside the
            write range, or (integer types) a value that is not a multiple of the resolution;
            409 when the point cannot be inverted (scale 0) or has no write range.
    """
    dtype = getattr(point, "type", None)
    dtype = dtype if isinstance(dtype, DataType) else None
    if isinstance(value, bool):
        if dtype is not None and dtype is not DataType.BOOL:
            raise _invalid(
                f"{dtype.value} point needs a number, got {json.dumps(value)}", "wrong_type"
            )
        return value
    if isinstance(value, str):
        if dtype is not None and dtype is not DataType.STRING:
            raise _invalid(f"{dtype.value} point needs a number, got a string", "wrong_type")
        return value
    if dtype is DataType.BOOL:
        raise _invalid(f"bool point needs true or false, got {value!r}", "wrong_type")
    if dtype is DataType.STRING:
        raise _invalid(f"string point needs text, got {value!r}", "wrong_type")
    if not math.isfinite(value):
        raise _invalid(f"value must be a finite number, got {value!r}", "not_finite")
    bounds = point.effective_write_range
    if bounds is None:
        msg = "the point has no write_range (nor range): nothing can be checked, nothing is sent"
        raise WriteRefusedError(409, "refused", "no_write_range", msg)
    low, high = bounds
    unit = f" {point.unit}" if point.unit else ""
    if not low <= value <= high:
        msg = (
            f"{_fmt(value)}{unit} is outside the point's write range "
            f"[{_fmt(low)}, {_fmt(high)}]{unit}"
        )
        raise _invalid(msg, "out_of_range")
    scale, offset = point.scale, point.offset
    if scale == 0:
        msg = "the point's scale is 0: a raw value cannot be derived; nothing is sent"
        raise WriteRefusedError(409, "refused", "not_invertible", msg)
    identity = scale == 1.0 and offset == 0.0
    raw = value if identity else (value - offset) / scale
    if not math.isfinite(raw):
        raise _invalid(
            f"raw value (value - offset) / scale is not finite for {value!r}", "not_finite"
        )
    if dtype in _FLOAT_TYPES:
        return float(raw)
    if dtype in _INTEGER_TYPES:
        nearest = round(raw)
        if abs(raw - nearest) > INTEGER_TOLERANCE * max(1.0, abs(raw)):
            lo_raw, hi_raw = math.floor(raw), math.ceil(raw)
            below, above = lo_raw * scale + offset, hi_raw * scale + offset
            below, above = min(below, above), max(below, above)
            msg = (
                f"{_fmt(value)}{unit} is not a multiple of the point's resolution "
                f"(scale {_fmt(scale)}, offset {_fmt(offset)}); nearest writable values: "
                f"{below:.10g}{unit} and {above:.10g}{unit}"
            )
            raise _invalid(msg, "resolution")
        return int(nearest)
    return raw


def raw_to_engineering(point: AnyPoint, raw: Value) -> Value:
    """The pipeline's conversion: numbers × scale + offset; bools, text and None unchanged."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return raw
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    return raw * point.scale + point.offset


def _matches(requested: object, confirmed: Value, point: AnyPoint) -> bool | None:
    """Does the read-back equal the request (numbers within float32 precision)? None: no value."""
    if confirmed is None:
        return None
    if isinstance(requested, bool) or isinstance(confirmed, bool):
        return requested is confirmed or requested == confirmed
    if isinstance(requested, int | float) and isinstance(confirmed, int | float):
        tolerance = abs(point.scale) * 1e-6 + 1e-12
        return math.isclose(requested, confirmed, rel_tol=1e-6, abs_tol=tolerance)
    return requested == confirmed


def _sample_json(point: AnyPoint, sample: Sample | None) -> dict[str, Any] | None:
    if sample is None:
        return None
    value = None if is_bad(sample.quality) else raw_to_engineering(point, sample.value)
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return {
        "value": value,
        "quality": int(sample.quality),
        "quality_name": quality_name(sample.quality),
    }


def _refuse_constant(name: str) -> object:
    """``json.loads`` hook: NaN and ±Infinity are not JSON (RFC 8259 §6)."""
    msg = f"{name} is not a JSON number"
    raise ValueError(msg)


class WriteService:
    """Runs guarded write attempts against the gateway's live connectors, audited.

    Args:
        cfg: The gateway config (``writes``, points).
        devices: Device id -> the runtime's run state (``connector``, ``link_up``); a device
            without an entry is offline.
        audit: Returns the audit log, or None when there is no store (then writes are refused
            with 503 and refusals are answered unaudited).
        last_value: ``(site, asset, point) -> (value, quality)`` of the point's last reading,
            for the audit's old value; None when unknown.
        writable: ``(site, asset, point)`` -> config of every point marked ``writable``;
            default: taken from ``cfg``. Only these are held (not every point, issue #8).
        known: Whether ``(site, asset, point)`` is a configured point (a write to it is then
            403 not writable rather than 404); default: the points of ``cfg``.
        now: Aware UTC clock.
        monotonic: Monotonic clock [s] (rate-limited audit bookkeeping).
    """

    def __init__(
        self,
        cfg: GatewayConfig,
        devices: Mapping[str, object],
        audit: Callable[[], AuditLog | None],
        last_value: Callable[[str, str, str], tuple[Value, int | None]],
        *,
        writable: Mapping[tuple[str, str, str], AnyPoint] | None = None,
        known: Callable[[str, str, str], bool] | None = None,
        now: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._devices = devices
        self._audit = audit
        self._last_value = last_value
        self._now = now
        self._monotonic = monotonic
        if writable is None:
            writable = {(s.id, a.id, p.id): p for s, a, p in cfg.iter_points() if p.writable}
        if known is None:
            keys = frozenset((s.id, a.id, p.id) for s, a, p in cfg.iter_points())

            def known(site: str, asset: str, point: str) -> bool:
                return (site, asset, point) in keys

        self._writable: dict[tuple[str, str, str], AnyPoint] = dict(writable)
        self._known: Callable[[str, str, str], bool] = known
        self._device_locks: dict[str, asyncio.Lock] = {}
        self._rate_audited: dict[str, float] = {}

    # -- refusals before the service (authentication) -----------------------------------

    def should_audit_rate_limited(self, client: str) -> bool:
        """True for the first 429 of ``client`` in a 60 s window (later ones are only counted)."""
        now = self._monotonic()
        last = self._rate_audited.get(client)
        if last is not None and now - last < _RATE_AUDIT_WINDOW_S:
            return False
        if len(self._rate_audited) >= _MAX_RATE_AUDIT_CLIENTS:
            self._rate_audited.clear()
        self._rate_audited[client] = now
        return True

    async def refuse(
        self,
        caller: Caller,
        site: str,
        asset: str,
        point: str,
        *,
        status: int,
        result: AuditResult,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        audit: bool = True,
    ) -> WriteReply:
        """Answer an attempt refused by authentication or role, audited unless ``audit`` is off.

        Returns:
            The reply: ``{"detail", "request_id", "outcome": "not_sent", "code", "audit_id"}``.
        """
        attempt = self._attempt(caller, site, asset, point)
        failure = WriteRefusedError(status, result, code, detail)
        entry = await self._record(attempt, failure) if audit else None
        return self._failure_reply(attempt, failure, entry, dict(headers or {}))

    # -- the attempt ---------------------------------------------------------------------

    async def handle(
        self, caller: Caller, site: str, asset: str, point: str, body: bytes
    ) -> WriteReply:
        """Run one authenticated attempt (steps 2-8 of the module docstring); never raises.

        Args:
            caller: Who (already authenticated with a role that may write).
            site: Site id (URL).
            asset: Asset id (URL).
            point: Point id (URL).
            body: The raw request body (JSON `WriteIn`).

        Returns:
            200 with the written (or dry-run) result, or the refusal/failure reply.
        """
        attempt = self._attempt(caller, site, asset, point)
        try:
            result = await self._run(attempt, body)
        except WriteRefusedError as failure:
            entry = await self._record(attempt, failure)
            return self._failure_reply(attempt, failure, entry, {})
        entry = await self._record(attempt, None)
        result["audit_id"] = entry.id if entry is not None else None
        return WriteReply(200, result, {}, entry)

    def _attempt(self, caller: Caller, site: str, asset: str, point: str) -> _Attempt:
        attempt = _Attempt(caller, site, asset, point, self._now())
        if self._known(site, asset, point):
            try:
                value, quality = self._last_value(site, asset, point)
            except Exception:  # the old value is informative only
                log.exception("write: last value of %s/%s/%s unavailable", site, asset, point)
                value, quality = None, None
            attempt.old_value = (
                None if isinstance(value, float) and not math.isfinite(value) else value
            )
            attempt.old_quality = quality
        return attempt

    async def _run(self, attempt: _Attempt, body: bytes) -> dict[str, Any]:
        key = f"{attempt.site}/{attempt.asset}/{attempt.point}"
        if not self.cfg.writes.enabled:
            msg = "writes are disabled on this gateway (writes.enabled: false)"
            raise WriteRefusedError(403, "refused", "writes_disabled", msg)
        point = self._writable.get((attempt.site, attempt.asset, attempt.point))
        if point is None and not self._known(attempt.site, attempt.asset, attempt.point):
            raise WriteRefusedError(404, "refused", "unknown_point", f"unknown point '{key}'")
        if point is None or not point.writable:
            msg = f"point '{key}' is not writable (writable: false in the config)"
            raise WriteRefusedError(403, "refused", "not_writable", msg)
        request = self._parse(attempt, body)
        attempt.requested = request.value
        attempt.dry_run = request.dry_run
        raw = engineering_to_raw(point, request.value)
        attempt.raw = raw
        audit = self._audit()
        try:
            if audit is None:
                raise RuntimeError("no store")
            await audit.ready()
        except Exception as exc:
            log.error("write refused: the audit log cannot be written (%s)", type(exc).__name__)
            msg = "the audit log cannot be written: writes are refused; nothing was sent"
            raise WriteRefusedError(503, "failed", "audit_unavailable", msg) from None
        written = await self._write(attempt, key, point, raw, dry_run=request.dry_run)
        confirmed = written.confirmed
        read = _sample_json(point, confirmed)
        attempt.encoded = written.encoded
        attempt.registers = written.registers
        if read is not None:
            attempt.confirmed_value = read["value"]
            attempt.confirmed_quality = read["quality"]
        return {
            "request_id": attempt.caller.request_id,
            "site": attempt.site,
            "asset": attempt.asset,
            "point": attempt.point,
            "dry_run": request.dry_run,
            "outcome": "dry_run" if request.dry_run else "written",
            "requested_value": request.value,
            "unit": point.unit,
            "raw_value": raw,
            "encoded": written.encoded,
            "registers": written.registers,
            "confirmed_value": read["value"] if read else None,
            "quality": read["quality"] if read else None,
            "quality_name": read["quality_name"] if read else None,
            "matches_request": _matches(request.value, read["value"], point) if read else None,
        }

    @staticmethod
    def _parse(attempt: _Attempt, body: bytes) -> WriteIn:
        try:
            return WriteIn.model_validate_json(body)
        except ValidationError as exc:
            text = body.decode("utf-8", errors="replace")
            try:
                parsed = json.loads(text, parse_constant=_refuse_constant)
            except (ValueError, RecursionError):
                parsed = None
            value = parsed.get("value") if isinstance(parsed, dict) else None
            finite = not isinstance(value, float) or math.isfinite(value)
            scalar = isinstance(value, bool | int | float | str) and finite
            attempt.requested = value if scalar else text
            first = exc.errors(include_url=False)[0]
            loc = ("body", *(str(p) for p in first["loc"]))
            raise _invalid(str(first["msg"]), "invalid_body", loc) from None

    async def _write(
        self, attempt: _Attempt, key: str, point: AnyPoint, raw: object, *, dry_run: bool
    ) -> WriteResult:
        run = self._devices.get(point.device)
        connector = getattr(run, "connector", None)
        write = getattr(connector, "write", None)
        if connector is not None and write is None:
            msg = f"device '{point.device}' ({self.cfg.device(point.device).protocol}) cannot write"
            raise WriteRefusedError(409, "failed", "unsupported", msg)
        if write is None or (not dry_run and not getattr(run, "link_up", False)):
            msg = f"device '{point.device}' is offline; nothing was sent"
            raise WriteRefusedError(503, "failed", "offline", msg)
        timeout = self.cfg.writes.timeout
        lock = self._device_locks.setdefault(point.device, asyncio.Lock())
        try:
            async with asyncio.timeout(timeout):
                await lock.acquire()
        except TimeoutError:
            msg = f"device '{point.device}' is busy with another write; nothing was sent"
            raise WriteRefusedError(503, "failed", "busy", msg) from None
        try:
            async with asyncio.timeout(timeout):
                result: WriteResult = await write(key, raw, dry_run=dry_run)
        except TimeoutError:
            msg = (
                f"no result within writes.timeout ({timeout} s): the outcome is unknown; "
                "the write is not resent"
            )
            raise WriteRefusedError(
                504, "unknown", "gateway_timeout", msg, outcome="unknown"
            ) from None
        except WriteError as exc:
            raise self._mapped(attempt, point, exc) from None
        except Exception:
            log.exception("write %s: unexpected connector error", key)
            msg = "unexpected connector error: the outcome is unknown; the write is not resent"
            raise WriteRefusedError(
                502, "unknown", "connector_error", msg, outcome="unknown"
            ) from None
        finally:
            lock.release()
        return result

    @staticmethod
    def _mapped(attempt: _Attempt, point: AnyPoint, exc: WriteError) -> WriteRefusedError:
        if exc.kind == "encode":
            return _invalid(f"raw value {attempt.raw!r}: {exc.message}", "encode")
        if exc.kind == "offline":
            return WriteRefusedError(503, "failed", "offline", exc.message)
        if exc.kind == "unsupported":
            return WriteRefusedError(409, "failed", exc.code or "unsupported", exc.message)
        if exc.kind == "device":
            return WriteRefusedError(502, "failed", exc.code, exc.message, outcome="rejected")
        read_back = _sample_json(point, getattr(exc, "read_back", None))
        if read_back is not None:
            attempt.confirmed_value = read_back["value"]
            attempt.confirmed_quality = read_back["quality"]
        return WriteRefusedError(
            504,
            "unknown",
            exc.code or "timeout",
            exc.message,
            outcome="unknown",
            read_back=read_back,
        )

    # -- audit and replies ---------------------------------------------------------------

    async def _record(
        self, attempt: _Attempt, failure: WriteRefusedError | None
    ) -> AuditEntry | None:
        audit = self._audit()
        if audit is None:
            return None
        caller = attempt.caller
        result: AuditResult
        if failure is None:
            result, status, code, message = (
                ("dry_run" if attempt.dry_run else "written"),
                200,
                None,
                None,
            )
        else:
            result, status, code, message = (
                failure.result,
                failure.status,
                failure.code,
                failure.detail,
            )
        record = AuditRecord(
            at=to_rfc3339(attempt.at) or "",
            request_id=caller.request_id,
            principal=caller.principal,
            role=caller.role,
            client=caller.client,
            site=attempt.site,
            asset=attempt.asset,
            point=attempt.point,
            old_value=attempt.old_value,
            old_quality=attempt.old_quality,
            requested=attempt.requested,
            raw=attempt.raw,
            encoded=attempt.encoded,
            registers=attempt.registers,
            dry_run=attempt.dry_run,
            result=result,
            status=status,
            code=code,
            message=message,
            confirmed_value=attempt.confirmed_value,
            confirmed_quality=attempt.confirmed_quality,
        )
        try:
            return await audit.append(record)
        except Exception as exc:
            log.error(
                "audit record of write request %s (%s) could not be stored: %s",
                caller.request_id,
                result,
                type(exc).__name__,
            )
            return None

    @staticmethod
    def _failure_reply(
        attempt: _Attempt,
        failure: WriteRefusedError,
        entry: AuditEntry | None,
        headers: dict[str, str],
    ) -> WriteReply:
        audit_id = entry.id if entry is not None else None
        if failure.status == 422:
            requested = attempt.requested
            body: dict[str, Any] = {
                "detail": [
                    {
                        "type": "value_error",
                        "loc": list(failure.loc),
                        "msg": failure.detail,
                        "input": requested
                        if isinstance(requested, bool | int | float)
                        else str(requested)[:200],
                    }
                ],
                "request_id": attempt.caller.request_id,
                "outcome": "not_sent",
                "code": failure.code,
                "audit_id": audit_id,
            }
            return WriteReply(422, body, headers, entry)
        body = {
            "detail": failure.detail,
            "request_id": attempt.caller.request_id,
            "outcome": failure.outcome,
            "code": failure.code,
            "read_back": failure.read_back,
            "audit_id": audit_id,
        }
        return WriteReply(failure.status, body, headers, entry)


async def close_quietly(audit: AuditLog | None) -> None:
    """Close an audit log at shutdown, logging (not raising) a failure."""
    if audit is None:
        return
    with contextlib.suppress(Exception):
        await audit.close()
