"""Readings history for data teams: raw or time-bucketed, as JSON, CSV or Parquet (streamed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime

from gateway.api.deps import TIME_DOC, CtxDep, query_error, utc_query_time
from gateway.api.schemas import BucketRowOut, ErrorOut, ReadingRowOut
from gateway.readings_query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    PATTERNS_SCHEMA_RE,
    Agg,
    Format,
    QualityFilter,
    ReadingsQuery,
    ReadingsReader,
    RowLimitExceededError,
    encoder_for,
    parse_patterns,
    stream_readings,
)

router = APIRouter(prefix="/readings", tags=["readings"])

DEFAULT_SPAN = timedelta(hours=1)
"""Without `start`, the query covers this span before `end`."""
MAX_EVERY_S = 31_622_400
"""Widest bucket: 366 days [s]."""
GLOBS_MAX_CHARS = 4096

_GLOB_DOC = (
    "Comma-separated fnmatch globs over point keys `site/asset/point` (`*` matches across `/`; "
    "also `?`, `[seq]`, `[!seq]`), e.g. `north/*/supply_temp,south/meter-main/*`"
)


@router.get(
    "",
    summary="Query and export readings",
    response_model=list[ReadingRowOut] | list[BucketRowOut],
    responses={
        200: {
            "description": "The rows (JSON array, CSV with a header row, or a Parquet file); "
            "streamed",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        },
        400: {"model": ErrorOut, "description": "The result exceeds the row limit"},
        503: {"model": ErrorOut, "description": "The store is not open"},
    },
)
async def query_readings(
    ctx: CtxDep,
    points: Annotated[
        str,
        Query(
            min_length=1,
            max_length=GLOBS_MAX_CHARS,
            description=_GLOB_DOC,
            json_schema_extra={"pattern": PATTERNS_SCHEMA_RE},
        ),
    ] = "*",
    start: Annotated[
        AwareDatetime | None,
        Query(description=f"Inclusive start of source time; default `end` − 1 h; {TIME_DOC}"),
    ] = None,
    end: Annotated[
        AwareDatetime | None,
        Query(description=f"Exclusive end of source time; default now; {TIME_DOC}"),
    ] = None,
    every: Annotated[
        float | None,
        Query(
            ge=0.001,
            le=MAX_EVERY_S,
            allow_inf_nan=False,
            description="Bucket width [s, 0.001..31622400]; buckets are aligned to the Unix "
            "epoch. Without it, raw readings",
        ),
    ] = None,
    agg: Annotated[
        Agg | None,
        Query(description="Aggregate per bucket (needs `every`; default `mean`)"),
    ] = None,
    quality: Annotated[
        QualityFilter,
        Query(
            description="`good`: Good and Uncertain readings only (aggregates ignore Bad ones); "
            "`all`: Bad readings too (value null, counted by `count`)"
        ),
    ] = "good",
    format: Annotated[Format, Query(description="Response format")] = "json",
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_LIMIT,
            description=f"Row limit [count, 1..{MAX_LIMIT}]; a larger result is a 400",
        ),
    ] = DEFAULT_LIMIT,
) -> StreamingResponse:
    """Readings of the points matching `points` with source time in [`start`, `end`).

    Raw rows are ordered by source time; buckets by bucket start, then point key. Columns are
    the same in every format (`ReadingRowOut`, `BucketRowOut`): numbers in `value`, booleans
    in `state`, strings in `text`. The result reflects the readings stored when the request
    arrived; it streams, and is checked against `limit` before the first byte is sent.
    """
    try:
        patterns = parse_patterns(points)
    except ValueError as exc:
        raise query_error("points", str(exc), points) from None
    if agg is not None and every is None:
        raise query_error("agg", "`agg` needs `every` (the bucket width in seconds)", agg)
    hi = utc_query_time("end", end) or ctx.now()
    lo = utc_query_time("start", start)
    if lo is None:
        try:
            lo = hi - DEFAULT_SPAN
        except OverflowError:
            lo = datetime.min.replace(tzinfo=UTC)
    if lo >= hi:
        raise query_error("start", "`start` must be before `end`", lo.isoformat())
    store = ctx.store
    if store is None:
        raise HTTPException(status_code=503, detail="the store is not open")
    query = ReadingsQuery(
        patterns=patterns,
        start=lo,
        end=hi,
        every=every,
        agg=agg or "mean",
        quality=quality,
        limit=limit,
    )
    reader = ReadingsReader(store, query)
    try:
        await reader.prepare()
    except RowLimitExceededError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    encoder = encoder_for(format, query.bucketed)
    headers = {"Cache-Control": "no-store"}
    if format != "json":
        headers["Content-Disposition"] = f'attachment; filename="readings.{encoder.extension}"'
    return StreamingResponse(
        stream_readings(reader, encoder), media_type=encoder.media_type, headers=headers
    )
