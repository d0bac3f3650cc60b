"""Capacity: every service within its slots, the requests beyond them waiting here, in order.

Rule: owned by the event loop thread; only `Admission.wait` awaits. A service's slots are its
`observed.slots_total` (the configured `max_in_flight`, else what discovery read); None is
unlimited, and such a service is never waited for.

A request holds a `Ticket` for its whole life. Each try takes a slot with `take` on the first
of its candidates that has one free (the candidate order decides among free services) and
gives it back with `release`. When none is free the request `wait`s: when a slot frees on a
service, the best waiting ticket that may use it is admitted there at once (the slot is taken
on its behalf before its task wakes, so no newcomer can slip in between). Waiting spends no
failover attempt.

Best means, in this order:
  1. the priority class: high 0, normal 1, low 2; every `aging_s` a ticket waits moves it up
     one class, so nothing starves;
  2. fair share between keys within a class: stride scheduling, where each admission moves
     its key's pass on by 1 / weight and the key with the lowest pass goes first (a key that
     was idle starts at the class's current pass, so it gains no burst from idling);
  3. arrival.
A key's `max_in_flight` counts its requests from their first admission to their end (between
two tries too); a key at its limit waits even where slots are free.

Each service's tickets are indexed by (class, key) in arrival order, so choosing the best for
a freed slot looks at one ticket per (class, key) pair; a ticket admitted elsewhere is
dropped from the other services' lists lazily, and the index is rebuilt when the dropped
entries outnumber the live ones.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from geniehive.auth import HeaderLookup, Principal
from geniehive.errors import InvalidRequest, QueueFull, QueueTimeout, RateLimited
from geniehive.exchange import Inbound
from geniehive.models import Service

__all__ = [
    "CLASS_NAMES",
    "PRIORITIES",
    "Admission",
    "KeyRates",
    "ServiceLoad",
    "Ticket",
    "place",
    "slots_of",
]

PRIORITIES = {"high": 0, "normal": 1, "low": 2}
CLASS_NAMES = ("high", "normal", "low")
RATE_WINDOW = 32  # slot releases kept per service to measure its rate
COMPACT_MIN = 1024  # dropped index entries tolerated before a rebuild is considered


def slots_of(service: Service) -> int | None:
    """A service's slots: its `observed.slots_total` when positive, else None (unlimited)."""
    total = service.observed.slots_total
    return total if total is not None and total > 0 else None


PRIORITY_HEADER = "x-geniehive-priority"
MAX_WAIT_HEADER = "x-geniehive-max-wait-ms"


def place(
    inbound: Inbound,
    principal: Principal,
    headers: HeaderLookup,
    *,
    open_mode: bool,
    rates: KeyRates,
    now: float,
) -> None:
    """Fill the request's place at the queue from its key and its headers, and count it
    against the key's `requests_per_minute` (raises RateLimited past it).

    `X-GenieHive-Priority` picks the class; a key's `priority` is its default and its highest
    (a key without one: normal), so a client may ask for less, never for more; in open mode
    any class may be asked for. `X-GenieHive-Max-Wait-Ms` shortens the longest wait.
    Raises InvalidRequest for a value that is neither.
    """
    limits = principal.limits
    own = PRIORITIES[limits.priority or "normal"]
    klass = own
    asked = headers.get(PRIORITY_HEADER)
    if asked is not None:
        value = PRIORITIES.get(asked.strip().lower())
        if value is None:
            raise InvalidRequest(
                f"X-GenieHive-Priority must be high, normal or low, not {asked[:40]!r}",
                param="X-GenieHive-Priority",
            )
        klass = value if open_mode else max(value, own)
    wait = headers.get(MAX_WAIT_HEADER)
    if wait is not None:
        text = wait.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            raise InvalidRequest(
                f"X-GenieHive-Max-Wait-Ms must be a whole number of milliseconds, not "
                f"{wait[:40]!r}",
                param="X-GenieHive-Max-Wait-Ms",
            )
        inbound.max_wait_s = int(text) / 1000
    inbound.key = principal.name
    inbound.key_limit = limits.max_in_flight
    inbound.weight = limits.weight
    inbound.priority = klass
    if limits.requests_per_minute is not None:
        rates.check(principal.name, limits.requests_per_minute, now)


class Ticket:
    """One request's place at the admission queue, for its whole life."""

    __slots__ = (
        "admitted",
        "arrival",
        "event",
        "holds_key",
        "key",
        "key_limit",
        "klass",
        "seq",
        "services",
        "waited_s",
        "waiting",
        "weight",
    )

    def __init__(
        self, key: str, *, klass: int = 1, weight: float = 1.0, key_limit: int | None = None
    ) -> None:
        self.key = key
        self.klass = klass
        self.weight = weight
        self.key_limit = key_limit
        self.holds_key = False  # counts against its key's max_in_flight
        self.waiting = False
        self.waited_s = 0.0  # over all its waits
        self.admitted: str | None = None  # the service a slot was taken on while it waited
        self.services: Sequence[str] = ()
        self.arrival = 0.0
        self.seq = 0
        self.event: trio.Event | None = None


@dataclass(frozen=True, slots=True)
class ServiceLoad:
    """What `/v1/cluster/services` shows of a service's slots."""

    slots_total: int | None
    in_flight: int
    queued: int


class Admission:
    """The slots in use per service and the tickets waiting for one."""

    def __init__(
        self,
        *,
        max_queue: int = 1000,
        queue_timeout_s: float = 60.0,
        aging_s: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.aging_s = aging_s
        self.clock = clock
        self.busy: dict[str, int] = {}  # slots taken, per service
        self.slots: dict[str, int | None] = {}  # the last slot count seen, per service
        self.key_busy: dict[str, int] = {}  # requests holding a key's unit
        # service -> (class, key) -> tickets in arrival order (some already gone: lazily)
        self.index: dict[str, dict[tuple[int, str], deque[Ticket]]] = {}
        self.by_key: dict[str, list[Ticket]] = {}  # key-limited tickets, for the key's turn
        self.queued: dict[str, int] = {}  # waiting tickets that may use each service
        self.waiting = 0
        self.waiting_by_class = [0, 0, 0]
        self.passes: tuple[dict[str, float], ...] = ({}, {}, {})
        self.vtime = [0.0, 0.0, 0.0]
        self.releases: dict[str, deque[float]] = {}
        self.refused: dict[str, int] = {}  # refusals by error code, for /metrics
        # Called with the seconds each wait lasted, however it ended (the metrics' histogram).
        self.observe_wait: Callable[[float], None] | None = None
        # Seconds until a start or load in progress on a service should end (its model's
        # measured load time); the gateway's demand sets it (geniehive/demand.py).
        self.loading_s: Callable[[str], float] | None = None
        self._seq = 0
        self._entries = 0  # index entries, live or dropped
        self._dropped = 0

    # -- taking and giving back slots ---------------------------------------------------
    def take(
        self, ticket: Ticket, services: Sequence[str], slots: Sequence[int | None]
    ) -> str | None:
        """Take a slot on the first of `services` with one free, for `ticket`; None when
        every one is full (or the ticket's key is at its limit)."""
        busy = self.busy
        known = self.slots
        grown = None
        for sid, total in zip(services, slots, strict=True):
            if known.get(sid, 0) != total:
                old = known.get(sid)
                known[sid] = total
                if sid in self.index and (total is None or (old is not None and total > old)):
                    grown = sid
        if grown is not None:  # more slots than before: those waiting go first
            self._pump(grown)
        limit = ticket.key_limit
        if limit is not None and not ticket.holds_key and self.key_busy.get(ticket.key, 0) >= limit:
            return None
        for sid, total in zip(services, slots, strict=True):
            used = busy.get(sid, 0)
            if total is None or used < total:
                busy[sid] = used + 1
                self._hold_key(ticket)
                return sid
        return None

    def release(self, service_id: str) -> None:
        """A try on `service_id` ended: its slot goes to the best ticket waiting for it."""
        self.busy[service_id] = self.busy.get(service_id, 1) - 1
        times = self.releases.get(service_id)
        if times is None:
            times = self.releases[service_id] = deque(maxlen=RATE_WINDOW)
        times.append(self.clock())
        if service_id in self.index:
            self._pump(service_id)

    def finish(self, ticket: Ticket) -> None:
        """The request ended: its key's unit is free for the key's next ticket."""
        if not ticket.holds_key:
            return
        ticket.holds_key = False
        key = ticket.key
        self.key_busy[key] -= 1
        if not self.key_busy[key]:
            del self.key_busy[key]
        if ticket.key_limit is not None and self.by_key.get(key):
            self._pump_key(key)

    def _hold_key(self, ticket: Ticket) -> None:
        if not ticket.holds_key:
            ticket.holds_key = True
            self.key_busy[ticket.key] = self.key_busy.get(ticket.key, 0) + 1

    # -- waiting ------------------------------------------------------------------------
    async def wait(
        self,
        ticket: Ticket,
        services: Sequence[str],
        budget_s: float,
        what: str,
    ) -> str:
        """Wait for a slot on one of `services` (their slot counts as `take` last saw them);
        the service one was taken on. Raises QueueFull at once when `max_queue` tickets
        wait, QueueTimeout once `budget_s` passed. A cancelled wait leaves the queue at once."""
        now = self.clock()
        if self.waiting >= self.max_queue:
            self._count_refusal(QueueFull.code)
            raise QueueFull(
                f"the admission queue is full: {self.waiting} requests waiting "
                f"(capacity.max_queue {self.max_queue})",
                retry_after_s=self.retry_after_s(services, now),
            )
        if budget_s <= 0:
            raise self._timeout(services, what, now)
        self._enqueue(ticket, services, now)
        started = now
        try:
            with trio.CancelScope(deadline=trio.current_time() + budget_s):
                assert ticket.event is not None
                await ticket.event.wait()
        except BaseException:
            # Cancelled: the client went away, or the shutdown grace ran out.
            self._note_waited(ticket, started)
            if ticket.admitted is not None:
                admitted, ticket.admitted = ticket.admitted, None
                self.release(admitted)
            else:
                self._leave(ticket)
            raise
        self._note_waited(ticket, started)
        if ticket.admitted is None:
            self._leave(ticket)
            raise self._timeout(services, what, self.clock())
        admitted, ticket.admitted = ticket.admitted, None
        return admitted

    def _note_waited(self, ticket: Ticket, started: float) -> None:
        waited = max(0.0, self.clock() - started)
        ticket.waited_s += waited
        if self.observe_wait is not None:
            self.observe_wait(waited)

    def _count_refusal(self, code: str | None) -> None:
        key = code or "-"
        self.refused[key] = self.refused.get(key, 0) + 1

    def _timeout(self, services: Sequence[str], what: str, now: float) -> QueueTimeout:
        self._count_refusal(QueueTimeout.code)
        waiting = max((self.queued.get(sid, 0) for sid in services), default=0)
        return QueueTimeout(
            f"no slot freed for {what} in time: {waiting} requests waiting for its services",
            retry_after_s=self.retry_after_s(services, now),
        )

    def _enqueue(self, ticket: Ticket, services: Sequence[str], now: float) -> None:
        self._seq += 1
        ticket.seq = self._seq
        ticket.arrival = now - ticket.waited_s  # an earlier wait counts for aging
        ticket.services = tuple(services)
        ticket.waiting = True
        ticket.admitted = None
        ticket.event = trio.Event()
        pair = (ticket.klass, ticket.key)
        for sid in ticket.services:
            lists = self.index.get(sid)
            if lists is None:
                lists = self.index[sid] = {}
            tickets = lists.get(pair)
            if tickets is None:
                tickets = lists[pair] = deque()
            tickets.append(ticket)
            self.queued[sid] = self.queued.get(sid, 0) + 1
        self._entries += len(ticket.services)
        if ticket.key_limit is not None:
            self.by_key.setdefault(ticket.key, []).append(ticket)
        self.waiting += 1
        self.waiting_by_class[ticket.klass] += 1

    def _leave(self, ticket: Ticket) -> None:
        """`ticket` stops waiting (admitted, timed out or gone): uncount it everywhere."""
        if not ticket.waiting:
            return
        ticket.waiting = False
        for sid in ticket.services:
            left = self.queued[sid] - 1
            if left:
                self.queued[sid] = left
            else:
                del self.queued[sid]
        self._dropped += len(ticket.services)
        self.waiting -= 1
        self.waiting_by_class[ticket.klass] -= 1
        if ticket.key_limit is not None:
            mine = self.by_key.get(ticket.key)
            if mine is not None:
                mine.remove(ticket)
                if not mine:
                    del self.by_key[ticket.key]
        if self._dropped > COMPACT_MIN and self._dropped * 2 > self._entries:
            self._compact()

    def _compact(self) -> None:
        entries = 0
        for sid in list(self.index):
            lists = self.index[sid]
            for pair in list(lists):
                kept = deque(t for t in lists[pair] if t.waiting)
                if kept:
                    lists[pair] = kept
                    entries += len(kept)
                else:
                    del lists[pair]
            if not lists:
                del self.index[sid]
        self._entries = entries
        self._dropped = 0

    # -- admitting ----------------------------------------------------------------------
    def _free(self, sid: str) -> bool:
        total = self.slots.get(sid)
        return total is None or self.busy.get(sid, 0) < total

    def _pump(self, sid: str) -> None:
        """Admit the best waiting tickets on `sid` while it has a free slot."""
        while self._free(sid):
            best = self._best(sid)
            if best is None:
                return
            self._admit(best, sid)

    def _best(self, sid: str) -> Ticket | None:
        lists = self.index.get(sid)
        if lists is None:
            return None
        now = self.clock()
        aging = self.aging_s
        key_busy = self.key_busy
        best: Ticket | None = None
        best_rank: tuple[int, float, int] | None = None
        empty = []
        for pair, tickets in lists.items():
            while tickets and not tickets[0].waiting:
                tickets.popleft()
                self._entries -= 1
                self._dropped -= 1
            if not tickets:
                empty.append(pair)
                continue
            ticket = tickets[0]
            limit = ticket.key_limit
            if limit is not None and not ticket.holds_key and key_busy.get(ticket.key, 0) >= limit:
                continue  # its key is at its limit: its turn comes when the key frees
            klass = self._class_of(ticket, now, aging)
            passes = self.passes[klass]
            rank = (klass, max(passes.get(ticket.key, 0.0), self.vtime[klass]), ticket.seq)
            if best_rank is None or rank < best_rank:
                best, best_rank = ticket, rank
        for pair in empty:
            del lists[pair]
        if not lists:
            del self.index[sid]
        return best

    @staticmethod
    def _class_of(ticket: Ticket, now: float, aging_s: float) -> int:
        """The ticket's class now: one up for every `aging_s` it has waited."""
        klass = ticket.klass
        if klass:
            klass = max(0, klass - int((now - ticket.arrival) // aging_s))
        return klass

    def _admit(self, ticket: Ticket, sid: str) -> None:
        klass = self._class_of(ticket, self.clock(), self.aging_s)
        passes = self.passes[klass]
        start = max(passes.get(ticket.key, 0.0), self.vtime[klass])
        self.vtime[klass] = start
        passes[ticket.key] = start + 1.0 / ticket.weight
        self.busy[sid] = self.busy.get(sid, 0) + 1
        self._hold_key(ticket)
        ticket.admitted = sid
        self._leave(ticket)
        assert ticket.event is not None
        ticket.event.set()

    def _pump_key(self, key: str) -> None:
        """The key has a unit free: admit its best ticket on a free service of its own."""
        now = self.clock()
        mine = sorted(
            self.by_key.get(key, ()),
            key=lambda t: (self._class_of(t, now, self.aging_s), t.seq),
        )
        for ticket in mine:
            limit = ticket.key_limit
            if limit is not None and not ticket.holds_key and self.key_busy.get(key, 0) >= limit:
                return
            for sid in ticket.services:
                if self._free(sid):
                    self._admit(ticket, sid)
                    break

    # -- what is shown ------------------------------------------------------------------
    def summary(self) -> dict[str, object]:
        """The queue as `GET /v1/cluster/capacity` shows it."""
        return {
            "waiting": self.waiting,
            "waiting_by_priority": dict(zip(CLASS_NAMES, self.waiting_by_class, strict=True)),
            "max_queue": self.max_queue,
            "queue_timeout_s": self.queue_timeout_s,
            "aging_s": self.aging_s,
            "refused": dict(sorted(self.refused.items())),
        }

    def load(self, service_id: str, slots_total: int | None) -> ServiceLoad:
        return ServiceLoad(
            slots_total, self.busy.get(service_id, 0), self.queued.get(service_id, 0)
        )

    def rate(self, service_id: str, now: float) -> float:
        """Slots freed per second on a service lately; 0 when not measured."""
        times = self.releases.get(service_id)
        if times is None or len(times) < 2 or now <= times[0]:
            return 0.0
        return len(times) / (now - times[0])

    def retry_after_s(self, services: Sequence[str], now: float) -> int:
        """Seconds after which a refused request may find room: the tickets ahead of it over
        the rate its services free slots at, from 1 to the queue timeout (1 unmeasured); no
        sooner than a load in progress on them should end (`loading_s`)."""
        rate = sum(self.rate(sid, now) for sid in services)
        loading = self.loading_s
        floor = max((loading(sid) for sid in services), default=0.0) if loading else 0.0
        if rate <= 0:
            return max(1, math.ceil(floor))
        ahead = max((self.queued.get(sid, 0) for sid in services), default=0)
        slot = min(math.ceil(self.queue_timeout_s), math.ceil((ahead + 1) / rate))
        return max(1, slot, math.ceil(floor))


class KeyRates:
    """`requests_per_minute` per key: a token bucket as deep as the limit, refilled evenly.

    Time comes in as `now`. One entry per key that made a limited request, so memory is
    bounded by the number of keys.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.refused = 0

    def check(self, key: str, per_minute: int, now: float) -> None:
        """Count one request of `key`; raises RateLimited (with Retry-After) past the limit."""
        refill = per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * refill)
        if tokens < 1.0:
            self.refused += 1
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / refill)
            raise RateLimited(
                f"this key may make {per_minute} requests per minute; retry in {wait} s",
                retry_after_s=wait,
            )
        self._buckets[key] = (tokens - 1.0, now)
