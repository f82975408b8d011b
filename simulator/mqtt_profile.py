"""Profile of the MQTT simulator (its own small model; merged with `simulator.config` later).

Example::

    broker: {host: 127.0.0.1, port: 1883, mqtt_version: "5"}   # "3.1.1" for amqtt
    seed: 0                             # random_walk signals
    publishers:
      - id: meters
        kind: json                      # json | plain | sparkplug_b
        topic: "plant/north/{asset}"    # json: {asset}; plain: {asset} and {point}
        assets: [meter-1, meter-2]
        points: [kw, kvar]
        signals:                        # optional; points without one carry seq
          kw: {kind: sine, amplitude: 5, period: 60, offset: 40}
        interval: 1.0                   # s between messages of an asset
        qos: 1
        faults:
          - {kind: silent, start: 5, duration: 3, every: 60}  # nothing for 3 s, every 60 s
          - {kind: malformed, start: 4, count: 2}       # sends 2 invalid payloads
      - id: edge-1
        kind: sparkplug_b
        group: plant1
        node: edge-1
        assets: [pump-1]                # Sparkplug devices (DBIRTH/DDATA); [] = node metrics
        points: [flow, speed]
        faults:
          - {kind: seq_gap, start: 6, count: 2}         # skips 2 seq numbers
          - {kind: death, start: 8, duration: 3}        # will NDEATH, rebirth after 3 s

Values are the oracle: every point of a message carries ``seq`` (a float), and JSON payloads
also carry ``seq`` and the source time ``ts`` [ms since the Unix epoch]. A point listed under
``signals`` carries that signal's value at the message's source time instead (the same pure
functions of the wall clock as the Modbus simulator, `simulator.signals`; numeric only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.config import ConstantSignal, Signal, StepSignal

_STRICT = ConfigDict(extra="forbid", frozen=True)


class MqttFault(BaseModel):
    """A scripted fault of one publisher.

    Attributes:
        kind: ``silent`` (publish nothing for ``duration``), ``malformed`` (send ``count``
            invalid payloads at ``start``), ``seq_gap`` (Sparkplug: skip ``count`` seqs),
            ``death`` (Sparkplug: drop the session so the broker sends the will NDEATH,
            reconnect with a new bdSeq after ``duration``).
        start: Seconds after the simulator started [s] (>= 0).
        duration: Length [s] for silent/death (> 0).
        count: Payloads (malformed) or seqs (seq_gap) [1..1000].
        every: Repeat period [s]: occurrences at ``start + k·every``; None = once. For
            silent/death it must exceed ``duration`` (occurrences never overlap).
    """

    model_config = _STRICT

    kind: Literal["silent", "malformed", "seq_gap", "death"]
    start: float = Field(ge=0, description="Start after simulator start [s]")
    duration: float = Field(default=1.0, gt=0, le=86400, description="Length [s]")
    count: int = Field(default=1, ge=1, le=1000, description="Payloads or seqs")
    every: float | None = Field(
        default=None, gt=0, le=86400, description="Repeat period [s]; None = once"
    )

    @model_validator(mode="after")
    def _check_every(self) -> Self:
        if (
            self.every is not None
            and self.kind in ("silent", "death")
            and self.every <= self.duration
        ):
            msg = f"every: must exceed duration ({self.duration} s) so occurrences do not overlap"
            raise ValueError(msg)
        return self


class MqttPublisherProfile(BaseModel):
    """One simulated publisher (one MQTT client).

    Attributes:
        id: Publisher id (slug); the MQTT client id is ``sim-<id>``.
        kind: ``json`` (one object per asset and tick), ``plain`` (one message per point) or
            ``sparkplug_b`` (an edge node; ``assets`` are its devices).
        topic: json/plain topic template (``{asset}``, plain also ``{point}``).
        group: Sparkplug group id.
        node: Sparkplug edge node id.
        assets: Assets (Sparkplug devices); ``[]`` = Sparkplug node metrics only.
        points: Point (metric) names of every asset.
        signals: Point name -> numeric signal; other points carry ``seq``.
        interval: Seconds between two messages of an asset [0.001..3600].
        qos: QoS of data messages [0..1].
        faults: Scripted faults.
    """

    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    kind: Literal["json", "plain", "sparkplug_b"]
    topic: str = Field(default="sim/{asset}", description="json/plain topic template")
    group: str = Field(default="sim", description="Sparkplug group id")
    node: str = Field(default="edge-1", description="Sparkplug edge node id")
    assets: list[str] = Field(default_factory=lambda: ["asset-1"])
    points: list[str] = Field(default_factory=lambda: ["value"], min_length=1)
    signals: dict[str, Signal] = Field(
        default_factory=dict, description="Point -> numeric signal; others carry seq"
    )
    interval: float = Field(default=1.0, ge=0.001, le=3600, description="Seconds per message")
    qos: Literal[0, 1] = 1
    faults: list[MqttFault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_signals(self) -> Self:
        for name, signal in self.signals.items():
            if name not in self.points:
                msg = f"signals.{name}: not one of points {self.points}"
                raise ValueError(msg)
            values = (
                [signal.value]
                if isinstance(signal, ConstantSignal)
                else list(signal.values)
                if isinstance(signal, StepSignal)
                else []
            )
            if any(isinstance(v, str) for v in values):
                msg = f"signals.{name}: text values are not supported (points are doubles)"
                raise ValueError(msg)
        return self


class MqttBroker(BaseModel):
    """Where the publishers connect.

    Attributes:
        host: Broker host name or IP address.
        port: TCP port [1..65535] (``--broker-port`` overrides it).
        mqtt_version: ``5`` (default) or ``3.1.1`` (e.g. for amqtt, which speaks only 3.1.1).
            With 3.1.1 a Sparkplug ``death`` drops the TCP connection without DISCONNECT (the
            only way to make a 3.1.1 broker publish the will).
        keepalive: Keep alive [s] [5..65535].
    """

    model_config = _STRICT

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    mqtt_version: Literal["3.1.1", "5"] = Field(default="5", description="3.1.1 | 5")
    keepalive: int = Field(default=10, ge=5, le=65535, description="Keep alive [s]")


class MqttSimProfile(BaseModel):
    """The whole MQTT simulator profile."""

    model_config = _STRICT

    broker: MqttBroker = Field(default_factory=MqttBroker)
    seed: int = Field(default=0, description="Seed of random_walk signals")
    publishers: list[MqttPublisherProfile] = Field(min_length=1)


class MqttProfileError(Exception):
    """The profile is invalid; the message names the key path."""


def load_mqtt_profile(path: str | Path) -> MqttSimProfile:
    """Read and validate a profile.

    Raises:
        MqttProfileError: Unreadable, invalid YAML, or invalid content (key path named).
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return MqttSimProfile.model_validate(data)
    except OSError as exc:
        msg = f"{path}: {exc}"
        raise MqttProfileError(msg) from None
    except yaml.YAMLError as exc:
        msg = f"{path}: invalid YAML: {exc}"
        raise MqttProfileError(msg) from None
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        msg = f"{path}: invalid profile:\n  " + "\n  ".join(lines)
        raise MqttProfileError(msg) from None
