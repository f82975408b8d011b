"""The operator page in a real browser: Debian chromium driven by Playwright, demo plant running.

The simulator runs the packaged demo profile, whose schedule takes device `plc-pumps` offline
(TCP close) at 20 s for 8 s every 60 s; the gateway runs the packaged demo config. The page must
show the same states as the API, turn north/pump-1 from online to offline and back without a
reload, list the open gaps with their cause, draw the gap in the asset's timeline, filter by
site and state, and stay within a tablet's width. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.demo import demo_gateway_config
from simulator.profiles import demo_profile_path
from tests.gw_helpers import GatewayProcess, wait_for
from tests.sim_helpers import start_simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TARGET = "north/pump-1"  # served by plc-pumps, the device with the scheduled outage
ASSET = f'article.asset[data-key="{TARGET}"]'

PAGE_STATES = """() => Array.from(document.querySelectorAll('article.asset')).map(a => [
    a.dataset.site, a.dataset.asset, a.dataset.state,
    a.querySelector('.asset-head [data-role=state]').textContent.trim(),
    getComputedStyle(a.querySelector('.asset-head [data-role=state]')).backgroundColor])"""


def _state_is(state: str) -> str:
    return f"() => document.querySelector('{ASSET}')?.dataset.state === '{state}'"


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.fixture
def browser_page(tmp_path: Path) -> Any:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("Debian chromium is missing: run `make deps-system` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user data dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()


def test_page_shows_states_and_an_outage_live(tmp_path: Path, browser_page: Any) -> None:
    page = browser_page
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)

    with start_simulator(demo_profile_path(), tmp_path) as sim:
        gw = GatewayProcess(demo_gateway_config(sim.ports, tmp_path / "data", 0), tmp_path).start()
        try:
            page.goto(gw.url + "/")
            page.wait_for_selector(ASSET)
            page.evaluate("() => { window.__noReload = true; }")
            n_assets = len(gw.get("/api/v1/assets"))
            assert page.locator("article.asset").count() == n_assets

            # -- the states shown are the API's (in colour and in words) ------------------
            def states_match() -> bool:
                shown = page.evaluate(PAGE_STATES)
                api = {(a["site"], a["id"]): a["state"] for a in gw.get("/api/v1/assets")}
                return {(s, a): st for s, a, st, _w, _c in shown} == api

            wait_for(states_match, timeout=20, interval=0.5, what="page states == API states")
            shown = page.evaluate(PAGE_STATES)
            colours: dict[str, set[str]] = {}
            for _site, _asset, state, word, colour in shown:
                assert word == state  # the state in words
                colours.setdefault(state, set()).add(colour)
            assert all(len(c) == 1 for c in colours.values())  # one colour per state...
            flat = [next(iter(c)) for c in colours.values()]
            assert len(set(flat)) == len(flat)  # ...and a different one for each
            if "online" in colours:
                assert colours["online"] == {"rgb(218, 251, 225)"}
            sites = page.evaluate("() => Array.from(document.querySelectorAll('details.site'))"
                                  ".map(s => [s.dataset.site, s.dataset.state])")
            assert {s for s, _ in sites} == {s["id"] for s in gw.get("/api/v1/sites")}

            # -- live values without a reload (SSE for the expanded assets) ---------------
            cell = (f'{ASSET.replace(TARGET, "north/boiler-house")} '
                    'tr[data-point="seconds"] [data-role=value]')
            first = page.locator(cell).text_content()
            page.wait_for_function(
                f"(t) => document.querySelector('{cell}')?.textContent !== t", arg=first)

            # -- the injected outage: online -> offline -> online --------------------------
            page.wait_for_function(_state_is("online"), timeout=45_000)
            page.wait_for_function(_state_is("offline"), timeout=80_000)
            badge = page.locator(f"{ASSET} .asset-head [data-role=state]")
            assert badge.text_content() == "offline"
            api_asset = gw.get(f"/api/v1/assets/{TARGET}")
            assert api_asset["state"] in ("offline", "online")  # the API may already be back
            rows = page.locator(f'#gaps tr[data-key^="{TARGET}/"]')
            rows.first.wait_for()
            assert "device offline" in rows.first.text_content()
            points = page.locator(f"{ASSET} tr[data-point]")
            assert points.count() == len(api_asset["points"])
            outage_shot = _shot(page, "web-page-outage-laptop.png")

            page.wait_for_function(_state_is("online"), timeout=40_000)
            wait_for(states_match, timeout=20, interval=0.5, what="states match after recovery")
            # the closed gap is drawn on the asset's 24 h timeline
            page.wait_for_function(
                f"() => Number(document.querySelector('{ASSET} .timeline svg')"
                "?.dataset.gaps || 0) >= 1")
            gaps = gw.get("/api/v1/gaps", site="north", asset="pump-1")
            assert gaps
            assert all(g["cause"] == "device_offline" for g in gaps)
            assert page.evaluate("() => window.__noReload") is True  # never reloaded
            page.select_option("#f-range", "600")  # zoom the timelines to 10 min
            recovered_shot = _shot(page, "web-page-recovered-laptop.png")
            page.select_option("#f-range", "86400")

            # -- filters -----------------------------------------------------------------
            page.select_option("#f-site", "south")
            visible = page.evaluate("() => Array.from(document.querySelectorAll('article.asset'))"
                                    ".filter(a => !a.hidden).map(a => a.dataset.site)")
            assert visible
            assert set(visible) == {"south"}
            assert len(visible) == len(gw.get("/api/v1/assets", site="south"))
            page.select_option("#f-site", "")
            page.select_option("#f-state", "online")
            shown_states = page.evaluate(
                "() => Array.from(document.querySelectorAll('article.asset'))"
                ".filter(a => !a.hidden).map(a => a.dataset.state)")
            assert set(shown_states) <= {"online"}
            assert "state=online" in page.url  # the filter survives a reload
            page.select_option("#f-state", "")

            # -- tablet ------------------------------------------------------------------
            page.set_viewport_size({"width": 768, "height": 1024})
            page.wait_for_function("() => document.documentElement.scrollWidth <= window.innerWidth")
            tablet_shot = _shot(page, "web-page-tablet.png")
            seen_problems = list(problems)  # before the gateway stops (then fetches fail)
        finally:
            assert gw.stop() == 0, gw.log()

    assert not seen_problems, seen_problems  # no script error, CSP violation or failed fetch
    for shot in (outage_shot, recovered_shot, tablet_shot):
        assert shot.stat().st_size > 10_000
