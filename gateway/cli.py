"""The `ot-gateway` command: run, demo, check-config, plan, simulate, browse, certs, fleet.

Exit codes: 0 success, 1 runtime failure (e.g. a server that cannot be reached), 2 invalid
configuration or usage. Invalid configuration prints one ``key.path: reason`` line per problem
and no traceback; invalid options name the option.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    loaded = _load(args.config)
    if loaded is None:
        return 2
    cfg = loaded
    del loaded  # `main` swaps `cfg` for the runtime's copy without the point models
    from gateway.runtime import Runtime, serve

    _setup_logging(args.log_level)

    config_dir = Path(args.config).resolve().parent

    async def main() -> None:
        nonlocal cfg
        runtime = Runtime(cfg, config_dir=config_dir)
        cfg = runtime.cfg  # the point models live on only where needed (issue #8)
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
        data_dir=Path(args.data_dir),
        port=args.port,
        duration=args.duration,
        fresh=args.fresh,
        mqtt_port=args.mqtt_port,
    )


def cmd_fleet(args: argparse.Namespace) -> int:
    """Serve one view of many site gateways from their MQTT state (`gateway.fleet`)."""
    from gateway.fleet.cli import run

    return run(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the field-device simulator alone."""
    from simulator.cli import main as sim_main

    argv = ["-c", args.config]
    for flag in ("truth", "stats", "ready_file"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag.replace('_', '-')}", value]
    return sim_main(argv)


# ---------------------------------------------------------------------------------------------
# browse: OPC UA discovery


class UsageError(Exception):
    """Invalid command-line input; the message names the option (exit code 2)."""


# OpcUaDeviceConfig field -> the `browse` option that sets it (for error messages).
_BROWSE_OPTIONS = {
    "id": "--device-id",
    "endpoint": "ENDPOINT",
    "security_policy": "--security-policy",
    "security_mode": "--security-mode",
    "insecure": "--insecure",
    "certificate": "--certificate",
    "private_key": "--private-key",
    "trust_dir": "--trust-dir",
    "rejected_dir": "--rejected-dir",
    "application_uri": "--application-uri",
    "username": "--username",
    "password": "--password-env",
    "timeout": "--timeout",
}
_SECURITY_FLAGS = (
    "security_policy",
    "security_mode",
    "insecure",
    "certificate",
    "private_key",
    "trust_dir",
    "rejected_dir",
    "application_uri",
    "username",
    "password_env",
)


def _device_errors(exc: Exception) -> list[str]:
    """A pydantic ValidationError as ``--option: reason`` lines."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [str(exc)]
    lines: list[str] = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ").replace(
            "set insecure: true", "pass --insecure"
        )
        loc = [str(part) for part in err["loc"]]
        key = loc[0] if loc else ""
        if not key and ": " in msg:  # model-level checks start with the key
            key, _, msg = msg.partition(": ")
        option = _BROWSE_OPTIONS.get(key, f"--{key.replace('_', '-')}" if key else "options")
        if key in ("certificate", "private_key", "trust_dir"):
            msg += (
                " (generate a pair with `ot-gateway certs generate --out DIR`; or browse without"
                " security: --security-policy None --insecure)"
            )
        lines.append(f"{option}: {msg}")
    return lines


def _browse_device(args: argparse.Namespace) -> Any:  # noqa: ANN401 - OpcUaDeviceConfig
    """The device settings `browse` connects with: from ``--config``, or from the options.

    Raises:
        UsageError: Invalid or conflicting options, unknown device, unset password variable.
    """
    from connectors.opcua.config import OpcUaDeviceConfig

    endpoint: str | None = args.endpoint
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            msg = f"ENDPOINT: must be opc.tcp://host[:port][/path], got {endpoint!r}"
            raise UsageError(msg)
    if args.config is not None:
        given = [f for f in _SECURITY_FLAGS if getattr(args, f) not in (None, False)]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            msg = f"--config: the device's security settings are used; drop {flags}"
            raise UsageError(msg)
        if args.device is None:
            msg = "--device: name the OPC UA device of --config to browse"
            raise UsageError(msg)
        cfg = _load(args.config)
        if cfg is None:
            raise UsageError("--config: invalid configuration (see above)")
        try:
            device = cfg.device(args.device)
        except KeyError:
            msg = f"--device: no device {args.device!r} in {args.config}"
            raise UsageError(msg) from None
        if not isinstance(device, OpcUaDeviceConfig):
            msg = f"--device: device {args.device!r} speaks {device.protocol}, not opcua"
            raise UsageError(msg)
        return device.model_copy(update={"endpoint": endpoint or device.endpoint})
    if args.device is not None:
        raise UsageError("--device: only with --config (use --device-id to name the output)")
    if endpoint is None:
        raise UsageError("ENDPOINT: give opc.tcp://host[:port][/path] (or --config and --device)")
    settings: dict[str, Any] = {
        "id": args.device_id,
        "endpoint": endpoint,
        "insecure": args.insecure,
        "timeout": args.timeout,
        "discover": False,
    }
    for key in _SECURITY_FLAGS:
        value = getattr(args, key)
        if key not in ("insecure", "password_env") and value is not None:
            settings[key] = value
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if password is None:
            msg = f"--password-env: environment variable {args.password_env} is not set"
            raise UsageError(msg)
        settings["password"] = password
    try:
        return OpcUaDeviceConfig(**settings)
    except ValueError as exc:  # pydantic's ValidationError
        raise UsageError("\n".join(_device_errors(exc))) from None


def _device_comment(device: Any, password_env: str | None) -> list[str]:  # noqa: ANN401
    """Comment lines: the ``devices:`` entry the rendered points refer to."""
    lines = [
        "devices:",
        f"  - id: {device.id}",
        "    protocol: opcua",
        f"    endpoint: {device.endpoint}",
        f"    security_policy: {device.security_policy.value}",
    ]
    if device.security_policy.value != "None":
        lines.append(f"    security_mode: {device.security_mode.value}")
    if device.insecure:
        lines.append("    insecure: true")
    for key in ("certificate", "private_key", "trust_dir", "rejected_dir", "application_uri",
                "username"):
        value = getattr(device, key)
        if value is not None:
            lines.append(f"    {key}: {value}")
    if device.password is not None:
        lines.append(f"    password: ${{{password_env or 'OPCUA_PASSWORD'}}}")
    return lines


def cmd_browse(args: argparse.Namespace) -> int:
    """List the variables of an OPC UA server as point entries for the config."""
    from connectors.base import ConnectError
    from connectors.opcua.browse import browse, render_points_csv, render_points_yaml
    from connectors.opcua.config import parse_node_id

    _setup_logging(args.log_level)
    if args.log_level != "debug":
        for name in ("asyncua", "asyncio"):  # connection failures are reported below, once
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        parse_node_id(args.start)
    except ValueError as exc:
        print(f"error: --start: {exc}", file=sys.stderr)
        return 2
    try:
        device = _browse_device(args)
    except UsageError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2

    async def run() -> list[Any]:
        return await browse(
            device.endpoint,
            args.start,
            args.depth,
            args.filter,
            device=device,
            include_ns0=args.include_ns0,
            limit=args.limit,
            max_nodes=args.max_nodes,
        )

    try:
        found = asyncio.run(run())
    except ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        text = render_points_csv(
            found, device.id, mode=args.mode, site=args.site or "", asset=args.asset or ""
        )
    else:
        header = [
            f"ot-gateway browse {device.endpoint} --start {args.start} --depth {args.depth}"
            + (f" --filter {args.filter}" if args.filter != "*" else ""),
            "",
            *_device_comment(device, args.password_env),
            "",
        ]
        text = render_points_yaml(found, device.id, mode=args.mode, header=header)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"error: --output: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    supported = sum(1 for v in found if v["supported"])
    print(
        f"{len(found)} variable(s) under {args.start} ({supported} usable as points)",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------------------------------------
# certs: the gateway's OPC UA application instance certificate


CERT_NAME = "gateway-cert.der"
KEY_NAME = "gateway-key.pem"


def cmd_certs_generate(args: argparse.Namespace) -> int:
    """Generate a self-signed client certificate and key for OPC UA security."""
    from connectors.opcua.certs import generate_self_signed
    from connectors.opcua.trust import thumbprint

    out = Path(args.out)
    cert_path, key_path = out / CERT_NAME, out / KEY_NAME
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not args.force:
        what = "exists (pass --force to replace it)" if len(existing) == 1 else (
            "exist (pass --force to replace them)"
        )
        print(f"error: --out: {' and '.join(existing)} {what}", file=sys.stderr)
        return 2
    hostname = args.hostname or socket.gethostname()
    uri = args.application_uri or f"urn:{hostname}:ot-gateway"
    if ":" not in uri:
        print(f"error: --application-uri: must be a URI such as urn:{hostname}:ot-gateway, "
              f"got {uri!r}", file=sys.stderr)
        return 2
    try:
        cert = generate_self_signed(
            cert_path, key_path, uri, hostname, common_name=args.cn, days=args.days,
            key_size=args.key_size,
        )
    except OSError as exc:
        print(f"error: --out: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    print(f"certificate: {cert_path} (DER, valid until {until})")
    print(f"private key: {key_path} (PEM, unencrypted, mode 0600)")
    print(f"subject:     {cert.subject.rfc4514_string()}")
    print(f"application URI: {uri}")
    print(f"thumbprint (SHA-1): {thumbprint(cert)}")
    print()
    print(f"Trust {CERT_NAME} on the server (copy it into its trusted folder), then set in the")
    print("OPC UA device of the gateway config:")
    print(f"    certificate: {cert_path}")
    print(f"    private_key: {key_path}")
    print(f"    application_uri: {uri}")
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


def _add_browse_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    p = sub.add_parser(
        "browse",
        help="list an OPC UA server's variables as point entries for the config",
        description="Browse an OPC UA server and print point entries (node_id, value_type, "
        "unit from EngineeringUnits) to paste under an asset's points:. Security defaults "
        "to Basic256Sha256/SignAndEncrypt (client certificate, key and trust directory "
        "needed; see `ot-gateway certs generate`); --security-policy None needs --insecure.",
    )
    p.add_argument("endpoint", nargs="?", metavar="ENDPOINT",
                   help="opc.tcp://host[:port][/path] (optional with --config/--device)")
    p.add_argument("--start", default="i=85",
                   help="start node id (default i=85, the Objects folder)")
    p.add_argument("--depth", type=_int_range(1, 32), default=5,
                   help="levels below the start node, 1..32 (default 5)")
    p.add_argument("--filter", default="*", metavar="GLOB",
                   help="glob on browse path (no namespace prefixes), display name or node id")
    p.add_argument("--format", choices=["yaml", "csv"], default="yaml", help="output format")
    p.add_argument("--mode", choices=["subscription", "poll"], default="subscription",
                   help="acquisition mode written into every entry")
    p.add_argument("--device-id", default="opcua",
                   help="device id the entries refer to (default opcua)")
    p.add_argument("--site", default=None, help="site column of --format csv")
    p.add_argument("--asset", default=None, help="asset column of --format csv")
    p.add_argument("--limit", type=_int_range(1, 100_000), default=10_000,
                   help="most variables listed (default 10000)")
    p.add_argument("--max-nodes", type=_int_range(1, 1_000_000), default=100_000,
                   help="most nodes visited (default 100000)")
    p.add_argument("--include-ns0", action="store_true",
                   help="also walk namespace 0 (the Server object)")
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")
    p.add_argument("-c", "--config", default=None,
                   help="take endpoint and security from a device of this gateway config")
    p.add_argument("--device", default=None, help="the OPC UA device id in --config")
    sec = p.add_argument_group("security (without --config)")
    sec.add_argument("--security-policy", default=None,
                     choices=["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss",
                              "None", "Basic128Rsa15", "Basic256"],
                     help="default Basic256Sha256")
    sec.add_argument("--security-mode", default=None, choices=["Sign", "SignAndEncrypt"],
                     help="default SignAndEncrypt")
    sec.add_argument("--insecure", action="store_true",
                     help="allow policy None and the deprecated policies")
    sec.add_argument("--certificate", default=None, help="client certificate file (DER/PEM)")
    sec.add_argument("--private-key", default=None, help="client private key file")
    sec.add_argument("--trust-dir", default=None, help="directory of trusted server certificates")
    sec.add_argument("--rejected-dir", default=None,
                     help="where untrusted server certificates are copied")
    sec.add_argument("--application-uri", default=None,
                     help="client ApplicationUri (default from the certificate)")
    sec.add_argument("--username", default=None, help="user name (UserName token)")
    sec.add_argument("--password-env", default=None, metavar="VAR",
                     help="environment variable holding the password (never on the command line)")
    p.add_argument("--timeout", type=_positive, default=5.0,
                   help="request timeout [s] (default 5; connect takes at most 4x)")
    p.add_argument("--log-level", default="error", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_browse)


def _add_certs_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    p = sub.add_parser("certs", help="OPC UA client certificates")
    certs = p.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    g = certs.add_parser(
        "generate",
        help="generate a self-signed client certificate and key",
        description=f"Write {CERT_NAME} and {KEY_NAME} (RSA, SHA-256, SAN URI and host name, "
        "serverAuth + clientAuth) into --out, for security policies Basic256Sha256, "
        "Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss.",
    )
    g.add_argument("--out", required=True, help="directory for the certificate and key")
    g.add_argument("--cn", default=None, help="subject common name (default ot-gateway@HOST)")
    g.add_argument("--days", type=_positive, default=730.0, help="validity [days] (default 730)")
    g.add_argument("--application-uri", default=None,
                   help="ApplicationUri in the certificate (default urn:HOST:ot-gateway)")
    g.add_argument("--hostname", default=None, help="host name or IP (default this host's name)")
    g.add_argument("--key-size", type=int, choices=[2048, 3072, 4096], default=2048,
                   help="RSA key size [bits] (default 2048)")
    g.add_argument("--force", action="store_true", help="replace existing files")
    g.set_defaults(func=cmd_certs_generate)


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
    p.add_argument(
        "--mqtt-port",
        type=int,
        default=1883,
        help="demo broker port (default 1883; a free port when taken; 0 = any)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fleet", help="one view of many site gateways (their MQTT state)")
    from gateway.fleet.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_fleet)

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

    _add_browse_parser(sub)
    _add_certs_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ot-gateway` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
