"""The `ot-gateway` command: plan, simulate, demo (the `make demo` path), run/stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.gw_helpers import wait_for

GOLDEN = Path(__file__).parent / "golden" / "config"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_plan_prints_coalesced_requests() -> None:
    proc = _cli("plan", str(GOLDEN / "valid_with_csv" / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # temp (0) and flow (1) are contiguous -> one FC3 request; speed (20..21) another.
    assert "unit 1 FC3 holding      0..1        2 registers, 2 points" in out
    assert "20..21" in out
    assert "total: 1 devices, 2.00 requests/s, 3.00 samples/s expected" in out


def test_plan_rejects_invalid_config() -> None:
    proc = _cli("plan", str(GOLDEN / "missing_device" / "config.yaml"))
    assert proc.returncode == 2
    assert "unknown device 'plc-9'" in proc.stderr


def test_simulate_with_invalid_profile_names_the_key(tmp_path: Path) -> None:
    profile = tmp_path / "sim.yaml"
    profile.write_text("devices:\n  - {id: d, host: 127.0.0.1, port: 99999}\n")
    proc = _cli("simulate", "-c", str(profile))
    assert proc.returncode == 2
    assert "port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("ot-gateway ")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_demo_runs_the_plant_and_serves_the_api(tmp_path: Path) -> None:
    """What `make demo` runs: simulator + gateway + API, progress lines, clean stop."""
    data = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None

        def api_url() -> str | None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "API and page: " in line:
                return line.split("API and page: ")[1].split()[0].rstrip("/")
            if proc.poll() is not None:
                raise AssertionError("demo exited:\n" + "".join(lines))
            return None

        url = wait_for(api_url, timeout=60, interval=0, what="API line")
        wait_for(lambda: any("devices up 4/4" in ln for ln in lines)
                 or lines.append(proc.stdout.readline()),  # type: ignore[union-attr,func-returns-value]
                 timeout=60, interval=0, what="progress line with 4 devices up")
        sites = httpx.get(url + "/api/v1/sites", timeout=10).json()
        assert {s["id"] for s in sites} == {"north", "south"}
        assets = httpx.get(url + "/api/v1/assets", timeout=10).json()
        assert len(assets) >= 6
        points = sum(a["points_total"] for a in assets)
        assert 50 <= points <= 80
        devices = httpx.get(url + "/api/v1/devices", timeout=10).json()
        assert len(devices) == 4
        assert (data / "gateway.db").exists()
    finally:
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        lines.append(out)
    assert proc.returncode == 0, "".join(lines)
    assert "stopped; readings and gaps are kept in" in "".join(lines)
