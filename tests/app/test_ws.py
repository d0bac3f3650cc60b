"""Websocket chat against an in-process gateway and a recording fake upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from geniehive import ws
from geniehive.daemon import hypercorn_config
from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import ENV, KEYS, Hive, start_hive
from tests.wsclient import chat, connect, receive, request

TERMINAL = ("chat.done", "error")
PING_INTERVAL_S = ws.PING_INTERVAL_S  # the shipped value, before the fixture below


@pytest.fixture(autouse=True)
def no_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways in these tests do not ping.

    hypercorn 0.18's ping loop checks for a closed socket only after each sleep, so a closed
    websocket keeps its connection task for up to one ping interval, and each test's gateway
    shutdown would then wait out its whole grace period.
    """
    monkeypatch.setattr(ws, "PING_INTERVAL_S", None)


async def receive_until_end(sock: WebSocketConnection, request_id: str) -> list[dict[str, Any]]:
    """Messages for `request_id` up to and including its terminal one (others are not expected)."""
    messages = []
    while True:
        message = await receive(sock)
        assert message["id"] == request_id, message
        messages.append(message)
        if message["type"] in TERMINAL:
            return messages


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for m in messages if m["type"] == "chat.chunk" for choice in m["chunk"]["choices"]
    )


async def assert_usable(sock: WebSocketConnection, request_id: str = "after") -> None:
    await sock.send_message(request(request_id, "still here"))
    messages = await receive_until_end(sock, request_id)
    assert messages[-1]["type"] == "chat.done", messages
    assert text_of(messages) == "echo: still here"


def chat_calls(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"] == "/v1/chat/completions"]


async def test_a_streamed_request_yields_chunks_then_done_with_usage(hive: Hive) -> None:
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            body = chat("hello over a socket", stream_options={"include_usage": True})
            await sock.send_message(json.dumps({"type": "chat.request", "id": "r1", "body": body}))
            messages = await receive_until_end(sock, "r1")
    assert text_of(messages) == "echo: hello over a socket"
    assert all(m["type"] == "chat.chunk" for m in messages[:-1])
    assert messages[0]["chunk"]["object"] == "chat.completion.chunk"
    done = messages[-1]
    assert done == {"type": "chat.done", "id": "r1", "usage": done["usage"]}
    assert done["usage"]["completion_tokens"] == 5
    assert chat_calls(hive.fake)[-1]["json"]["stream"] is True


async def test_stream_is_forced_on_even_when_the_body_says_false(hive: Hive) -> None:
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "one two", stream=False))
            messages = await receive_until_end(sock, "r1")
    assert [m["type"] for m in messages] == ["chat.chunk"] * 3 + ["chat.done"]
    assert chat_calls(hive.fake)[-1]["json"]["stream"] is True


async def test_interleaved_requests_each_receive_exactly_their_own_chunks_in_order(
    hive: Hive,
) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1)
    seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("a", "alpha beta gamma delta"))
            await sock.send_message(request("b", "one two three four five"))
            # Both streams are open at once: each has sent its first chunk and is held.
            for _ in range(2):
                message = await receive(sock)
                seen[message["id"]].append(message)
            assert len(seen["a"]) == len(seen["b"]) == 1
            hive.fake.release()
            ended: set[str] = set()
            while ended != {"a", "b"}:
                message = await receive(sock)
                seen[message["id"]].append(message)
                if message["type"] in TERMINAL:
                    ended.add(message["id"])
    assert text_of(seen["a"]) == "echo: alpha beta gamma delta"
    assert text_of(seen["b"]) == "echo: one two three four five"
    for messages in seen.values():
        assert [m["type"] for m in messages[:-1]] == ["chat.chunk"] * (len(messages) - 1)
        assert messages[-1]["type"] == "chat.done"


async def test_cancel_stops_the_upstream_and_answers_done_cancelled(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "a long story"))
            first = await receive(sock)
            assert first["type"] == "chat.chunk"
            await sock.send_message(json.dumps({"type": "cancel", "id": "r1"}))
            done = await receive(sock)
            assert done == {"type": "chat.done", "id": "r1", "usage": None, "cancelled": True}
            record = await hive.fake.wait_cancelled(chat_calls(hive.fake)[-1]["index"])
            assert record["cancelled"]
            # A cancel for an id that is no longer live is ignored; the socket goes on.
            await sock.send_message(json.dumps({"type": "cancel", "id": "r1"}))
            hive.fake.set_fault("ok")
            await assert_usable(sock)


async def test_closing_the_socket_cancels_every_live_request(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("a", "first"))
            await sock.send_message(request("b", "second"))
            ids = {(await receive(sock))["id"] for _ in range(2)}
            assert ids == {"a", "b"}
        calls = chat_calls(hive.fake)
        assert len(calls) == 2
        for call in calls:
            await hive.fake.wait_cancelled(call["index"])


BAD_INPUT = [
    pytest.param("not json at all", None, "invalid_request", None, id="not-json"),
    pytest.param("[1, 2]", None, "invalid_request", None, id="not-an-object"),
    pytest.param('{"type": "chat.stream", "id": "x1"}', "x1", "invalid_request", "type",
                 id="unknown-type"),
    pytest.param('{"id": "x1"}', "x1", "invalid_request", "type", id="missing-type"),
    pytest.param('{"type": "chat.request", "body": {}}', None, "invalid_request", "id",
                 id="missing-id"),
    pytest.param('{"type": "chat.request", "id": 7, "body": {}}', None, "invalid_request",
                 "id", id="number-id"),
    pytest.param('{"type": "chat.request", "id": "' + "x" * 200 + '", "body": {}}', None,
                 "invalid_request", "id", id="long-id"),
    pytest.param('{"type": "chat.request", "id": "x1", "body": "hi"}', "x1",
                 "invalid_request", "body", id="body-not-object"),
    pytest.param('{"type": "chat.request", "id": "x1", "body": {"model": "m1"}}', "x1",
                 "invalid_request", "messages", id="no-messages"),
    pytest.param('{"type": "chat.request", "id": "x1", "body": {"messages": []}}', "x1",
                 "invalid_request", "model", id="no-model"),
    pytest.param('{"type": "chat.request", "id": "x1", "body": {"model": "m1", '
                 '"messages": [], "stream": "yes"}}', "x1", "invalid_request", "stream",
                 id="stream-not-bool"),
    pytest.param('{"type": "chat.request", "id": "x1", "body": {"model": "nope-model", '
                 '"messages": []}}', "x1", "model_not_found", "model", id="unknown-model"),
    pytest.param('{"type": "auth"}', None, "invalid_request", "api_key", id="auth-no-key"),
    pytest.param("[" * 100 + "]" * 100, None, "invalid_request", None, id="too-deep"),
    pytest.param('{"type": "chat.request", "id": "big", "pad": "' + "x" * (1024 * 1024)
                 + '"}', None, "request_too_large", None, id="oversized"),
]


@pytest.mark.parametrize(("frame", "error_id", "code", "param"), BAD_INPUT)
async def test_bad_input_gets_an_error_and_the_socket_stays_usable(
    hive: Hive, frame: str, error_id: str | None, code: str, param: str | None
) -> None:
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(frame)
            message = await receive(sock)
            assert message["type"] == "error", message
            assert message["id"] == error_id
            error = message["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert (error["code"], error["param"]) == (code, param)
            assert error["message"]
            await assert_usable(sock)


async def test_a_message_past_the_server_frame_limit_closes_the_socket_1009(hive: Hive) -> None:
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message("x" * (ws.HYPERCORN_MAX_MESSAGE_BYTES + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await sock.get_message()
    assert closed.value.reason.code == 1009


async def test_an_id_with_a_lone_surrogate_is_answered_not_crashed_on(hive: Hive) -> None:
    # A lone surrogate is no character: the frame is not strict JSON, so no id is trusted.
    frame = '{"type": "chat.request", "id": "\\ud800", "body": {"model": "m1"}}'
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(frame)
            message = await receive(sock)
            assert message["id"] is None and message["error"]["param"] == "id"
            assert message["error"]["code"] == "invalid_request"
            await assert_usable(sock)


async def test_binary_frames_are_read_as_utf8_json(hive: Hive) -> None:
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "bytes too").encode())
            messages = await receive_until_end(sock, "r1")
    assert text_of(messages) == "echo: bytes too"


async def test_a_duplicate_live_id_is_refused_without_ending_the_live_request(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "the original"))
            assert (await receive(sock))["type"] == "chat.chunk"
            await sock.send_message(request("r1", "the copy"))
            refusal = await receive(sock)
            assert refusal["type"] == "error" and refusal["id"] is None
            assert refusal["error"]["param"] == "id" and "r1" in refusal["error"]["message"]
            hive.fake.release()
            rest = await receive_until_end(sock, "r1")
    assert rest[-1]["type"] == "chat.done"
    assert len(chat_calls(hive.fake)) == 1


async def test_requests_beyond_the_per_connection_limit_are_rate_limited(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1)
    limit = ws.MAX_LIVE_REQUESTS
    with trio.fail_after(15):
        async with connect(hive.url) as sock:
            for n in range(limit + 1):
                await sock.send_message(request(f"r{n}", f"number {n}"))
            firsts: set[str] = set()
            refused = None
            while len(firsts) < limit or refused is None:
                message = await receive(sock)
                if message["type"] == "error":
                    refused = message
                else:
                    firsts.add(message["id"])
            assert refused["id"] == f"r{limit}"
            assert refused["error"]["code"] == "rate_limited"
            assert refused["error"]["type"] == "rate_limit_error"
            hive.fake.release()
            done: set[str] = set()
            while len(done) < limit:
                message = await receive(sock)
                if message["type"] == "chat.done":
                    done.add(message["id"])
            assert done == firsts
            await assert_usable(sock)


async def test_a_mid_stream_failure_ends_only_its_own_request(hive: Hive) -> None:
    hive.fake.set_fault("hold_stream", after_chunks=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("steady", "the steady one keeps going"))
            steady_first = await receive(sock)
            assert steady_first["id"] == "steady"
            hive.fake.set_fault("reset_mid_stream", after_chunks=1, times=1)
            await sock.send_message(request("broken", "this one breaks"))
            broken = await receive_until_end(sock, "broken")
            hive.fake.release()
            steady = await receive_until_end(sock, "steady")
    assert [m["type"] for m in broken] == ["chat.chunk", "error"]
    assert broken[-1]["error"]["code"] == "upstream_error"
    assert steady[-1]["type"] == "chat.done"
    assert text_of([steady_first, *steady]) == "echo: the steady one keeps going"


async def test_an_error_before_the_first_byte_is_one_error_message(hive: Hive) -> None:
    hive.fake.set_fault("status", status=400, message="context too long", times=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "too long"))
            messages = await receive_until_end(sock, "r1")
            await assert_usable(sock)
    assert len(messages) == 1
    assert messages[0]["error"]["code"] == "upstream_400"
    assert "context too long" in messages[0]["error"]["message"]


@pytest.fixture
async def keyed_url(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[str]:
    """A gateway with keys configured (so auth is on), stopped cleanly after the test."""
    with trio.fail_after(10):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, KEYS + upstream_toml("fake", port, ["chat"]))
        running = await gateway_in_process(nursery, config, ENV)
    yield running.url
    with trio.fail_after(10):
        await running.stop()


async def test_with_keys_a_first_auth_message_unlocks_the_socket(keyed_url: str) -> None:
    url = keyed_url
    with trio.fail_after(10):
        async with connect(url) as sock:
            await sock.send_message(json.dumps({"type": "auth", "api_key": ENV["APPS_KEY"]}))
            await assert_usable(sock)
        async with connect(url, [("Authorization", f"Bearer {ENV['APPS_KEY']}")]) as sock:
            await assert_usable(sock)
        async with connect(url, [("X-Api-Key", ENV["APPS_KEY"])]) as sock:
            await assert_usable(sock)


@pytest.mark.parametrize(
    ("headers", "first", "close_code", "error_code"),
    [
        pytest.param([], request("r1", "hi"), 4401, "invalid_api_key", id="request-first"),
        pytest.param([], json.dumps({"type": "auth", "api_key": "sk-wrong"}), 4401,
                     "invalid_api_key", id="wrong-key-message"),
        pytest.param([("Authorization", "Bearer sk-wrong")], None, 4401, "invalid_api_key",
                     id="wrong-key-header"),
        pytest.param([("X-Api-Key", ENV["OPS_KEY"])], None, 4403, "insufficient_scope",
                     id="key-without-scope"),
    ],
)
async def test_with_keys_a_missing_or_bad_key_gets_an_error_then_a_close(
    keyed_url: str, headers: list[tuple[str, str]], first: str | None, close_code: int,
    error_code: str,
) -> None:
    with trio.fail_after(10):
        async with connect(keyed_url, headers) as sock:
            if first is not None:
                await sock.send_message(first)
            message = await receive(sock)
            assert message["type"] == "error" and message["id"] is None
            assert message["error"]["code"] == error_code
            assert ENV["OPS_KEY"] not in json.dumps(message)
            with pytest.raises(ConnectionClosed) as closed:
                await sock.get_message()
    assert closed.value.reason.code == close_code


async def test_an_idle_socket_is_closed_normally(
    hive: Hive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "IDLE_TIMEOUT_S", 0.3)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await assert_usable(sock)
            with pytest.raises(ConnectionClosed) as closed:
                await sock.get_message()
    assert closed.value.reason.code == 1000


async def test_a_live_request_keeps_the_socket_from_idling(
    hive: Hive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "IDLE_TIMEOUT_S", 0.3)
    hive.fake.set_fault("hold_stream", after_chunks=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "slow but alive"))
            await receive(sock)
            await trio.sleep(0.6)  # longer than the idle timeout, while r1 is live
            hive.fake.release()
            messages = await receive_until_end(sock, "r1")
    assert messages[-1]["type"] == "chat.done"


async def test_shutdown_lets_live_requests_finish_then_closes_going_away(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "SHUTDOWN_POLL_S", 0.05)
    with trio.fail_after(10):
        hive = await start_hive(nursery, tmp_path)
        hive.fake.set_fault("hold_stream", after_chunks=1)
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "finish me please"))
            first = await receive(sock)
            nursery.start_soon(hive.running.stop)
            while hive.gateway.ready:  # noqa: ASYNC110 - a plain flag, as the handler polls it
                await trio.sleep(0.01)
            await sock.send_message(request("late", "too late"))
            late = await receive(sock)
            assert late["id"] == "late" and late["error"]["code"] == "shutting_down"
            hive.fake.release()
            messages = await receive_until_end(sock, "r1")
            assert text_of([first, *messages]) == "echo: finish me please"
            with pytest.raises(ConnectionClosed) as closed:
                await sock.get_message()
        assert closed.value.reason.code == 1001
        await hive.running.done.wait()
        await hive.client.aclose()


def test_hypercorn_lets_oversized_messages_reach_the_handler_and_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geniehive.config import load_control

    config = load_control(write_config(tmp_path, ""), {})
    hc = hypercorn_config(["127.0.0.1:0"], config)
    assert hc.websocket_max_message_size > ws.MAX_MESSAGE_BYTES
    assert hc.websocket_ping_interval is None  # the fixture above
    monkeypatch.setattr(ws, "PING_INTERVAL_S", PING_INTERVAL_S)
    hc = hypercorn_config(["127.0.0.1:0"], config)
    assert hc.websocket_ping_interval == PING_INTERVAL_S


async def test_the_playground_page_is_served(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.get("/playground")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for element in ("model", "prompt", "send", "stop", "output", "status"):
        assert f'id="{element}"' in response.text
    assert ws.PATH in response.text
    assert "connect-src 'self'" in response.headers["content-security-policy"]
