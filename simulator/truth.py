"""Files the simulator writes: ground truth (JSON Lines), stats and ready files (atomic JSON)."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulator.config import (
    ClockSkewFault,
    ExceptionFault,
    Fault,
    LatencyFault,
    OfflineFault,
    StatusFault,
)


def utc_now() -> datetime:
    """Current wall-clock time, aware UTC."""
    return datetime.now(UTC)


def rfc3339(ts: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds and ``Z``.

    Args:
        ts: aware datetime.

    Returns:
        e.g. ``2026-01-02T03:04:05.000006Z``.
    """
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fault_record(device: str, fault: Fault, start: datetime, end: datetime) -> dict[str, Any]:
    """Build one ground-truth line for a fault occurrence.

    Args:
        device: device id.
        fault: the fault configuration.
        start: wall-clock instant the fault was applied (aware UTC).
        end: wall-clock instant it was removed, or the shutdown time (aware UTC).

    Returns:
        The JSON object: device, kind, start, end, mode, code, table, from, to, delay; for
        OPC UA ``status`` and ``clock_skew`` faults also status, offset, source_time and
        variables (None = every variable).
    """
    exc = fault if isinstance(fault, ExceptionFault) else None
    record: dict[str, Any] = {
        "device": device,
        "kind": fault.kind,
        "start": rfc3339(start),
        "end": rfc3339(end),
        "mode": fault.mode if isinstance(fault, OfflineFault) else None,
        "code": exc.code if exc else None,
        "table": exc.table if exc else None,
        "from": exc.from_ if exc else None,
        "to": exc.to if exc else None,
        "delay": fault.delay if isinstance(fault, LatencyFault) else None,
    }
    if isinstance(fault, StatusFault):
        record.update(status=fault.status, variables=fault.variables, null_value=fault.null_value)
    elif isinstance(fault, ClockSkewFault):
        record.update(
            offset=fault.offset, source_time=fault.source_time, variables=fault.variables
        )
    return record


class TruthWriter:
    """Appends ground-truth records to a JSON Lines file, flushed (and fsynced) per line.

    Args:
        path: the file; None disables writing.
    """

    def __init__(self, path: str | Path | None) -> None:
        self._path = Path(path) if path is not None else None
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.touch()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record.

        Args:
            record: a JSON-serialisable object.
        """
        if self._path is None:
            return
        with self._path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_json(path: str | Path, data: Any) -> None:  # noqa: ANN401 - any JSON value
    """Write JSON to ``path`` atomically (temporary file in the same directory, then rename).

    Args:
        path: destination file.
        data: JSON-serialisable value.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
