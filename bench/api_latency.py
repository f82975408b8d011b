"""API latency of `/api/v1/sites` and `/api/v1/assets` with a 100k-point inventory, 50 clients.

Two kinds of process on loopback:
- the server (this script with ``--serve``): a real `Inventory` of SITES × ASSETS × points
  (``--points-per-asset``, default 100: 100,000 points; one device per asset), fed with Good
  readings for every point every FEED_PERIOD seconds (so states stay live and the views change
  under the load, ~10k readings/s at 100k points) and ticked like the runtime does, behind the
  real app (`create_app`) and `ApiServer` (uvicorn). It reports its event-loop lag on
  ``/healthz``.
- the load generator (this script): CLIENTS concurrent keep-alive connections spread over
  ``--procs`` processes; latency per request from send to the last body byte.
  ``--client raw`` (default) is a minimal HTTP/1.1 client on asyncio streams (≈20 µs of CPU
  per request), so on a 2-core machine the server, not the load generator, is measured;
  ``--client httpx`` is the generator used for the first figures (httpx costs ≈1 ms of CPU
  per request, so it competes with the server for the two cores).

Two load shapes:
- closed loop (default): each client sends its next request as soon as the previous answer
  arrived. This measures throughput; latency is then mostly queueing (Little's law:
  mean latency ≈ clients / throughput), whatever the inventory size.
- paced (``--rate R``): each client sends R requests/s on a fixed schedule, latency counted
  from the scheduled send time (no coordinated omission): e.g. 50 operator pages polling.

Also measured: one request at a time (latency of a single uncontended request). With
``--no-cache`` the server keeps no encoded answers (every request reads the inventory's
counters and encodes every site/asset), which shows the inventory's own cost.

Garbage collection: like `gateway.runtime` (which calls ``gc.collect(); gc.freeze()`` once
the gateway has started), the server freezes the objects that exist once its inventory is
built, so full collections no longer walk the ~200k long-lived objects of 100k points (points
and their specs). ``--no-gc-freeze`` leaves them in the collector's generations: every full
collection then stalls the event loop for ~40-150 ms (about one per 20-40 s under this load),
which sets the max latency and, together with other load on the machine, part of the p99
(docs/benchmarks.md "API latency"). The server reports its full collections (count, longest
pause) during the measurement in the table.

Usage: .venv/bin/python bench/api_latency.py [--duration 20] [--clients 50] [--procs 1]
       [--client raw|httpx] [--rate R] [--points-per-asset 100] [--no-cache]
       [--no-gc-freeze]
Prints a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx

SITES, ASSETS = 10, 100  # 1,000 assets
FEED_PERIOD = 10.0  # every point gets a reading this often [s]
FEED_STEP = 0.1  # readings are fed in slices this often [s]
TICK_S = 0.25  # inventory tick period, as in gateway.runtime [s]


# -- server --------------------------------------------------------------------------------------


def serve(no_cache: bool, per_asset: int, gc_freeze: bool) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import gc
    from collections.abc import Callable, Hashable

    from gateway.api.app import create_app
    from gateway.api.cache import ViewCache
    from gateway.api.server import ApiServer
    from gateway.model import Reading
    from inventory.inventory import Inventory
    from inventory.spec import AssetSpec, DeviceSpec, InventorySpec, PointSpec, SiteSpec

    class NoCache(ViewCache):
        """Keeps nothing: every request builds and encodes its answer."""

        def versioned(self, key: str, version: int | None, build: Callable[[], bytes]) -> bytes:
            return build()

        def fragment(self, key: Hashable, view: object, encode: Callable[[], bytes]) -> bytes:
            return encode()

    sites = tuple(SiteSpec(f"site-{s}", f"Site {s}") for s in range(SITES))
    assets = tuple(
        AssetSpec(f"site-{s}", f"asset-{a}", f"Asset {a}", "pump")
        for s in range(SITES) for a in range(ASSETS)
    )
    devices = tuple(
        DeviceSpec(f"dev-{s}-{a}", "modbus", "127.0.0.1:1") for s in range(SITES) for a in range(ASSETS)
    )
    points = tuple(
        PointSpec(f"site-{s}", f"asset-{a}", f"p{p}", f"dev-{s}-{a}", FEED_PERIOD, "Cel",
                  f"modbus://127.0.0.1:1/1/hr/{p}")
        for s in range(SITES) for a in range(ASSETS) for p in range(per_asset)
    )
    started = datetime.now(UTC)
    full_gcs: list[float] = []  # pauses of full (generation 2) collections [s]
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            full_gcs.append(time.perf_counter() - gc_started[0])

    inventory = Inventory(InventorySpec(sites, assets, points, devices, gap_after=2.5), now=started)
    lags: list[float] = []

    class Ctx:
        store = None
        monitored_since = started

        def __init__(self) -> None:
            self.inventory = inventory
            self.gc_seen = 0

        def now(self) -> datetime:
            return datetime.now(UTC)

        async def usable_counts(self, since: datetime) -> dict[str, int]:
            return {}

        def health(self) -> dict[str, object]:
            self.gc_seen, seen = len(full_gcs), self.gc_seen
            recent = sorted(lags[-2000:]) or [0.0]
            return {"loop_lag_max_s": max(recent), "loop_lag_p99_s": recent[int(0.99 * (len(recent) - 1))],
                    "full_gc_pauses_s": full_gcs[seen:]}  # since the last /healthz

        def readiness(self) -> tuple[bool, dict[str, object]]:
            return True, {}

        def metrics_registry(self) -> None:
            return None

        def add_listener(self, cb: Any) -> None:
            pass

        def remove_listener(self, cb: Any) -> None:
            pass

    async def feed() -> None:
        keys = [(p.site, p.asset, p.point) for p in points]
        per_step = max(1, int(len(keys) * FEED_STEP / FEED_PERIOD))
        i = 0
        while True:
            t = datetime.now(UTC)
            batch = [Reading(s, a, p, 20.0, "Cel", 0, t, t, "") for s, a, p in keys[i : i + per_step]]
            inventory.observe(batch)
            i = (i + per_step) % len(keys)
            await asyncio.sleep(FEED_STEP)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            inventory.tick(datetime.now(UTC))

    async def lag_probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.05)
            lags.append(max(0.0, loop.time() - t0 - 0.05))

    async def main() -> None:
        for d in devices:
            inventory.link_up(d.id, started)
        t = datetime.now(UTC)
        inventory.observe([Reading(p.site, p.asset, p.point, 20.0, "Cel", 0, t, t, "") for p in points])
        if gc_freeze:  # as gateway.runtime does once the gateway has started
            gc.collect()
            gc.freeze()
        gc.callbacks.append(on_gc)
        app = create_app(Ctx(), allowed_hosts=None)  # type: ignore[arg-type]
        if no_cache:
            app.state.views = NoCache(min_cost=float("inf"))
        server = ApiServer(app, "127.0.0.1", 0, limit_concurrency=None, timeout_keep_alive=30)
        port = await server.start()
        tasks = [asyncio.create_task(c()) for c in (feed, ticker, lag_probe)]
        print(json.dumps({"port": port}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await server.stop()

    asyncio.run(main())


# -- load generator ------------------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


async def raw_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One keep-alive HTTP/1.1 GET on an open connection; returns the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def load_raw(
    url: str, clients: int, duration: float, rate: float | None
) -> tuple[list[float], int, float]:
    """`clients` connections in this process; (latencies [s], errors, elapsed [s])."""
    rest = url.removeprefix("http://")
    hostport, path = rest.split("/", 1)
    host, port = hostport.split(":")
    request = f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        try:
            if rate is None:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    if await raw_get(reader, writer, request) != 200:
                        errors += 1
                    latencies.append(time.perf_counter() - t0)
            else:
                period = 1.0 / rate
                due = time.perf_counter() + period * k / clients  # staggered schedules
                while due < deadline:
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if await raw_get(reader, writer, request) != 200:
                        errors += 1
                    latencies.append(time.perf_counter() - due)  # from the scheduled send
                    due += period
        finally:
            writer.close()

    t_start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    return latencies, errors, time.perf_counter() - t_start


async def load_httpx(
    url: str, clients: int, duration: float, rate: float | None
) -> tuple[list[float], int, float]:
    """The first generator: httpx.AsyncClient, closed loop only."""
    del rate
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                resp = await client.get(url)
                await resp.aread()
                if resp.status_code != 200:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    return latencies, errors, elapsed


def _load_in_process(
    kind: str, url: str, clients: int, duration: float, rate: float | None
) -> tuple[list[float], int, float, float]:
    t0 = time.process_time()
    gen = load_raw if kind == "raw" else load_httpx
    lat, err, elapsed = asyncio.run(gen(url, clients, duration, rate))
    return lat, err, elapsed, time.process_time() - t0


def load(kind: str, url: str, clients: int, duration: float, procs: int,
         rate: float | None = None) -> dict[str, float]:
    """`clients` concurrent clients spread over `procs` processes."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    if procs == 1:
        results = [_load_in_process(kind, url, clients, duration, rate)]
    else:
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_load_in_process, [kind] * procs, [url] * procs, shares,
                                    [duration] * procs, [rate] * procs))
    latencies = [x for lat, _e, _t, _c in results for x in lat]
    errors = sum(e for _l, e, _t, _c in results)
    elapsed = max(t for _l, _e, t, _c in results)
    return {
        "n": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50": pct(latencies, 0.50),
        "p90": pct(latencies, 0.90),
        "p99": pct(latencies, 0.99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
        "client_cpu": sum(c for _l, _e, _t, c in results) / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-cache", action="store_true", help="server keeps no encoded answers")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--rate", type=float, default=None,
                    help="paced: requests/s per client (default: closed loop)")
    ap.add_argument("--points-per-asset", type=int, default=100, help="x 1,000 assets")
    ap.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True,
                    help="server: gc.freeze() once the inventory is built, as gateway.runtime "
                    "does (default; see the docstring)")
    args = ap.parse_args()
    if args.serve:
        serve(args.no_cache, args.points_per_asset, args.gc_freeze)
        return
    if args.rate is not None and args.client != "raw":
        ap.error("--rate needs --client raw")
    cmd = [sys.executable, __file__, "--serve", "--points-per-asset", str(args.points_per_asset)]
    cmd += ["--no-cache"] if args.no_cache else []
    cmd += ["--gc-freeze"] if args.gc_freeze else ["--no-gc-freeze"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        base = f"http://127.0.0.1:{port}"
        size = {p: len(httpx.get(base + p, timeout=120).content) for p in ("/api/v1/sites", "/api/v1/assets")}
        rows = []
        for path in ("/api/v1/sites", "/api/v1/assets"):
            single = load(args.client, base + path, 1, min(args.duration, 10.0), 1)
            httpx.get(base + "/healthz", timeout=30)  # full GCs counted from here
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            loaded = load(args.client, base + path, args.clients, args.duration, args.procs,
                          args.rate)
            loaded["cpu"] = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            lag = httpx.get(base + "/healthz", timeout=30).json()["details"]
            rows.append((path, size[path], single, loaded, lag))
        points = SITES * ASSETS * args.points_per_asset
        shape = (f"paced, {args.rate:g} req/s per client" if args.rate is not None
                 else "closed loop")
        cache = "no answer cache" if args.no_cache else "answer cache"
        cache += ", gc.freeze()" if args.gc_freeze else ", no gc.freeze()"
        print(f"\n{points:,} points, {SITES * ASSETS:,} assets, {SITES} sites; {args.clients} "
              f"clients ({args.client}) in {args.procs} process(es) × {args.duration:.0f} s; "
              f"{shape}; {cache}\n")
        print("| endpoint | body | 1 client p50 | p50 | p90 | p99 | max | req/s | server CPU "
              "| client CPU | server loop lag p99 / max | server full GCs (longest) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for path, body, single, loaded, lag in rows:
            print(f"| `{path}` | {body / 1024:.0f} KiB | {single['p50'] * 1000:.1f} ms | "
                  f"{loaded['p50'] * 1000:.1f} ms | {loaded['p90'] * 1000:.1f} ms | "
                  f"{loaded['p99'] * 1000:.1f} ms | {loaded['max'] * 1000:.0f} ms | "
                  f"{loaded['rps']:.0f} | {loaded['cpu'] * 100:.0f} % | "
                  f"{loaded['client_cpu'] * 100:.0f} % | "
                  f"{lag['loop_lag_p99_s'] * 1000:.0f} / "
                  f"{lag['loop_lag_max_s'] * 1000:.0f} ms | {len(lag['full_gc_pauses_s'])} "
                  f"({max(lag['full_gc_pauses_s'], default=0.0) * 1000:.0f} ms) |"
                  + (f" ({loaded['errors']} errors)" if loaded["errors"] else ""))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
