"""Health and breaker state transitions (docs/architecture.md, "Health").

Rule: pure. Every function takes the current state value and `now` (monotonic seconds) and
returns the next state value; the prober and the relay own the mutable maps that hold them.

Probe verdicts use hysteresis: `down_after` consecutive failures turn a service `down`,
`up_after` consecutive successes turn it `healthy`; before its first probe it is `unknown`.

The breaker is fed by real traffic: `failures` consecutive failures open it; after `open_s`
it is half-open and lets exactly one trial request through; the trial's outcome closes it or
opens it again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class ProbeState:
    verdict: str = "unknown"  # unknown | healthy | down
    reason: str = "not probed yet"
    since: float | None = None  # wall-clock seconds of the last verdict change
    ok_streak: int = 0
    fail_streak: int = 0


def next_probe_state(
    state: ProbeState, ok: bool, reason: str, now: float, *, down_after: int, up_after: int
) -> ProbeState:
    """The state after one probe result."""
    if ok:
        streak = state.ok_streak + 1
        if state.verdict != "healthy" and streak >= up_after:
            return ProbeState("healthy", reason, now, streak, 0)
        return replace(state, ok_streak=streak, fail_streak=0)
    streak = state.fail_streak + 1
    if state.verdict != "down" and streak >= down_after:
        return ProbeState("down", reason, now, 0, streak)
    if state.verdict == "down":
        return replace(state, reason=reason, ok_streak=0, fail_streak=streak)
    return replace(state, ok_streak=0, fail_streak=streak)


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: str = "closed"  # closed | open | half_open
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False


CLOSED = BreakerState()


def breaker_view(state: BreakerState, now: float, open_s: float) -> str:
    """What the breaker is at `now`: `closed`, `open`, or `half_open` once `open_s` passed."""
    if state.state == "open" and state.opened_at is not None and now - state.opened_at >= open_s:
        return "half_open"
    return state.state


def breaker_allows(state: BreakerState, now: float, open_s: float) -> bool:
    """Whether a request may be sent now (a half-open breaker admits one trial at a time)."""
    view = breaker_view(state, now, open_s)
    if view == "closed":
        return True
    if view == "half_open":
        return not state.trial_in_flight
    return False


def next_breaker_on_attempt(state: BreakerState, now: float, open_s: float) -> BreakerState:
    """Record that a request is being sent; a half-open breaker's trial is now in flight."""
    if breaker_view(state, now, open_s) == "half_open":
        return BreakerState("half_open", state.failures, state.opened_at, trial_in_flight=True)
    return state


def next_breaker_on_result(
    state: BreakerState, ok: bool, now: float, *, failures: int
) -> BreakerState:
    """Record a request's outcome."""
    if ok:
        return CLOSED
    if state.state == "half_open":
        return BreakerState("open", state.failures + 1, now)
    count = state.failures + 1
    if state.state == "closed" and count >= failures:
        return BreakerState("open", count, now)
    if state.state == "open":
        return BreakerState("open", count, state.opened_at)
    return replace(state, failures=count)


_GATE_WORDS = {"host_stale": "stale", "probe_down": "down", "breaker_open": "unhealthy"}


def verdict(gate: str | None, probe: str, node_health: str) -> str:
    """One word for a service's health: stale, down, unhealthy, healthy or unknown.

    `gate` is the first gate of `routable` (or a later availability gate) that excludes the
    service, None when none does. Past the health gates, the probe or the node saying
    healthy makes it healthy; otherwise nobody has said yet.
    """
    if gate == "node_unhealthy":
        return node_health  # unhealthy or down, as the node said
    word = _GATE_WORDS.get(gate or "")
    if word is not None:
        return word
    return "healthy" if "healthy" in (probe, node_health) else "unknown"


def routable(
    probe: str, node_health: str, host_stale: bool, breaker: str, trial_taken: bool
) -> tuple[bool, str]:
    """Whether a service may be routed to, and if not, the gate that excludes it."""
    if host_stale:
        return False, "host_stale"
    if probe == "down":
        return False, "probe_down"
    if node_health in ("unhealthy", "down"):
        return False, "node_unhealthy"
    if breaker == "open" or (breaker == "half_open" and trial_taken):
        return False, "breaker_open"
    return True, ""
