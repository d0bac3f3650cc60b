"""Every health and breaker transition, with time passed in."""

from __future__ import annotations

import itertools

import pytest

from geniehive import health
from geniehive.health import BreakerState, ProbeState


def probe_run(results: list[bool], *, down_after: int = 2, up_after: int = 1) -> list[str]:
    state = ProbeState()
    verdicts = []
    for t, ok in enumerate(results):
        state = health.next_probe_state(
            state, ok, "ok" if ok else "refused", float(t), down_after=down_after,
            up_after=up_after,
        )
        verdicts.append(state.verdict)
    return verdicts


def test_unprobed_service_is_unknown() -> None:
    assert ProbeState().verdict == "unknown"


def test_one_success_makes_healthy_with_up_after_1() -> None:
    assert probe_run([True]) == ["healthy"]


def test_down_needs_down_after_consecutive_failures() -> None:
    assert probe_run([True, False, True, False, False, False]) == [
        "healthy", "healthy", "healthy", "healthy", "down", "down",
    ]


def test_up_after_needs_consecutive_successes() -> None:
    assert probe_run([False, False, True, False, True, True, True], up_after=2) == [
        "unknown", "down", "down", "down", "down", "healthy", "healthy",
    ]


def test_verdict_change_records_reason_and_since() -> None:
    state = ProbeState()
    state = health.next_probe_state(state, True, "HTTP 200", 10.0, down_after=1, up_after=1)
    assert (state.verdict, state.reason, state.since) == ("healthy", "HTTP 200", 10.0)
    state = health.next_probe_state(state, True, "HTTP 200", 20.0, down_after=1, up_after=1)
    assert state.since == 10.0  # unchanged verdict keeps its since
    state = health.next_probe_state(state, False, "refused", 30.0, down_after=1, up_after=1)
    assert (state.verdict, state.reason, state.since) == ("down", "refused", 30.0)
    state = health.next_probe_state(state, False, "timed out", 40.0, down_after=1, up_after=1)
    assert (state.verdict, state.reason, state.since) == ("down", "timed out", 30.0)


@pytest.mark.parametrize("down_after,up_after", list(itertools.product([1, 2, 3], [1, 2, 3])))
def test_hysteresis_against_a_reference_model(down_after: int, up_after: int) -> None:
    # Every sequence of 8 probe results, checked against a direct statement of the rule.
    for results in itertools.product([True, False], repeat=8):
        got = probe_run(list(results), down_after=down_after, up_after=up_after)
        verdict, expected = "unknown", []
        for i in range(len(results)):
            ok = results[i]
            run = 0
            for earlier in reversed(results[: i + 1]):
                if earlier != ok:
                    break
                run += 1
            if ok and run >= up_after:
                verdict = "healthy"
            elif not ok and run >= down_after:
                verdict = "down"
            expected.append(verdict)
        assert got == expected, results


FAILURES = 3
OPEN_S = 30.0


def fail(state: BreakerState, now: float) -> BreakerState:
    state = health.next_breaker_on_attempt(state, now, OPEN_S)
    return health.next_breaker_on_result(state, False, now, failures=FAILURES)


def succeed(state: BreakerState, now: float) -> BreakerState:
    state = health.next_breaker_on_attempt(state, now, OPEN_S)
    return health.next_breaker_on_result(state, True, now, failures=FAILURES)


def test_breaker_opens_after_consecutive_failures_only() -> None:
    state = health.CLOSED
    state = fail(fail(state, 0), 1)
    assert health.breaker_view(state, 1, OPEN_S) == "closed"
    state = succeed(state, 2)  # a success resets the count
    state = fail(fail(state, 3), 4)
    assert health.breaker_view(state, 4, OPEN_S) == "closed"
    state = fail(state, 5)
    assert health.breaker_view(state, 5, OPEN_S) == "open"
    assert not health.breaker_allows(state, 5 + OPEN_S - 0.001, OPEN_S)


def test_half_open_admits_exactly_one_trial() -> None:
    state = fail(fail(fail(health.CLOSED, 0), 0), 0)
    now = OPEN_S
    assert health.breaker_view(state, now, OPEN_S) == "half_open"
    assert health.breaker_allows(state, now, OPEN_S)
    state = health.next_breaker_on_attempt(state, now, OPEN_S)
    assert state.trial_in_flight
    assert not health.breaker_allows(state, now, OPEN_S)  # the second caller waits


def test_trial_success_closes_and_failure_reopens_from_now() -> None:
    opened = fail(fail(fail(health.CLOSED, 0), 0), 0)
    closed = succeed(opened, OPEN_S)
    assert closed == health.CLOSED
    reopened = fail(opened, OPEN_S + 1)
    assert health.breaker_view(reopened, OPEN_S + 1, OPEN_S) == "open"
    assert health.breaker_view(reopened, 2 * OPEN_S + 0.5, OPEN_S) == "open"
    assert health.breaker_view(reopened, 2 * OPEN_S + 1, OPEN_S) == "half_open"


def test_failures_while_open_keep_the_original_open_time() -> None:
    state = fail(fail(fail(health.CLOSED, 0), 0), 0)
    later = health.next_breaker_on_result(state, False, 10, failures=FAILURES)
    assert later.opened_at == 0
    assert health.breaker_view(later, OPEN_S, OPEN_S) == "half_open"


@pytest.mark.parametrize(
    "probe,node,stale,breaker,trial,expected",
    [
        ("unknown", "unknown", False, "closed", False, (True, "")),
        ("healthy", "healthy", False, "closed", False, (True, "")),
        ("unknown", "unhealthy", False, "closed", False, (False, "node_unhealthy")),
        ("healthy", "down", False, "closed", False, (False, "node_unhealthy")),
        ("down", "healthy", False, "closed", False, (False, "probe_down")),
        ("healthy", "healthy", True, "closed", False, (False, "host_stale")),
        ("healthy", "healthy", False, "open", False, (False, "breaker_open")),
        ("healthy", "healthy", False, "half_open", False, (True, "")),
        ("healthy", "healthy", False, "half_open", True, (False, "breaker_open")),
    ],
)
def test_routable_combines_probe_node_staleness_and_breaker(
    probe: str, node: str, stale: bool, breaker: str, trial: bool, expected: tuple
) -> None:
    assert health.routable(probe, node, stale, breaker, trial) == expected


@pytest.mark.parametrize(
    ("gate", "probe", "node", "word"),
    [
        ("host_stale", "healthy", "healthy", "stale"),
        ("probe_down", "down", "healthy", "down"),
        ("node_unhealthy", "healthy", "down", "down"),
        ("node_unhealthy", "unknown", "unhealthy", "unhealthy"),
        ("breaker_open", "healthy", "healthy", "unhealthy"),
        (None, "healthy", "unknown", "healthy"),
        (None, "unknown", "healthy", "healthy"),  # a node's word counts until probed
        (None, "unknown", "unknown", "unknown"),
        ("availability", "healthy", "unknown", "healthy"),  # drained, yet healthy
    ],
)
def test_one_health_word_for_the_listing_and_the_metrics(gate, probe, node, word) -> None:
    assert health.verdict(gate, probe, node) == word


def test_every_gate_routable_names_has_a_word() -> None:
    gates = {
        health.routable(probe, node, stale, breaker, trial)[1]
        for probe, node, stale, breaker, trial in itertools.product(
            ["healthy", "down", "unknown"], ["healthy", "unhealthy", "down", "unknown"],
            [False, True], ["closed", "open", "half_open"], [False, True],
        )
    } - {""}
    assert gates == {"host_stale", "probe_down", "node_unhealthy", "breaker_open"}
    assert {health.verdict(g, "healthy", "unhealthy") for g in gates} == {"stale", "down",
                                                                           "unhealthy"}
