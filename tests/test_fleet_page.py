"""The fleet page in a real browser (Debian chromium via Playwright): gateways and sites from
retained state on a real mosquitto; a gateway's last will turns its site unknown live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.mosquitto_helpers import Mosquitto
from tests.test_fleet import FleetProcess
from tests.test_web_page import _shot, browser_page  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _retain(port: int, messages: list[tuple[str, dict[str, Any]]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-gateways")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, body in messages:
            client.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def _birth(name: str, site: str) -> tuple[str, dict[str, Any]]:
    return (f"ot/_gateway/{name}", {"status": "online", "gateway": name,
                                    "inventory": {"site_assets": {site: ["line-a"]}, "points": 2}})


def _asset(name: str, site: str, state: str) -> tuple[str, dict[str, Any]]:
    return (f"ot/_gateway/{name}/assets/{site}/line-a",
            {"site": site, "asset": "line-a", "state": state, "points_total": 2, "open_gaps": 0})


ROWS = """() => Array.from(document.querySelectorAll('#sites tbody tr[data-site]')).map(r =>
    [r.dataset.site, r.querySelector('.state').textContent])"""


def test_fleet_page_lists_sites_and_follows_a_death(
    tmp_path: Path, browser_page: Any  # noqa: F811 - the fixture imported above
) -> None:
    page = browser_page
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    with Mosquitto(tmp_path / "broker") as broker:
        _retain(broker.port, [_birth("gw-n", "north"), _asset("gw-n", "north", "online"),
                              _birth("gw-s", "south"), _asset("gw-s", "south", "degraded")])
        fleet = FleetProcess(broker.port, tmp_path)
        try:
            page.goto(f"http://127.0.0.1:{fleet.port}/")
            page.wait_for_function(f"() => ({ROWS})().length === 2")
            assert page.evaluate(ROWS) == [["north", "online"], ["south", "degraded"]]
            assert "2/2 gateways online" in page.text_content("#status")
            _shot(page, "fleet-page.png")
            # gw-s dies: the broker would publish its will; here the same retained message.
            _retain(broker.port, [("ot/_gateway/gw-s", {"status": "offline",
                                                        "reason": "connection lost"})])
            page.wait_for_function(
                f"() => JSON.stringify(({ROWS})()) === "
                f"JSON.stringify([['north','online'],['south','unknown']])")
            gateway_row = page.text_content('#gateways tr[data-gateway="gw-s"]')
            assert gateway_row is not None
            assert "offline" in gateway_row
            assert "connection lost" in gateway_row
            _shot(page, "fleet-page-gateway-offline.png")
        finally:
            fleet.stop()
    assert not problems, problems
