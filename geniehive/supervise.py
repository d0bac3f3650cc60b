"""Supervision of long-lived loops: a failing pass is logged and retried with backoff.

Rule: one background task's unexpected exception must never stop the whole nursery (trio
cancels every sibling when one task raises). Expected per-item errors are caught inside each
pass; anything else lands here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("geniehive.supervise")


def next_backoff(previous: float, *, initial: float = 1.0, cap: float = 60.0) -> float:
    """The next delay of an exponential backoff."""
    return initial if previous <= 0 else min(cap, previous * 2)


async def run_every(
    name: str, interval_s: float | Callable[[], float], one_pass: Callable[[], Awaitable[None]]
) -> None:
    """Run `one_pass` every `interval_s` forever; a crash is logged and retried with backoff.

    `interval_s` may be a function, asked before each wait (a reloaded config's interval
    applies from the next pass on)."""
    backoff = 0.0
    while True:
        interval = interval_s() if callable(interval_s) else interval_s
        await trio.sleep(interval if backoff == 0 else backoff)
        try:
            await one_pass()
        except Exception:
            backoff = next_backoff(backoff)
            log.exception("%s pass failed; retrying in %.0f s", name, backoff)
        else:
            backoff = 0.0
