"""STUB (RELIABILITY.md §7): a small InfluxDB v2 write endpoint that fails on demand.

Only for the failures a real server will not produce on demand (503 + Retry-After, 429, 413,
400/422 with one poisoned point, 401, hang); the normal write path is tested against the real
victoria-metrics (tests/vm_helpers.py). It runs in the test's event loop on a loopback port.

Behaviour per request, first match wins:
1. ``hang_next > 0``: never answer (until `stop`), decrement;
2. ``script`` non-empty: pop ``(status, headers, message)`` and answer it (nothing accepted);
3. ``max_lines`` / ``max_bytes`` exceeded: 413;
4. a line contains ``poison``: ``poison_status`` with a message quoting the line; with
   ``partial`` the other lines are accepted (InfluxDB's partial write), else none;
5. ``default_status`` (204 = accept every line).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Request:
    start: float
    end: float
    status: int
    lines: int
    auth: str | None


@dataclass
class InfluxStub:
    port: int = 0
    default_status: int = 204
    script: deque[tuple[int, dict[str, str], str]] = field(default_factory=deque)
    hang_next: int = 0
    max_lines: int | None = None
    max_bytes: int | None = None
    poison: str | None = None
    poison_status: int = 400
    partial: bool = False
    delay: float = 0.0
    accepted: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> InfluxStub:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/v2/write", self._write)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._release = asyncio.Event()
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def codes(self) -> list[int]:
        return [r.status for r in self.requests]

    async def _write(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        body = await request.read()
        lines = [ln for ln in body.decode("utf-8").split("\n") if ln]
        auth = request.headers.get("Authorization")

        def answer(status: int, message: str = "", headers: dict[str, str] | None = None,
                   accept: list[str] | None = None) -> web.Response:
            self.accepted.extend(accept or [])
            self.requests.append(Request(start, time.monotonic(), status, len(lines), auth))
            if status == 204:
                return web.Response(status=204)
            payload = json.dumps({"code": "invalid", "message": message})
            return web.Response(status=status, text=payload, headers=headers,
                                content_type="application/json")

        if self.hang_next > 0:
            self.hang_next -= 1
            await self._release.wait()
            return answer(503, "released at stop")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            status, headers, message = self.script.popleft()
            return answer(status, message, headers)
        if (self.max_lines is not None and len(lines) > self.max_lines) or (
            self.max_bytes is not None and len(body) > self.max_bytes
        ):
            return answer(413, f"request too large: {len(lines)} lines, {len(body)} bytes")
        if self.poison is not None:
            bad = [ln for ln in lines if self.poison in ln]
            if bad:
                good = [ln for ln in lines if self.poison not in ln] if self.partial else []
                msg = f"unable to parse '{bad[0]}': invalid field format"
                if self.partial:
                    msg = f"partial write: {msg} dropped={len(bad)}"
                return answer(self.poison_status, msg, accept=good)
        if self.default_status == 204:
            return answer(204, accept=lines)
        return answer(self.default_status, f"stub says {self.default_status}")
