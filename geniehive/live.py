"""Live counters the gateway keeps per service while it forwards.

Rule: owned by the event loop thread, never persisted. Routing reads them through
`runtime()`, which returns immutable `ServiceRuntime` values; the relay, the prober and the
breaker update them. Round-robin counters live here too and advance only through
`advance_round_robin`, called once per routed request.

Reading is O(1) amortized: a service's percentiles are read from windows kept sorted as
measurements arrive (`SortedWindow`), once per new measurement, and
its `ServiceRuntime` is reused (the same object) until something it shows changes, so routing
can tell an unchanged service by identity. `health_suspects` names the services whose probe
is down or whose breaker is not closed: every other service passes the health gates on its
runtime alone, which lets a decision skip the services a role's static gates exclude.
`changes` journals every service whose runtime may have changed, so a decision over many
services re-reads only those (plus the suspects, whose open breakers move with the clock).
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from geniehive import health
from geniehive.models import NO_MODELS, NO_RUNTIME, ModelsLive, ServiceRuntime
from geniehive.routing import IncrementalRuntimes

log = logging.getLogger("geniehive.breaker")

WINDOW = 100  # measured requests kept per service for percentiles and the error rate


class SortedWindow:
    """The last `size` values, kept in arrival order and sorted, so that adding one costs a
    binary search and a short move (not a sort of the window) and a percentile is one index:
    the value at rank round(fraction * (n - 1)) of the n kept. NaN (unorderable) is not kept."""

    __slots__ = ("order", "ranked")

    def __init__(self, size: int) -> None:
        self.order: deque[float] = deque(maxlen=size)
        self.ranked: list[float] = []

    def append(self, value: float) -> None:
        if value != value:  # NaN
            return
        order = self.order
        if len(order) == order.maxlen:
            ranked = self.ranked
            del ranked[bisect_left(ranked, order[0])]
        order.append(value)
        insort(self.ranked, value)

    def percentile(self, fraction: float) -> float | None:
        ranked = self.ranked
        if not ranked:
            return None
        return ranked[min(len(ranked) - 1, round(fraction * (len(ranked) - 1)))]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[float]:
        return iter(self.order)


class OutcomeWindow:
    """The last `size` outcomes (True: success) and how many of them failed."""

    __slots__ = ("failed", "order")

    def __init__(self, size: int) -> None:
        self.order: deque[bool] = deque(maxlen=size)
        self.failed = 0

    def append(self, ok: bool) -> None:
        order = self.order
        if len(order) == order.maxlen and not order[0]:
            self.failed -= 1
        order.append(ok)
        if not ok:
            self.failed += 1

    def error_rate(self) -> float:
        return self.failed / len(self.order) if self.order else 0.0

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[bool]:
        return iter(self.order)


class Journal:
    """The ids of services whose runtime may have changed, in order, as a growing log.

    A reader keeps a position and asks for the ids written since; positions older than the
    retained part get None (read everything again). The log keeps at most `limit` entries:
    when full, the older half is dropped.
    """

    __slots__ = ("base", "entries", "limit")

    def __init__(self, limit: int = 65536) -> None:
        self.base = 0  # the position of entries[0]
        self.entries: list[str] = []
        self.limit = limit

    @property
    def position(self) -> int:
        return self.base + len(self.entries)

    def add(self, service_id: str) -> None:
        entries = self.entries
        entries.append(service_id)
        if len(entries) > self.limit:
            half = len(entries) // 2
            del entries[:half]
            self.base += half

    def since(self, position: int) -> list[str] | None:
        """The ids added at or after `position` (repeats included), or None when some of them
        are no longer kept."""
        start = position - self.base
        if start < 0 or position > self.position:
            return None
        return self.entries[start:]


class ServiceLive:
    """One service's counters. `probe` and `breaker` are replaced, never mutated; assigning a
    new breaker or probe verdict, `in_flight`, or recording a measurement drops the cached
    runtime and writes the service to the journal."""

    __slots__ = (
        "_asleep",
        "_breaker",
        "_busy",
        "_in_flight",
        "_journal",
        "_load_ms",
        "_loading",
        "_models",
        "_probe",
        "_runtime",
        "_stats",
        "_suspects",
        "failures",
        "last_used",
        "latencies_ms",
        "outcomes",
        "requests",
        "service_id",
        "tokens_per_sec",
        "ttfts_ms",
    )

    def __init__(
        self,
        service_id: str = "",
        suspects: set[str] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.service_id = service_id
        self._journal = journal if journal is not None else Journal()
        self._in_flight = 0
        self.latencies_ms = SortedWindow(WINDOW)
        self.ttfts_ms = SortedWindow(WINDOW)
        self.tokens_per_sec = SortedWindow(WINDOW)
        self.outcomes = OutcomeWindow(WINDOW)
        self.requests = 0
        self.failures = 0
        self._suspects = suspects if suspects is not None else set()
        self._probe = health.ProbeState()
        self._breaker = health.CLOSED
        # (samples, p50 latency, p50 TTFT, p50 tokens/s, error rate), None once stale
        self._stats: tuple[int, float | None, float | None, float | None, float] | None = None
        self._runtime: ServiceRuntime | None = None
        # Its models (ModelsLive, rebuilt when one of these changes): requests in flight per
        # model, the models loading now, when each was last used, each one's load time.
        self._busy: dict[str, int] = {}
        self._loading: set[str] = set()
        self.last_used: dict[str, float] = {}
        self._load_ms: dict[str, float] = {}
        self._models: ModelsLive | None = NO_MODELS
        self._asleep = False  # its managed process is not running (ModelsLive.asleep)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, count: int) -> None:
        self._in_flight = count
        self._journal.add(self.service_id)

    @property
    def probe(self) -> health.ProbeState:
        return self._probe

    @probe.setter
    def probe(self, state: health.ProbeState) -> None:
        changed = state.verdict != self._probe.verdict  # the only part routing reads
        self._probe = state
        if changed:
            self._runtime = None
            self._mark()
            self._journal.add(self.service_id)

    @property
    def breaker(self) -> health.BreakerState:
        return self._breaker

    @breaker.setter
    def breaker(self, state: health.BreakerState) -> None:
        if state is self._breaker:
            return
        self._breaker = state
        self._runtime = None
        self._mark()
        self._journal.add(self.service_id)

    # -- its models, as placement reads them (geniehive/routing/placement.py) -----------
    def model_started(self, model: str, now: float) -> None:
        """A request for `model` runs on this service."""
        self._busy[model] = self._busy.get(model, 0) + 1
        self.last_used[model] = now
        self._models_changed()

    def model_finished(self, model: str, now: float) -> None:
        left = self._busy.get(model, 1) - 1
        if left > 0:
            self._busy[model] = left
        else:
            self._busy.pop(model, None)
        self.last_used[model] = now
        self._models_changed()

    def loading(self, model: str, busy: bool, load_ms: float | None = None) -> None:
        """`model` starts (`busy`) or ends loading; a load that finished took `load_ms`."""
        if busy:
            self._loading.add(model)
        else:
            self._loading.discard(model)
        if load_ms is not None:
            self._load_ms[model] = load_ms
        self._models_changed()

    def set_asleep(self, asleep: bool) -> None:
        """Its managed process stopped running (True) or runs again (False). Waking resets
        the probe verdict: what the prober said of the process before says nothing of this
        one."""
        if asleep != self._asleep:
            self._asleep = asleep
            self.probe = health.ProbeState()
            self._models_changed()

    @property
    def asleep(self) -> bool:
        return self._asleep

    def is_loading(self, model: str) -> bool:
        return model in self._loading

    def busy_models(self) -> bool:
        """Whether any model has a request in flight or is loading."""
        return bool(self._busy or self._loading)

    def models(self) -> ModelsLive:
        models = self._models
        if models is None:
            models = self._models = ModelsLive(
                loading=frozenset(self._loading), busy=frozenset(self._busy),
                last_used=dict(self.last_used), load_ms=dict(self._load_ms),
                asleep=self._asleep,
            )
        return models

    def _models_changed(self) -> None:
        self._models = None
        self._runtime = None
        self._journal.add(self.service_id)

    def _mark(self) -> None:
        if self._probe.verdict == "down" or self._breaker.state != "closed":
            self._suspects.add(self.service_id)
        else:
            self._suspects.discard(self.service_id)

    def record(
        self,
        ok: bool,
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
        tokens_per_sec: float | None = None,
    ) -> None:
        """One finished request: its outcome and, for a success, its measurements."""
        self.requests += 1
        self.outcomes.append(ok)
        if not ok:
            self.failures += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
        if ttft_ms is not None:
            self.ttfts_ms.append(ttft_ms)
        if tokens_per_sec is not None:
            self.tokens_per_sec.append(tokens_per_sec)
        self._stats = None
        self._runtime = None
        self._journal.add(self.service_id)

    def _measures(self) -> tuple[int, float | None, float | None, float | None, float]:
        stats = self._stats
        if stats is None:
            stats = self._stats = (
                len(self.latencies_ms),
                self.latencies_ms.percentile(0.5),
                self.ttfts_ms.percentile(0.5),
                self.tokens_per_sec.percentile(0.5),
                self.outcomes.error_rate(),
            )
        return stats

    def p50_latency_ms(self) -> float | None:
        return self._measures()[1]

    def p95_latency_ms(self) -> float | None:
        return self.latencies_ms.percentile(0.95)

    def ttft_ms(self) -> float | None:
        return self._measures()[2]

    def runtime(self, now: float, open_s: float) -> ServiceRuntime:
        """The numbers routing reads at `now`; the same object while none of them changed."""
        breaker = self._breaker
        view = breaker.state
        if view == "open":
            view = health.breaker_view(breaker, now, open_s)
        cached = self._runtime
        if cached is not None and cached.in_flight == self._in_flight and cached.breaker == view:
            return cached
        samples, p50, ttft, tok_s, error_rate = self._measures()
        cached = self._runtime = ServiceRuntime(
            probe=self._probe.verdict,
            breaker=view,
            trial_taken=breaker.trial_in_flight,
            in_flight=self._in_flight,
            samples=samples,
            p50_latency_ms=p50,
            ttft_ms=ttft,
            tokens_per_sec=tok_s,
            error_rate=error_rate,
            models=self.models(),
        )
        return cached


def in_use(counters: ServiceLive | None, slots_taken: int, queued: int) -> bool:
    """Whether a service is in use now: a request in flight or holding one of its slots
    (`slots_taken`, from the admission queue), one waiting for a slot (`queued`), or a
    model of it loading. An idle reaper never stops the process of a service in use."""
    return slots_taken > 0 or queued > 0 or (
        counters is not None and (counters.in_flight > 0 or counters.busy_models())
    )


class LiveState:
    """Per-service live numbers plus round-robin counters."""

    def __init__(
        self, *, open_s: float = 30.0, failures: int = 3, journal_limit: int = 65536
    ) -> None:
        self.services: dict[str, ServiceLive] = {}
        # ids whose probe is down or whose breaker is not closed (kept by ServiceLive)
        self.health_suspects: set[str] = set()
        # services whose runtime may have changed, for decisions that read only those
        self.changes = Journal(journal_limit)
        self.rr_counters: dict[str, int] = {}
        self.open_s = open_s
        self.failures = failures

    def get(self, service_id: str) -> ServiceLive:
        live = self.services.get(service_id)
        if live is None:
            live = self.services[service_id] = ServiceLive(
                service_id, self.health_suspects, self.changes
            )
            self.changes.add(service_id)  # its runtime is no longer NO_RUNTIME
        return live

    def runtime(self, service_id: str, now: float) -> ServiceRuntime:
        live = self.services.get(service_id)
        if live is None:
            return NO_RUNTIME
        return live.runtime(now, self.open_s)

    def advance_round_robin(self, key: str | None) -> None:
        if key is not None:
            self.rr_counters[key] = self.rr_counters.get(key, 0) + 1

    # -- request lifecycle -------------------------------------------------------------
    def attempt_started(self, service_id: str, now: float) -> None:
        live = self.get(service_id)
        live.in_flight += 1
        live.breaker = health.next_breaker_on_attempt(live.breaker, now, self.open_s)

    def attempt_failed(self, service_id: str, now: float) -> None:
        live = self.get(service_id)
        live.in_flight -= 1
        live.record(False)
        self._set_breaker(
            service_id, live,
            health.next_breaker_on_result(live.breaker, False, now, failures=self.failures),
        )

    @staticmethod
    def _set_breaker(service_id: str, live: ServiceLive, new: health.BreakerState) -> None:
        if new.state != live.breaker.state:
            log.info("breaker service=%s %s -> %s (consecutive failures %d)",
                     service_id, live.breaker.state, new.state, new.failures)
        live.breaker = new

    def attempt_succeeded(
        self,
        service_id: str,
        now: float,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        tokens_per_sec: float | None = None,
    ) -> None:
        live = self.get(service_id)
        live.in_flight -= 1
        live.record(True, latency_ms, ttft_ms, tokens_per_sec)
        self._set_breaker(
            service_id, live,
            health.next_breaker_on_result(live.breaker, True, now, failures=self.failures),
        )

    def attempt_refused(self, service_id: str, now: float) -> None:
        """The upstream answered with a client error (4xx): it is alive, so the breaker
        closes, but the answer is no measurement of its speed."""
        live = self.get(service_id)
        live.in_flight -= 1
        self._set_breaker(
            service_id, live,
            health.next_breaker_on_result(live.breaker, True, now, failures=self.failures),
        )

    def attempt_abandoned(self, service_id: str) -> None:
        """The client went away: neither a success nor an upstream failure."""
        live = self.get(service_id)
        live.in_flight -= 1
        if live.breaker.trial_in_flight:
            live.breaker = health.BreakerState(
                "half_open", live.breaker.failures, live.breaker.opened_at
            )


class RuntimeView(Mapping[str, ServiceRuntime], IncrementalRuntimes):
    """Live numbers computed on demand, so a decision costs only what it looks at.

    The gateway's `routing.IncrementalRuntimes`: `health_suspects` tells routing which
    services may fail a health gate on their runtime; the others need no lookup to be excluded
    by a role gate. `changes_since` tells it which runtimes to look up again after an earlier
    decision.
    """

    def __init__(self, live: LiveState, now: float) -> None:
        self.live = live
        self.now = now
        self._services = live.services
        self._open_s = live.open_s

    def __getitem__(self, service_id: str) -> ServiceRuntime:
        return self.get(service_id)

    def get(self, service_id: str, default: Any = None) -> ServiceRuntime:
        live = self._services.get(service_id)
        if live is None:
            return NO_RUNTIME
        return live.runtime(self.now, self._open_s)

    def health_suspects(self) -> frozenset[str]:
        return frozenset(self.live.health_suspects)

    def changes_since(self, token: object) -> tuple[object, Iterable[str] | None]:
        """A token for now, and the ids whose runtime may have changed since `token` was
        handed out (None: unknown, read every service). Runtimes that move with the clock
        alone (open breakers) are health suspects, never listed here."""
        journal = self.live.changes
        now_token = (journal, journal.position)
        if not (isinstance(token, tuple) and token[0] is journal):
            return now_token, None
        return now_token, journal.since(token[1])

    def __contains__(self, service_id: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.live.services)

    def __len__(self) -> int:
        return len(self.live.services)
