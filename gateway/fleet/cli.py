"""Command line of the fleet view: ``ot-gateway fleet -c fleet.yaml [--api-port N]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.config import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the fleet options to a (sub)parser."""
    p.add_argument("-c", "--config", required=True, help="fleet YAML file")
    p.add_argument("--api-port", type=int, default=None, help="override api.port (0 = any free)")
    p.add_argument("--ready-file", default=None, help='write {"api_port": N} here once serving')
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    """Validate the config (exit 2 with key-path messages), then serve until SIGINT/SIGTERM."""
    from gateway.fleet.config import load_fleet_config

    try:
        cfg = load_fleet_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from gateway.fleet.server import run_fleet

    def install(stop: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)

    def ready(port: int) -> None:
        if args.ready_file:
            Path(args.ready_file).write_text(f'{{"api_port": {port}}}\n')

    try:
        asyncio.run(run_fleet(cfg, api_port=args.api_port, ready=ready, install_signals=install))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``python -m gateway.fleet``."""
    parser = argparse.ArgumentParser(prog="ot-gateway fleet", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
