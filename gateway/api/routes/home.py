"""The operator page at ``/`` and its static files at ``/static/<name>``.

Everything the page needs is in the package (``gateway/api/static``), read once at import: no
CDN, no build step. The Content-Security-Policy allows scripts, styles and images from the
gateway itself only (no inline code), and API calls to the gateway only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gateway import __version__

router = APIRouter(tags=["page"])

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Content-Security-Policy of the page and its files."""

_MEDIA_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A file served under ``/static``."""

    body: bytes
    media_type: str
    etag: str


def _load() -> tuple[str, dict[str, StaticFile]]:
    """The page template and the static files, read from the package."""
    root = resources.files("gateway.api").joinpath("static")
    index = ""
    files: dict[str, StaticFile] = {}
    for entry in root.iterdir():
        name = entry.name
        if name == "index.html":
            index = entry.read_text(encoding="utf-8")
            continue
        ext = name.rpartition(".")[2]
        if ext not in _MEDIA_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[name] = StaticFile(body, _MEDIA_TYPES[ext], etag)
    return index, files


_INDEX, STATIC_FILES = _load()


@router.get("/", include_in_schema=False)
async def home(request: Request) -> HTMLResponse:
    """The operator page (sites → assets → points, gaps, coverage, devices)."""
    docs = '<a href="docs">API documentation</a> ·' if request.app.docs_url else ""
    page = _INDEX.replace("@VERSION@", __version__).replace("@DOCS@", docs)
    return HTMLResponse(page, headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str, request: Request) -> Response:
    """A file of the page; revalidated by ETag (``Cache-Control: no-cache``)."""
    file = STATIC_FILES.get(name)
    if file is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    headers = {**_SECURITY_HEADERS, "ETag": file.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)
