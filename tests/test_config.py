"""Config validation (R27): golden messages, exit codes, no traceback, nothing connects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

GOLDEN = Path(__file__).parent / "golden" / "config"
ERROR_CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected.err").exists())


def test_golden_cases_exist() -> None:
    assert len(ERROR_CASES) >= 10


@pytest.mark.parametrize("case", ERROR_CASES)
def test_golden_error_messages(case: str) -> None:
    """Each invalid config yields exactly the pinned `key.path: reason` lines."""
    expected = (GOLDEN / case / "expected.err").read_text().splitlines()
    with pytest.raises(ConfigError) as info:
        load_config(GOLDEN / case / "config.yaml")
    assert info.value.messages == expected


def test_valid_config_with_csv_points() -> None:
    cfg = load_config(GOLDEN / "valid_with_csv" / "config.yaml")
    points = {p.id: p for _, _, p in cfg.iter_points()}
    assert set(points) == {"speed", "temp", "flow"}
    assert points["temp"].scale == pytest.approx(0.1)
    assert points["temp"].range == (-20.0, 150.0)
    assert points["temp"].unit == "Cel"
    assert points["flow"].range is None
    assert points["speed"].byte_order.value == "CDAB"
    assert cfg.poll_interval(points["flow"]) == 1.0


def test_default_timeout_follows_poll_interval() -> None:
    cfg = parse_config("devices:\n  - {id: d, host: h, poll_interval: 0.2}\n")
    assert cfg.devices[0].timeout == pytest.approx(0.1)
    cfg = parse_config("devices:\n  - {id: d, host: h}\n")
    assert cfg.devices[0].timeout == pytest.approx(0.5)


def test_defaults_are_safe() -> None:
    """S9: the API binds loopback unless configured."""
    cfg = parse_config("")
    assert cfg.api.host == "127.0.0.1"


def test_env_reference_is_expanded_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = "SENTINEL-7f3a9c"
    monkeypatch.setenv("OTGW_TEST_PORT", sentinel)
    monkeypatch.setenv("OTGW_TEST_HOST", "10.0.0.7")
    text = "devices:\n  - {id: d, host: '${OTGW_TEST_HOST}', port: '${OTGW_TEST_PORT}'}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert sentinel not in str(info.value)
    assert info.value.messages[0].startswith("devices[0].port: ")
    monkeypatch.setenv("OTGW_TEST_PORT", "1502")
    cfg = parse_config(text)
    assert (cfg.devices[0].host, cfg.devices[0].port) == ("10.0.0.7", 1502)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::UserWarning"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


@pytest.mark.parametrize("case", ["bad_yaml", "unknown_key", "port_out_of_range", "missing_device"])
def test_check_config_exit_code_and_no_traceback(case: str) -> None:
    proc = _run_cli("check-config", str(GOLDEN / case / "config.yaml"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    first = (GOLDEN / case / "expected.err").read_text().splitlines()[0]
    assert first in proc.stderr


def test_check_config_ok_summary() -> None:
    proc = _run_cli("check-config", str(GOLDEN / "valid_with_csv" / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "1 site(s), 1 asset(s), 3 point(s), 1 device(s)" in proc.stdout


def test_run_with_invalid_config_opens_no_connection(tmp_path: Path) -> None:
    """R27: invalid config fails before anything connects."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "sites:\n  - id: s\n    assets:\n      - id: a\n        points:\n"
        "          - {id: p, device: d, register: holding, address: 0}\n"
        f"devices:\n  - {{id: d, host: 127.0.0.1, port: {port}, bogus: 1}}\n"
    )
    proc = _run_cli("run", "-c", str(cfg))
    assert proc.returncode == 2
    assert "devices[0].bogus: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


def test_missing_file() -> None:
    proc = _run_cli("check-config", "/nonexistent/plant.yaml")
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_point_file_with_opcua_and_modbus_rows(tmp_path: Path) -> None:
    """`ot-gateway browse --format csv` rows (node_id, value_type) load through point_files."""
    (tmp_path / "points.csv").write_text(
        "site,asset,point,device,register,address,type,node_id,value_type,unit,mode\n"
        "north,line,temp,ua,,,,ns=2;s=Line.Temp,number,Cel,subscription\n"
        "north,line,run,ua,,,,ns=2;s=Line.Run,bool,,poll\n"
        "north,line,count,plc,holding,3,uint32,,,,\n",
        encoding="utf-8",
    )
    (tmp_path / "plant.yaml").write_text(
        "devices:\n"
        "  - {id: plc, host: 127.0.0.1, port: 5020}\n"
        "  - {id: ua, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4840', insecure: true,\n"
        "     security_policy: None}\n"
        "sites: [{id: north, assets: [{id: line}]}]\n"
        "point_files: [points.csv]\n",
        encoding="utf-8",
    )
    cfg = load_config(tmp_path / "plant.yaml")
    points = {p.id: p for _s, _a, p in cfg.iter_points()}
    assert type(points["temp"]).__name__ == "OpcUaPointConfig"
    assert points["temp"].unit == "Cel"
    assert cfg.report_by_exception(points["temp"])
    assert not cfg.report_by_exception(points["run"])
    assert type(points["count"]).__name__ == "ModbusPointConfig"

    (tmp_path / "points.csv").write_text(
        "site,asset,point,device,node_id\nnorth,line,temp,ua,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "plant.yaml")
    assert err.value.messages == [
        "point_files[0] (points.csv) line 2: point 'temp': needs register and address, "
        "or node_id or browse_path"]


# -- memory at scale (issue #8): the event-stream YAML loader, shared fields sets, interning --

_YAML_CASES = {
    "empty": "",
    "comment only": "# nothing\n",
    "plain": "a: 1\nb: [2.5, x, null, true, 0x1F, 1_000, .inf]\nc: {d: 2026-01-01, e: 'q'}\n",
    "tags": "a: !!str 12\nb: !!float 1\ne: !!binary aGk=\n",
    "repeated key": "a: 1\nb: 2\na: 3\n",
    "scalar keys": "1: a\n2.5: b\nnull: c\ntrue: d\n",
    "document markers": "---\na: 1\n...\n",
    "anchor": "a: &x [1, 2]\nb: *x\n",
    "merge key": "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n",
    "quoted merge key": "'<<': 1\n",
    "complex key": "? [a, b]\n: 1\n",
    "set": "!!set {a, b}\n",
    "timestamp key": "2026-01-01: x\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "syntax error": "a: [1, 2\n",
    "unknown tag": "a: !foo 1\n",
    "bad int then syntax error": "a: !!int abc\nb: [\n",
}


@pytest.mark.parametrize("name", sorted(_YAML_CASES))
def test_yaml_loading_matches_pyyaml(name: str) -> None:
    import yaml

    from gateway.config import _YAML_LOADER, _load_yaml

    text = _YAML_CASES[name]

    def outcome(load: object) -> tuple[str, str]:
        try:
            return "ok", repr(load(text))  # type: ignore[operator]
        except Exception as exc:
            return "error", f"{type(exc).__name__}: {exc}"

    assert outcome(_load_yaml) == outcome(
        lambda t: yaml.load(t, Loader=_YAML_LOADER))  # noqa: S506 - a SafeLoader


def test_yaml_loading_matches_pyyaml_on_the_shipped_configs() -> None:
    import yaml

    from gateway.config import _YAML_LOADER, _load_yaml

    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("tests/golden/**/*.yaml"), *root.glob("gateway/*.yaml"),
             *root.glob("deploy/**/*.yaml")]
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            expected = repr(yaml.load(text, Loader=_YAML_LOADER))  # noqa: S506 - a SafeLoader
        except yaml.YAMLError:
            continue  # error cases are covered above and by the golden messages
        assert repr(_load_yaml(text)) == expected, path


def test_points_share_ids_and_fields_sets(tmp_path: Path) -> None:
    (tmp_path / "points.csv").write_text(
        "site,asset,point,device,register,address,unit\n"
        "s,a,p0,plc,holding,0,Cel\ns,b,p0,plc,holding,1,Cel\ns,b,p1,plc,holding,2,\n",
        encoding="utf-8",
    )
    (tmp_path / "gw.yaml").write_text(
        "devices: [{id: plc, host: 127.0.0.1, port: 5020}]\n"
        "sites: [{id: s, assets: [{id: a}, {id: b, points: [\n"
        "  {id: p2, device: plc, register: holding, address: 3, unit: Cel, scale: 2}]}]}]\n"
        "point_files: [points.csv]\n",
        encoding="utf-8",
    )
    cfg = load_config(tmp_path / "gw.yaml")
    points = [p for _s, _a, p in cfg.iter_points()]
    by = {(a.id, p.id): p for _s, a, p in cfg.iter_points()}
    assert [(a.id, p.id) for _s, a, p in cfg.iter_points()] == [
        ("a", "p0"), ("b", "p2"), ("b", "p0"), ("b", "p1")]
    assert by["a", "p0"].id is by["b", "p0"].id
    assert all(p.device is cfg.devices[0].id for p in points)
    assert by["a", "p0"].unit is by["b", "p2"].unit
    # Equal sets of explicitly given fields are one object; unequal ones stay apart.
    assert by["a", "p0"].model_fields_set == {"id", "device", "table", "address", "unit"}
    assert by["a", "p0"].model_fields_set is by["b", "p0"].model_fields_set
    assert by["b", "p1"].model_fields_set == {"id", "device", "table", "address"}
    assert by["b", "p2"].model_fields_set == {"id", "device", "table", "address", "unit", "scale"}
    assert by["b", "p2"].model_dump(exclude_unset=True) == {
        "id": "p2", "device": "plc", "unit": "Cel", "scale": 2.0, "table": "holding",
        "address": 3}
    copy = by["a", "p0"].model_copy(update={"scale": 3.0})
    assert "scale" in copy.model_fields_set
    assert "scale" not in by["b", "p0"].model_fields_set
