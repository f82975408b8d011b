"""A stop always ends: tasks that swallow a cancellation are cancelled again (runtime.stop).

Python 3.11's `asyncio.wait_for` can swallow a cancellation that races with its inner future
(gh-86296); a device task caught that way would hold `Runtime.stop` for ever and a service
manager would SIGKILL the gateway before the store is closed cleanly.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway import runtime as rt


async def _stubborn(ignore: int, log: list[str]) -> None:
    """Ignore the first `ignore` cancellations, then end on the next one."""
    left = ignore
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("cancelled")
            if left == 0:
                raise
            left -= 1


async def test_a_task_that_swallows_one_cancel_is_cancelled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rt, "STOP_CANCEL_WAIT_S", 0.05)
    log: list[str] = []
    polite = asyncio.create_task(_stubborn(0, []), name="device:polite")
    stubborn = asyncio.create_task(_stubborn(2, log), name="device:stubborn")
    await asyncio.sleep(0)
    left = await rt.cancel_and_wait([polite, stubborn], "device")
    assert left == []
    assert polite.cancelled()
    assert stubborn.cancelled()
    assert log == ["cancelled", "cancelled", "cancelled"]  # two swallowed, the third ended it


async def test_a_task_that_never_ends_is_left_after_the_last_round(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rt, "STOP_CANCEL_WAIT_S", 0.02)
    log: list[str] = []
    task = asyncio.create_task(_stubborn(10, log), name="device:deaf")
    await asyncio.sleep(0)
    left = await rt.cancel_and_wait([task], "device")
    assert left == ["device:deaf"]
    assert len(log) == rt.STOP_CANCEL_ROUNDS
    assert "still running after cancel round" in caplog.text
    # clean up: let it end
    monkeypatch.setattr(rt, "STOP_CANCEL_ROUNDS", 20)
    assert await rt.cancel_and_wait([task], "device") == []


async def test_finished_and_failed_tasks_are_fine() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    ok = asyncio.create_task(asyncio.sleep(0), name="device:ok")
    bad = asyncio.create_task(fail(), name="device:bad")
    await asyncio.sleep(0.01)
    assert await rt.cancel_and_wait([ok, bad], "device") == []
