"""The client API's forwarding contract against a recording fake upstream."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.replies import expected_embedding
from tests.hive import CHAT, Hive, assert_openai_error, calls, start_hive

FAST_TIMEOUTS = """
[routing]
first_byte_timeout_s = 0.5
idle_stream_timeout_s = 0.5
max_attempts = 3
"""


async def wait_cancelled_call(fake, path: str = "/v1/chat/completions") -> dict:
    record = await fake.wait_for_request(lambda r: r["path"] == path)
    return await fake.wait_cancelled(record["index"])


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def sse_events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]


async def test_chat_is_forwarded_with_route_headers(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "req-42"}
        )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert response.headers["x-request-id"] == "req-42"
    assert response.headers["x-geniehive-service"] == "fake/chat"
    assert response.headers["x-geniehive-model"] == "m1"
    assert response.headers["x-geniehive-route"] == "direct"
    assert response.headers["x-geniehive-attempts"] == "1"
    sent = calls(hive.fake)[-1]
    assert sent["json"]["messages"] == CHAT["messages"]
    assert sent["headers"]["x-request-id"] == "req-42"


async def test_request_id_is_generated_when_absent(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    assert len(response.headers["x-request-id"]) >= 16


async def test_stream_relays_every_event_and_done(hive: Hive) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hello there"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_first_chunk_arrives_while_upstream_holds_the_rest(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1, times=1)
    with trio.fail_after(10):
        async with hive.client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as response, aclosing(response.aiter_raw()) as chunks:
            first = await chunks.__anext__()
            assert first.startswith(b"data: ")
            assert b"echo: " in first
            hive.fake.release()
            rest = b"".join([c async for c in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_reasoning_is_stripped_from_streams_and_bodies(hive: Hive) -> None:
    event = {"choices": [{"delta": {"content": "hi", "reasoning_content": "secret"}}]}
    plain = b'data: {"choices":[{"delta":{"content":"!"}}]}\n\n'
    stream = b"data:" + json.dumps(event).encode() + b"\n\n" + plain + b"data: [DONE]\n\n"
    hive.fake.set_fault("status", status=200, body=stream.decode(),
                        content_type="text/event-stream", times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert b"secret" not in response.content
    assert plain in response.content  # untouched events are relayed byte for byte
    assert json.loads(sse_events(response.text)[0]) == {"choices": [{"delta": {"content": "hi"}}]}

    answer = {"choices": [{"message": {"content": "ok", "reasoning": "hidden"}}]}
    hive.fake.set_fault("status", status=200, body=json.dumps(answer),
                        content_type="application/json", times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    assert response.json() == {"choices": [{"message": {"content": "ok"}}]}


async def test_bad_requests_get_400_naming_the_problem(hive: Hive) -> None:
    cases = [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": []}).encode(), "model"),
        (json.dumps({"model": 3, "messages": []}).encode(), "model"),
        (json.dumps({"model": "m1"}).encode(), "messages"),
        (json.dumps({"model": "m1", "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": "m1", "messages": [], "stream": "yes"}).encode(), "stream"),
        (b"[" * 100 + b"]" * 100, None),
        (json.dumps({"model": "m1", "messages": [], "x": _nested(100)}).encode(), None),
    ]
    with trio.fail_after(10):
        for raw, param in cases:
            response = await hive.client.post("/v1/chat/completions", content=raw)
            error = assert_openai_error(response, 400, "invalid_request")
            assert error["param"] == param
    assert calls(hive.fake) == []


async def test_unknown_model_is_404_with_close_matches(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json={**CHAT, "model": "qwen3-7b"})
    error = assert_openai_error(response, 404, "model_not_found")
    assert "qwen3-8b" in error["message"]


async def test_upstream_4xx_is_reexpressed_without_retry(hive: Hive) -> None:
    hive.fake.set_fault("status", status=400, message="context too long", times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 400, "upstream_400")
    assert error["message"] == "context too long"
    assert len(calls(hive.fake)) == 1


async def test_an_upstream_context_overflow_is_context_length_exceeded(hive: Hive) -> None:
    overflow = ("This model's maximum context length is 2048 tokens. However, you requested "
                "2300 tokens. Please reduce the length of the messages or completion.")
    hive.fake.set_fault("status", status=400, message=overflow, times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert (error["type"], error["message"]) == ("invalid_request_error", overflow)
    assert len(calls(hive.fake)) == 1


async def test_upstream_5xx_everywhere_is_502(hive: Hive) -> None:
    hive.fake.set_fault("status", status=503, message="overloaded")
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 502, "upstream_error")
    assert "overloaded" in error["message"]
    assert response.headers["x-geniehive-attempts"] == "1"


async def test_refused_connection_is_502(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path)
        # The service stays known; its server goes away.
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        dead_port = listener.getsockname()[1]
        listener.close()
        services = dict(h.gateway.snapshot.services)
        svc = services["fake/chat"]
        from dataclasses import replace

        await h.gateway.registry.sync_local(
            h.gateway.snapshot.hosts["local"],
            [replace(s, base_url=f"http://127.0.0.1:{dead_port}") if s is svc else s
             for s in services.values() if s.host_id == "local"],
        )
        response = await h.client.post("/v1/chat/completions", json=CHAT)
        error = assert_openai_error(response, 502, "upstream_error")
        assert "connection failed" in error["message"]
        await h.client.aclose()
        await h.running.stop()


async def test_slow_headers_time_out_as_504(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path, extra=FAST_TIMEOUTS)
        h.fake.set_fault("slow_headers", delay_s=3)
        response = await h.client.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(response, 504, "upstream_timeout")
        await h.client.aclose()
        await h.running.stop()


async def test_garbage_answer_is_502(hive: Hive) -> None:
    for kind in ("bad_http", "not_json"):
        hive.fake.set_fault("garbage", kind=kind, times=1)
        with trio.fail_after(10):
            response = await hive.client.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(response, 502, "upstream_error")


async def test_an_answer_nested_deeper_than_python_parses_is_502(hive: Hive) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    hive.fake.set_fault("garbage", raw=head + body, times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(response, 502, "upstream_error")
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200


async def test_reset_mid_stream_ends_with_one_error_event(hive: Hive) -> None:
    hive.fake.set_fault("reset_mid_stream", after_chunks=2, times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    # The chunks sent before the reset may or may not reach us (a TCP reset can discard
    # unread data); the error event is always the one last event.
    assert 1 <= len(events) <= 3
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"
    assert all("error" not in json.loads(e) for e in events[:-1])


async def test_stall_mid_stream_ends_with_timeout_event(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path, extra=FAST_TIMEOUTS)
        h.fake.set_fault("stall_mid_stream", after_chunks=1, times=1)
        response = await h.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        events = sse_events(response.text)
        assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
        assert "[DONE]" not in events
        # The stalled upstream request was closed, not left open.
        await wait_cancelled_call(h.fake)
        await h.client.aclose()
        await h.running.stop()


async def test_oversized_body_is_413_and_connection_stays_usable(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path)
        limit = h.gateway.config.server.max_body_bytes
        big = {**CHAT, "pad": "x" * (limit + 10)}
        response = await h.client.post("/v1/chat/completions", json=big)
        assert_openai_error(response, 413, "request_too_large")

        async def chunked():
            for _ in range(limit // 65536 + 2):
                yield b"x" * 65536

        response = await h.client.post("/v1/chat/completions", content=chunked())
        assert_openai_error(response, 413, "request_too_large")
    with trio.fail_after(2):  # promptly, on the same keep-alive connection
        response = await h.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    await h.client.aclose()
    await h.running.stop()


async def hang_up_after_first_chunk(client: httpx.AsyncClient, body: dict) -> float:
    """Stream a chat, then close the connection while the upstream still holds the rest.

    The reader is cancelled while it waits inside httpx's iterator (closing it cleanly);
    returns the time the connection was closed.
    """
    first = trio.Event()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                async for _ in response.aiter_raw():
                    first.set()

            nursery.start_soon(read)
            await first.wait()
            nursery.cancel_scope.cancel()
    return trio.current_time()


async def test_client_disconnect_cancels_stream_upstream(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1, times=1)
    with trio.fail_after(10):
        gone = await hang_up_after_first_chunk(hive.client, {**CHAT, "stream": True})
    with trio.fail_after(2):
        record = await wait_cancelled_call(hive.fake)
    assert record["cancelled_at"] - gone < 0.5  # milliseconds when idle; room for a busy machine


async def test_client_disconnect_cancels_non_streamed_request(hive: Hive) -> None:
    hive.fake.set_fault("slow_headers", delay_s=30, times=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                await hive.client.post("/v1/chat/completions", json=CHAT)

            nursery.start_soon(call)
            await hive.fake.wait_for_request(lambda r: r["path"] == "/v1/chat/completions")
            gone = trio.current_time()
            nursery.cancel_scope.cancel()
    with trio.fail_after(2):
        record = await wait_cancelled_call(hive.fake)
    assert record["cancelled_at"] - gone < 0.5  # milliseconds when idle; room for a busy machine


async def test_embeddings_base64_and_floats(hive: Hive) -> None:
    body = {"model": "m1", "input": "abc"}
    with trio.fail_after(10):
        floats = await hive.client.post("/v1/embeddings", json=body)
        b64 = await hive.client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    vector = floats.json()["data"][0]["embedding"]
    assert vector == expected_embedding("abc")
    encoded = b64.json()["data"][0]["embedding"]
    decoded = list(struct.unpack(f"<{len(vector)}f", base64.b64decode(encoded)))
    assert decoded == [struct.unpack("<f", struct.pack("<f", v))[0] for v in vector]


async def test_transcription_forwards_every_field_and_streams_the_file(hive: Hive) -> None:
    audio = bytes(range(256)) * 4096  # 1 MiB
    files = {"file": ("talk.wav", audio, "audio/wav")}
    data = {"model": "m1", "language": "en", "prompt": "names", "response_format": "srt",
            "timestamp_granularities[]": "segment"}
    with trio.fail_after(10):
        response = await hive.client.post("/v1/audio/transcriptions", data=data, files=files)
    assert response.status_code == 200
    sent = calls(hive.fake, "/v1/audio/transcriptions")[-1]
    assert sent["form"] == data
    assert sent["files"]["file"]["sha256"] == hashlib.sha256(audio).hexdigest()
    assert sent["files"]["file"]["filename"] == "talk.wav"
    upstream_type = "application/x-subrip"
    assert response.headers["content-type"].split(";")[0] in (upstream_type, "text/plain")
    assert "-->" in response.text


async def test_oversized_upload_is_413_and_connection_stays_usable(hive: Hive) -> None:
    limit = hive.gateway.config.server.max_body_bytes
    files = {"file": ("big.wav", b"\0" * (limit + 1024), "audio/wav")}
    with trio.fail_after(20):
        response = await hive.client.post(
            "/v1/audio/transcriptions", data={"model": "m1"}, files=files
        )
    assert_openai_error(response, 413, "request_too_large")
    assert calls(hive.fake, "/v1/audio/transcriptions") == []
    with trio.fail_after(2):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200


async def test_transcription_without_file_is_400(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/audio/transcriptions", data={"model": "m1"}, files={"other": ("a", b"x")}
        )
    assert_openai_error(response, 400, "invalid_request")


@pytest.mark.parametrize("status", [503, 429])  # a 429 is tried elsewhere when there is one
async def test_failover_moves_to_the_next_candidate(
    nursery: trio.Nursery, tmp_path: Path, status: int
) -> None:
    from tests.fakes.upstream import FakeUpstream
    from tests.harness import gateway_in_process, upstream_toml, write_config

    with trio.fail_after(10):
        good, bad = FakeUpstream(["shared"], name="good"), FakeUpstream(["shared"], name="bad")
        good_port = await nursery.start(good.serve)
        bad_port = await nursery.start(bad.serve)
        bad.set_fault("status", status=status, message="busy", path="/v1/chat")
        config = write_config(
            tmp_path,
            "[routing]\nstrategy = \"round_robin\"\n"
            + upstream_toml("a-bad", bad_port, ["chat"]) + upstream_toml("b-good", good_port, ["chat"]),
        )
        running = await gateway_in_process(nursery, config)
        async with httpx.AsyncClient(base_url=running.url) as client:
            attempts = set()
            for _ in range(4):
                response = await client.post(
                    "/v1/chat/completions", json={**CHAT, "model": "shared"}
                )
                assert response.status_code == 200
                assert response.headers["x-geniehive-service"] == "b-good/chat"
                attempts.add(response.headers["x-geniehive-attempts"])
        assert "2" in attempts
        await running.stop()


async def test_upstream_429_with_no_other_candidate_reaches_the_client(hive: Hive) -> None:
    hive.fake.set_fault("status", status=429, message="slow down", times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 429, "upstream_429")
    assert error["message"] == "slow down"
    assert error["type"] == "rate_limit_error"
    # Routed errors still say who answered.
    assert response.headers["x-geniehive-service"] == "fake/chat"
    assert response.headers["x-geniehive-model"] == "m1"


async def test_a_lone_upstream_answering_429_is_not_held_against_its_breaker(
    hive: Hive,
) -> None:
    # With no other candidate a 429 is returned at once, like any 4xx: the upstream
    # is alive, so repeated 429s must not open its breaker and turn into 503s.
    breaker = hive.gateway.config.breaker.failures
    # Only chat requests take the fault: a probe or discovery call must not use one up.
    hive.fake.set_fault("status", status=429, message="slow down", times=breaker + 1,
                        path="/v1/chat/completions")
    with trio.fail_after(10):
        for _ in range(breaker + 1):
            response = await hive.client.post("/v1/chat/completions", json=CHAT)
            assert_openai_error(response, 429, "upstream_429")
            assert response.headers["x-geniehive-attempts"] == "1"
        response = await hive.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200


async def test_stream_ttft_counts_from_sending_the_request(hive: Hive) -> None:
    # Many servers send their headers only with the first token.
    hive.fake.set_fault("slow_headers", delay_s=0.3, times=1)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status_code == 200
        while hive.gateway.live.get("fake/chat").ttft_ms() is None:
            await trio.sleep(0.01)  # recorded just after the client got the last byte
    assert hive.gateway.live.get("fake/chat").ttft_ms() >= 300
