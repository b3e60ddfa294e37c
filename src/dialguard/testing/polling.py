"""Waiting for a condition that other tasks or processes bring about: the harnesses' poll loops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

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


async def wait_ready(
    api: str,
    why_exited: Callable[[], Awaitable[str | None]],
    within: float,
    interval: float = 0.05,
) -> None:
    """Poll a `dialguard serve`'s `api`/readyz until it answers 200. `why_exited` tells, once
    the process has exited, what it said (None while it runs): AssertionError with that."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        while True:
            said = await why_exited()
            if said is not None:
                raise AssertionError(f"serve exited: {said[-2000:]}")
            try:
                async with session.get(api + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(interval)


async def stderr_once_exited(proc: asyncio.subprocess.Process) -> str | None:
    """What an exited process wrote to its stderr pipe; None while it runs (for `wait_ready`)."""
    if proc.returncode is None:
        return None
    return (await proc.stderr.read() if proc.stderr else b"").decode()
