"""Session affinity's memory: which requests name a session, TTL and the LRU bound."""

from __future__ import annotations

from geniehive.affinity import (
    HIT,
    MISS,
    MOVED,
    Affinity,
    Stick,
    pinned,
    request_session,
    session_of,
)
from geniehive.routing import Candidate
from geniehive.routing.placement import Placement


def test_sessions_are_named_by_header_first_then_by_body() -> None:
    assert session_of({"x-session-id": "s1"}, {"user": "u"}) == "h:s1"
    assert session_of({"x-claude-code-session-id": "cc"}, None) == "h:cc"
    assert session_of({"session_id": "codex"}, None) == "h:codex"
    assert session_of({}, {"prompt_cache_key": "pk", "user": "u"}) == "b:pk"
    assert session_of({}, {"user": "u"}) == "b:u"
    assert session_of({}, {"user": 3}) is None
    assert session_of({}, None) is None
    # A name too long to be a session id is not remembered.
    assert session_of({"x-session-id": "x" * 10_000}, None) is None


def test_a_session_is_kept_per_key_and_model_until_its_ttl() -> None:
    memory = Affinity(ttl_s=600, max_sessions=10)
    memory.remember("apps", "chat", "h:s1", "svc-a", now=0)
    assert memory.get("apps", "chat", "h:s1", now=599) == "svc-a"
    assert memory.get("apps", "small", "h:s1", now=1) is None  # another model
    assert memory.get("other", "chat", "h:s1", now=1) is None  # another key
    # Each use extends it.
    memory.remember("apps", "chat", "h:s1", "svc-b", now=500)
    assert memory.get("apps", "chat", "h:s1", now=1099) == "svc-b"
    assert memory.get("apps", "chat", "h:s1", now=1100) is None
    assert len(memory) == 0  # the expired entry is gone


def test_the_least_recently_used_session_goes_first() -> None:
    memory = Affinity(ttl_s=600, max_sessions=2)
    memory.remember("k", "m", "a", "svc-1", now=0)
    memory.remember("k", "m", "b", "svc-2", now=1)
    memory.remember("k", "m", "a", "svc-1", now=2)  # a is used again: b is now the oldest
    memory.remember("k", "m", "c", "svc-3", now=3)
    assert memory.get("k", "m", "b", now=4) is None
    assert memory.get("k", "m", "a", now=4) == "svc-1"
    assert memory.get("k", "m", "c", now=4) == "svc-3"
    assert len(memory) == 2


def test_no_sessions_are_kept_when_the_bound_is_zero() -> None:
    memory = Affinity(ttl_s=600, max_sessions=0)
    memory.remember("k", "m", "a", "svc-1", now=0)
    assert memory.get("k", "m", "a", now=1) is None


def test_a_dialect_request_names_its_session_in_its_own_body_first() -> None:
    # The Responses API keeps prompt_cache_key in its own body, not in the chat translation.
    assert request_session({}, {"model": "m"}, {"prompt_cache_key": "pk"}) == "b:pk"
    # The Messages API's metadata.user_id is the chat translation's user.
    assert request_session({}, {"user": "u-1"}, {"metadata": {"user_id": "u-1"}}) == "b:u-1"
    assert request_session({"x-session-id": "s"}, {"user": "u"}, {}) == "h:s"
    assert request_session({}, {"model": "m"}) is None


def test_only_a_warm_pool_candidate_may_take_its_session() -> None:
    warm = Candidate("a", "h", "m", 1.0, {})
    lower = Candidate("b", "h", "m", 1.0, {}, pool=False)
    cold = Candidate("c", "h", "m", 1.0, {}, placement=Placement("cold_fits"))
    candidates = (warm, lower, cold)
    assert pinned(candidates, "a") is warm
    assert pinned(candidates, "b") is None  # a lower tier is only a failover
    assert pinned(candidates, "c") is None  # its prompt cache went with the model
    assert pinned(candidates, "gone") is None
    assert pinned(candidates, None) is None
    memory = Affinity(ttl_s=600, max_sessions=10)
    assert memory.stick("k", "m", None, now=0) is None
    assert Affinity(ttl_s=0, max_sessions=10).stick("k", "m", "s", now=0) is None
    stick = memory.stick("k", "m", "s", now=0)
    assert stick is not None and stick.result("a") == MISS
    stick.served("a", now=1)
    again = memory.stick("k", "m", "s", now=2)
    assert isinstance(again, Stick)
    assert (again.result("a"), again.result("b")) == (HIT, MOVED)
