"""NodeOrders: a queue per host, polls woken by an order, answered empty after the wait."""

from __future__ import annotations

import pytest
import trio

from geniehive.node.orders import poll_delay
from geniehive.orders import NodeOrders


async def test_a_poll_waits_for_an_order_of_its_own_host(autojump_clock) -> None:
    orders = NodeOrders()
    taken: list[list[str]] = []

    async def poll(host_id: str) -> None:
        taken.append([o.upstream_id for o in await orders.take(host_id, 25)])

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, "gpu-01")
            await trio.sleep(10)
            orders.order("gpu-02", "start", "other")  # another host's: still waiting
            await trio.sleep(1)
            assert taken == []
            orders.order("gpu-01", "start", "lazy")
            await trio.sleep(0.001)
            assert taken == [["lazy"]]
    assert [o.upstream_id for o in orders.pending("gpu-02")] == ["other"]


async def test_a_poll_with_nothing_queued_is_answered_empty_after_its_wait(autojump_clock):
    orders = NodeOrders()
    with trio.fail_after(100):
        began = trio.current_time()
        assert await orders.take("gpu-01", 25) == []
        assert trio.current_time() - began == pytest.approx(25)


async def test_orders_queued_before_the_poll_are_all_taken_at_once(autojump_clock) -> None:
    orders = NodeOrders()
    first = orders.order("gpu-01", "start", "a")
    second = orders.order("gpu-01", "stop", "b")
    assert first.order_id != second.order_id
    with trio.fail_after(1):
        assert await orders.take("gpu-01", 25) == [first, second]
    assert orders.pending("gpu-01") == []
    with pytest.raises(ValueError, match="unknown order action 'restart'"):
        orders.order("gpu-01", "restart", "a")


async def test_closing_answers_every_parked_poll_and_later_ones_at_once(autojump_clock):
    orders = NodeOrders()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(orders.take, "gpu-01", 25)
            await trio.sleep(1)
            began = trio.current_time()
            orders.close()
        assert trio.current_time() - began < 1
        assert await orders.take("gpu-01", 25) == []
        assert trio.current_time() - began < 1


def test_failed_polls_back_off_exponentially_up_to_a_minute() -> None:
    assert poll_delay(0, 0.5) == 0.0
    assert poll_delay(1, 0.0) == 0.5
    assert poll_delay(3, 0.99) == pytest.approx(3.98)
    assert poll_delay(50, 0.0) == 30.0
    assert poll_delay(50, 0.999) < 60.0
