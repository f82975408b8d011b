"""Start the real gateway as a subprocess in tests, and wait with deadlines (never bare sleeps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class GatewayProcess:
    """A running `python -m gateway run` subprocess with its API on a free loopback port."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, name: str = "gw") -> None:
        self.workdir = workdir
        self.config = config
        self.config_path = workdir / f"{name}.yaml"
        self.ready_path = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.ready_path.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path),
             "--api-port", "0", "--ready-file", str(self.ready_path), "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()

        def ready() -> int | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            if self.ready_path.exists():
                text = self.ready_path.read_text()
                if text.strip():
                    port: int = json.loads(text)["api_port"]
                    return port
            return None

        self.port = wait_for(ready, timeout=timeout, what="gateway ready file")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(self.url + path, params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop by PID (SIGTERM, then SIGKILL after `timeout`); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
