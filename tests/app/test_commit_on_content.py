"""Streams commit on content: until the upstream's first chunk with content (text, a tool
call, a finish reason), nothing reaches the client and every failure fails over, within
`routing.first_token_timeout_s`; after it, a failure ends the stream with an error event.

Two fake upstreams serve one model round robin; the faulty one is tried first by one of any
two consecutive requests, so each test sends two and expects both whole, one after a
second attempt."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.llamacpp import FakeLlamaCpp
from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config
from tests.hive import calls

STREAM = {"model": "shared", "stream": True,
          "messages": [{"role": "user", "content": "hello there"}]}
WHOLE = "echo: hello there"
FIRST_TOKEN_S = 0.5


@dataclass
class Pair:
    good: FakeUpstream
    bad: FakeUpstream
    running: InProcess
    client: httpx.AsyncClient


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Pair]:
    good, bad = FakeUpstream(["shared"], name="good"), FakeUpstream(["shared"], name="bad")
    with trio.fail_after(10):
        good_port = await nursery.start(good.serve)
        bad_port = await nursery.start(bad.serve)
        config = write_config(
            tmp_path,
            f'[routing]\nstrategy = "round_robin"\nfirst_token_timeout_s = {FIRST_TOKEN_S}\n'
            + upstream_toml("a-bad", bad_port, ["chat", "completion"])
            + upstream_toml("b-good", good_port, ["chat", "completion"]),
        )
        running = await gateway_in_process(nursery, config)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        yield Pair(good, bad, running, client)
    with trio.fail_after(10):
        await running.stop()


def text_of(raw: str) -> tuple[str, bool]:
    """The streamed text (of chat or completion chunks) and whether the stream ended with
    [DONE]."""
    pieces, done = [], False
    for event in raw.split("\n\n"):
        for line in event.splitlines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            pieces += [c.get("text") or c.get("delta", {}).get("content") or ""
                       for c in chunk["choices"]]
    return "".join(pieces), done


async def two_streams(pair: Pair, body: dict = STREAM) -> list[httpx.Response]:
    answers = []
    for _ in range(2):
        answers.append(await pair.client.post("/v1/chat/completions", json=body))
    return answers


def assert_rescued(answers: list[httpx.Response], service: str = "b-good/chat") -> None:
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-geniehive-service"] == service
        assert text_of(answer.text) == (WHOLE, True)
    assert sorted(a.headers["x-geniehive-attempts"] for a in answers) == ["1", "2"]


async def test_a_reset_after_the_role_chunk_fails_over_to_a_whole_answer(pair: Pair) -> None:
    pair.bad.set_fault("preamble", then="reset", path="/v1/chat")
    with trio.fail_after(10):
        answers = await two_streams(pair)
    assert_rescued(answers)


async def test_a_stall_after_the_role_chunk_fails_over_at_the_first_token_timeout(
    pair: Pair,
) -> None:
    pair.bad.set_fault("preamble", then="stall", path="/v1/chat")
    with trio.fail_after(10):
        started = trio.current_time()
        answers = await two_streams(pair)
        took = trio.current_time() - started
    assert_rescued(answers)
    assert took >= FIRST_TOKEN_S  # one of them waited for its first token, then moved on
    # The slow attempt was cancelled: the stalled upstream saw its request go away.
    [stalled] = [r for r in pair.bad.requests if r["path"] == "/v1/chat/completions"]
    assert stalled["cancelled"]


async def test_headers_and_then_nothing_fail_over_too(pair: Pair) -> None:
    pair.bad.set_fault("stall_mid_stream", after_chunks=0, path="/v1/chat")
    with trio.fail_after(10):
        answers = await two_streams(pair)
    assert_rescued(answers)


async def test_a_first_token_later_than_the_timeout_counts_against_the_service(
    pair: Pair,
) -> None:
    pair.bad.set_fault("preamble", then="delay", delay_s=5, path="/v1/chat")
    with trio.fail_after(10):
        answers = await two_streams(pair)
        services = (await pair.client.get("/v1/cluster/services")).json()
    assert_rescued(answers)
    bad = next(s for s in services["data"] if s["service_id"] == "a-bad/chat")
    assert bad["measured"]["failures"] == 1  # the timeout counts, as the breaker sees it


async def test_a_non_stream_without_headers_by_the_timeout_fails_over(pair: Pair) -> None:
    pair.bad.set_fault("slow_headers", delay_s=5, path="/v1/chat")
    body = {**STREAM, "stream": False}
    with trio.fail_after(10):
        answers = await two_streams(pair, body)
        services = (await pair.client.get("/v1/cluster/services")).json()
    for answer in answers:
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == WHOLE
    assert sorted(a.headers["x-geniehive-attempts"] for a in answers) == ["1", "2"]
    bad = next(s for s in services["data"] if s["service_id"] == "a-bad/chat")
    assert bad["measured"]["failures"] == 1  # the headers timeout counts, as the breaker sees it


@pytest.mark.parametrize("then", ["reset", "stall"])
async def test_a_completions_stream_is_rescued_the_same_way(pair: Pair, then: str) -> None:
    pair.bad.set_fault("preamble", then=then, path="/v1/completions")
    body = {"model": "shared", "prompt": "hello there", "stream": True}
    with trio.fail_after(10):
        started = trio.current_time()
        answers = [await pair.client.post("/v1/completions", json=body) for _ in range(2)]
        took = trio.current_time() - started
    assert_rescued(answers, "b-good/completion")
    [cut] = [r for r in pair.bad.requests if r["path"] == "/v1/completions"]
    if then == "reset":
        assert cut["outcome"] == "reset"
    else:  # given up at the first token timeout, well before the upstream's timeout_s (2 s)
        assert cut["cancelled"]
        assert FIRST_TOKEN_S <= took < 2


def events_of(raw: str) -> list[dict]:
    """The JSON of each `data:` line of an SSE answer."""
    return [json.loads(line.removeprefix("data: "))
            for line in raw.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("then", ["reset", "stall"])
async def test_a_responses_stream_is_rescued_the_same_way(pair: Pair, then: str) -> None:
    pair.bad.set_fault("preamble", then=then, path="/v1/chat")
    body = {"model": "shared", "input": "hello there", "stream": True}
    with trio.fail_after(10):
        started = trio.current_time()
        answers = [await pair.client.post("/v1/responses", json=body) for _ in range(2)]
        took = trio.current_time() - started
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-geniehive-service"] == "b-good/chat"
        events = events_of(answer.text)
        kinds = [e["type"] for e in events]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
        assert kinds.count("response.created") == 1  # nothing of the failed attempt shows
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == WHOLE
    assert sorted(a.headers["x-geniehive-attempts"] for a in answers) == ["1", "2"]
    if then == "stall":
        assert FIRST_TOKEN_S <= took < 2


async def test_what_came_before_the_content_is_relayed_with_it(pair: Pair) -> None:
    pair.good.set_fault("preamble", then="ok", path="/v1/chat")
    pair.bad.set_fault("preamble", then="ok", path="/v1/chat")
    with trio.fail_after(10):
        answer = await pair.client.post("/v1/chat/completions", json=STREAM)
    events = answer.text.split("\n\n")
    assert events[0] == ": keep-alive"
    assert json.loads(events[1].removeprefix("data: "))["choices"][0]["delta"] == \
        {"role": "assistant"}
    assert text_of(answer.text) == (WHOLE, True)
    assert answer.headers["x-geniehive-attempts"] == "1"


async def test_a_failure_after_content_is_not_retried_and_ends_with_an_error_event(
    pair: Pair,
) -> None:
    pair.bad.set_fault("reset_mid_stream", after_chunks=2, path="/v1/chat")
    pair.good.set_fault("reset_mid_stream", after_chunks=2, path="/v1/chat")
    with trio.fail_after(10):
        answer = await pair.client.post("/v1/chat/completions", json=STREAM)
    assert answer.status_code == 200
    assert answer.headers["x-geniehive-attempts"] == "1"
    assert '"content":"echo: "' in answer.text
    assert "[DONE]" not in answer.text
    last = answer.text.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "upstream_error"


async def test_a_messages_stream_is_rescued_the_same_way(pair: Pair) -> None:
    pair.bad.set_fault("preamble", then="reset", path="/v1/chat")
    body = {"model": "shared", "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}
    with trio.fail_after(10):
        answers = [await pair.client.post("/v1/messages", json=body) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 200
        deltas = [json.loads(line.removeprefix("data: "))
                  for line in answer.text.splitlines() if line.startswith("data: ")]
        text = "".join(d["delta"].get("text", "") for d in deltas
                       if d["type"] == "content_block_delta")
        assert text == WHOLE and deltas[-1]["type"] == "message_stop"
    assert sorted(a.headers["x-geniehive-attempts"] for a in answers) == ["1", "2"]


async def test_a_websocket_request_is_rescued_the_same_way(pair: Pair) -> None:
    from tests.wsclient import connect, receive, request

    pair.bad.set_fault("preamble", then="reset", path="/v1/chat")
    texts = []
    with trio.fail_after(10):
        async with connect(pair.running.url) as sock:
            for n in range(2):
                await sock.send_message(request(f"r{n}", "hello there", model="shared"))
                pieces = []
                while (message := await receive(sock))["type"] == "chat.chunk":
                    pieces += [c["delta"].get("content") or ""
                               for c in message["chunk"]["choices"]]
                assert message["type"] == "chat.done", message
                texts.append("".join(pieces))
    assert texts == [WHOLE, WHOLE]
    # One of the two went to the faulty upstream first, and was cut before any content.
    assert [r["outcome"] for r in pair.bad.requests if r["path"] == "/v1/chat/completions"] \
        == ["reset"]


@pytest.fixture
async def llama_pair(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Pair]:
    """The pair, as two llama.cpp servers: they take a Messages request as it is."""
    good = FakeLlamaCpp(["shared"], name="good", total_slots=4)
    bad = FakeLlamaCpp(["shared"], name="bad", total_slots=4)
    with trio.fail_after(10):
        good_port = await nursery.start(good.serve)
        bad_port = await nursery.start(bad.serve)
        config = write_config(
            tmp_path,
            f'[routing]\nstrategy = "round_robin"\nfirst_token_timeout_s = {FIRST_TOKEN_S}\n'
            + upstream_toml("a-bad", bad_port, ["chat"], "llamacpp")
            + upstream_toml("b-good", good_port, ["chat"], "llamacpp"),
        )
        running = await gateway_in_process(nursery, config)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        yield Pair(good, bad, running, client)
    with trio.fail_after(10):
        await running.stop()


async def test_a_native_messages_stream_cut_after_message_start_is_rescued(
    llama_pair: Pair,
) -> None:
    pair = llama_pair
    pair.bad.set_fault("reset_mid_stream", after_chunks=1, path="/v1/messages")
    body = {"model": "shared", "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}
    with trio.fail_after(10):
        answers = [await pair.client.post("/v1/messages", json=body) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-geniehive-service"] == "b-good/chat"
        events = events_of(answer.text)
        kinds = [e["type"] for e in events]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
        assert kinds.count("message_start") == 1  # the failed attempt's did not reach it
        text = "".join(e["delta"].get("text", "") for e in events
                       if e["type"] == "content_block_delta")
        assert text == WHOLE
    assert sorted(a.headers["x-geniehive-attempts"] for a in answers) == ["1", "2"]
    # Both upstreams were asked in the Messages API itself, not in a chat translation.
    assert [r["outcome"] for r in pair.bad.requests if r["path"] == "/v1/messages"] == ["reset"]
    assert len([r for r in pair.good.requests if r["path"] == "/v1/messages"]) == 2
    assert calls(pair.good) == calls(pair.bad) == []
