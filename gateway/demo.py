"""`ot-gateway demo`: the simulator's demo plant + an MQTT broker + the gateway + the API.

No external services: starts the Modbus simulator as a subprocess (its own process, as real
devices would be), an MQTT broker in this process (amqtt on 127.0.0.1, `gateway.demo_broker`;
1883 when free, else any free port), the simulated MQTT publishers as a second subprocess
(JSON and Sparkplug B, `simulator.mqtt_publisher` with ``simulator/profiles/demo_mqtt.yaml``),
fills the bound ports into the packaged demo gateway config, and runs the gateway in this
process with a progress line every few seconds. The gateway subscribes to the publishers and
publishes its normalized readings back to the same broker (``northbound.mqtt``, topics
``ot/{site}/{asset}/{point}``).

Files in the data dir: ``gateway.db`` (store), ``sim-truth.jsonl`` / ``sim-mqtt-truth.jsonl``
(ground truth of every fault the simulators caused), ``sim-stats.json`` /
``sim-mqtt-stats.json``, ``sim-ready.json`` / ``sim-mqtt-ready.json``, ``simulator.log`` /
``simulator-mqtt.log``.

Stop order (Ctrl-C / SIGTERM): the gateway (its northbound publisher announces ``offline``),
then the MQTT publishers, then the broker, then the Modbus simulator. Both simulators get
``--parent-pid``, so they also stop if the demo itself is killed.
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
from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.demo_broker import DEFAULT_PORT, DemoBroker, DemoBrokerError
from gateway.runtime import Runtime, serve

PROGRESS_S = 5.0
"""Seconds between progress lines."""

SIM_START_TIMEOUT_S = 20.0
"""Seconds a simulator may take to write its ready file."""

SIM_STOP_TIMEOUT_S = 10.0
"""Seconds a simulator may take to exit after SIGTERM before it is killed."""


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {msg}", flush=True)


def demo_gateway_config(
    ports: dict[str, int], data_dir: Path, api_port: int, mqtt_port: int | None = None
) -> dict[str, Any]:
    """The packaged demo gateway config with the bound ports filled in.

    Args:
        ports: Modbus device id -> TCP port the simulator bound.
        data_dir: Directory for the store.
        api_port: API port [0..65535].
        mqtt_port: Port of the demo's MQTT broker [1..65535] for the MQTT device and
            ``northbound.mqtt``; None = the Modbus-only plant (the MQTT device, the assets fed
            by it and ``northbound`` are removed), for callers that start only the Modbus
            simulator.

    Returns:
        The raw config mapping (validate with `parse_config`).

    Raises:
        KeyError: A Modbus device of the demo plant is missing from ``ports``.
    """
    text = resources.files("gateway").joinpath("demo_plant.yaml").read_text(encoding="utf-8")
    raw: dict[str, Any] = yaml.safe_load(text)
    mqtt_ids = {d["id"] for d in raw["devices"] if d.get("protocol") == "mqtt"}
    if mqtt_port is None:
        raw["devices"] = [d for d in raw["devices"] if d["id"] not in mqtt_ids]
        for site in raw["sites"]:
            site["assets"] = [
                a for a in site["assets"] if not any(p["device"] in mqtt_ids for p in a["points"])
            ]
        raw.pop("northbound", None)
    else:
        raw["northbound"]["mqtt"]["port"] = mqtt_port
    for dev in raw["devices"]:
        dev["port"] = mqtt_port if dev["id"] in mqtt_ids else ports[dev["id"]]
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
            "--parent-pid",
            str(os.getpid()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = monotonic() + SIM_START_TIMEOUT_S
    while monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the simulator exited with code {proc.returncode}; see {data_dir}/simulator.log"
            raise RuntimeError(msg)
        if ready.exists() and ready.read_text().strip():
            info = json.loads(ready.read_text())
            return proc, {dev: int(v["port"]) for dev, v in info["devices"].items()}
        time.sleep(0.1)
    proc.kill()
    msg = f"the simulator did not start within {SIM_START_TIMEOUT_S:.0f} s"
    raise RuntimeError(msg)


async def _start_mqtt_simulator(data_dir: Path, broker_port: int) -> asyncio.subprocess.Process:
    """Start the demo's MQTT publishers (own process and session) and wait until connected.

    The process gets its own session so that a terminal's Ctrl-C reaches only the demo, which
    stops it after the gateway; ``--parent-pid`` makes it exit if the demo dies without that.

    Raises:
        RuntimeError: It exited or did not connect within `SIM_START_TIMEOUT_S` (it is killed).
    """
    from simulator.profiles import demo_mqtt_profile_path

    ready = data_dir / "sim-mqtt-ready.json"
    ready.unlink(missing_ok=True)
    with (data_dir / "simulator-mqtt.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulator.mqtt_publisher",
            "-c",
            str(demo_mqtt_profile_path()),
            "--broker-port",
            str(broker_port),
            "--truth",
            str(data_dir / "sim-mqtt-truth.jsonl"),
            "--stats",
            str(data_dir / "sim-mqtt-stats.json"),
            "--ready-file",
            str(ready),
            "--parent-pid",
            str(os.getpid()),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = monotonic() + SIM_START_TIMEOUT_S
    while monotonic() < deadline:
        if proc.returncode is not None:
            msg = (
                f"the MQTT simulator exited with code {proc.returncode}; "
                f"see {data_dir}/simulator-mqtt.log"
            )
            raise RuntimeError(msg)
        if ready.exists() and ready.read_text().strip():
            return proc
        await asyncio.sleep(0.1)
    await _stop_process(proc)
    msg = f"the MQTT simulator did not connect within {SIM_START_TIMEOUT_S:.0f} s"
    raise RuntimeError(msg)


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM by PID, wait `SIM_STOP_TIMEOUT_S`, then SIGKILL."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), SIM_STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _progress(rt: Runtime, broker: DemoBroker) -> None:
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
        mqtt = f"MQTT clients {broker.clients()}"
        if rt.northbound is not None:
            mqtt += f" · {rt.northbound.publisher.stats.published:,} published on ot/#"
        _say(
            f"devices up {up}/{len(devices)} · {rate:,.0f} readings/s · {n:,} stored · "
            f"points: {states} · open gaps {rt.inventory.open_gap_count} · {mqtt}"
        )


def run_demo(
    *,
    data_dir: Path,
    port: int,
    duration: float | None,
    fresh: bool,
    mqtt_port: int = DEFAULT_PORT,
) -> int:
    """Run the demo until Ctrl-C / SIGTERM (or `duration` seconds).

    Args:
        data_dir: Directory for the store, simulator files and logs (created).
        port: API port [0..65535] (0 = any free port).
        duration: Stop after this many seconds; None = until a signal.
        fresh: Delete ``data_dir`` first.
        mqtt_port: Port the in-process MQTT broker tries first [0..65535] (0 = any free port);
            when it is taken, any free port is used (the banner prints the one bound).

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
        return asyncio.run(_run(ports, data_dir, port, duration, mqtt_port))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sim.pid, signal.SIGTERM)
        try:
            sim.wait(SIM_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            sim.kill()


async def _run(
    ports: dict[str, int], data_dir: Path, api_port: int, duration: float | None, mqtt_port: int
) -> int:
    """Broker, MQTT publishers, gateway; each stopped in reverse order of start."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    rt: Runtime | None = None

    def request_stop() -> None:
        stop_requested.set()
        if rt is not None:
            rt.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    if duration is not None:
        loop.call_later(duration, request_stop)

    broker = DemoBroker(port=mqtt_port)
    try:
        broker_port = await broker.start()
    except DemoBrokerError as exc:
        print(f"error: MQTT broker: {exc}", file=sys.stderr)
        return 1
    try:
        taken = f" ({mqtt_port} is taken)" if broker.fell_back else ""
        _say(f"MQTT broker (amqtt, in this process, MQTT 3.1.1) on 127.0.0.1:{broker_port}{taken}")
        _say("starting the MQTT publishers (JSON chillers and dryer, a Sparkplug B edge node)…")
        try:
            mqtt_sim = await _start_mqtt_simulator(data_dir, broker_port)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            try:
                raw = demo_gateway_config(ports, data_dir, api_port, broker_port)
                cfg = parse_config(yaml.safe_dump(raw), "demo_plant.yaml")
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            rt = Runtime(cfg, config_dir=data_dir, on_event=_say)
            if stop_requested.is_set():
                return 0
            return await _serve(rt, cfg, broker, data_dir)
        finally:
            await _stop_process(mqtt_sim)
    finally:
        await broker.stop()


async def _serve(rt: Runtime, cfg: GatewayConfig, broker: DemoBroker, data_dir: Path) -> int:
    """Run the gateway and the API until stop is requested; print the banner when ready."""
    progress: asyncio.Task[None] | None = None

    def ready(api_port: int | None) -> None:
        nonlocal progress
        url = f"http://{cfg.api.host}:{api_port}"
        points = len(rt.spec.points)
        _say(f"gateway running: {len(cfg.sites)} sites, {points} points, store {rt.store_path}")
        _say(f"API and page: {url}/   OpenAPI: {url}/docs   (Ctrl-C to stop)")
        _say(f"  curl -s {url}/api/v1/sites")
        _say(f"  curl -s '{url}/api/v1/assets?state=degraded'")
        _say(f"  curl -s '{url}/api/v1/gaps?open=true'")
        _say(f"  curl -s '{url}/api/v1/coverage?window=300&group_by=asset'")
        _say(f"  curl -s {url}/api/v1/unmapped        (MQTT topics nobody configured)")
        mqtt = f"-h {broker.host} -p {broker.port}"
        _say(f"normalized readings on MQTT: mosquitto_sub {mqtt} -t 'ot/#' -v")
        _say(f"  what the simulated field publishes: mosquitto_sub {mqtt} -t 'plant/#' -v")
        progress = asyncio.create_task(_progress(rt, broker))

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
