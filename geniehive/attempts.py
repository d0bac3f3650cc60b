"""The pieces of one forwarding attempt, shared by the relay's loop and its answers.

    Attempt     one try of one request on one service: what it sends and what it measured
    Failed      a retryable failure of one try (before the client's first byte)
    Decisions   a route's decision, then its fallbacks', computed as reached
    exhausted   the client error for a request whose every try failed

Rule: values and pure functions; the relay (geniehive/relay.py) does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from geniehive import routing
from geniehive.adapters import Adapter, StreamTranslator, UpstreamRequest
from geniehive.errors import (
    GenieHiveError,
    LoopDetected,
    ModelLoadFailed,
    NoHealthyUpstream,
    UpstreamFailed,
    UpstreamStatus,
    UpstreamTimeout,
)
from geniehive.exchange import Inbound, Outcome, Writer
from geniehive.models import Policy, Service
from geniehive.routing import Candidate


class Decisions:
    """The decision, then each fallback decision, computed as reached; `has_next` looks one
    ahead (a fallback decision always has candidates)."""

    def __init__(self, chain: Iterator[routing.RouteDecision]) -> None:
        self._chain = chain
        self._ahead: list[routing.RouteDecision] = []

    def next(self) -> routing.RouteDecision | None:
        return self._ahead.pop() if self._ahead else next(self._chain, None)

    def has_next(self) -> bool:
        if not self._ahead:
            self._ahead.extend(islice(self._chain, 1))
        return bool(self._ahead)


class Failed(Exception):
    """A retryable failure of one attempt."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # connect | timeout | protocol | status | load
        self.message = message
        self.status = status


@dataclass(slots=True, eq=False)
class Attempt:
    """One try of one request on one service: what it sends, and where it reports.

    `Relay.run` makes one per candidate it tries; `Relay.attempt` shapes the request and
    sends it; the answer goes to `writer`, what happened to `outcome` (shared by the
    request's attempts) and the measurements here, for the service's live counters.
    """

    inbound: Inbound
    writer: Writer
    outcome: Outcome
    decision: routing.RouteDecision  # the decision (the role's or a fallback's) it came from
    candidate: Candidate
    service: Service
    adapter: Adapter
    role_policy: Policy | None
    more_candidates: Callable[[], bool]  # may a 429 fail over? (asked only on a 429)
    # Set by Relay.attempt before anything is sent:
    request: UpstreamRequest = field(init=False)
    strip: bool = False  # reasoning is stripped from the answer
    native: bool = False  # the client's dialect goes to the upstream as it is (no chat)
    started: float = 0.0  # trio clock: when the request went out (TTFT counts from here)
    # What the answer measured:
    ttft_ms: float | None = None
    tokens_per_sec: float | None = None

    @property
    def model(self) -> str:
        """The model id sent upstream."""
        return self.candidate.upstream_model


def stream_translator(attempt: Attempt, content_type: str) -> StreamTranslator | None:
    """The adapter's translator of a streamed answer that is not SSE (Ollama's NDJSON)."""
    if not attempt.inbound.stream or content_type.startswith("text/event-stream"):
        return None
    return attempt.adapter.stream_translator(attempt.request)


def exhausted(
    model: str, outcome: Outcome, last: Failed | None, timeouts: int, loops: int, loads: int
) -> GenieHiveError:
    """The error for a request whose every try failed before the first byte: each failed
    attempt is named in the message."""
    if last is None:
        return NoHealthyUpstream(f"no routable service for '{model}' now")
    if last.status == 429:
        # Retried in case another candidate had room; none had: the client gets the 429.
        return UpstreamStatus(429, last.message)
    summary = "; ".join(f"{service_id}: {message}" for service_id, message in outcome.failures)
    if last.kind == "load" and loads == len(outcome.failures):
        return ModelLoadFailed(f"no candidate could be started or loaded: {summary}")
    if timeouts == len(outcome.failures):
        return UpstreamTimeout(f"every upstream timed out: {summary}")
    if loops == len(outcome.failures):
        # Each candidate led back to a gateway this request had passed (508 Loop Detected).
        return LoopDetected(f"every upstream looped back: {summary}")
    return UpstreamFailed(f"every upstream failed: {summary}")
