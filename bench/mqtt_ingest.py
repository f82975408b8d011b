"""MQTT ingest benchmark: messages/s and values/s the MqttConnector keeps up with, CPU per 1,000 values.

A paho publisher *process* floods a mosquitto subprocess (``max_queued_messages 0``) with
100-byte-class JSON messages (``--fields`` values each, QoS 0 or 1); the connector runs in this
process and counts decoded samples (no store: the connector alone). CPU is this process's
user+system time. Usage: ``python bench/mqtt_ingest.py [--messages 100000] [--fields 1] [--qos 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.mqtt.config import MqttDeviceConfig
from connectors.mqtt.connector import MqttConnector, MqttPoint
from tests.mosquitto_helpers import Mosquitto

PUBLISHER = """
import json, sys, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
port, n, fields, qos = map(int, sys.argv[1:5])
c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
for i in range(n):
    body = {"seq": i, "ts": time.time_ns() // 1_000_000}
    body.update({f"f{k}": i + k * 0.5 for k in range(fields)})
    c.publish(f"bench/north/asset-{i % 10}", json.dumps(body), qos=qos)
c.publish("bench/done", b"1", qos=1).wait_for_publish(60)
time.sleep(0.5)
c.loop_stop()
"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(messages: int, fields: int, qos: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        names = {f"f{k}": f"/f{k}" for k in range(fields)}
        dev = MqttDeviceConfig.model_validate({
            "id": "bench", "host": "127.0.0.1", "port": broker.port, "clean_start": True,
            "mappings": [{"topic": "bench/{site}/{asset}", "decoder": "json", "fields": names,
                          "timestamp": "/ts", "timestamp_unit": "ms", "qos": qos}],
        })
        points = [MqttPoint(f"north/asset-{a}/f{k}") for a in range(10) for k in range(fields)]
        conn = MqttConnector(dev, points)
        async with conn:
            proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(broker.port), str(messages), str(fields), str(qos)])  # noqa: ASYNC220
            values = 0
            t0 = c0 = None
            it = conn.samples()
            while values < messages * fields:
                batch = await asyncio.wait_for(it.__anext__(), 30)
                if t0 is None:
                    t0, c0 = time.perf_counter(), cpu()
                values += len(batch)
            wall, used = time.perf_counter() - t0, cpu() - c0
            proc.wait(timeout=60)
    return {"messages": messages, "fields": fields, "qos": qos, "values": values,
            "msg_per_s": round(messages / wall), "values_per_s": round(values / wall),
            "cpu_s_per_1000_values": round(used / values * 1000, 4),
            "cpu_share": round(used / wall, 2), "bursts": conn.stats.polls,
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--fields", type=int, default=1)
    parser.add_argument("--qos", type=int, default=0, choices=[0, 1])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.fields, args.qos))))


if __name__ == "__main__":
    main()
