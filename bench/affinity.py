"""Session affinity's cost per request, in-process (geniehive/affinity.py).

Rule: the figures time the gateway's own code the way the relay calls it, in one process
with nothing else running: a request's `stick` (the lookup of where its session went last)
and, once answered, `served` (the session remembered again, moved to the recent end), with
`sessions` sessions remembered (100,000: the default bound), over many keys and sessions
taken at random, so the dictionary is read cold as in a busy gateway.

  hit        a remembered session: lookup and remember
  miss       a new session: a lookup that finds nothing, then remember (at the bound, the
             least recently used session is dropped to make room)
"""

from __future__ import annotations

import random
from typing import Any

from bench.routes import time_call
from geniehive.affinity import Affinity

SESSIONS = 100_000
KEYS = 50
SERVICES = 20


def filled(sessions: int) -> tuple[Affinity, list[tuple[str, str, str]]]:
    """A memory holding `sessions` sessions of KEYS keys, and their names."""
    memory = Affinity(ttl_s=600.0, max_sessions=sessions)
    names = [(f"key-{i % KEYS}", "chat", f"h:session-{i:07d}") for i in range(sessions)]
    for index, (key, model, session) in enumerate(names):
        memory.remember(key, model, session, f"svc-{index % SERVICES:02d}/chat", 0.0)
    return memory, names


def hit_call(memory: Affinity, names: list[tuple[str, str, str]]) -> Any:
    """One request of a remembered session, as relay.run and relay.forward make it."""
    order = names[:]
    random.Random(7).shuffle(order)
    state = {"i": 0}
    count = len(order)

    def call() -> None:
        i = state["i"]
        state["i"] = i + 1 if i + 1 < count else 0
        key, model, session = order[i]
        stick = memory.stick(key, model, session, 1.0)
        assert stick is not None and stick.remembered is not None
        stick.served(stick.remembered, 1.0)

    return call


def miss_call(memory: Affinity, sessions: int) -> Any:
    """One request of a session not remembered: nothing found, then remembered at the bound
    (the oldest dropped). The names cycle through three times the bound, so each one has
    been dropped again before it comes back."""
    names = [(f"key-{i % KEYS}", "chat", f"h:new-{i:09d}") for i in range(3 * sessions)]
    state = {"i": 0}
    count = len(names)

    def call() -> None:
        i = state["i"]
        state["i"] = i + 1 if i + 1 < count else 0
        key, model, session = names[i]
        stick = memory.stick(key, model, session, 1.0)
        assert stick is not None and stick.remembered is None
        stick.served("svc-00/chat", 1.0)

    return call


def measure(repeat: int = 5, loops: int | None = None, sessions: int = SESSIONS
            ) -> dict[str, Any]:
    """Median µs per request (lookup and remember), hit and miss, at `sessions` remembered."""
    memory, names = filled(sessions)
    hit_us = time_call(hit_call(memory, names), repeat, loops)
    miss_us = time_call(miss_call(memory, sessions), repeat, loops)
    return {"sessions": sessions, "remembered": len(memory), "hit_us": round(hit_us, 3),
            "miss_us": round(miss_us, 3)}


if __name__ == "__main__":
    print(measure())
