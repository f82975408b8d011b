"""Packaged simulator profiles (see ``README.md`` here).

``demo.yaml``: the Modbus demo plant; ``demo_mqtt.yaml``: the demo's MQTT publishers (JSON and
Sparkplug B, run by `simulator.mqtt_publisher`); ``opcua.yaml``: two OPC UA servers.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from simulator.config import Profile, load_profile
from simulator.mqtt_profile import MqttSimProfile, load_mqtt_profile


def demo_profile_path() -> Path:
    """Path of the packaged demo profile (``simulator/profiles/demo.yaml``)."""
    return Path(str(files("simulator.profiles").joinpath("demo.yaml")))


def load_demo_profile() -> Profile:
    """The demo profile, validated.

    Returns:
        The profile (4 devices on 127.0.0.1, port 0).
    """
    return load_profile(demo_profile_path())


def demo_mqtt_profile_path() -> Path:
    """Path of the packaged demo MQTT profile (``simulator/profiles/demo_mqtt.yaml``)."""
    return Path(str(files("simulator.profiles").joinpath("demo_mqtt.yaml")))


def load_demo_mqtt_profile() -> MqttSimProfile:
    """The demo MQTT profile, validated.

    Returns:
        The profile (3 publishers; broker 127.0.0.1:1883, MQTT 3.1.1 — the demo passes the
        port its broker bound with ``--broker-port``).

    Raises:
        MqttProfileError: The packaged file is invalid.
    """
    return load_mqtt_profile(demo_mqtt_profile_path())


def opcua_profile_path() -> Path:
    """Path of the packaged OPC UA profile (``simulator/profiles/opcua.yaml``)."""
    return Path(str(files("simulator.profiles").joinpath("opcua.yaml")))


def load_opcua_profile() -> Profile:
    """The OPC UA profile, validated.

    Returns:
        The profile (2 OPC UA servers on 127.0.0.1, port 0).
    """
    return load_profile(opcua_profile_path())
