"""Command line of the simulator (``python -m simulator``).

Usage: ``python -m simulator -c PROFILE.yaml [--truth P] [--stats P] [--ready-file P]
[--parent-pid PID]``.

Exit codes: 0 after SIGTERM/SIGINT (clean stop, truth and stats flushed) or once the process
given by ``--parent-pid`` is no longer the parent (it exited), 1 when a device cannot listen,
2 for an invalid profile or arguments (message names the key path).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from simulator.config import Profile, ProfileError, load_profile
from simulator.runner import SimulatorError, run

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

PARENT_CHECK_S = 0.5
"""Seconds between two checks that the ``--parent-pid`` process is still the parent."""


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))


def _setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _UtcFormatter(
            "%(asctime)s.%(msecs)03dZ simulator %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    logger = logging.getLogger("simulator")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by ``ot-gateway simulate``)."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Serve simulated Modbus TCP devices and OPC UA servers from a YAML profile.",
    )
    parser.add_argument("-c", "--config", required=True, help="profile YAML file")
    parser.add_argument("--truth", help="ground-truth JSON Lines file (overrides the profile)")
    parser.add_argument("--stats", help="request counters JSON file (overrides the profile)")
    parser.add_argument("--ready-file", help="JSON file written once every device listens")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="stop when this process is no longer the parent (it exited)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once ``pid`` is no longer our parent (it exited and we were re-parented)."""
    while not stop.is_set():
        if os.getppid() != pid:
            logging.getLogger("simulator").warning("parent process %d is gone: stopping", pid)
            stop.set()
            return
        await asyncio.sleep(PARENT_CHECK_S)


async def _serve(profile: Profile, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = None
    if args.parent_pid is not None:
        watcher = asyncio.create_task(_watch_parent(args.parent_pid, stop))
    try:
        await run(profile, args.truth, args.stats, args.ready_file, stop)
    finally:
        if watcher is not None:
            watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT.

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit code (0 clean stop, 1 runtime error, 2 invalid profile or arguments).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its message
        return EXIT_OK if exc.code == 0 else EXIT_CONFIG
    _setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        profile = load_profile(args.config)  # validate before anything listens
    except ProfileError as exc:
        print(f"simulator: invalid profile {args.config}:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        asyncio.run(_serve(profile, args))
    except SimulatorError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:  # SIGINT before the handler was installed
        return EXIT_OK
    return EXIT_OK
