"""The InfluxDB sink: the v2 write API through influxdb-client's async client (DESIGN.md §5).

It writes pre-built line protocol (DESIGN §8: 180-310k rows/s, against 30-48k with ``Point``
objects) with ns precision. influxdb-client's async write API neither batches nor retries, and
this class adds neither: the forwarder owns retries and the store owns durability (M1; the
client's own retry would drop a batch after ``max_retry_time``). InfluxDB 2.x, 3.x, 1.8+ (with
``org`` ignored and ``token`` = ``user:password``) and VictoriaMetrics accept the same request.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit, urlunsplit

from gateway.sinks.base import ErrorKind, SinkError, classify_status

if TYPE_CHECKING:
    # influxdb-client (with aiohttp, reactivex, urllib3, ≈ 30 MB resident) is imported when a
    # sink first writes, so a gateway without an InfluxDB sink never loads it.
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.client.write_api_async import WriteApiAsync
    from influxdb_client.rest import ApiException

_MAX_REASON = 500
"""Characters of a server's error message kept [count]."""
_MAX_RETRY_AFTER = 3600.0
"""A ``Retry-After`` above this is clamped [s]."""


def parse_retry_after(header: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Args:
        header: The header value, or None.
        now: Current time for an HTTP date (aware UTC; default now).

    Returns:
        Seconds in [0, 3600], or None when absent or unparseable.
    """
    if header is None:
        return None
    text = header.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def redact_url(url: str) -> str:
    """The URL without user info (``user:password@``), for logs and status pages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class InfluxSink:
    """Writes line protocol to one InfluxDB bucket.

    Args:
        name: Sink name (slug), for metrics and logs.
        url: Server base URL, e.g. ``http://influxdb:8086``.
        org: Organization (ignored by InfluxDB 1.8 and VictoriaMetrics).
        bucket: Bucket (``database/retention`` for 1.8).
        token: API token, or None to send no Authorization header. Never logged.
        timeout: Whole-request timeout [s] (connect, send, response).
        verify_ssl: Verify the server certificate for https.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        org: str,
        bucket: str,
        token: str | None,
        timeout: float,
        verify_ssl: bool = True,
    ) -> None:
        self._name = name
        self._url = url
        self._org = org
        self._bucket = bucket
        self._token = token
        self._timeout = timeout
        self._verify_ssl = verify_ssl
        self._client: InfluxDBClientAsync | None = None
        self._api: WriteApiAsync | None = None

    @property
    def name(self) -> str:
        """The sink's name."""
        return self._name

    @property
    def target(self) -> str:
        """``<url without credentials> bucket=<bucket>``."""
        return f"{redact_url(self._url)} bucket={self._bucket}"

    def _write_api(self) -> WriteApiAsync:
        if self._api is None:
            # Created lazily: the async client needs a running event loop.
            from influxdb_client.client.influxdb_client_async import (  # lazy, see the imports
                InfluxDBClientAsync,
            )

            self._client = InfluxDBClientAsync(
                url=self._url,
                token=self._token or "",  # empty: no Authorization header
                org=self._org,
                timeout=int(self._timeout * 1000),
                enable_gzip=False,
                verify_ssl=self._verify_ssl,
            )
            self._api = self._client.write_api()
        return self._api

    async def write(self, body: bytes) -> str:
        """POST one body to ``/api/v2/write`` (precision ns).

        Args:
            body: Newline-separated UTF-8 line protocol.

        Returns:
            ``"204"`` (or ``"2xx"`` for another 2xx status).

        Raises:
            SinkError: Non-2xx status, timeout or connection error (see `classify_status`).
        """
        if self._api is None:
            # The first write imports influxdb-client (≈ 0.2-0.5 s of CPU) off the event loop.
            await asyncio.to_thread(_import_client)
        api = self._write_api()
        # Loaded by `_import_client`; from here on these are sys.modules look-ups.
        import aiohttp
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            ok = await api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=cast(WritePrecision, WritePrecision.NS),
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 0:  # the client could not even build the request
                raise SinkError(ErrorKind.RETRY, "client_error", _reason(exc)) from None
            reason = f"HTTP {status}: {_reason(exc)}"
            raise SinkError(
                classify_status(status),
                str(status),
                reason,
                status=status,
                retry_after=parse_retry_after(getattr(exc, "retry_after", None)),
            ) from None
        except TimeoutError:
            msg = f"timeout after {self._timeout:g} s"
            raise SinkError(ErrorKind.RETRY, "timeout", msg) from None
        except (aiohttp.ClientError, OSError) as exc:
            msg = f"connection error: {type(exc).__name__}: {exc}"[:_MAX_REASON]
            raise SinkError(ErrorKind.RETRY, "connection_error", msg) from None
        return "204" if ok else "2xx"

    async def close(self) -> None:
        """Close the HTTP session; idempotent."""
        client, self._client, self._api = self._client, None, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0)  # let aiohttp finish closing its connector


def _import_client() -> None:
    """Import influxdb-client's async write API (and with it aiohttp)."""
    import aiohttp  # noqa: F401
    import influxdb_client.client.influxdb_client_async
    import influxdb_client.client.write_api_async
    import influxdb_client.domain.write_precision
    import influxdb_client.rest  # noqa: F401


def _reason(exc: ApiException) -> str:
    message = getattr(exc, "message", None) or exc.reason or ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split())[:_MAX_REASON]
