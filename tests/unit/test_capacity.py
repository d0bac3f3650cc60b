"""The admission queue on trio's mock clock: slots, order, fairness, aging, bounds, leaving.

Each test runs on the `autojump_clock`, so a wait of minutes costs no real time, and the
clock the queue reads (trio's) is the one its deadlines use.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from geniehive.capacity import Admission, KeyRates, Ticket
from geniehive.errors import QueueFull, QueueTimeout, RateLimited


def ticket(key: str = "k", klass: int = 1, weight: float = 1.0, limit: int | None = None) -> Ticket:
    return Ticket(key, klass=klass, weight=weight, key_limit=limit)


async def start_waiter(
    nursery: trio.Nursery,
    adm: Admission,
    t: Ticket,
    services: Sequence[str],
    got: list[tuple[Ticket, str]],
    budget: float = 600.0,
) -> None:
    """Queue `t` for `services` (all full) and note (ticket, service) when it is admitted."""

    async def wait() -> None:
        got.append((t, await adm.wait(t, services, budget, "model 'm'")))

    nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked()


def fill(adm: Admission, service: str, slots: int) -> list[Ticket]:
    holders = [ticket(f"holder-{service}-{i}") for i in range(slots)]
    for holder in holders:
        assert adm.take(holder, [service], [slots]) == service
    return holders


async def test_a_slot_is_taken_on_the_first_candidate_with_one_free() -> None:
    adm = Admission()
    assert adm.take(ticket(), ["a", "b"], [1, 1]) == "a"
    assert adm.take(ticket(), ["a", "b"], [1, 1]) == "b"
    assert adm.take(ticket(), ["a", "b"], [1, 1]) is None
    adm.release("a")
    assert adm.take(ticket(), ["a", "b"], [1, 1]) == "a"


async def test_a_service_without_known_slots_is_never_full() -> None:
    adm = Admission()
    for _ in range(1000):
        assert adm.take(ticket(), ["x"], [None]) == "x"
    assert adm.load("x", None).in_flight == 1000


async def test_a_freed_slot_goes_to_the_waiting_request_before_any_newcomer(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        waiter = ticket("w")
        await start_waiter(nursery, adm, waiter, ["a"], got)
        assert adm.load("a", 1).queued == 1
        adm.release("a")
        # The slot is the waiter's already, though its task has not run yet.
        assert adm.take(ticket("newcomer"), ["a"], [1]) is None
    assert got == [(waiter, "a")]
    assert adm.load("a", 1).queued == 0
    assert adm.waiting == 0


async def test_priority_classes_go_first_then_arrival(autojump_clock: trio.abc.Clock) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        low = ticket("k1", klass=2)
        normal1 = ticket("k2", klass=1)
        high = ticket("k3", klass=0)
        normal2 = ticket("k2", klass=1)
        for t in (low, normal1, high, normal2):
            await start_waiter(nursery, adm, t, ["a"], got)
        for _ in range(4):
            adm.release("a")
            await trio.testing.wait_all_tasks_blocked()
    assert [t for t, _ in got] == [high, normal1, normal2, low]


async def test_keys_of_one_class_share_slots_by_weight(autojump_clock: trio.abc.Clock) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        # The heavy key queues first and deep; the others arrive after all of it.
        for _ in range(8):
            await start_waiter(nursery, adm, ticket("heavy", weight=2.0), ["a"], got)
        for _ in range(4):
            await start_waiter(nursery, adm, ticket("light"), ["a"], got)
        for _ in range(12):
            adm.release("a")
            await trio.testing.wait_all_tasks_blocked()
    keys = [t.key for t, _ in got]
    # Weight 2 against 1: two of the heavy key's requests for each of the light key's,
    # not the heavy key's eight first as arrival alone would give.
    assert keys[:6].count("light") == 2 and keys[:6].count("heavy") == 4
    assert keys[:3].count("light") == 1


async def test_a_request_waiting_past_aging_s_moves_up_a_class(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission(aging_s=30.0)
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        old_low = ticket("k1", klass=2)
        await start_waiter(nursery, adm, old_low, ["a"], got)
        await trio.sleep(31)  # mock clock: one aging period
        fresh_normal = ticket("k2", klass=1)
        await start_waiter(nursery, adm, fresh_normal, ["a"], got)
        adm.release("a")
        await trio.testing.wait_all_tasks_blocked()
        assert [t for t, _ in got] == [old_low]  # now normal too, and it came first
        await trio.sleep(60)  # the normal one ages to high: still served, nothing starves
        adm.release("a")
    assert [t for t, _ in got] == [old_low, fresh_normal]


async def test_without_aging_a_low_request_waits_behind_every_newer_normal_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission(aging_s=1000.0)
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        low = ticket("k1", klass=2)
        await start_waiter(nursery, adm, low, ["a"], got)
        await trio.sleep(31)
        normal = ticket("k2", klass=1)
        await start_waiter(nursery, adm, normal, ["a"], got)
        adm.release("a")
        await trio.testing.wait_all_tasks_blocked()
        adm.release("a")
    assert [t for t, _ in got] == [normal, low]


async def test_a_full_queue_refuses_at_once_with_retry_after(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission(max_queue=2)
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            await start_waiter(nursery, adm, ticket(), ["a"], got)
        with pytest.raises(QueueFull) as refused:
            await adm.wait(ticket(), ["a"], 60.0, "model 'm'")
        assert "2 requests waiting" in refused.value.message
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
        adm.release("a")
        await trio.testing.wait_all_tasks_blocked()
        adm.release("a")
    assert len(got) == 2


async def test_a_request_that_waited_its_budget_is_refused_and_leaves_no_trace(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission(queue_timeout_s=60.0)
    fill(adm, "a", 1)
    start = trio.current_time()
    with pytest.raises(QueueTimeout) as refused:
        await adm.wait(ticket(), ["a"], 5.0, "model 'm'")
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
    assert "model 'm'" in refused.value.message
    assert adm.waiting == 0 and adm.load("a", 1).queued == 0


async def test_retry_after_follows_the_measured_rate_of_freed_slots(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission(queue_timeout_s=600.0)
    holders = fill(adm, "a", 1)
    for _ in range(10):  # one slot freed every 2 s
        await trio.sleep(2)
        adm.release("a")
        assert adm.take(holders[0], ["a"], [1]) == "a"
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(9):
            await start_waiter(nursery, adm, ticket(), ["a"], got)
        # 9 ahead, one slot each ~2 s: about 20 s for a tenth.
        assert 15 <= adm.retry_after_s(["a"], trio.current_time()) <= 25
        nursery.cancel_scope.cancel()


async def test_a_cancelled_wait_leaves_the_queue_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as gone:
        await start_waiter(gone, adm, ticket("gone"), ["a"], got)
        assert adm.waiting == 1
        gone.cancel_scope.cancel()
    assert adm.waiting == 0 and adm.load("a", 1).queued == 0
    adm.release("a")
    assert adm.load("a", 1).in_flight == 0  # nobody was handed the slot


async def test_a_slot_granted_to_a_cancelled_wait_is_not_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as gone:
        await start_waiter(gone, adm, ticket("first"), ["a"], got)
        # Cancelled, then granted the slot before its task ran: it must give it back.
        gone.cancel_scope.cancel()
        adm.release("a")
        assert adm.load("a", 1).in_flight == 1
    assert got == []
    assert adm.load("a", 1).in_flight == 0
    assert adm.take(ticket("second"), ["a"], [1]) == "a"
    assert adm.waiting == 0


async def test_a_key_at_its_max_in_flight_waits_though_slots_are_free(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission()
    got: list[tuple[Ticket, str]] = []
    busy = ticket("k", limit=1)
    assert adm.take(busy, ["a"], [None]) == "a"
    async with trio.open_nursery() as nursery:
        second = ticket("k", limit=1)
        assert adm.take(second, ["a"], [None]) is None
        await start_waiter(nursery, adm, second, ["a"], got)
        other = ticket("other", limit=1)
        assert adm.take(other, ["a"], [None]) == "a"  # another key is not held up
        adm.release("a")
        adm.finish(other)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        adm.release("a")
        adm.finish(busy)  # the key's unit frees: its waiting request goes
    assert got == [(second, "a")]


async def test_a_failover_keeps_its_key_unit_and_needs_only_a_slot(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission()
    t = ticket("k", limit=1)
    assert adm.take(t, ["a"], [1]) == "a"
    adm.release("a")  # the try failed; the request goes on
    assert adm.take(t, ["b"], [1]) == "b"
    adm.release("b")
    adm.finish(t)
    assert adm.key_busy == {}


async def test_more_slots_admit_those_waiting(autojump_clock: trio.abc.Clock) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            await start_waiter(nursery, adm, ticket(), ["a"], got)
        # Discovery now says 3 slots: the next request to look sees them, those waiting first.
        assert adm.take(ticket("late"), ["a"], [3]) is None
    assert len(got) == 2


async def test_a_request_waits_for_any_of_its_candidates(autojump_clock: trio.abc.Clock) -> None:
    adm = Admission()
    fill(adm, "a", 1)
    fill(adm, "b", 1)
    got: list[tuple[Ticket, str]] = []
    async with trio.open_nursery() as nursery:
        waiter = ticket()
        await start_waiter(nursery, adm, waiter, ["a", "b"], got)
        adm.release("b")
    assert got == [(waiter, "b")]
    assert adm.load("a", 1).queued == 0


async def test_counts_stay_exact_through_many_waits_timeouts_and_admissions(
    autojump_clock: trio.abc.Clock,
) -> None:
    adm = Admission(max_queue=5000)
    services = [f"s{i}" for i in range(50)]
    for sid in services:
        fill(adm, sid, 1)
    admitted: list[int] = []
    timed_out: list[int] = []

    async def wait(i: int, mine: list[str]) -> None:
        try:
            assert await adm.wait(ticket(f"key{i % 7}"), mine, 10.0 + i % 2, "m") in mine
            admitted.append(i)
        except QueueTimeout:
            timed_out.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(2000):
            nursery.start_soon(wait, i, [services[(i + j) % 50] for j in range(3)])
        await trio.testing.wait_all_tasks_blocked()
        assert adm.waiting == 2000
        assert sum(adm.queued.values()) == 3 * 2000
        for sid in services[:25]:
            adm.release(sid)
        await trio.sleep(10.5)  # the even ones time out, dropping most index entries
        assert len(admitted) == 25
        assert sorted(timed_out) == [i for i in range(0, 2000, 2) if i not in admitted]
        for sid in services:  # each frees one more slot: one more request each
            adm.release(sid)
        await trio.testing.wait_all_tasks_blocked()
        assert len(admitted) == 75
        assert adm.waiting == 2000 - 75 - len(timed_out)
        assert sum(adm.queued.values()) == 3 * adm.waiting
        assert sum(adm.waiting_by_class) == adm.waiting
        nursery.cancel_scope.cancel()
    assert adm.waiting == 0
    assert adm.queued == {}


def test_requests_per_minute_refuses_the_excess_with_retry_after() -> None:
    rates = KeyRates()
    rates.check("k", 2, 0.0)
    rates.check("k", 2, 0.0)
    with pytest.raises(RateLimited) as refused:
        rates.check("k", 2, 1.0)
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after_s == 29  # one request per 30 s refills
    rates.check("other", 2, 1.0)  # keys are counted apart
    rates.check("k", 2, 31.0)


def test_retry_after_is_never_sooner_than_a_load_in_progress_should_end() -> None:
    admission = Admission(max_queue=10, queue_timeout_s=60, aging_s=30, clock=lambda: 0.0)
    assert admission.retry_after_s(["a", "b"], 0.0) == 1  # nothing measured: 1 s
    admission.loading_s = {"a": 0.0, "b": 7.2}.__getitem__
    assert admission.retry_after_s(["a", "b"], 0.0) == 8
    assert admission.retry_after_s(["a"], 0.0) == 1
