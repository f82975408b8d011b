"""Start the Modbus simulator as a real subprocess for tests, and stop it by PID.

Usage::

    with start_simulator(profile_dict, tmp_path) as sim:
        port = sim.ports["plc-1"]
        ...
    # stopped here (SIGTERM, then SIGKILL), even if the test failed

Every wait is bounded (``wait_for`` polls with a deadline).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

READY_TIMEOUT = 15.0  # s, simulator start (imports + bind) on a slow CI box


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError at the deadline.

    Exceptions raised by ``predicate`` count as "not yet" (the last one is chained).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # "not ready yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout} s waiting for {what or predicate}"
            raise TimeoutError(msg) from last_exc
        time.sleep(interval)


class SimProcess:
    """A running simulator subprocess (use as a context manager; stops on exit)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        workdir: Path,
        profile_path: Path,
        ready_path: Path,
        truth_path: Path,
        stats_path: Path,
        stderr_path: Path,
    ) -> None:
        self.proc = proc
        self.workdir = workdir
        self.profile_path = profile_path
        self.ready_path = ready_path
        self.truth_path = truth_path
        self.stats_path = stats_path
        self.stderr_path = stderr_path
        self.ready: dict[str, Any] = {}
        self.returncode: int | None = None

    # -- info ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the simulator process."""
        return self.proc.pid

    @property
    def ports(self) -> dict[str, int]:
        """Device id → actual TCP port (from the ready file)."""
        return {dev: int(info["port"]) for dev, info in self.ready["devices"].items()}

    @property
    def hosts(self) -> dict[str, str]:
        """Device id → listening host (from the ready file)."""
        return {dev: str(info["host"]) for dev, info in self.ready["devices"].items()}

    def truth(self) -> list[dict[str, Any]]:
        """Ground-truth records written so far (one per ended fault occurrence)."""
        if not self.truth_path.exists():
            return []
        lines = self.truth_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stats(self) -> dict[str, Any]:
        """The last stats file written (rewritten every 0.5 s and at exit)."""
        return json.loads(self.stats_path.read_text(encoding="utf-8"))

    def device_stats(self, device: str) -> dict[str, Any]:
        """Counters of one device from the last stats file."""
        return self.stats()["devices"][device]

    def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait until the stats file satisfies ``predicate``; return it."""
        found: dict[str, Any] = {}

        def check() -> bool:
            nonlocal found
            found = self.stats()
            return predicate(found)

        wait_for(check, timeout, what="stats condition")
        return found

    def stderr(self) -> str:
        """Everything the simulator wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    # -- control by PID -----------------------------------------------------------------------

    def pause(self) -> None:
        """SIGSTOP: the process freezes (TCP stays up, nothing answers)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> int:
        """SIGKILL now (no truth/stats flush); return the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.returncode = self.proc.wait(timeout=10)
        return self.returncode

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (clean stop: truth and stats flushed), SIGKILL after ``timeout``; exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        self.returncode = self.proc.wait(timeout=10)
        return self.returncode

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_profile(profile: dict[str, Any] | str | Path, directory: Path, name: str = "sim") -> Path:
    """Write a profile dict as YAML (or return an existing path unchanged)."""
    if isinstance(profile, str | Path):
        return Path(profile)
    path = directory / f"{name}-profile.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    return path


def simulator_command(
    profile_path: Path, ready: Path, truth: Path, stats: Path, extra_args: list[str] | None = None
) -> list[str]:
    """The command line that runs the simulator with this interpreter."""
    return [
        sys.executable,
        "-m",
        "simulator",
        "-c",
        str(profile_path),
        "--ready-file",
        str(ready),
        "--truth",
        str(truth),
        "--stats",
        str(stats),
        *(extra_args or []),
    ]


def start_simulator(
    profile: dict[str, Any] | str | Path,
    tmp_path: Path,
    *,
    name: str = "sim",
    ready_timeout: float = READY_TIMEOUT,
    extra_args: list[str] | None = None,
) -> SimProcess:
    """Start ``python -m simulator`` and wait (bounded) until its ready file exists.

    Args:
        profile: a profile dict (written as YAML into ``tmp_path``) or a profile file path.
        tmp_path: directory for the profile, ready, truth, stats and stderr files.
        name: file name prefix (start several simulators in one directory).
        ready_timeout: seconds to wait for the ready file.
        extra_args: more command-line arguments.

    Returns:
        The running process; the caller must stop it (``with`` does).

    Raises:
        RuntimeError: the process exited or did not become ready in time (stderr included).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    profile_path = write_profile(profile, tmp_path, name)
    ready = tmp_path / f"{name}-ready.json"
    truth = tmp_path / f"{name}-truth.jsonl"
    stats = tmp_path / f"{name}-stats.json"
    stderr_path = tmp_path / f"{name}-stderr.log"
    for p in (ready, truth, stats):
        p.unlink(missing_ok=True)
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            simulator_command(profile_path, ready, truth, stats, extra_args),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    sim = SimProcess(proc, tmp_path, profile_path, ready, truth, stats, stderr_path)
    ok = False
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if ready.exists():
                sim.ready = json.loads(ready.read_text(encoding="utf-8"))
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"simulator exited with {proc.returncode} before ready:\n{sim.stderr()}"
                )
            if time.monotonic() >= deadline:
                raise RuntimeError(f"simulator not ready after {ready_timeout} s:\n{sim.stderr()}")
            time.sleep(0.02)
        ok = True
        return sim
    finally:
        if not ok:
            sim.kill()


def run_simulator_once(
    profile: dict[str, Any] | str | Path, tmp_path: Path, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run the simulator expecting it to exit by itself (e.g. an invalid profile).

    Returns:
        The completed process with text stdout/stderr.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    profile_path = write_profile(profile, tmp_path, "once")
    return subprocess.run(
        simulator_command(
            profile_path,
            tmp_path / "once-ready.json",
            tmp_path / "once-truth.jsonl",
            tmp_path / "once-stats.json",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
