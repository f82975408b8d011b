"""Fleet state: every gateway's birth/death, asset states, gaps and coverage from the broker.

Each site gateway publishes (see `gateway.northbound`), all retained, under a prefix
(default ``ot/_gateway``)::

    {prefix}/{gateway}                       birth {"status": "online", "inventory": ...}
                                             or death {"status": "offline", "reason": ...}
    {prefix}/{gateway}/assets/{site}/{asset} {"state", "points_by_state", "open_gaps", ...}
    {prefix}/{gateway}/gaps                  {"open": [gap...], "recent": [gap...]}
    {prefix}/{gateway}/coverage              {"site": {...}, "asset": {...}, "window_s"}

`FleetState.apply` takes those messages in any order (retained messages arrive unordered on
subscribe). While a gateway is offline — its last will was published by the broker, i.e.
within 1.5 × its keepalive of the gateway vanishing (MQTT 3.1.1 §3.1.2.10) — every one of its
assets is reported ``unknown``: the last state it reported is kept as ``reported_state`` but not
trusted. A later birth makes it ``online`` again and its assets come back with the states it
re-publishes on connect.

Pure state, no I/O: the fleet server (`gateway.fleet.server`) feeds it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATES = ("online", "degraded", "offline", "unknown")
"""Asset states, in the order of the roll-up (worst first is ``offline``)."""


@dataclass(slots=True)
class GatewayEntry:
    """One site gateway as the fleet sees it.

    Attributes:
        name: Gateway name (``gateway.name`` of its config).
        status: ``online`` or ``offline``.
        reason: Why offline (``connection lost`` = last will, ``stopped`` = clean stop).
        since: When the fleet saw the status change (aware UTC).
        reported_time: The ``time`` field of the gateway's last state message.
        site_assets: ``site -> [asset ids]`` from its last birth.
        points: Configured points from its last birth.
    """

    name: str
    status: str = "unknown"
    reason: str | None = None
    since: datetime | None = None
    reported_time: str | None = None
    site_assets: dict[str, list[str]] = field(default_factory=dict)
    points: int = 0


@dataclass(slots=True)
class AssetEntry:
    """The last retained state message of one asset."""

    gateway: str
    site: str
    asset: str
    state: str
    body: dict[str, Any]


class FleetState:
    """What the fleet knows of every gateway, asset, gap and coverage figure.

    Args:
        prefix: Topic prefix of the gateways' state topics (no trailing slash).

    Attributes:
        rejected: Messages ignored, by reason (``json``, ``topic``, ``shape``).
        messages: Messages applied.
    """

    def __init__(self, prefix: str = "ot/_gateway") -> None:
        self.prefix = prefix.rstrip("/")
        self.gateways: dict[str, GatewayEntry] = {}
        self.assets: dict[tuple[str, str, str], AssetEntry] = {}
        self.gap_docs: dict[str, dict[str, Any]] = {}
        self.coverage_docs: dict[str, dict[str, Any]] = {}
        self.rejected: Counter[str] = Counter()
        self.messages = 0

    @property
    def subscription(self) -> str:
        """The topic filter covering every gateway's state topics."""
        return f"{self.prefix}/#"

    # -- input ------------------------------------------------------------------------------

    def apply(self, topic: str, payload: bytes, now: datetime) -> bool:
        """Apply one message. Never raises: bad input is counted in `rejected`.

        Args:
            topic: The MQTT topic.
            payload: The message body (JSON). An empty payload clears a retained document.
            now: Receipt time (aware UTC).

        Returns:
            True when the message was understood and applied.
        """
        if not topic.startswith(self.prefix + "/"):
            self.rejected["topic"] += 1
            return False
        parts = topic[len(self.prefix) + 1 :].split("/")
        name = parts[0]
        if not name:
            self.rejected["topic"] += 1
            return False
        if not payload:
            return self._clear(parts)
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.rejected["json"] += 1
            return False
        if not isinstance(body, dict):
            self.rejected["shape"] += 1
            return False
        ok = self._dispatch(name, parts[1:], body, now)
        if ok:
            self.messages += 1
        else:
            self.rejected["shape"] += 1
        return ok

    def _dispatch(self, name: str, rest: list[str], body: dict[str, Any], now: datetime) -> bool:
        if not rest:
            return self._gateway_state(name, body, now)
        if len(rest) == 3 and rest[0] == "assets":
            state = body.get("state")
            if state not in STATES:
                return False
            self._gateway(name)
            self.assets[(name, rest[1], rest[2])] = AssetEntry(name, rest[1], rest[2], state, body)
            return True
        if rest == ["gaps"]:
            if not isinstance(body.get("open"), list) or not isinstance(body.get("recent"), list):
                return False
            self.gap_docs[name] = body
            return True
        if rest == ["coverage"]:
            if not isinstance(body.get("site"), dict) or not isinstance(body.get("asset"), dict):
                return False
            self.coverage_docs[name] = body
            return True
        return False

    def _clear(self, parts: list[str]) -> bool:
        name, rest = parts[0], parts[1:]
        if not rest:
            self.gateways.pop(name, None)
            for key in [k for k in self.assets if k[0] == name]:
                del self.assets[key]
            self.gap_docs.pop(name, None)
            self.coverage_docs.pop(name, None)
        elif len(rest) == 3 and rest[0] == "assets":
            self.assets.pop((name, rest[1], rest[2]), None)
        elif rest == ["gaps"]:
            self.gap_docs.pop(name, None)
        elif rest == ["coverage"]:
            self.coverage_docs.pop(name, None)
        return True

    def _gateway(self, name: str) -> GatewayEntry:
        entry = self.gateways.get(name)
        if entry is None:
            entry = self.gateways[name] = GatewayEntry(name)
        return entry

    def _gateway_state(self, name: str, body: dict[str, Any], now: datetime) -> bool:
        status = body.get("status")
        if status not in ("online", "offline"):
            return False
        entry = self._gateway(name)
        if entry.status != status:
            entry.since = now
        entry.status = status
        entry.reason = body.get("reason") if status == "offline" else None
        entry.reported_time = body.get("time") if isinstance(body.get("time"), str) else None
        inventory = body.get("inventory")
        if status == "online" and isinstance(inventory, dict):
            site_assets = inventory.get("site_assets")
            if isinstance(site_assets, dict):
                entry.site_assets = {
                    str(s): [str(a) for a in assets]
                    for s, assets in site_assets.items()
                    if isinstance(assets, list)
                }
            points = inventory.get("points")
            entry.points = points if isinstance(points, int) else 0
        return True

    def gateway_lost(self, now: datetime) -> None:
        """The fleet's own broker link dropped: every gateway's status is unknown."""
        for entry in self.gateways.values():
            if entry.status != "unknown":
                entry.status = "unknown"
                entry.reason = "fleet view disconnected from the broker"
                entry.since = now

    # -- views ------------------------------------------------------------------------------

    def effective_state(self, entry: AssetEntry) -> str:
        """The asset's state as shown: ``unknown`` unless its gateway is online."""
        gw = self.gateways.get(entry.gateway)
        if gw is None or gw.status != "online":
            return "unknown"
        return entry.state

    def asset_rows(self, site: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Every asset known from births or state messages, sorted by site then asset.

        Each row: ``gateway, gateway_status, site, id, state, reported_state, name,
        points_total, points_by_state, open_gaps, last_seen, coverage, time``.
        """
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        for key, entry in self.assets.items():
            seen.add(key)
            rows.append(self._asset_row(entry))
        for gw in self.gateways.values():
            for s, assets in gw.site_assets.items():
                for a in assets:
                    if (gw.name, s, a) not in seen:
                        rows.append(self._asset_row(AssetEntry(gw.name, s, a, "unknown", {})))
        rows = [
            r
            for r in rows
            if (site is None or r["site"] == site) and (state is None or r["state"] == state)
        ]
        rows.sort(key=lambda r: (r["site"], r["id"], r["gateway"]))
        return rows

    def _asset_row(self, entry: AssetEntry) -> dict[str, Any]:
        gw = self.gateways.get(entry.gateway)
        body = entry.body
        cov = self.coverage_docs.get(entry.gateway, {}).get("asset", {})
        cov_row = cov.get(f"{entry.site}/{entry.asset}")
        return {
            "gateway": entry.gateway,
            "gateway_status": gw.status if gw else "unknown",
            "site": entry.site,
            "id": entry.asset,
            "name": body.get("name"),
            "state": self.effective_state(entry),
            "reported_state": entry.state,
            "points_total": body.get("points_total"),
            "points_by_state": body.get("points_by_state"),
            "open_gaps": body.get("open_gaps"),
            "last_seen": body.get("last_seen"),
            "coverage": cov_row.get("coverage") if isinstance(cov_row, dict) else None,
            "time": body.get("time"),
        }

    def site_rows(self) -> list[dict[str, Any]]:
        """One row per site: its gateways and their status, assets by state, gaps, coverage.

        ``state`` rolls up the assets: ``offline`` if any is offline, else ``degraded`` if any
        is degraded or offline-mixed, ``unknown`` if all are unknown, else ``online``.
        """
        sites: dict[str, dict[str, Any]] = {}
        for row in self.asset_rows():
            site = sites.setdefault(
                row["site"],
                {
                    "id": row["site"],
                    "gateways": {},
                    "assets_total": 0,
                    "assets_by_state": dict.fromkeys(STATES, 0),
                    "open_gaps": 0,
                    "coverage": None,
                },
            )
            site["gateways"][row["gateway"]] = row["gateway_status"]
            site["assets_total"] += 1
            site["assets_by_state"][row["state"]] += 1
            site["open_gaps"] += row["open_gaps"] or 0
        for gw_name, doc in self.coverage_docs.items():
            for site_id, cov in doc.get("site", {}).items():
                if (
                    site_id in sites
                    and isinstance(cov, dict)
                    and gw_name in sites[site_id]["gateways"]
                ):
                    sites[site_id]["coverage"] = cov.get("coverage")
        out = []
        for site in sorted(sites.values(), key=lambda s: s["id"]):
            counts = site["assets_by_state"]
            if counts["unknown"] == site["assets_total"]:
                state = "unknown"
            elif counts["offline"] == site["assets_total"]:
                state = "offline"
            elif counts["offline"] or counts["degraded"] or counts["unknown"]:
                state = "degraded"
            else:
                state = "online"
            site["state"] = state
            site["gateways"] = [
                {"name": n, "status": st} for n, st in sorted(site["gateways"].items())
            ]
            out.append(site)
        return out

    def gateway_rows(self) -> list[dict[str, Any]]:
        """One row per gateway: status, since, reason, sites, assets and open gaps."""
        out = []
        for gw in sorted(self.gateways.values(), key=lambda g: g.name):
            doc = self.gap_docs.get(gw.name, {})
            out.append(
                {
                    "name": gw.name,
                    "status": gw.status,
                    "reason": gw.reason,
                    "since": _iso(gw.since),
                    "reported_time": gw.reported_time,
                    "sites": sorted(gw.site_assets),
                    "assets": sum(len(a) for a in gw.site_assets.values()),
                    "points": gw.points,
                    "open_gaps": len(doc.get("open", [])),
                }
            )
        return out

    def gap_rows(
        self, *, site: str | None = None, open: bool | None = None
    ) -> list[dict[str, Any]]:
        """Gaps of every gateway as last reported (open ones and the recent closed ones).

        Each row is the gateway's gap object plus ``gateway`` and ``gateway_status``; open
        gaps of an offline gateway are as of its last report. Sorted by start.
        """
        rows: list[dict[str, Any]] = []
        for name, doc in self.gap_docs.items():
            status = self.gateways[name].status if name in self.gateways else "unknown"
            parts = []
            if open is not False:
                parts.append(doc.get("open", []))
            if open is not True:
                parts.append(doc.get("recent", []))
            for part in parts:
                for gap in part:
                    if isinstance(gap, dict) and (site is None or gap.get("site") == site):
                        rows.append({**gap, "gateway": name, "gateway_status": status})
        rows.sort(key=lambda g: (str(g.get("start")), str(g.get("id"))))
        return rows


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t is not None else None
