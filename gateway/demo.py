"""`ot-gateway demo`: the simulator's demo plant + the gateway + the API, no external services.

Starts the simulator as a subprocess (its own process, as real devices would be), reads the ports
it bound, fills them into the packaged demo gateway config, and runs the gateway in this process
with a progress line every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.clock import monotonic
from gateway.config import ConfigError, parse_config
from gateway.runtime import Runtime, serve

PROGRESS_S = 5.0
"""Seconds between progress lines."""


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {msg}", flush=True)


def demo_gateway_config(ports: dict[str, int], data_dir: Path, api_port: int) -> dict[str, Any]:
    """The packaged demo gateway config with the simulator's bound ports filled in.

    Args:
        ports: Device id -> TCP port the simulator bound.
        data_dir: Directory for the store.
        api_port: API port [0..65535].

    Returns:
        The raw config mapping (validate with `parse_config`).
    """
    text = resources.files("gateway").joinpath("demo_plant.yaml").read_text(encoding="utf-8")
    raw: dict[str, Any] = yaml.safe_load(text)
    for dev in raw["devices"]:
        dev["port"] = ports[dev["id"]]
    raw.setdefault("gateway", {})["data_dir"] = str(data_dir)
    raw.setdefault("api", {})["port"] = api_port
    return raw


def _start_simulator(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    from simulator.profiles import demo_profile_path

    ready = data_dir / "sim-ready.json"
    ready.unlink(missing_ok=True)
    log = (data_dir / "simulator.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "simulator",
            "-c",
            str(demo_profile_path()),
            "--truth",
            str(data_dir / "sim-truth.jsonl"),
            "--stats",
            str(data_dir / "sim-stats.json"),
            "--ready-file",
            str(ready),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = monotonic() + 20
    while monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the simulator exited with code {proc.returncode}; see {data_dir}/simulator.log"
            raise RuntimeError(msg)
        if ready.exists() and ready.read_text().strip():
            info = json.loads(ready.read_text())
            return proc, {dev: int(v["port"]) for dev, v in info["devices"].items()}
        time.sleep(0.1)
    proc.kill()
    msg = "the simulator did not start within 20 s"
    raise RuntimeError(msg)


async def _progress(rt: Runtime) -> None:
    last_n, last_t = rt.counters.readings_committed, monotonic()
    while True:
        await asyncio.sleep(PROGRESS_S)
        now = rt.now()
        n, t = rt.counters.readings_committed, monotonic()
        rate = (n - last_n) / (t - last_t)
        last_n, last_t = n, t
        devices = rt.inventory.devices(now)
        up = sum(1 for d in devices if d.link_up)
        s = rt.inventory.summary(now)
        states = " ".join(
            f"{k.removeprefix('points_')} {v}" for k, v in s.items() if k.startswith("points_")
        )
        _say(
            f"devices up {up}/{len(devices)} · {rate:,.0f} readings/s · {n:,} stored · "
            f"points: {states} · open gaps {rt.inventory.open_gap_count}"
        )


def run_demo(*, data_dir: Path, port: int, duration: float | None, fresh: bool) -> int:
    """Run the demo until Ctrl-C (or `duration` seconds).

    Returns:
        Process exit code: 0 on a clean stop, 1 when something could not start.
    """
    data_dir = data_dir.resolve()
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _say("starting the simulator (4 Modbus TCP devices on 127.0.0.1)…")
    try:
        sim, ports = _start_simulator(data_dir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        for dev, p in sorted(ports.items()):
            _say(f"  simulated device {dev} on 127.0.0.1:{p}")
        try:
            cfg = parse_config(
                yaml.safe_dump(demo_gateway_config(ports, data_dir, port)), "demo_plant.yaml"
            )
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return asyncio.run(_run(cfg, data_dir, duration))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sim.pid, signal.SIGTERM)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()


async def _run(cfg: Any, data_dir: Path, duration: float | None) -> int:  # noqa: ANN401
    rt = Runtime(cfg, config_dir=data_dir, on_event=_say)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, rt.request_stop)
    if duration is not None:
        loop.call_later(duration, rt.request_stop)
    progress: asyncio.Task[None] | None = None

    def ready(api_port: int | None) -> None:
        nonlocal progress
        url = f"http://{cfg.api.host}:{api_port}"
        points = sum(1 for _ in cfg.iter_points())
        _say(f"gateway running: {len(cfg.sites)} sites, {points} points, store {rt.store_path}")
        _say(f"API and page: {url}/   OpenAPI: {url}/docs   (Ctrl-C to stop)")
        _say(f"  curl -s {url}/api/v1/sites")
        _say(f"  curl -s '{url}/api/v1/assets?state=degraded'")
        _say(f"  curl -s '{url}/api/v1/gaps?open=true'")
        _say(f"  curl -s '{url}/api/v1/coverage?window=300&group_by=asset'")
        progress = asyncio.create_task(_progress(rt))

    try:
        await serve(rt, cfg.api.host, cfg.api.port, ready)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.cancel()
    _say("stopped; readings and gaps are kept in " + str(data_dir))
    return 0
