"""The `ot-gateway` command: run, demo, check-config, plan, simulate.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
Invalid configuration prints one ``key.path: reason`` line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig, load_config

log = logging.getLogger("ot_gateway")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pymodbus logs every failed connect at ERROR; the runtime reports link changes itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _load(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file; print a one-line summary."""
    cfg = _load(args.file)
    if cfg is None:
        return 2
    points = sum(1 for _ in cfg.iter_points())
    assets = sum(len(s.assets) for s in cfg.sites)
    print(
        f"{args.file}: OK — {len(cfg.sites)} site(s), {assets} asset(s), {points} point(s), "
        f"{len(cfg.devices)} device(s)"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print what will be polled: requests per device, registers per request, samples/s."""
    from gateway.plan import render_plan

    cfg = _load(args.file)
    if cfg is None:
        return 2
    print(render_plan(cfg))
    return 0


def _install_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway from a config file until SIGINT/SIGTERM."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    from gateway.runtime import Runtime, serve

    _setup_logging(args.log_level)

    config_dir = Path(args.config).resolve().parent

    async def main() -> None:
        runtime = Runtime(cfg, config_dir=config_dir)
        _install_signals(runtime.request_stop)
        host = args.api_host or cfg.api.host
        port = args.api_port if args.api_port is not None else cfg.api.port

        def ready(bound: int | None) -> None:
            if bound is not None:
                log.info("API on http://%s:%d/ (OpenAPI at /docs)", host, bound)
            if args.ready_file:
                Path(args.ready_file).write_text(f'{{"api_port": {bound or "null"}}}\n')

        await serve(runtime, host if cfg.api.enabled else None, port, ready)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the simulator and the gateway on the embedded demo plant."""
    from gateway.demo import run_demo

    _setup_logging("error")
    return run_demo(
        data_dir=Path(args.data_dir), port=args.port, duration=args.duration, fresh=args.fresh
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the field-device simulator alone."""
    from simulator.cli import main as sim_main

    argv = ["-c", args.config]
    for flag in ("truth", "stats", "ready_file"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag.replace('_', '-')}", value]
    return sim_main(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `ot-gateway`."""
    parser = argparse.ArgumentParser(
        prog="ot-gateway",
        description="OT/IoT connectivity and asset-visibility gateway.",
    )
    parser.add_argument("--version", action="version", version=f"ot-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway from a config file")
    p.add_argument("-c", "--config", required=True, help="gateway YAML config")
    p.add_argument("--api-host", default=None, help="override api.host")
    p.add_argument("--api-port", type=int, default=None, help="override api.port (0 = any free)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--ready-file", default=None, help="write the bound API port here when up")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="simulator + gateway + API on the embedded demo plant")
    p.add_argument("--port", type=int, default=8080, help="API port (default 8080, 0 = any)")
    p.add_argument("--data-dir", default="./demo-data", help="where the demo keeps its files")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--fresh", action="store_true", help="delete the demo's previous store first")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("plan", help="print the poll plan: requests, registers, samples/s")
    p.add_argument("file")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("simulate", help="run the field-device simulator")
    p.add_argument("-c", "--config", required=True, help="simulator profile YAML")
    p.add_argument("--truth", default=None, help="ground-truth JSONL output")
    p.add_argument("--stats", default=None, help="request-counter JSON output")
    p.add_argument("--ready-file", default=None, help="JSON with bound ports, written when up")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ot-gateway` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
