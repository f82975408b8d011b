"""Sinks: where accepted readings are forwarded from the local store (DESIGN.md §3, §5).

- `lineprotocol`: pure InfluxDB line-protocol encoding of store rows (escaping, typed fields);
- `base`: the `Sink` protocol and the classified `SinkError`;
- `influx`: the InfluxDB v2 write-API sink (influxdb-client, async, no client-side retries);
- `forwarder`: the per-sink outbox loop (batches, retries, split, dead letters, status).
"""
