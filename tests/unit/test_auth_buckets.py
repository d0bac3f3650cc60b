"""The per-address bucket of invalid-key attempts (auth.FailureBuckets), time passed in."""

from __future__ import annotations

from geniehive.auth import FailureBuckets


def test_an_address_may_fail_a_burst_then_waits_for_the_refill() -> None:
    buckets = FailureBuckets(burst=3, refill_per_s=0.5)
    for _ in range(3):
        assert buckets.retry_after("10.0.0.5", 100.0) == 0.0
        buckets.record_failure("10.0.0.5", 100.0)
    assert buckets.retry_after("10.0.0.5", 100.0) == 2.0
    assert buckets.retry_after("10.0.0.5", 101.0) == 1.0
    assert buckets.retry_after("10.0.0.5", 102.0) == 0.0  # one token back
    buckets.record_failure("10.0.0.5", 102.0)
    assert buckets.retry_after("10.0.0.5", 102.0) == 2.0


def test_one_address_failing_does_not_throttle_another() -> None:
    buckets = FailureBuckets(burst=1)
    buckets.record_failure("10.0.0.5", 0.0)
    assert buckets.retry_after("10.0.0.5", 0.0) == 1.0
    assert buckets.retry_after("10.0.0.6", 0.0) == 0.0


def test_the_refill_stops_at_the_burst() -> None:
    buckets = FailureBuckets(burst=2, refill_per_s=1.0)
    buckets.record_failure("a", 0.0)
    buckets.record_failure("a", 1000.0)  # long idle: back to 2 tokens, then one spent
    assert buckets.retry_after("a", 1000.0) == 0.0
    buckets.record_failure("a", 1000.0)
    assert buckets.retry_after("a", 1000.0) == 1.0


def test_the_table_is_bounded_and_drops_the_address_that_failed_longest_ago() -> None:
    buckets = FailureBuckets(burst=1, max_addresses=3)
    for index, address in enumerate(["a", "b", "c", "d"]):
        buckets.record_failure(address, float(index))
    assert len(buckets) == 3
    assert buckets.retry_after("a", 3.0) == 0.0  # forgotten
    assert buckets.retry_after("d", 3.0) == 1.0


def test_failures_through_a_loopback_proxy_count_against_its_x_real_ip() -> None:
    from geniehive.gate import client_address

    def scope(peer: str, real: str | None) -> dict[str, object]:
        headers = [(b"x-real-ip", real.encode())] if real else []
        return {"client": (peer, 5000), "headers": headers}

    assert client_address(scope("127.0.0.1", "203.0.113.7")) == "203.0.113.7"
    assert client_address(scope("127.0.0.1", None)) == "127.0.0.1"
    assert client_address(scope("10.0.0.8", "203.0.113.7")) == "10.0.0.8"  # not a proxy of ours
