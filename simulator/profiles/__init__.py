"""Packaged simulator profiles (``demo.yaml``: the demo plant, see ``README.md`` here)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from simulator.config import Profile, load_profile


def demo_profile_path() -> Path:
    """Path of the packaged demo profile (``simulator/profiles/demo.yaml``)."""
    return Path(str(files("simulator.profiles").joinpath("demo.yaml")))


def load_demo_profile() -> Profile:
    """The demo profile, validated.

    Returns:
        The profile (4 devices on 127.0.0.1, port 0).
    """
    return load_profile(demo_profile_path())
