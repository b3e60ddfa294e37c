"""Waiting for a condition that other tasks bring about: the one poll loop of the harnesses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def poll_until(predicate: Callable[[], T | None], timeout: float, interval: float) -> T:  # noqa: ASYNC109
    """Call `predicate` every `interval` seconds until it returns something truthy, and return
    that; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(interval)
