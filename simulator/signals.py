"""Signals: a point's value as a pure function of the wall clock (epoch seconds).

Every signal is deterministic: the same instant always gives the same value, so a test can
recompute what the simulator served from a timestamp alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from simulator.config import (
    ConstantSignal,
    CounterSignal,
    RampSignal,
    RandomWalkSignal,
    Signal,
    SineSignal,
    StepSignal,
)

Value = bool | int | float | str
SignalFn = Callable[[float], Value]

#: Number of past 1-s ticks summed by ``random_walk`` (the walk "forgets" older steps).
WALK_WINDOW = 3600
_WALK_RES = 1000  # integer resolution of one increment (exact, order-independent sums)


def _fold(x: float, lo: float, hi: float) -> float:
    """Reflect ``x`` into ``[lo, hi]`` (a triangle wave, continuous)."""
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (2 * span - y if y > span else y)


class RandomWalk:
    """Bounded random walk that is a pure function of ``(seed, key, tick)``.

    The value at 1-s tick ``n`` is ``mid + step · Σ u(i)`` over the last ``WALK_WINDOW`` ticks,
    ``u(i)`` uniform in [-1, 1] from a hash of ``(seed, key, i)``, reflected into ``[min, max]``.
    Consecutive ticks differ by at most ``2·step``. A running sum makes the usual per-second
    read O(1); a cold start costs ``WALK_WINDOW`` hashes (a few milliseconds).

    Args:
        cfg: the signal configuration (step, min, max).
        seed: the profile seed.
        key: a stable per-point key (device, table, address).
    """

    def __init__(self, cfg: RandomWalkSignal, seed: int, key: str) -> None:
        self._cfg = cfg
        self._prefix = f"{seed}:{key}:".encode()
        self._tick: int | None = None
        self._sum = 0

    def _u(self, i: int) -> int:
        digest = hashlib.blake2b(self._prefix + str(i).encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % (2 * _WALK_RES + 1) - _WALK_RES

    def _sum_at(self, n: int) -> int:
        last = self._tick
        if last is not None and 0 <= n - last <= 64:
            total = self._sum
            for i in range(last + 1, n + 1):
                total += self._u(i) - self._u(i - WALK_WINDOW)
        else:
            total = sum(self._u(i) for i in range(n - WALK_WINDOW + 1, n + 1))
        if last is None or n >= last:
            self._tick, self._sum = n, total
        return total

    def __call__(self, t: float) -> float:
        """Value at epoch time ``t`` [s]."""
        n = math.floor(t)
        mid = (self._cfg.min + self._cfg.max) / 2
        x = mid + self._cfg.step * self._sum_at(n) / _WALK_RES
        return _fold(x, self._cfg.min, self._cfg.max)


def make_signal(cfg: Signal, seed: int = 0, key: str = "") -> SignalFn:
    """Build the value function of a signal.

    Args:
        cfg: the signal configuration.
        seed: the profile seed (``random_walk`` only).
        key: a stable per-point key (``random_walk`` only).

    Returns:
        A function from epoch seconds to the (unscaled) value.
    """
    if isinstance(cfg, ConstantSignal):
        value = cfg.value
        return lambda _t: value
    if isinstance(cfg, RampSignal):
        lo, hi, slope = cfg.min, cfg.max, cfg.slope
        return lambda t: lo + math.fmod(slope * t, hi - lo) % (hi - lo)
    if isinstance(cfg, SineSignal):
        amp, period, offset = cfg.amplitude, cfg.period, cfg.offset
        return lambda t: offset + amp * math.sin(2 * math.pi * ((t / period) % 1.0))
    if isinstance(cfg, StepSignal):
        values, every = list(cfg.values), cfg.every
        return lambda t: values[math.floor(t / every) % len(values)]
    if isinstance(cfg, CounterSignal):
        period = cfg.period
        return lambda t: math.floor(t / period)
    if isinstance(cfg, RandomWalkSignal):
        return RandomWalk(cfg, seed, key)
    raise TypeError(f"unknown signal {cfg!r}")  # pragma: no cover - union is exhaustive
