"""Claims about the recording fake upstream that the gateway's tests lean on.

Everything runs over real sockets on 127.0.0.1 port 0: httpx where a client's view matters,
a raw trio socket where the exact bytes or the exact moment of a close matter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.replies import expected_embedding
from tests.fakes.upstream import FakeUpstream

REPO = Path(__file__).resolve().parents[2]
CHAT = {"model": "m1", "messages": [{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": "hello there"}]}
STREAM_CHAT = {**CHAT, "stream": True}


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeUpstream:
    upstream = FakeUpstream(["m1", "m2"], name="up-a")
    await nursery.start(upstream.serve)
    return upstream


@pytest.fixture
async def client(fake: FakeUpstream):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fake.port}", timeout=5) as c:
        yield c


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw request bytes and read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        received = b""
        while data := await stream.receive_some(65536):
            received += data
    return received


def post_bytes(path: str, body: dict, *, close: bool = True) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n")
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + payload


async def open_stream_request(port: int, body: dict) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(post_bytes("/v1/chat/completions", body, close=False))
    return stream


async def receive_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = await stream.receive_some(65536)
        assert data, f"closed before {marker!r}; got {received!r}"
        received += data
    return received


def sse_payloads(text: str) -> list:
    events = [e for e in text.split("\n\n") if e]
    return [e.removeprefix("data: ") if e == "data: [DONE]" else json.loads(e[6:])
            for e in events]


async def test_models_list_names_configured_models_and_follows_runtime_changes(fake, client):
    with trio.fail_after(5):
        first = (await client.get("/v1/models")).json()
        fake.models.append("m3")
        second = (await client.get("/v1/models")).json()
    assert first == {"object": "list", "data": [
        {"id": "m1", "object": "model", "created": 1_700_000_000, "owned_by": "fake"},
        {"id": "m2", "object": "model", "created": 1_700_000_000, "owned_by": "fake"}]}
    assert [m["id"] for m in second["data"]] == ["m1", "m2", "m3"]


async def test_chat_without_stream_echoes_last_user_message_with_usage(fake, client):
    with trio.fail_after(5):
        response = await client.post("/v1/chat/completions", json=CHAT)
    body = response.json()
    assert response.headers["x-fake-name"] == "up-a"
    assert body["object"] == "chat.completion"
    assert body["model"] == "m1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


async def test_configured_reply_replaces_the_echo(fake, client):
    fake.reply = "fixed words"
    with trio.fail_after(5):
        body = (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert body["choices"][0]["message"]["content"] == "fixed words"


async def test_chat_stream_sends_each_word_event_as_its_own_chunk(fake):
    body = {**STREAM_CHAT, "stream_options": {"include_usage": True}}
    with trio.fail_after(5):
        raw = await raw_exchange(fake.port, post_bytes("/v1/chat/completions", body))
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"content-type: text/event-stream" in head.lower()
    chunks = []
    while True:
        size_line, _, chunked = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(chunked[:size])
        chunked = chunked[size + 2:]
    # Every SSE event is exactly one chunk: echo:, hello, there, usage, [DONE].
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    payloads = [sse_payloads(c.decode())[0] for c in chunks]
    assert [p["choices"][0]["delta"]["content"] for p in payloads[:3]] == \
        ["echo: ", "hello ", "there"]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [p["choices"][0]["finish_reason"] for p in payloads[:3]] == [None, None, "stop"]
    assert payloads[3]["choices"] == []
    assert payloads[3]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3,
                                    "total_tokens": 7}
    assert payloads[4] == "[DONE]"


async def test_chat_stream_without_include_usage_has_no_usage_chunk(fake, client):
    with trio.fail_after(5):
        text = (await client.post("/v1/chat/completions", json=STREAM_CHAT)).text
    payloads = sse_payloads(text)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in p for p in payloads[:-1])
    assert len(payloads) == 4


async def test_completions_answer_text_completion_plain_and_streamed(fake, client):
    body = {"model": "m2", "prompt": "one two"}
    with trio.fail_after(5):
        plain = (await client.post("/v1/completions", json=body)).json()
        streamed = (await client.post("/v1/completions", json={**body, "stream": True})).text
    assert plain["object"] == "text_completion"
    assert plain["choices"][0]["text"] == "echo: one two"
    assert plain["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    payloads = sse_payloads(streamed)
    assert "".join(p["choices"][0]["text"] for p in payloads[:-1]) == "echo: one two"
    assert payloads[-1] == "[DONE]"


async def test_embeddings_base64_decodes_to_the_float_vector(fake, client):
    body = {"model": "m1", "input": ["alpha", "beta"]}
    with trio.fail_after(5):
        floats = (await client.post("/v1/embeddings", json=body)).json()
        encoded = (await client.post("/v1/embeddings",
                                     json={**body, "encoding_format": "base64"})).json()
    assert [d["embedding"] for d in floats["data"]] == \
        [expected_embedding("alpha"), expected_embedding("beta")]
    decoded = [list(struct.unpack("<8f", base64.b64decode(d["embedding"])))
               for d in encoded["data"]]
    assert decoded == [d["embedding"] for d in floats["data"]]


async def test_ignore_base64_answers_floats_and_dim_is_configurable(fake, client):
    fake.ignore_base64 = True
    fake.embedding_dim = 3
    body = {"model": "m1", "input": "alpha", "encoding_format": "base64"}
    with trio.fail_after(5):
        answer = (await client.post("/v1/embeddings", json=body)).json()
    assert answer["data"][0]["embedding"] == expected_embedding("alpha", 3)


async def test_transcription_records_chunked_multipart_fields_and_file_digest(fake, client):
    audio = bytes(range(256)) * 40
    built = httpx.Request("POST", "http://x/", data={"model": "m1", "language": "fr"},
                          files={"file": ("clip.wav", audio, "audio/wav")})
    payload = built.read()

    async def pieces():
        for start in range(0, len(payload), 1000):
            yield payload[start:start + 1000]

    with trio.fail_after(5):
        response = await client.post(
            "/v1/audio/transcriptions", content=pieces(),
            headers={"content-type": built.headers["content-type"]})
    record = fake.requests[0]
    assert record["headers"]["transfer-encoding"] == "chunked"
    assert record["form"] == {"model": "m1", "language": "fr"}
    assert record["files"]["file"] == {
        "filename": "clip.wav", "size": len(audio), "content_type": "audio/wav",
        "sha256": hashlib.sha256(audio).hexdigest()}
    assert response.json() == {"text": "fake transcribe of clip.wav"}


@pytest.mark.parametrize(("fmt", "content_type", "needle"), [
    ("text", "text/plain; charset=utf-8", "hi"),
    ("srt", "application/x-subrip", "00:00:00,000 --> 00:00:01,000\nhi"),
    ("vtt", "text/vtt", "WEBVTT"),
    ("verbose_json", "application/json", '"segments"'),
])
async def test_audio_answers_in_the_requested_response_format(fake, client, fmt, content_type,
                                                              needle):
    fake.transcript = "hi"
    with trio.fail_after(5):
        response = await client.post(
            "/v1/audio/translations", data={"model": "m1", "response_format": fmt},
            files={"file": ("a.mp3", b"ID3", "audio/mpeg")})
    assert response.headers["content-type"] == content_type
    assert needle in response.text


async def test_health_answers_ok(fake, client):
    with trio.fail_after(5):
        assert (await client.get("/health")).json() == {"status": "ok", "name": "up-a"}


async def test_status_fault_answers_openai_error_once_then_recovers(fake, client):
    fake.set_fault("status", status=503, message="busy", times=1)
    with trio.fail_after(5):
        failed = await client.post("/v1/chat/completions", json=CHAT)
        recovered = await client.post("/v1/chat/completions", json=CHAT)
    assert failed.status_code == 503
    assert failed.json() == {"error": {"message": "busy", "type": "server_error",
                                       "param": None, "code": None}}
    assert recovered.status_code == 200
    assert [r["fault"] for r in fake.requests] == ["status", "ok"]


async def test_status_fault_can_send_a_custom_body_and_headers(fake, client):
    fake.set_fault("status", status=429, body="slow down", content_type="text/plain",
                   headers={"retry-after": "2"})
    with trio.fail_after(5):
        response = await client.get("/v1/models")
    assert (response.status_code, response.text) == (429, "slow down")
    assert response.headers["retry-after"] == "2"


async def test_fault_limited_to_a_path_leaves_other_paths_alone(fake, client):
    fake.set_fault("status", status=500, times=1, path="/v1/chat")
    with trio.fail_after(5):
        models = await client.get("/v1/models")
        chat = await client.post("/v1/chat/completions", json=CHAT)
    assert (models.status_code, chat.status_code) == (200, 500)


async def test_slow_headers_delays_the_response(fake, client):
    fake.set_fault("slow_headers", delay_s=0.2)
    with trio.fail_after(5):
        started = trio.current_time()
        response = await client.get("/health")
    assert response.status_code == 200
    assert trio.current_time() - started >= 0.2


async def test_reset_mid_stream_delivers_chunks_then_resets(fake, client):
    fake.set_fault("reset_mid_stream", after_chunks=2)
    received = []
    with trio.fail_after(5):
        with pytest.raises(httpx.ReadError):
            async with client.stream("POST", "/v1/chat/completions",
                                     json=STREAM_CHAT) as response:
                async for line in response.aiter_lines():
                    if line:
                        received.append(line)
        record = await fake.wait_finished(0)
    assert len(received) == 2
    assert record["outcome"] == "reset"
    assert not record["cancelled"]


@pytest.mark.parametrize(("kind", "error"), [("bad_http", httpx.RemoteProtocolError),
                                              ("not_json", json.JSONDecodeError)])
async def test_garbage_fault_breaks_the_response(fake, client, kind, error):
    fake.set_fault("garbage", kind=kind)
    with trio.fail_after(5), pytest.raises(error):
        response = await client.post("/v1/chat/completions", json=CHAT)
        response.json()


async def test_stalled_stream_notices_the_client_leaving_within_milliseconds(fake):
    fake.set_fault("stall_mid_stream", after_chunks=1)
    with trio.fail_after(5):
        stream = await open_stream_request(fake.port, STREAM_CHAT)
        await receive_until(stream, b"echo: ")
        await stream.aclose()
        closed_at = trio.current_time()
        record = await fake.wait_cancelled(0)
    assert record["cancelled"] and record["outcome"] == "cancelled"
    assert 0 <= record["cancelled_at"] - closed_at < 0.1
    assert record["finished_at"] == record["cancelled_at"]


async def test_client_leaving_during_slow_headers_is_recorded_as_cancelled(fake, client):
    fake.set_fault("slow_headers", delay_s=30)
    with trio.fail_after(5):
        with trio.move_on_after(0.1):
            await client.get("/v1/models")
        record = await fake.wait_cancelled(0)
    assert record["status"] is None


async def test_hold_stream_sends_first_chunk_and_the_rest_after_release(fake, client):
    fake.set_fault("hold_stream")
    with trio.fail_after(5):
        async with client.stream("POST", "/v1/chat/completions", json=STREAM_CHAT) as response:
            lines = response.aiter_lines()
            first = await anext(lines)
            assert not fake.requests[0]["finished_at"]
            fake.release()
            rest = [line async for line in lines]
        record = await fake.wait_finished(0)
    assert "echo: " in first
    assert rest[-2:] == ["data: [DONE]", ""]
    assert record["completed"]


async def test_delay_chunks_spaces_the_chunks(fake, client):
    fake.set_fault("delay_chunks", delay_s=0.05)
    with trio.fail_after(5):
        started = trio.current_time()
        text = (await client.post("/v1/chat/completions", json=STREAM_CHAT)).text
    # Four events (three words and [DONE]) leave three gaps.
    assert trio.current_time() - started >= 0.15
    assert text.endswith("data: [DONE]\n\n")


async def test_keep_alive_serves_several_requests_on_one_connection(fake):
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
        async with stream:
            for _ in range(2):
                await stream.send_all(post_bytes("/v1/chat/completions", CHAT, close=False))
                reply = await receive_until(stream, b"echo: hello there")
                assert reply.startswith(b"HTTP/1.1 200")
                await fake.wait_finished(len(fake.requests) - 1)
    assert [r["completed"] for r in fake.requests] == [True, True]


async def test_wait_for_request_returns_the_matching_record(fake, client):
    async def later():
        await client.post("/v1/embeddings", json={"model": "m2", "input": "x"})

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            record = await fake.wait_for_request(lambda r: r["path"] == "/v1/embeddings")
    assert record["json"] == {"model": "m2", "input": "x"}
    assert record["method"] == "POST"


def test_set_fault_rejects_unknown_modes_and_parameters():
    fake = FakeUpstream()
    with pytest.raises(ValueError, match="unknown fault mode"):
        fake.set_fault("explode")
    with pytest.raises(ValueError, match="delay"):
        fake.set_fault("status", delay_s=1)


async def test_control_endpoints_change_models_faults_and_list_requests(fake, client):
    with trio.fail_after(5):
        await client.post("/_fake/models", json={"id": "org/new"})
        await client.delete("/_fake/models/m1")
        models = (await client.get("/v1/models")).json()
        await client.post("/_fake/fault", json={"mode": "status", "status": 502, "times": 1,
                                                "path": "/v1/models"})
        faulted = await client.get("/v1/models")
        await client.post("/v1/embeddings", content=b"x" * 5000,
                          headers={"content-type": "text/plain"})
        summary = (await client.get("/_fake/requests")).json()
    assert [m["id"] for m in models["data"]] == ["m2", "org/new"]
    assert faulted.status_code == 502
    assert [s["path"] for s in summary] == ["/v1/models", "/v1/models", "/v1/embeddings"]
    assert summary[2]["body_size"] == 5000 and "body" not in summary[2]
    assert summary[0]["body"] == ""


async def test_control_release_lets_a_held_stream_finish(fake, client):
    with trio.fail_after(5):
        await client.post("/_fake/fault", json={"mode": "hold_stream"})
        async with client.stream("POST", "/v1/chat/completions", json=STREAM_CHAT) as response:
            lines = response.aiter_lines()
            await anext(lines)
            async with httpx.AsyncClient(base_url=str(client.base_url)) as other:
                await other.post("/_fake/release")
            rest = [line async for line in lines]
    assert "data: [DONE]" in rest


async def test_a_one_off_fault_without_a_path_waits_for_a_post(fake, client):
    # A gateway's probes and discovery calls are GETs: they must not use up the fault.
    fake.set_fault("status", status=503, message="busy", times=1)
    with trio.fail_after(5):
        listed = await client.get("/v1/models")
        failed = await client.post("/v1/chat/completions", json=CHAT)
    assert (listed.status_code, failed.status_code) == (200, 503)


async def test_a_preamble_fault_opens_the_stream_with_a_comment_and_a_role_chunk(fake, client):
    fake.set_fault("preamble", then="ok", times=1)
    with trio.fail_after(5):
        response = await client.post("/v1/chat/completions", json=STREAM_CHAT)
    events = response.text.split("\n\n")
    assert events[0] == ": keep-alive"
    assert json.loads(events[1].removeprefix("data: "))["choices"][0]["delta"] == \
        {"role": "assistant"}
    assert json.loads(events[2].removeprefix("data: "))["choices"][0]["delta"]["content"] == \
        "echo: "


async def test_a_preamble_then_stall_sends_nothing_after_the_role_chunk(fake):
    fake.set_fault("preamble", then="stall", times=1)
    received = b""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fake.port}") as client:
        with trio.move_on_after(0.5):
            async with client.stream("POST", "/v1/chat/completions", json=STREAM_CHAT) as r:
                async for chunk in r.aiter_raw():
                    received += chunk
    assert received.count(b"\n\n") == 2 and b'"role":"assistant"' in received
