"""The write timeout's clock (geniehive.writes), on trio's autojump clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from geniehive.writes import wait_stalled, wait_stalled_or_gone


@dataclass
class Pending:
    pending_since: float | None = None


async def test_quick_sends_never_stall_and_a_stuck_one_does_after_the_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    pending = Pending()
    stalled_at: list[float] = []

    async def watch() -> None:
        await wait_stalled(pending, 5.0)
        stalled_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        for _ in range(20):  # sends of 4 s each, one after another: none waits 5 s
            pending.pending_since = trio.current_time()
            await trio.sleep(4.0)
            pending.pending_since = None
        stuck = trio.current_time()
        pending.pending_since = stuck
        await trio.sleep(10.0)
    assert stalled_at == [stuck + 5.0]


async def test_a_disconnect_ends_the_watch_without_a_stall(
    autojump_clock: trio.abc.Clock,
) -> None:
    send_channel, receive_channel = trio.open_memory_channel[dict[str, Any]](1)
    results: list[bool] = []

    async def watch() -> None:
        results.append(await wait_stalled_or_gone(Pending(), 5.0, receive_channel.receive))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(60.0)  # nothing pending: idle time is no stall
        await send_channel.send({"type": "http.disconnect"})
    assert results == [False]
    pending = Pending(pending_since=0.0)
    with trio.fail_after(10):
        assert await wait_stalled_or_gone(pending, 5.0, receive_channel.receive) is True
