"""MQTT JSON ingest into the local store: broker, load generator and gateway in separate processes.

Workload (`run_gateway`): Debian mosquitto with ``max_queued_messages 0`` (no queue limit, so
the broker never drops QoS 0 messages for a slow subscriber) and ``max_inflight_messages 0``;
a load-generator process publishes QoS 0 JSON messages at a fixed rate, one value each,
round-robin over 1,000 points (``bench/a<0..99>/p<0..9>``), payload
``{"seq": n, "ts": <ms since epoch>, "v": <float>, "q": "ok"}`` (≈ 70 bytes); the gateway
(``ot-gateway run``) subscribes with one JSON mapping (value ``/v``, source time ``/ts``). Over
a window [t0, t0 + W) aligned to whole seconds of source time:

- delivered: usable readings in the store file with source time in the window / messages the
  publisher sent in that window (counted per second by the publisher), after the publisher
  stopped and the gateway had up to ``grace`` seconds to commit what it had received;
- gateway CPU seconds (/proc) per 1,000 readings committed during the window, CPU share, RSS;
- latency from source time (the publisher's clock, ms) to commit, seen by polling the store
  file every 50 ms.

The load generator (``publish`` sub-command) is a minimal MQTT 3.1.1 client on a raw socket:
pre-encoded PUBLISH frames written in bursts every 2 ms. A paho publisher tops out near 10k
msg/s on this machine kind and would measure itself; the broker and the gateway speak real MQTT.

Floors (``subscribe`` sub-command, `run_floor`): the bare protocol client receiving the same
stream with no processing (count only): paho-mqtt's own network loop, and aiomqtt's message
iterator (what the gateway builds on), each in its own process, CPU from /proc.

Usage: .venv/bin/python bench/mqtt_ingest.py [--rate 10000] [--window 20] [--runs 1]
       .venv/bin/python bench/mqtt_ingest.py --floor paho|aiomqtt [--rate 10000]
       .venv/bin/python bench/mqtt_ingest.py publish --port P --rate R --duration D \
           --stats FILE [--qos 1]      # the load generator alone (tests/test_mqtt_flood.py)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    CommitWatcher,
    cpu_seconds,
    log,
    max_id,
    mmm,
    pct,
    start_gateway,
    status_mb,
    stop,
    table,
    thread_cpu,
    threads_share,
    wait_json,
    wait_store,
    window_counts,
)

ASSETS = 100
POINTS = 10
BURST_S = 0.002


# -- load generator ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid  # clean, keepalive 0
    return b"\x10" + _varint(len(body)) + body


QOS1_WINDOW = 10_000
"""QoS 1 publisher: PUBLISH frames sent and not yet acknowledged (PUBACK) at most [count]."""


def publish(port: int, rate: float, duration: float, stats_path: Path, qos: int = 0) -> int:
    """Publish JSON messages at `rate` for `duration` s; write per-second counts.

    QoS 1 (``qos=1``): packet ids cycle through 1..65535 and at most `QOS1_WINDOW` messages
    are unacknowledged (the publisher waits for PUBACKs beyond); every message is
    acknowledged by the broker before the stats are written (``acked``).
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"bench-pub-{os.getpid()}"))
    connack = sock.recv(4)
    if len(connack) < 4 or connack[3] != 0:
        raise SystemExit(f"CONNACK refused: {connack!r}")
    heads = []
    for i in range(ASSETS * POINTS):
        topic = f"bench/a{i % ASSETS}/p{i // ASSETS}".encode()
        heads.append(len(topic).to_bytes(2, "big") + topic)
    n_topics = len(heads)
    per_second: dict[int, int] = {}
    stopping = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    sent = 0
    ack_bytes = 0  # QoS 1: PUBACK bytes read (4 per PUBACK; nothing else comes back)

    def read_acks(wait: float) -> None:
        """Count the PUBACK bytes available; wait up to `wait` s for the first ones."""
        nonlocal ack_bytes
        sock.settimeout(wait)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    raise SystemExit("broker closed the connection")
                ack_bytes += len(data)
                sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass
        finally:
            sock.settimeout(None)

    while not stopping:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= duration:
            break
        due = int(rate * elapsed)
        if due > sent:
            ms = time.time_ns() // 1_000_000
            ts = str(ms)
            frames = []
            if qos:
                due = min(due, ack_bytes // 4 + QOS1_WINDOW)
                while due <= sent:  # the window is full: wait for PUBACKs (bounded)
                    if stopping or time.monotonic() - start > duration + 30:
                        raise SystemExit("no PUBACK from the broker")
                    read_acks(1.0)
                    due = min(int(rate * (time.monotonic() - start)), ack_bytes // 4 + QOS1_WINDOW)
            for seq in range(sent, due):
                head = heads[seq % n_topics]
                if qos:
                    head += (seq % 65535 + 1).to_bytes(2, "big")
                payload = f'{{"seq":{seq},"ts":{ts},"v":{seq * 0.5},"q":"ok"}}'.encode()
                size = len(head) + len(payload)
                frames.append((b"\x32" if qos else b"\x30")
                              + (bytes((size,)) if size < 128 else _varint(size)) + head + payload)
            sock.sendall(b"".join(frames))
            if qos:
                read_acks(0.0)
            per_second[ms // 1000] = per_second.get(ms // 1000, 0) + due - sent
            sent = due
        time.sleep(max(0.0, BURST_S - (time.monotonic() - now)))
    seconds = time.monotonic() - start
    if qos:
        ack_deadline = time.monotonic() + 30
        while ack_bytes // 4 < sent and time.monotonic() < ack_deadline:
            read_acks(1.0)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    stats_path.write_text(json.dumps({"sent": sent, "per_second": per_second,
                                      "seconds": seconds, "acked": ack_bytes // 4 if qos else None}))
    return 0


def start_publisher(port: int, rate: float, duration: float, work: Path, qos: int = 0,
                    ) -> tuple[subprocess.Popen[bytes], Path]:
    stats = work / "publisher.json"
    stats.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "publish", "--port",
                             str(port), "--rate", str(rate), "--duration", str(duration),
                             "--stats", str(stats), "--qos", str(qos)])
    return proc, stats


def sent_in(stats: dict[str, Any], s0: int, s1: int) -> int:
    """Messages the publisher stamped with a source time in whole seconds [s0, s1)."""
    return sum(n for sec, n in stats["per_second"].items() if s0 <= int(sec) < s1)


# -- the gateway workload -----------------------------------------------------------------------


def gateway_config(port: int, data: Path, qos: int = 0) -> dict[str, Any]:
    """One MQTT device, one JSON mapping; QoS 1 subscribes with ``ack: commit``."""
    cfg: dict[str, Any] = {
        "gateway": {"data_dir": str(data)},
        "api": {"host": "127.0.0.1", "port": 0},
        "devices": [{
            "id": "broker", "protocol": "mqtt", "host": "127.0.0.1", "port": port,
            "keepalive": 30, "clean_start": True,
            "mappings": [{"topic": "bench/{asset}/{point}", "decoder": "json", "site": "bench",
                          "value": "/v", "timestamp": "/ts", "timestamp_unit": "ms", "qos": qos,
                          "expected_interval": 1.0}],
        }],
        "sites": [{"id": "bench", "assets": [
            {"id": f"a{a}", "points": [{"id": f"p{p}", "device": "broker"} for p in range(POINTS)]}
            for a in range(ASSETS)]}],
    }
    if qos:
        cfg["devices"][0]["ack"] = "commit"
    return cfg


def run_gateway(rate: float, window: float, warmup: float = 5.0, grace: float = 15.0,
                profile_to: Path | None = None, qos: int = 0) -> dict[str, float]:
    """One run of the MQTT workload at `rate` msg/s; see the module docstring."""
    from tests.mosquitto_helpers import Mosquitto

    with tempfile.TemporaryDirectory(prefix="otgw-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", max_queued_messages=0) as broker:
            data = work / "data"
            gw, url = start_gateway(gateway_config(broker.port, data, qos), work)
            pub = None
            try:
                deadline = time.monotonic() + 30
                import httpx
                while not httpx.get(url + "/api/v1/devices", timeout=5).json()[0].get("link_up"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("gateway did not subscribe")
                    time.sleep(0.1)
                watcher = CommitWatcher(data / "gateway.db", sample_every=max(1, int(rate) // 2000))
                watcher.start()
                conn = wait_store(data / "gateway.db")
                pub, stats_path = start_publisher(broker.port, rate, warmup + window + 1.5, work,
                                                  qos)
                # window: whole seconds of source time, after the warm-up
                s0 = int(time.time() + warmup) + 1
                s1 = s0 + int(window)
                watcher.since_ns, watcher.until_ns = s0 * 10**9, s1 * 10**9
                time.sleep(max(0.0, s0 - time.time()))
                n0, c0, m0 = max_id(conn), cpu_seconds(gw.pid), time.monotonic()
                th0 = thread_cpu(gw.pid)
                b0, p0 = cpu_seconds(broker.pid), cpu_seconds(pub.pid)
                profiler = None
                if profile_to is not None:
                    from profile_gateway import start_profile
                    profiler = start_profile(gw.pid, window, profile_to)
                time.sleep(max(0.0, s1 - time.time()))
                n1, c1, m1 = max_id(conn), cpu_seconds(gw.pid), time.monotonic()
                th1 = thread_cpu(gw.pid)
                b1, p1 = cpu_seconds(broker.pid), cpu_seconds(pub.pid)
                pub.wait(warmup + window + 60)
                stats = json.loads(stats_path.read_text())
                expected = sent_in(stats, s0, s1)
                if profiler is not None:
                    profiler.wait(60)
                # grace: let the gateway commit what it has received (bounded)
                end = time.monotonic() + grace
                usable = 0
                while time.monotonic() < end:
                    usable = window_counts(conn, s0 * 10**9, s1 * 10**9)[1]
                    if usable >= expected:
                        break
                    time.sleep(0.25)
                rss = status_mb(gw.pid, "VmHWM")
                watcher.stop()
                committed = n1 - n0
                return {
                    "rate": rate, "sent": expected, "delivered": usable / expected if expected else float("nan"),
                    "lost": expected - usable, "readings_s": committed / (m1 - m0),
                    "cpu_per_1k": (c1 - c0) / max(committed, 1) * 1000,
                    "cpu_frac": (c1 - c0) / (m1 - m0), "rss_mb": rss,
                    "lat_p50": pct(watcher.latencies, 0.5), "lat_p99": pct(watcher.latencies, 0.99),
                    "publisher_rate": stats["sent"] / stats["seconds"],
                    "threads": threads_share(gw.pid, th0, th1, m1 - m0),
                    "broker_cpu": (b1 - b0) / (m1 - m0), "publisher_cpu": (p1 - p0) / (m1 - m0),
                }
            finally:
                stop(pub)
                stop(gw)


# -- floors: the bare subscriber ----------------------------------------------------------------


def subscribe(client: str, port: int, counts: Path) -> int:
    """Count messages on ``bench/#`` with no processing; write the count every 0.2 s."""
    received = 0
    stopping = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)

    def dump() -> None:
        tmp = counts.with_suffix(".tmp")
        tmp.write_text(json.dumps({"received": received}))
        tmp.replace(counts)

    if client == "paho":
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        def on_message(_c: object, _u: object, _m: object) -> None:
            nonlocal received
            received += 1

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-floor-{os.getpid()}",
                        protocol=paho.MQTTv5)
        c.on_message = on_message
        c.connect("127.0.0.1", port, keepalive=30)
        c.subscribe("bench/#", qos=0)
        next_dump = 0.0
        while not stopping:
            c.loop(timeout=0.2)
            if time.monotonic() >= next_dump:
                dump()
                next_dump = time.monotonic() + 0.2
        return 0

    import asyncio

    import aiomqtt

    async def main() -> None:
        nonlocal received
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-floor-{os.getpid()}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe("bench/#", qos=0)

            async def dumper() -> None:
                while True:
                    dump()
                    await asyncio.sleep(0.2)

            task = asyncio.create_task(dumper())  # while idle
            next_dump = 0.0
            async for _message in c.messages:
                received += 1
                if not received % 256 and time.monotonic() >= next_dump:  # while busy
                    dump()
                    next_dump = time.monotonic() + 0.2
                if stopping:
                    break
            task.cancel()

    asyncio.run(main())
    return 0


def run_floor(client: str, rate: float, window: float, warmup: float = 3.0) -> dict[str, float]:
    """The bare `client` subscriber at `rate` msg/s: received share, CPU per 1,000, RSS."""
    from tests.mosquitto_helpers import Mosquitto

    with tempfile.TemporaryDirectory(prefix="otgw-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", max_queued_messages=0) as broker:
            counts = work / "counts.json"
            sub = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "subscribe",
                                    "--client", client, "--port", str(broker.port), "--counts",
                                    str(counts)])
            pub = None
            try:
                wait_json(counts, sub, 30)
                pub, stats_path = start_publisher(broker.port, rate, warmup + window, work)
                time.sleep(warmup)
                r0, c0, m0 = json.loads(counts.read_text())["received"], cpu_seconds(sub.pid), time.monotonic()
                b0 = cpu_seconds(broker.pid)
                time.sleep(window)
                r1, c1, m1 = json.loads(counts.read_text())["received"], cpu_seconds(sub.pid), time.monotonic()
                b1 = cpu_seconds(broker.pid)
                pub.wait(60)
                sent = json.loads(stats_path.read_text())["sent"]
                end = time.monotonic() + 10
                total = r1
                while time.monotonic() < end:
                    total = json.loads(counts.read_text())["received"]
                    if total >= sent:
                        break
                    time.sleep(0.2)
                rss = status_mb(sub.pid, "VmHWM")
                got = r1 - r0
                return {"rate": rate, "received_s": got / (m1 - m0),
                        "delivered": total / sent if sent else float("nan"),
                        "cpu_per_1k": (c1 - c0) / max(got, 1) * 1000,
                        "cpu_frac": (c1 - c0) / (m1 - m0), "rss_mb": rss,
                        "broker_cpu": (b1 - b0) / (m1 - m0)}
            finally:
                stop(pub)
                stop(sub)


HEADER = ["workload", "messages/s sent", "delivered", "readings/s committed", "CPU-s per 1,000",
          "gateway CPU", "peak RSS", "latency p50 / p99"]


def row(name: str, runs: list[dict[str, float]]) -> list[str]:
    def col(key: str) -> list[float]:
        return [r[key] for r in runs]
    return [
        name, mmm(col("publisher_rate"), "{:,.0f}"),
        mmm([v * 100 for v in col("delivered")], "{:.2f}", " %"),
        mmm(col("readings_s"), "{:,.0f}"), mmm(col("cpu_per_1k"), "{:.4f}"),
        mmm([v * 100 for v in col("cpu_frac")], "{:.0f}", " %"), mmm(col("rss_mb"), "{:.0f}", " MB"),
        f"{mmm([v * 1000 for v in col('lat_p50')], '{:.0f}')} / "
        f"{mmm([v * 1000 for v in col('lat_p99')], '{:.0f}')} ms",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="gateway",
                        choices=["gateway", "publish", "subscribe"])
    parser.add_argument("--rate", type=float, default=10_000.0, help="messages/s")
    parser.add_argument("--window", type=float, default=20.0, help="measurement window [s]")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--floor", choices=["paho", "aiomqtt"], default=None,
                        help="measure the bare subscriber instead of the gateway")
    # sub-command options
    parser.add_argument("--port", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--client", choices=["paho", "aiomqtt"])
    parser.add_argument("--counts", type=Path)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0,
                        help="QoS of publisher and subscription (1: the gateway acks after commit)")
    args = parser.parse_args()
    if args.command == "publish":
        return publish(args.port, args.rate, args.duration, args.stats, args.qos)
    if args.command == "subscribe":
        return subscribe(args.client, args.port, args.counts)
    if args.floor:
        for i in range(args.runs):
            log(f"floor {args.floor} @ {args.rate:,.0f}/s run {i + 1}")
            print(json.dumps(run_floor(args.floor, args.rate, args.window)), flush=True)
        return 0
    runs = []
    for i in range(args.runs):
        log(f"mqtt {args.rate:,.0f} msg/s run {i + 1}/{args.runs}")
        runs.append(run_gateway(args.rate, args.window, qos=args.qos))
        log(json.dumps(runs[-1]))
    print(table(HEADER, [row(f"MQTT JSON QoS {args.qos}, {args.rate:,.0f} msg/s", runs)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
