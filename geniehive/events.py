"""Live cluster events for the operator console: `GET /v1/cluster/events` (docs/console.md).

Rule: the request path never pays for a subscriber. It only appends to what it writes
anyway (the live counters' change journal, geniehive/live.py, and the ring of recent errors,
`ErrorLog.add`, both O(1)); the hub reads those every `FLUSH_S` while someone subscribes and
sleeps while nobody does. Each flush compares the views the API shows (geniehive/api_cluster.py:
hosts, services, roles, the admission queue) with the ones last sent and fans out one event
per changed item, so a service sends at most one event a flush however busy it is.

A subscriber holds at most SUBSCRIBER_BUFFER encoded events: one that falls that far behind
is dropped (its connection closed), never buffered without end. A heartbeat comment goes out
after HEARTBEAT_S without an event, so proxies keep the stream open.

    ErrorLog         the last ERRORS_KEPT failed requests: time, id, model, service, status,
                     message (never prompt text or keys)
    EventHub         subscriptions, the flush loop, the fan-out
    GatewaySource    what the hub reads from a gateway
    sse_event()      one server-sent event as bytes
    diff_items()     the changed and removed items of two id -> view maps
    serve_events()   the ASGI handler of the endpoint
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from geniehive.asgi import Receive, Scope, Send, scope_headers, scope_request_id, send_error
from geniehive.errors import GenieHiveError, ShuttingDown
from geniehive.writes import abort_connection

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.events")

PATH = "/v1/cluster/events"
FLUSH_S = 0.3  # how often changes are gathered and sent: at most ~3 events/s per item
HEARTBEAT_S = 15.0  # a comment line after this long without an event
SUBSCRIBER_BUFFER = 256  # encoded events a subscriber may fall behind before it is dropped
ERRORS_KEPT = 50
MESSAGE_CHARS = 300  # of an error message kept in the ring
# Fields that move with the clock alone: a change of only these is no event.
HOST_CLOCK_FIELDS = ("last_heartbeat_age_s",)

View = dict[str, Any]


# --- recent errors ----------------------------------------------------------------------------


class ErrorLog:
    """The last `limit` failed requests, oldest first, each numbered (`seq`) so a reader can
    ask for the ones after the last it saw. `add` is O(1): it is called where requests end."""

    def __init__(self, limit: int = ERRORS_KEPT, clock: Callable[[], float] = time.time) -> None:
        self.entries: deque[View] = deque(maxlen=limit)
        self.seq = 0
        self.clock = clock

    def add(
        self, *, request_id: str, endpoint: str, model: str, service_id: str | None,
        status: int, message: str,
    ) -> None:
        """Keep one failed request; its message cut to MESSAGE_CHARS."""
        self.seq += 1
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + "..."
        self.entries.append({
            "seq": self.seq, "at": round(self.clock(), 3), "request_id": request_id,
            "endpoint": endpoint, "model": model, "service_id": service_id,
            "status": status, "message": message,
        })

    def since(self, seq: int) -> list[View]:
        """The kept entries numbered above `seq`."""
        return [e for e in self.entries if e["seq"] > seq]


def failure_message(status: int, error: GenieHiveError | None,
                    failures: Iterable[tuple[str, str]]) -> str:
    """What went wrong with a request that ended with `status`: its error's message, else
    the last upstream failure's reason, else the status."""
    if error is not None:
        return error.message
    reasons = [why for _, why in failures]
    if reasons:
        return reasons[-1]
    return "the client went away" if status == 499 else f"HTTP {status}"


# --- the wire ---------------------------------------------------------------------------------


def sse_event(name: str, data: Any) -> bytes:
    """One server-sent event: `event: <name>` and its JSON on one `data:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"


def diff_items(
    old: Mapping[str, View], new: Mapping[str, View], *, ignore: tuple[str, ...] = ()
) -> tuple[list[View], list[str]]:
    """The views of `new` that are not in `old` or differ (fields in `ignore` aside), and the
    ids of `old` gone from `new`, both in id order."""

    def same(a: View, b: View) -> bool:
        if not ignore:
            return a == b
        return {k: v for k, v in a.items() if k not in ignore} == {
            k: v for k, v in b.items() if k not in ignore
        }

    changed = [new[k] for k in sorted(new) if k not in old or not same(old[k], new[k])]
    removed = sorted(k for k in old if k not in new)
    return changed, removed


# --- what the hub reads -------------------------------------------------------------------------


class Source(Protocol):
    """What the hub reads: the gateway's views (GatewaySource) or a test's."""

    def version(self) -> int: ...
    def dirty(self, token: object) -> tuple[object, set[str] | None]: ...
    def hosts(self) -> dict[str, View]: ...
    def services(self, ids: Iterable[str] | None) -> dict[str, View]: ...
    def roles(self) -> dict[str, View]: ...
    def queue(self) -> View: ...


class GatewaySource:
    """A gateway as the hub reads it, through the API's own views."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._load: dict[str, tuple[int, int]] = {}

    def version(self) -> int:
        return self.gw.snapshot.version

    def dirty(self, token: object) -> tuple[object, set[str] | None]:
        """A token for now, and the services that may have changed since `token` (None: all):
        the live journal's, the health suspects (breakers move with the clock) and those whose
        slots or queue changed."""
        journal = self.gw.live.changes
        now_token = (journal, journal.position)
        ids: set[str] | None = None
        if isinstance(token, tuple) and token[0] is journal:
            since = journal.since(token[1])
            ids = None if since is None else set(since)
        admission = self.gw.admission
        load = {
            sid: (admission.busy.get(sid, 0), admission.queued.get(sid, 0))
            for sid in self.gw.snapshot.services
        }
        if ids is not None:
            ids |= self.gw.live.health_suspects
            ids |= {sid for sid, pair in load.items() if self._load.get(sid) != pair}
        self._load = load
        return now_token, ids

    def hosts(self) -> dict[str, View]:
        from geniehive.api_cluster import host_views

        return {h["host_id"]: h for h in host_views(self.gw)}

    def services(self, ids: Iterable[str] | None) -> dict[str, View]:
        from geniehive.api_cluster import service_views

        return {s["service_id"]: s for s in service_views(self.gw, ids)}

    def roles(self) -> dict[str, View]:
        from geniehive.api_cluster import role_views

        return {r["role_id"]: r for r in role_views(self.gw)}

    def queue(self) -> View:
        admission = self.gw.admission
        by_service = {s: n for s, n in sorted(admission.queued.items()) if n}
        return {**admission.summary(), "by_service": by_service}


# --- the hub ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    """One subscriber: its bounded queue of encoded events, and how to cut it off."""

    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    on_drop: Callable[[], object] | None = None
    dropped: bool = False


@dataclass
class _State:
    token: object = None
    version: int = -1
    hosts: dict[str, View] = field(default_factory=dict)
    services: dict[str, View] = field(default_factory=dict)
    roles: dict[str, View] = field(default_factory=dict)
    queue: View = field(default_factory=dict)
    error_seq: int = 0


class EventHub:
    """Subscriptions and the flush loop (`run`), one per gateway."""

    def __init__(self, errors: ErrorLog, *, flush_s: float = FLUSH_S,
                 buffer: int = SUBSCRIBER_BUFFER) -> None:
        self.errors = errors
        self.flush_s = flush_s
        self.buffer = buffer
        self.source: Source | None = None
        self.subscribers: set[Subscription] = set()
        self.dropped = 0  # subscribers cut off for falling behind
        self.closed = False
        self._state = _State()
        self._wanted = trio.Event()

    def subscribe(self, on_drop: Callable[[], object] | None = None) -> Subscription:
        """A new subscription whose first event is the whole state (`snapshot`). Raises
        ShuttingDown once the hub is closed."""
        if self.closed or self.source is None:
            raise ShuttingDown("the gateway is shutting down")
        source = self.source
        state = self._state
        if not self.subscribers:  # nobody watched: start from now
            state.token, _ = source.dirty(None)
            state.version = source.version()
            state.hosts, state.services = source.hosts(), source.services(None)
            state.roles, state.queue = source.roles(), source.queue()
            state.error_seq = self.errors.seq
        send, receive = trio.open_memory_channel[bytes](self.buffer)
        sub = Subscription(send, receive, on_drop)
        snapshot = {
            "version": state.version, "at": round(time.time(), 3),
            "flush_s": self.flush_s, "heartbeat_s": HEARTBEAT_S,
            "hosts": [state.hosts[k] for k in sorted(state.hosts)],
            "services": [state.services[k] for k in sorted(state.services)],
            "roles": [state.roles[k] for k in sorted(state.roles)],
            "queue": state.queue,
            "errors": list(self.errors.entries),
        }
        send.send_nowait(sse_event("snapshot", snapshot))
        self.subscribers.add(sub)
        self._wanted.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)
        sub.send.close()

    def changes(self) -> list[bytes]:
        """The events since the last flush, and the new state kept for the next."""
        source, state = self.source, self._state
        if source is None:
            return []
        events: list[bytes] = []
        token, dirty = source.dirty(state.token)
        state.token = token
        version = source.version()
        if version != state.version:
            state.version = version
            events.append(sse_event("registry", {"version": version}))
            dirty = None
        if dirty is None or dirty:
            fresh = source.services(dirty)
            old = state.services if dirty is None else {
                k: v for k, v in state.services.items() if k in dirty
            }
            changed, removed = diff_items(old, fresh)
            events += [sse_event("service", v) for v in changed]
            events += [sse_event("service_removed", {"service_id": k}) for k in removed]
            for k in removed:
                del state.services[k]
            state.services.update(fresh)
        events += self._diff("host", "host_id", "hosts", source.hosts(), HOST_CLOCK_FIELDS)
        if events:  # where a role routes follows its services and hosts
            events += self._diff("role", "role_id", "roles", source.roles())
        queue = source.queue()
        if queue != state.queue:
            state.queue = queue
            events.append(sse_event("queue", queue))
        for entry in self.errors.since(state.error_seq):
            events.append(sse_event("error", entry))
        state.error_seq = self.errors.seq
        return events

    def _diff(self, kind: str, id_field: str, attr: str, fresh: dict[str, View],
              ignore: tuple[str, ...] = ()) -> list[bytes]:
        old: dict[str, View] = getattr(self._state, attr)
        changed, removed = diff_items(old, fresh, ignore=ignore)
        setattr(self._state, attr, fresh)
        return [sse_event(kind, v) for v in changed] + [
            sse_event(f"{kind}_removed", {id_field: k}) for k in removed
        ]

    def flush(self) -> None:
        """Gather the changes and offer them to every subscriber; one whose queue is full is
        dropped."""
        if not self.subscribers:
            return
        events = self.changes()
        for sub in list(self.subscribers):
            try:
                for event in events:
                    sub.send.send_nowait(event)
            except trio.WouldBlock:
                self.drop(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.subscribers.discard(sub)

    def drop(self, sub: Subscription) -> None:
        """Cut off a subscriber that fell SUBSCRIBER_BUFFER events behind."""
        self.dropped += 1
        sub.dropped = True
        self.unsubscribe(sub)
        log.warning("event subscriber dropped: it fell %d events behind", self.buffer)
        if sub.on_drop is not None:
            sub.on_drop()

    async def run(self, source: Source, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every `flush_s` while anyone subscribes; sleep while nobody does."""
        self.source = source
        task_status.started()
        while not self.closed:
            if not self.subscribers:
                self._wanted = trio.Event()
                await self._wanted.wait()
                continue
            await trio.sleep(self.flush_s)
            self.flush()

    def close(self) -> None:
        """End every stream (the gateway is stopping) and refuse new subscribers."""
        self.closed = True
        for sub in list(self.subscribers):
            self.unsubscribe(sub)
        self._wanted.set()


async def run_events(gateway: Gateway, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The gateway's hub, reading the gateway."""
    await gateway.events.run(GatewaySource(gateway), task_status=task_status)


# --- the endpoint -----------------------------------------------------------------------------

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def serve_events(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """`GET /v1/cluster/events` (read scope): the snapshot, then the changes, until the client
    leaves, falls too far behind, or the gateway stops."""
    request_id = scope_request_id(scope)
    try:
        gateway.auth.authorize(scope_headers(scope), "read")
        sub = gateway.events.subscribe(lambda: abort_connection(send))
    except GenieHiveError as exc:
        await send_error(send, exc, request_id)
        return
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*STREAM_HEADERS, (b"x-request-id", request_id.encode())]})
        async with trio.open_nursery() as nursery:

            async def watch_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_gone)
            await _pump(sub, send)
            nursery.cancel_scope.cancel()
    except OSError:  # the connection was closed under a pending send
        pass
    finally:
        gateway.events.unsubscribe(sub)


async def _pump(sub: Subscription, send: Send) -> None:
    """Send the subscription's events, a heartbeat after HEARTBEAT_S of quiet; end the body
    when the subscription ends."""
    while True:
        event = HEARTBEAT
        with trio.move_on_after(HEARTBEAT_S):
            try:
                event = await sub.receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if not sub.dropped:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        await send({"type": "http.response.body", "body": event, "more_body": True})
