"""Session affinity through a real gateway over two fake upstreams in one round-robin pool:
a session's requests stay on the service that served it last while that service can take
them, and move when it cannot; sessionless requests keep their round robin."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config
from tests.hive import calls
from tests.wsclient import connect, receive, request

MODEL = "shared"
ENV = {"A_KEY": "sk-a-1", "B_KEY": "sk-b-2"}
KEYS = """
[[auth.keys]]
name = "a"
key_env = "A_KEY"
scopes = ["inference", "read", "operate"]

[[auth.keys]]
name = "b"
key_env = "B_KEY"
scopes = ["inference"]
"""
ROUND_ROBIN = '\n[routing]\nstrategy = "round_robin"\n'


def chat(text: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **fields}


class Pool:
    """A gateway with two keys over the fakes `u0` and `u1`, both serving MODEL."""

    def __init__(self, running: InProcess, fakes: dict[str, FakeUpstream]) -> None:
        self.running = running
        self.gateway = running.gateway
        self.fakes = fakes
        self.client = httpx.AsyncClient(base_url=running.url, timeout=10)
        self.now = 1000.0
        self.gateway.affinity_clock = lambda: self.now  # turned by the TTL test

    async def ask(self, session: str | None = None, key: str = "a", settle: bool = True,
                  header: str = "x-session-id", **fields: Any) -> httpx.Response:
        """A chat request under `key`, naming `session` in the header `header`."""
        headers = {"authorization": f"Bearer {ENV[key.upper() + '_KEY']}"}
        if session is not None:
            headers[header] = session
        response = await self.client.post("/v1/chat/completions", json=chat(**fields),
                                          headers=headers)
        assert response.status_code == 200, response.text
        if settle:
            await self.settled()
        return response

    async def settled(self) -> None:
        """Until the gateway has finished every request (the relay remembers a session just
        after the answer's last byte went out)."""
        while self.gateway.active_requests:  # noqa: ASYNC110
            await trio.sleep(0.001)

    async def stop(self) -> None:
        await self.client.aclose()
        await self.running.stop()


async def start_pool(
    nursery: trio.Nursery, tmp_path: Path, routing: str = "", upstream: str = "",
    each: dict[str, str] | None = None,
) -> Pool:
    """The pool; `upstream` is added to both upstreams' tables, `each[name]` after it to
    that one's."""
    fakes: dict[str, FakeUpstream] = {}
    body = KEYS + ROUND_ROBIN + routing
    for name in ("u0", "u1"):
        fake = FakeUpstream([MODEL], name=name)
        port = await nursery.start(fake.serve)
        fakes[f"{name}/chat"] = fake
        body += upstream_toml(name, port, ["chat"], extra=upstream + (each or {}).get(name, ""))
    running = await gateway_in_process(nursery, write_config(tmp_path, body), ENV)
    return Pool(running, fakes)


def served(response: httpx.Response) -> str:
    return response.headers["x-geniehive-service"]


def other(service: str) -> str:
    return "u1/chat" if service == "u0/chat" else "u0/chat"


async def test_a_session_sticks_to_one_service_while_sessionless_requests_alternate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        first = await pool.ask("agent-1")  # a miss: routed as usual
        sessionless, session, results = [], [served(first)], [first.headers["x-geniehive-affinity"]]
        for _ in range(6):
            alone = await pool.ask()
            sessionless.append(served(alone))
            assert "x-geniehive-affinity" not in alone.headers  # it named no session
            sticky = await pool.ask("agent-1")
            session.append(served(sticky))
            results.append(sticky.headers["x-geniehive-affinity"])
        await pool.stop()
    assert len(set(session)) == 1
    assert results == ["miss"] + ["hit"] * 6
    # A hit takes no turn of the round robin: the sessionless requests still alternate.
    assert all(a != b for a, b in itertools.pairwise(sessionless))


async def test_a_hit_leaves_the_round_robin_where_it_was(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        bound = served(await pool.ask("agent-1"))  # a miss: it takes a turn
        first = served(await pool.ask())
        for _ in range(3):
            assert served(await pool.ask("agent-1")) == bound
        after = served(await pool.ask())
        await pool.stop()
    assert first != bound  # the miss took the round robin's turn
    assert after == other(first)  # three hits later, the next turn is still the next one


async def test_a_drained_service_moves_its_session_and_the_session_follows(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        bound = served(await pool.ask("agent-1"))
        drained = await pool.client.post(
            f"/v1/cluster/services/{bound}/drain",
            headers={"authorization": f"Bearer {ENV['A_KEY']}"},
        )
        assert drained.status_code == 200, drained.text
        moved = await pool.ask("agent-1")
        again = await pool.ask("agent-1")
        await pool.stop()
    assert (served(moved), moved.headers["x-geniehive-affinity"]) == (other(bound), "moved")
    assert (served(again), again.headers["x-geniehive-affinity"]) == (other(bound), "hit")


async def test_a_failing_service_moves_its_session_to_the_one_that_answered(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        bound = served(await pool.ask("agent-1"))
        pool.fakes[bound].set_fault("status", status=503, message="down", times=1,
                                    path="/v1/chat")
        moved = await pool.ask("agent-1")
        again = await pool.ask("agent-1")
        await pool.stop()
    assert served(moved) == other(bound)
    assert moved.headers["x-geniehive-attempts"] == "2"  # tried where it was, first
    assert moved.headers["x-geniehive-affinity"] == "moved"
    assert (served(again), again.headers["x-geniehive-affinity"]) == (other(bound), "hit")


async def test_a_full_service_moves_its_session_instead_of_queueing_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path, upstream="max_in_flight = 1\n")
        bound = served(await pool.ask("agent-1"))
        holder = pool.fakes[bound]
        holder.set_fault("hold_stream", after_chunks=1)
        held: list[httpx.Response] = []

        async def hold() -> None:
            held.append(await pool.ask("agent-1", settle=False, stream=True))

        async with trio.open_nursery() as inner:
            inner.start_soon(hold)
            while pool.gateway.admission.busy.get(bound, 0) < 1:  # noqa: ASYNC110
                await trio.sleep(0.005)
            moved = await pool.ask("agent-1", settle=False)
            holder.set_fault("ok")
            holder.release()
        await pool.stop()
    assert held[0].headers["x-geniehive-affinity"] == "hit"
    assert served(moved) == other(bound)
    assert moved.headers["x-geniehive-affinity"] == "moved"
    assert "x-geniehive-queued-ms" not in moved.headers  # it did not wait for its slot


def capabilities(*names: str) -> str:
    listed = ", ".join(f'"{n}"' for n in names)
    return f'\n[[upstreams.assets]]\nasset_id = "{MODEL}"\ncapabilities = [{listed}]\n'


async def test_a_request_its_service_cannot_serve_moves_the_session(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tool = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
    each = {"u0": capabilities("completion"), "u1": capabilities("completion", "tools")}
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path, each=each)
        # Two misses take two turns of the round robin: one session is bound to each service.
        bound = {served(await pool.ask(name)): name for name in ("agent-1", "agent-2")}
        assert sorted(bound) == ["u0/chat", "u1/chat"]
        session = bound["u0/chat"]
        moved = await pool.ask(session, tools=tool)  # only u1 says it can use tools
        after = [await pool.ask(session) for _ in range(2)]  # plain again: any could serve
        await pool.stop()
    assert (served(moved), moved.headers["x-geniehive-affinity"]) == ("u1/chat", "moved")
    assert moved.headers["x-geniehive-attempts"] == "1"  # u0 was not tried: the gate kept it out
    assert len(calls(pool.fakes["u0/chat"])) == 1  # the request that bound the session
    # The session follows to u1 (two requests: round robin alone would send one to u0).
    assert [(served(r), r.headers["x-geniehive-affinity"]) for r in after] == \
        [("u1/chat", "hit")] * 2


async def test_a_session_is_forgotten_after_its_ttl(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path, routing="affinity_ttl_s = 60\n")
        await pool.ask("agent-1")
        pool.now += 59
        kept = await pool.ask("agent-1")  # within its TTL: a hit, which extends it
        pool.now += 59
        still = await pool.ask("agent-1")
        pool.now += 61
        forgotten = await pool.ask("agent-1")
        await pool.stop()
    assert kept.headers["x-geniehive-affinity"] == "hit"
    assert still.headers["x-geniehive-affinity"] == "hit"
    assert forgotten.headers["x-geniehive-affinity"] == "miss"


async def test_sessions_are_kept_per_key_and_named_by_header_or_body(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        await pool.ask("agent-1", key="a")
        other_key = await pool.ask("agent-1", key="b")  # the same name under another key
        by_user = [await pool.ask(user="alice") for _ in range(2)]
        by_cache_key = [await pool.ask(prompt_cache_key="repo-x") for _ in range(2)]
        claude = [await pool.ask("cc-1", header="x-claude-code-session-id") for _ in range(2)]
        codex = [await pool.ask("codex-1", header="session_id") for _ in range(2)]
        await pool.stop()
    assert other_key.headers["x-geniehive-affinity"] == "miss"
    for pair in (by_user, by_cache_key, claude, codex):
        assert [r.headers["x-geniehive-affinity"] for r in pair] == ["miss", "hit"]
        assert served(pair[0]) == served(pair[1])


async def test_no_affinity_when_it_is_turned_off(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path, routing="affinity_ttl_s = 0\n")
        answers = [await pool.ask("agent-1") for _ in range(4)]
        await pool.stop()
    assert all("x-geniehive-affinity" not in r.headers for r in answers)
    assert len({served(r) for r in answers}) == 2  # round robin, session or not


async def test_the_route_explanation_says_where_a_session_is_bound(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    auth = {"authorization": f"Bearer {ENV['A_KEY']}"}
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        bound = served(await pool.ask("agent-1"))
        own = await pool.client.get(
            "/v1/cluster/routes/resolve", headers=auth,
            params={"model": MODEL, "session": "agent-1"},
        )
        other_key = await pool.client.post(
            "/v1/cluster/routes/resolve", headers=auth,
            json={"model": MODEL, "session": "agent-1", "key": "b"},
        )
        plain = await pool.client.get(
            "/v1/cluster/routes/resolve", headers=auth, params={"model": MODEL}
        )
        metrics = (await pool.client.get("/metrics", headers=auth)).text
        await pool.stop()
    assert own.json()["affinity"] == {
        "key": "a", "session": "h:agent-1", "bound_to": bound, "would_hit": True,
    }
    assert other_key.json()["affinity"]["bound_to"] is None
    assert other_key.json()["affinity"]["would_hit"] is False
    assert "affinity" not in plain.json()
    assert 'geniehive_affinity_total{result="miss"} 1.0' in metrics


async def test_websocket_requests_of_a_session_stick_to_one_service(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def finish(sock: Any) -> None:
        while (await receive(sock))["type"] not in ("chat.done", "chat.error"):
            pass

    def chats() -> dict[str, int]:
        return {sid: len(calls(fake)) for sid, fake in pool.fakes.items()}

    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        handshake = [("authorization", f"Bearer {ENV['A_KEY']}"), ("x-session-id", "ws-1")]
        async with connect(pool.running.url, handshake) as sock:
            for index in range(4):
                await sock.send_message(request(f"r{index}", "hello", model=MODEL))
                await finish(sock)  # chat.done follows the relay's end
        by_header = chats()
        plain = [("authorization", f"Bearer {ENV['A_KEY']}")]
        async with connect(pool.running.url, plain) as sock:
            for index in range(4):
                await sock.send_message(request(f"u{index}", "hi", model=MODEL, user="bob"))
                await finish(sock)
        by_body = {sid: count - by_header[sid] for sid, count in chats().items()}
        await pool.stop()
    assert sorted(by_header.values()) == [0, 4]
    assert sorted(by_body.values()) == [0, 4]


async def test_dialect_requests_name_their_session_in_their_own_fields(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    auth = {"authorization": f"Bearer {ENV['A_KEY']}"}
    responses_body = {"model": MODEL, "input": "hello", "prompt_cache_key": "repo-y"}
    messages_body = {"model": MODEL, "max_tokens": 16, "metadata": {"user_id": "carol"},
                     "messages": [{"role": "user", "content": "hello"}]}
    with trio.fail_after(20):
        pool = await start_pool(nursery, tmp_path)
        answers: dict[str, list[httpx.Response]] = {"responses": [], "messages": []}
        for _ in range(2):
            for path, body in (("responses", responses_body), ("messages", messages_body)):
                answer = await pool.client.post(f"/v1/{path}", json=body, headers=auth)
                assert answer.status_code == 200, answer.text
                await pool.settled()
                answers[path].append(answer)
        await pool.stop()
    for pair in answers.values():
        assert [r.headers["x-geniehive-affinity"] for r in pair] == ["miss", "hit"]
        assert served(pair[0]) == served(pair[1])
