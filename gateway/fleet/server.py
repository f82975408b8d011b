"""The fleet view process: an MQTT subscriber feeding `FleetState`, and its HTTP API and page.

Routes (JSON unless noted)::

    GET /                      the fleet page (HTML, no external assets)
    GET /api/v1/gateways       every gateway: status (online/offline), since, sites, open gaps
    GET /api/v1/sites          every site: gateways, state roll-up, assets by state, coverage
    GET /api/v1/assets         ?site=&state=  every asset with its effective state
    GET /api/v1/gaps           ?site=&open=true|false  open and recent gaps of every site
    GET /healthz, /readyz      liveness; readiness = subscribed to the broker
    GET /metrics               Prometheus: gateways by status, assets by state, messages

The subscriber reconnects with capped exponential backoff and jitter; while it is away from the
broker every gateway is ``unknown`` (the fleet cannot vouch for any of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib import resources
from typing import Annotated, Any

import aiomqtt
from fastapi import FastAPI, Query, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connectors.mqtt.connector import build_tls_context
from gateway.api.server import ApiServer
from gateway.clock import utc_now
from gateway.fleet.config import FleetConfig
from gateway.fleet.state import STATES, FleetState

log = logging.getLogger("ot_gateway.fleet")

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 10.0


class FleetService:
    """Subscribes to the gateways' state topics and keeps a `FleetState`.

    Args:
        cfg: Broker, prefix and API settings.
        now: Clock (aware UTC), for tests.

    Attributes:
        state: The fleet state.
        connected: True while subscribed.
        connects: Successful connections.
        last_error: Last connection error text.
    """

    def __init__(self, cfg: FleetConfig, now: Callable[[], datetime] = utc_now) -> None:
        self.cfg = cfg
        self.state = FleetState(cfg.prefix)
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self._now = now
        self._stopping = asyncio.Event()
        self.subscribed = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        b = self.cfg.broker
        v5 = b.mqtt_version == "5"
        endpoint = f"mqtt{'s' if b.tls else ''}://{b.host}:{b.effective_port}"
        return aiomqtt.Client(
            b.host,
            b.effective_port,
            username=b.username,
            password=b.password.get_secret_value() if b.password is not None else None,
            identifier=b.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else True,
            clean_start=True,
            keepalive=b.keepalive,
            tls_context=build_tls_context(b.tls, endpoint),
        )

    async def run(self) -> None:
        """Connect, subscribe (retained state arrives first), apply messages; reconnect."""
        delay = RECONNECT_INITIAL_S
        while not self._stopping.is_set():
            try:
                async with self._client() as client:
                    await client.subscribe(self.state.subscription, qos=1)
                    self.connected = True
                    self.connects += 1
                    self.subscribed.set()
                    delay = RECONNECT_INITIAL_S
                    log.info("fleet: subscribed to %s", self.state.subscription)
                    async for message in client.messages:
                        payload = message.payload
                        body = payload if isinstance(payload, bytes | bytearray) else b""
                        self.state.apply(str(message.topic), bytes(body), self._now())
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
            except Exception as exc:  # a connector must never die of one bad event
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("fleet subscriber failed; reconnecting")
            if self.connected:
                log.warning("fleet: broker link lost: %s", self.last_error)
                self.state.gateway_lost(self._now())
            self.connected = False
            self.subscribed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RECONNECT_MAX_S)

    def stop(self) -> None:
        """Ask `run` to return (the current connection is closed by cancelling its task)."""
        self._stopping.set()

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector of the fleet figures."""
        gws = GaugeMetricFamily("otgw_fleet_gateways", "Gateways by status", labels=["status"])
        counts = {"online": 0, "offline": 0, "unknown": 0}
        for gw in self.state.gateways.values():
            counts[gw.status] = counts.get(gw.status, 0) + 1
        for status, n in counts.items():
            gws.add_metric([status], float(n))
        yield gws
        assets = GaugeMetricFamily("otgw_fleet_assets", "Assets by state", labels=["state"])
        by_state = dict.fromkeys(STATES, 0)
        for row in self.state.asset_rows():
            by_state[row["state"]] += 1
        for st, n in by_state.items():
            assets.add_metric([st], float(n))
        yield assets
        msgs = CounterMetricFamily("otgw_fleet_messages", "State messages applied")
        msgs.add_metric([], float(self.state.messages))
        yield msgs
        rej = CounterMetricFamily(
            "otgw_fleet_rejected", "State messages ignored, by reason", labels=["reason"]
        )
        for reason, n in self.state.rejected.items():
            rej.add_metric([reason], float(n))
        yield rej
        up = GaugeMetricFamily("otgw_fleet_broker_up", "1 while subscribed to the broker")
        up.add_metric([], 1.0 if self.connected else 0.0)
        yield up


def create_fleet_app(service: FleetService) -> FastAPI:
    """The fleet's FastAPI app (routes in the module docstring)."""
    app = FastAPI(title="ot-gateway fleet view", version="1", docs_url="/docs")
    registry = CollectorRegistry()
    registry.register(service)
    state = service.state
    page = resources.files("gateway.fleet").joinpath("static/fleet.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/v1/gateways", summary="Every site gateway and its status")
    async def gateways() -> list[dict[str, Any]]:
        return state.gateway_rows()

    @app.get("/api/v1/sites", summary="Every site: gateways, state, assets by state, coverage")
    async def sites() -> list[dict[str, Any]]:
        return state.site_rows()

    @app.get("/api/v1/assets", summary="Every asset with its effective state")
    async def assets(
        site: Annotated[str | None, Query(max_length=64)] = None,
        state_: Annotated[
            str | None, Query(alias="state", pattern="^(online|degraded|offline|unknown)$")
        ] = None,
    ) -> list[dict[str, Any]]:
        return state.asset_rows(site=site, state=state_)

    @app.get("/api/v1/gaps", summary="Open and recent gaps of every site, as last reported")
    async def gaps(
        site: Annotated[str | None, Query(max_length=64)] = None,
        open_: Annotated[bool | None, Query(alias="open")] = None,
    ) -> list[dict[str, Any]]:
        return state.gap_rows(site=site, open=open_)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready when subscribed to the broker")
    async def readyz() -> JSONResponse:
        body = {"ready": service.connected, "last_error": service.last_error}
        return JSONResponse(body, status_code=200 if service.connected else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app


async def run_fleet(
    cfg: FleetConfig,
    *,
    api_port: int | None = None,
    ready: Callable[[int], None] | None = None,
    install_signals: Callable[[Callable[[], None]], None] | None = None,
) -> None:
    """Run the subscriber and the API until stopped (SIGINT/SIGTERM via ``install_signals``).

    Args:
        cfg: The fleet config.
        api_port: Overrides ``api.port`` (0 = any free port).
        ready: Called with the bound API port once serving.
        install_signals: Called with the stop function (the CLI installs signal handlers).
    """
    service = FleetService(cfg)
    stop = asyncio.Event()

    def request_stop() -> None:
        service.stop()
        stop.set()

    if install_signals is not None:
        install_signals(request_stop)
    task = asyncio.create_task(service.run(), name="fleet-subscriber")
    server = ApiServer(
        create_fleet_app(service), cfg.api.host, api_port if api_port is not None else cfg.api.port
    )
    port = await server.start()
    log.info("fleet view on http://%s:%d/", cfg.api.host, port)
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        await server.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
