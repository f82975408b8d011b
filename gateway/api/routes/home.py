"""A small placeholder page at ``/``: links and a live table of sites (no external assets)."""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway import __version__

router = APIRouter(tags=["page"])

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
    "table{border-collapse:collapse}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
    ".online{color:#070}.degraded{color:#a60}.offline{color:#b00}.unknown{color:#666}"
)

_SCRIPT = """
(function () {
  var body = document.querySelector("#sites tbody");
  var status = document.getElementById("status");
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) { td.className = cls; }
    tr.appendChild(td);
  }
  function load() {
    fetch("api/v1/sites", {headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (sites) {
        body.textContent = "";
        sites.forEach(function (s) {
          var tr = document.createElement("tr");
          var td = document.createElement("td");
          var a = document.createElement("a");
          a.href = "api/v1/sites/" + encodeURIComponent(s.id);
          a.textContent = s.id;
          td.appendChild(a);
          tr.appendChild(td);
          cell(tr, s.name);
          cell(tr, s.state, s.state);
          cell(tr, s.assets_total);
          cell(tr, s.points_total);
          cell(tr, s.open_gaps);
          cell(tr, s.last_seen);
          body.appendChild(tr);
        });
        status.textContent = sites.length + " site(s), updated " + new Date().toISOString();
      })
      .catch(function (e) { status.textContent = "failed to load sites: " + e.message; });
  }
  load();
  setInterval(load, 10000);
})();
"""


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


_CSP = (
    "default-src 'none'; connect-src 'self'; "
    f"script-src 'sha256-{_sha256(_SCRIPT)}'; style-src 'sha256-{_sha256(_STYLE)}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ot-gateway</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>ot-gateway</h1>
<p>Version {__version__}. @DOCS@
<a href="openapi.json">OpenAPI schema</a> · <a href="metrics">Metrics</a></p>
<p>API: <a href="api/v1/sites">sites</a> · <a href="api/v1/assets">assets</a> ·
<a href="api/v1/devices">devices</a> · <a href="api/v1/gaps?open=true">open gaps</a> ·
<a href="api/v1/coverage?window=3600&amp;group_by=site">coverage (1 h)</a> ·
<a href="healthz">healthz</a> · <a href="readyz">readyz</a></p>
<h2>Sites</h2>
<table id="sites">
<thead><tr><th>Site</th><th>Name</th><th>State</th><th>Assets</th><th>Points</th>
<th>Open gaps</th><th>Last seen (UTC)</th></tr></thead>
<tbody></tbody>
</table>
<p id="status">loading…</p>
<script>{_SCRIPT}</script>
</body>
</html>
"""


@router.get("/", include_in_schema=False)
async def home(request: Request) -> HTMLResponse:
    """The placeholder operator page."""
    docs = '<a href="docs">API documentation</a> ·' if request.app.docs_url else ""
    return HTMLResponse(
        _PAGE.replace("@DOCS@", docs),
        headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
    )
