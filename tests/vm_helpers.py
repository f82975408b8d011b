"""Start Debian's victoria-metrics on a free loopback port for tests; stop it by PID.

victoria-metrics accepts the InfluxDB v2 write API (``/api/v2/write``) that influxdb-client
uses. It maps measurement ``reading`` + field ``value`` to the metric ``reading_value`` with the
tags as labels, stores ms timestamps (``-influxTrimTimestamp`` 1 ms), keeps duplicate samples
(no ``-dedup.minScrapeInterval``: a replay shows up as a duplicate, which the tests compare),
stores booleans as 1/0 and drops string contents (a ``text`` field is exported as 0). Read back
with `VictoriaMetrics.export` after ``/internal/force_flush``.

Every wait is bounded; a missing binary is a failure, never a skip (DESIGN.md §6).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BINARY = "victoria-metrics"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Sample:
    """One exported sample."""

    metric: str
    site: str
    asset: str
    point: str
    ts_ms: int
    value: float


class VictoriaMetrics:
    """A victoria-metrics subprocess with its data in `workdir` (kept across restarts)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.data = workdir / "vm-data"
        self.log_path = workdir / "vm.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> VictoriaMetrics:
        binary = shutil.which(BINARY)
        assert binary, f"{BINARY} not installed: run `make deps-system` (apt-get install {BINARY})"
        self.data.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, f"-httpListenAddr=127.0.0.1:{self.port}",
                 f"-storageDataPath={self.data}", "-retentionPeriod=100y",
                 "-loggerLevel=ERROR", "-search.disableCache"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"victoria-metrics exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"victoria-metrics not healthy after {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop by PID (SIGTERM flushes its buffers; SIGKILL after `timeout`)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> VictoriaMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading back ----------------------------------------------------------------------

    def flush(self) -> None:
        httpx.get(self.url + "/internal/force_flush", timeout=30).raise_for_status()

    def export_raw(self, match: str = '{__name__=~"reading_.*"}') -> list[dict[str, Any]]:
        """Every series matching `match` with all its samples (after a force flush)."""
        self.flush()
        resp = httpx.post(self.url + "/api/v1/export", data={"match[]": match}, timeout=120)
        resp.raise_for_status()
        return [json.loads(line) for line in resp.text.splitlines() if line.strip()]

    def samples(self, match: str = '{__name__=~"reading_.*"}') -> list[Sample]:
        out: list[Sample] = []
        for series in self.export_raw(match):
            m = series["metric"]
            for ts, value in zip(series["timestamps"], series["values"], strict=True):
                out.append(Sample(m["__name__"], m.get("site", ""), m.get("asset", ""),
                                  m.get("point", ""), int(ts), float(value)))
        return out

    def by_key(self, metric: str = "reading_value") -> dict[tuple[str, int], list[float]]:
        """``{("site/asset/point", ts_ms): [values...]}`` for one metric (duplicates kept)."""
        out: dict[tuple[str, int], list[float]] = defaultdict(list)
        for s in self.samples(f'{{__name__="{metric}"}}'):
            out[(f"{s.site}/{s.asset}/{s.point}", s.ts_ms)].append(s.value)
        return dict(out)
