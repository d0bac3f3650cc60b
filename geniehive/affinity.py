"""Session affinity: the service that served a session last, so its prompt cache is reused.

A request names a session with a header (`X-Session-Id`, or the session headers coding
agents send: Claude Code's `X-Claude-Code-Session-Id`, Codex's `session_id`) or with its
body's `prompt_cache_key` or `user` (a dialect request's own body first: the Responses API's
`prompt_cache_key` and `user`, then its chat translation, where the Messages API's
`metadata.user_id` is `user`). Sessions are remembered per key and per requested model name
(one session may ask two models, say an agent's main and small model), for `ttl_s` after
their last use, at most `max_sessions` of them: the least recently used goes first.

Rule: pure and O(1) per lookup (an ordered dict kept in recency order); the clock is the
caller's. Affinity only suggests: the relay takes the remembered service only while it is a
warm candidate of the request's route in the pool tier with a free slot; otherwise the
request is routed as usual and the session moves to the service that serves it
(docs/deployment.md, "Session affinity"). It yields to health, gates and capacity.

Each request that names a session gets one `Stick`: what was remembered, and its result
once a service is picked (`hit`: the remembered one; `miss`: none was remembered; `moved`:
another served it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from geniehive.routing import Candidate

# The headers that name a session, in the order they are looked at.
SESSION_HEADERS = ("x-session-id", "x-claude-code-session-id", "session_id", "session-id")
# The body fields that name one (OpenAI's prompt cache key, then the end user).
SESSION_FIELDS = ("prompt_cache_key", "user")
MAX_SESSION_CHARS = 256
HIT, MISS, MOVED = "hit", "miss", "moved"
RESULTS = (HIT, MISS, MOVED)


def session_of(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> str | None:
    """The session a request names, or None. Over-long names are not sessions (a client
    cannot make the gateway hold megabytes per entry)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value and len(value) <= MAX_SESSION_CHARS:
            return "h:" + value
    if body is not None:
        for name in SESSION_FIELDS:
            value = body.get(name)
            if isinstance(value, str) and value and len(value) <= MAX_SESSION_CHARS:
                return "b:" + value
    return None


def request_session(
    headers: Mapping[str, str], body: Mapping[str, Any] | None,
    dialect_body: Mapping[str, Any] | None = None,
) -> str | None:
    """The session of a request: its headers, then a dialect request's own body, then the
    (chat) body."""
    if dialect_body is None:
        return session_of(headers, body)
    return session_of(headers, dialect_body) or session_of({}, body)


def pinned(candidates: Iterable[Candidate], service_id: str | None) -> Candidate | None:
    """The candidate of `service_id` when it may take its session: in the pool tier (not a
    lower-tier failover) and warm (a cold model has no prompt cache to reuse)."""
    if service_id is None:
        return None
    for candidate in candidates:
        if candidate.service_id == service_id:
            return candidate if candidate.pool and not candidate.placement.cold else None
    return None


@dataclass(slots=True)
class Stick:
    """One request's session: where it was served last (`remembered`, None when it is not
    remembered) and where it goes."""

    memory: Affinity
    key: str
    model: str
    session: str
    remembered: str | None

    def result(self, service_id: str) -> str:
        """hit, miss or moved, for the request served by `service_id`."""
        if self.remembered is None:
            return MISS
        return HIT if service_id == self.remembered else MOVED

    def served(self, service_id: str, now: float) -> None:
        """`service_id` answered: the session stays there for another TTL."""
        self.memory.remember(self.key, self.model, self.session, service_id, now)


class Affinity:
    """Session → the service that served it last, with a TTL and an LRU bound."""

    __slots__ = ("_entries", "max_sessions", "ttl_s")

    def __init__(self, ttl_s: float, max_sessions: int) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        # (key, model, session) -> (service id, when it expires); oldest use first.
        self._entries: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, ttl_s: float, max_sessions: int) -> None:
        """New limits (a reload): the least recent sessions beyond the bound are forgotten
        now; a remembered session keeps its expiry until its next request."""
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        while len(self._entries) > max(max_sessions, 0):
            self._entries.popitem(last=False)

    @property
    def enabled(self) -> bool:
        """Off with a zero TTL or a zero bound."""
        return self.ttl_s > 0 and self.max_sessions > 0

    def get(self, key: str, model: str, session: str, now: float) -> str | None:
        """The service that served the session last, while it is remembered."""
        entry = self._entries.get((key, model, session))
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[(key, model, session)]
            return None
        return entry[0]

    def remember(self, key: str, model: str, session: str, service_id: str, now: float) -> None:
        """The session was just served by `service_id`: keep it for another `ttl_s`."""
        if self.max_sessions <= 0:
            return
        name = (key, model, session)
        entries = self._entries
        entries[name] = (service_id, now + self.ttl_s)
        entries.move_to_end(name)
        while len(entries) > self.max_sessions:
            entries.popitem(last=False)

    def stick(self, key: str, model: str, session: str | None, now: float) -> Stick | None:
        """The request's `Stick`; None when it names no session or affinity is off."""
        if session is None or not self.enabled:
            return None
        return Stick(self, key, model, session, self.get(key, model, session, now))


def explain_stick(
    stick: Stick, candidates: Iterable[Candidate], has_slot: Callable[[str], bool]
) -> dict[str, Any]:
    """A session in a route explanation: the service it is bound to (None: not remembered)
    and whether a request of it now would go there (`would_hit`: that service is a warm
    pool-tier candidate with a free slot, `has_slot`)."""
    candidate = pinned(candidates, stick.remembered)
    return {
        "key": stick.key,
        "session": stick.session,
        "bound_to": stick.remembered,
        "would_hit": candidate is not None and has_slot(candidate.service_id),
    }
