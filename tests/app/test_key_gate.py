"""The key gate (geniehive/gate.py): salted hashes off the event loop, throttled failures."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from geniehive import auth
from geniehive.auth import Authenticator, FailureBuckets, NamedKey, new_named_key
from geniehive.errors import AuthenticationFailed, TooManyAuthFailures
from geniehive.gate import KeyGate


def named_auth() -> tuple[Authenticator, str, str]:
    """An authenticator with one named key: (it, the right key, the key with a wrong secret)."""
    key_id, key, salt, digest = new_named_key()
    authenticator = Authenticator()
    authenticator.set_named([NamedKey(key_id, "app", salt, digest, frozenset({"inference"}))])
    return authenticator, key, f"gh_{key_id}_not-the-secret"


async def test_wrong_secrets_are_hashed_on_worker_threads_while_the_loop_keeps_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authenticator, _, wrong = named_auth()
    gate = KeyGate(authenticator, buckets=FailureBuckets(burst=100))
    real, threads = auth.hash_secret, set()

    def slow_hash(salt: bytes, secret: str) -> bytes:
        threads.add(threading.get_ident())
        time.sleep(0.3)  # a hash this slow would stall every client if it ran on the loop
        return real(salt, secret)

    monkeypatch.setattr(auth, "hash_secret", slow_hash)
    failures: list[Exception] = []
    gaps: list[float] = []

    async def wrong_key() -> None:
        try:
            await gate.identify(wrong, "10.0.0.9")
        except AuthenticationFailed as exc:
            failures.append(exc)

    async def tick() -> None:
        while len(failures) < 4:
            before = trio.current_time()
            await trio.sleep(0.01)
            gaps.append(trio.current_time() - before)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(wrong_key)
            nursery.start_soon(tick)
    assert len(failures) == 4
    assert threading.get_ident() not in threads
    assert max(gaps) < 0.2  # one hash on the loop would have stalled it for 0.3 s


async def test_an_address_that_keeps_failing_gets_429_but_right_keys_and_others_pass(
    autojump_clock: trio.abc.Clock,
) -> None:
    authenticator, right, wrong = named_auth()
    gate = KeyGate(authenticator, buckets=FailureBuckets(burst=10, refill_per_s=1.0))
    assert (await gate.identify(right, "10.0.0.9")).name == "app"
    for _ in range(10):
        with pytest.raises(AuthenticationFailed):
            await gate.identify(wrong, "10.0.0.9")
    with pytest.raises(TooManyAuthFailures) as throttled:
        await gate.identify(wrong, "10.0.0.9")
    assert throttled.value.retry_after_s == 1
    assert throttled.value.http_status == 429
    assert (await gate.identify(right, "10.0.0.9")).name == "app"  # verified before: cached
    with pytest.raises(AuthenticationFailed):
        await gate.identify(wrong, "10.0.0.10")  # another address has its own bucket
    await trio.sleep(1.0)
    with pytest.raises(AuthenticationFailed):
        await gate.identify(wrong, "10.0.0.9")  # one attempt refilled
    with pytest.raises(TooManyAuthFailures):
        await gate.identify(wrong, "10.0.0.9")
