"""fan_out: bounded, ordered, and all-or-nothing."""

from __future__ import annotations

import asyncio

import pytest

from llama_stack.providers.utils.remote.fan_out import fan_out


async def test_results_keep_the_input_order_and_the_bound_holds():
    running, most = 0, 0
    releases = {i: asyncio.Event() for i in range(6)}

    async def call(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await releases[i].wait()
        running -= 1
        return i * 10

    batch = asyncio.ensure_future(fan_out(range(6), call, 2))
    while running < 2:
        await asyncio.sleep(0)  # yields until the first two calls hold both slots
    for i in reversed(range(6)):  # finishing out of order must not reorder the answers
        releases[i].set()
    assert await batch == [0, 10, 20, 30, 40, 50]
    assert most == 2


async def test_the_first_failure_cancels_the_rest_and_is_raised():
    started: list[int] = []
    cancelled: list[int] = []

    async def call(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("item 1 failed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    with pytest.raises(ValueError, match="item 1 failed"):
        await fan_out(range(4), call, 2)
    # Every call that started, but the failing one, was cancelled: none ran on after the batch failed.
    assert started[:2] == [0, 1] and 0 in cancelled
    assert set(started) - set(cancelled) == {1}


async def test_a_shared_semaphore_bounds_several_batches_together():
    gate = asyncio.Semaphore(1)
    running, most = 0, 0

    async def call(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)  # lets the other batch try to start a call
        running -= 1
        return i

    results = await asyncio.gather(fan_out(range(3), call, gate), fan_out(range(3), call, gate))
    assert results == [[0, 1, 2], [0, 1, 2]] and most == 1
