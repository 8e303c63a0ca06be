"""Bounded concurrency for calls fanned out to a vendor (batches, one call per document or generation)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def fan_out(items: Iterable[T], call: Callable[[T], Awaitable[R]], limit: int | asyncio.Semaphore) -> list[R]:
    """``call(item)`` for every item, at most ``limit`` at once; the results in input order.

    ``limit`` may be a shared semaphore, so that several batches together stay within one bound. The first
    failure cancels the calls still running or waiting and is raised: a batch is answered whole or not at all.
    """
    gate = limit if isinstance(limit, asyncio.Semaphore) else asyncio.Semaphore(limit)

    async def gated(item: T) -> R:
        async with gate:
            return await call(item)

    tasks = [asyncio.ensure_future(gated(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
