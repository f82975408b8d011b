"""The `ot-gateway` command: plan, simulate, demo (the `make demo` path), run/stop, browse, certs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

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
        configured = len(httpx.get(url + "/api/v1/devices", timeout=10).json())
        assert configured >= 4  # the Modbus PLCs and meter, plus whatever the demo adds
        all_up = f"devices up {configured}/{configured}"
        wait_for(lambda: any(all_up in ln for ln in lines)
                 or lines.append(proc.stdout.readline()),  # type: ignore[union-attr,func-returns-value]
                 timeout=60, interval=0, what=f"progress line '{all_up}'")
        sites = httpx.get(url + "/api/v1/sites", timeout=10).json()
        assert {s["id"] for s in sites} == {"north", "south"}
        assets = httpx.get(url + "/api/v1/assets", timeout=10).json()
        assert len(assets) >= 6
        points = sum(a["points_total"] for a in assets)
        assert 50 <= points <= 80
        devices = httpx.get(url + "/api/v1/devices", timeout=10).json()
        assert {d["id"] for d in devices} >= {"meter-main", "plc-boilers", "plc-packing",
                                              "plc-pumps"}
        assert (data / "gateway.db").exists()
    finally:
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        lines.append(out)
    assert proc.returncode == 0, "".join(lines)
    assert "stopped; readings and gaps are kept in" in "".join(lines)


# ---------------------------------------------------------------------------------------------
# browse and certs (OPC UA), against the OPC UA simulator subprocess


BROWSE_VARIABLES = [
    {"name": "Boiler1/Temp", "type": "Double", "unit": "Cel", "eu_range": [0, 200],
     "signal": {"kind": "constant", "value": 80.0}},
    {"name": "Boiler1/Pressure", "type": "Double", "unit": "bar",
     "signal": {"kind": "constant", "value": 2.5}},
    {"name": "Line/Counter", "type": "UInt32", "node_id": "i=7001",
     "signal": {"kind": "counter", "period": 1.0}},
    {"name": "Setpoint", "type": "Float", "writable": True,
     "signal": {"kind": "constant", "value": 50.0}},
    {"name": "Run", "type": "Boolean", "signal": {"kind": "constant", "value": 1}},
    {"name": "Label", "type": "String", "signal": {"kind": "constant", "value": "B-1"}},
    {"name": "Vector", "type": "Double", "array": 4, "signal": {"kind": "constant", "value": 1.0}},
]
EXPECTED_POINTS = {  # node id -> (value_type, unit)
    "ns=2;s=Boiler1.Temp": ("number", "Cel"),
    "ns=2;s=Boiler1.Pressure": ("number", "bar"),
    "ns=2;i=7001": ("number", None),
    "ns=2;s=Setpoint": ("number", None),
    "ns=2;s=Run": ("bool", None),
    "ns=2;s=Label": ("string", None),
}  # the array (Vector) is not a usable point


def _opc_profile(**extra: object) -> dict[str, object]:
    return {"devices": [{"id": "opc", "protocol": "opcua", "variables": BROWSE_VARIABLES,
                         **extra}]}


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def _commented_block(text: str, first: str) -> str:
    """The comment block starting at ``# <first>`` up to the next blank comment, uncommented."""
    lines = text.splitlines()
    start = lines.index(f"# {first}")
    block = []
    for line in lines[start:]:
        if line.strip() == "#":
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def _opc_points(cfg: object) -> dict[str, object]:
    from gateway.config import GatewayConfig, OpcUaPointConfig

    assert isinstance(cfg, GatewayConfig)
    out: dict[str, object] = {}
    for _, _, p in cfg.iter_points():
        assert isinstance(p, OpcUaPointConfig)
        out[str(p.node_id)] = p
    return out


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_browse_yaml_pastes_into_the_config(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from tests.sim_helpers import start_simulator

    with start_simulator(_opc_profile(), tmp_path) as sim:
        endpoint = sim.ready["devices"]["opc"]["endpoint"]
        proc = _cli("browse", endpoint, "--security-policy", "None", "--insecure",
                    "--device-id", "boiler-house")
        filtered = _cli("browse", endpoint, "--security-policy", "None", "--insecure",
                        "--filter", "*Temp", "--depth", "3", "--mode", "poll")
    assert proc.returncode == 0, proc.stderr
    assert "7 variable(s) under i=85 (6 usable as points)" in proc.stderr
    out = proc.stdout
    # The commented device entry and the point entries paste into a config as they are.
    text = (
        _commented_block(out, "devices:")
        + "sites:\n  - id: plant\n    assets:\n      - id: boilers\n        points:\n"
        + _indent(out, 10)
    )
    cfg = parse_config(text, "pasted.yaml")
    (device,) = cfg.devices
    assert (device.id, device.protocol, device.endpoint) == ("boiler-house", "opcua", endpoint)
    points = _opc_points(cfg)
    assert {k: (p.value_type.value, p.unit) for k, p in points.items()} == EXPECTED_POINTS  # type: ignore[attr-defined]
    assert {p.device for p in points.values()} == {"boiler-house"}  # type: ignore[attr-defined]
    assert "# unsupported (array or structure: BadTypeMismatch): ns=2;s=Vector" in out
    assert "eu_range: [0, 200]" in out  # shown for percent deadbands
    # --filter / --depth / --mode: only Boiler1.Temp (depth 3 reaches Objects/opc/Boiler1/Temp)
    assert filtered.returncode == 0, filtered.stderr
    only = yaml.safe_load(filtered.stdout)
    assert [(e["node_id"], e["mode"], e["unit"]) for e in only] == [
        ("ns=2;s=Boiler1.Temp", "poll", "Cel")
    ]


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_browse_csv_rows_are_valid_points(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from tests.sim_helpers import start_simulator

    with start_simulator(_opc_profile(), tmp_path) as sim:
        endpoint = sim.ready["devices"]["opc"]["endpoint"]
        out_file = tmp_path / "points.csv"
        proc = _cli("browse", endpoint, "--security-policy", "None", "--insecure", "--format",
                    "csv", "--site", "plant", "--asset", "boilers", "-o", str(out_file))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    rows = list(csv.DictReader(out_file.read_text().splitlines()))
    assert len(rows) == 6
    assert {(r["site"], r["asset"], r["device"]) for r in rows} == {("plant", "boilers", "opcua")}
    points = [{k: v for k, v in r.items() if v and k not in ("site", "asset")} for r in rows]
    for p in points:
        p["id"] = p.pop("point")
    cfg = parse_config(yaml.safe_dump({
        "devices": [{"id": "opcua", "protocol": "opcua", "endpoint": endpoint,
                     "security_policy": "None", "insecure": True}],
        "sites": [{"id": "plant", "assets": [{"id": "boilers", "points": points}]}],
    }), "csv-rows.yaml")
    parsed = _opc_points(cfg)
    assert {k: (p.value_type.value, p.unit) for k, p in parsed.items()} == EXPECTED_POINTS  # type: ignore[attr-defined]
    assert {p.name for p in parsed.values()} >= {"Temp", "Pressure", "Counter"}  # type: ignore[attr-defined]


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["http://127.0.0.1:4840"], 2, "ENDPOINT: must be opc.tcp://"),
        (["opc.tcp://127.0.0.1:{port}"], 2, "--certificate: required with security_policy "
                                            "Basic256Sha256 (generate a pair"),
        (["opc.tcp://127.0.0.1:{port}", "--security-policy", "None"], 2,
         "--security-policy: None offers no signing and no encryption"),
        (["opc.tcp://127.0.0.1:{port}", "--security-policy", "None", "--insecure",
          "--start", "Objects"], 2, "--start: 'Objects' is not a node id"),
        (["opc.tcp://127.0.0.1:{port}", "--security-policy", "None", "--insecure",
          "--username", "u", "--password-env", "OTGW_TEST_UNSET_VARIABLE"], 2,
         "--password-env: environment variable OTGW_TEST_UNSET_VARIABLE is not set"),
        (["opc.tcp://127.0.0.1:{port}", "--security-policy", "None", "--insecure",
          "--timeout", "1"], 1, "connect failed"),
        (["--config", "{missing}", "--device", "x"], 2, "cannot read"),
    ],
)
def test_browse_errors_are_clear_without_traceback(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    from tests.opcua_helpers import free_port

    port = free_port()  # nothing listens there
    argv = [a.format(port=port, missing=tmp_path / "missing.yaml") for a in args]
    proc = _cli("browse", *argv)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_certs_generate_pair_works_with_sign_and_encrypt(tmp_path: Path) -> None:
    """`certs generate` makes the client pair; `browse` and the connector use it over
    Basic256Sha256 / Aes256_Sha256_RsaPss with SignAndEncrypt (the server offers nothing else)."""
    import asyncio
    import shutil

    from connectors.opcua.config import OpcUaAddress, OpcUaDeviceConfig
    from connectors.opcua.connector import OpcUaConnector, OpcUaPoint
    from tests.opcua_helpers import collect, flat
    from tests.sim_helpers import start_simulator

    own = tmp_path / "pki" / "own"
    gen = _cli("certs", "generate", "--out", str(own), "--application-uri", "urn:test:cli-gw",
               "--hostname", "localhost", "--days", "30")
    assert gen.returncode == 0, gen.stderr
    cert, key = own / "gateway-cert.der", own / "gateway-key.pem"
    assert f"certificate: {cert}" in gen.stdout
    assert "thumbprint (SHA-1): " in gen.stdout
    assert key.stat().st_mode & 0o077 == 0  # the key is private
    again = _cli("certs", "generate", "--out", str(own))
    assert again.returncode == 2
    assert "--force" in again.stderr
    trusted, rejected = tmp_path / "pki" / "trusted", tmp_path / "pki" / "rejected"
    trusted.mkdir()
    security = {"policies": ["Basic256Sha256_SignAndEncrypt",
                             "Aes256_Sha256_RsaPss_SignAndEncrypt"]}
    flags = ["--security-policy", "Basic256Sha256", "--security-mode", "SignAndEncrypt",
             "--certificate", str(cert), "--private-key", str(key), "--trust-dir", str(trusted)]
    with start_simulator(_opc_profile(security=security), tmp_path / "sim") as sim:
        endpoint = sim.ready["devices"]["opc"]["endpoint"]
        # First contact: the server certificate is not trusted yet -> refused, copied aside.
        refused = _cli("browse", endpoint, *flags)
        assert refused.returncode == 1
        assert "server certificate is not trusted" in refused.stderr
        assert "Traceback" not in refused.stderr
        (copied,) = rejected.iterdir()
        shutil.move(copied, trusted / copied.name)  # the operator trusts it
        found = _cli("browse", endpoint, *flags, "--filter", "*Boiler1*")
        assert found.returncode == 0, found.stderr
        entries = yaml.safe_load(found.stdout)
        assert sorted(e["node_id"] for e in entries) == [
            "ns=2;s=Boiler1.Pressure", "ns=2;s=Boiler1.Temp",
        ]
        assert f"#     certificate: {cert}" in found.stdout
        # The same pair with the strongest policy: data flows.
        device = OpcUaDeviceConfig(
            id="opc", endpoint=endpoint, security_policy="Aes256_Sha256_RsaPss",
            certificate=str(cert), private_key=str(key), trust_dir=str(trusted),
            publishing_interval=0.1, discover=False,
        )
        point = OpcUaPoint("plant/boilers/counter", OpcUaAddress(node_id="ns=2;i=7001"))

        async def flow() -> list[list[object]]:
            async with OpcUaConnector(device, [point]) as conn:
                return await collect(conn, lambda b: len(flat(b)) >= 2)  # type: ignore[return-value]

        batches = asyncio.run(flow())
        stats = sim.wait_stats(lambda s: s["devices"]["opc"]["sessions_created"] >= 2)
    assert all(s.quality == 0 for s in flat(batches))  # type: ignore[arg-type]
    assert stats["devices"]["opc"]["sessions_created"] == 2  # browse + connector, none refused


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_browse_takes_endpoint_and_security_from_a_config_device(tmp_path: Path) -> None:
    from tests.sim_helpers import start_simulator

    with start_simulator(_opc_profile(), tmp_path) as sim:
        endpoint = sim.ready["devices"]["opc"]["endpoint"]
        config = tmp_path / "plant.yaml"
        config.write_text(yaml.safe_dump({
            "devices": [
                {"id": "boiler-house", "protocol": "opcua", "endpoint": endpoint,
                 "security_policy": "None", "insecure": True},
                {"id": "plc", "host": "127.0.0.1", "port": 502},
            ],
        }))
        found = _cli("browse", "-c", str(config), "--device", "boiler-house", "--filter", "Run",
                     "--device-id", "ignored")
        modbus = _cli("browse", "-c", str(config), "--device", "plc")
        mixed = _cli("browse", "-c", str(config), "--device", "boiler-house", "--insecure")
        unknown_start = _cli("browse", "-c", str(config), "--device", "boiler-house",
                             "--start", "ns=2;s=NoSuchNode")
    assert found.returncode == 0, found.stderr
    (entry,) = yaml.safe_load(found.stdout)
    assert (entry["device"], entry["node_id"], entry["value_type"]) == (
        "boiler-house", "ns=2;s=Run", "bool",
    )
    assert (modbus.returncode, mixed.returncode) == (2, 2)
    assert "--device: device 'plc' speaks modbus, not opcua" in modbus.stderr
    assert "--config: the device's security settings are used; drop --insecure" in mixed.stderr
    assert unknown_start.returncode == 1
    assert "start node ns=2;s=NoSuchNode cannot be browsed: BadNodeId" in unknown_start.stderr
    for proc in (modbus, mixed, unknown_start):
        assert "Traceback" not in proc.stderr
