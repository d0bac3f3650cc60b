"""The dialect seam (geniehive/dialects/__init__.py) with a small dialect of the test's own:
its request becomes chat, its answer comes back in its own shape, whole or streamed, and its
errors in its own error shape; a stream cut mid-way ends with its own error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geniehive import dialects
from geniehive.errors import GenieHiveError, InvalidRequest
from geniehive.models import Policy
from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import ENV, KEYS, Hive, calls, start_hive


class EchoTranslation:
    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.text = ""

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]:
        self.result = {"said": chat["choices"][0]["message"]["content"]}
        return self.result

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        piece = "".join((c.get("delta") or {}).get("content") or "" for c in chunk["choices"])
        self.text += piece
        return b"event: piece\ndata: " + json.dumps(piece).encode() + b"\n\n" if piece else b""

    def done(self) -> bytes:
        self.result = {"said": self.text}
        return b"event: end\ndata: {}\n\n"

    def error(self, error: dict[str, Any]) -> bytes:
        return b"event: failed\ndata: " + json.dumps(error["message"]).encode() + b"\n\n"

    def native_answer(self, answer: dict[str, Any], strip: bool) -> dict[str, Any]:
        raise AssertionError("no upstream here speaks the echo dialect")

    def native_event(self, event: bytes, strip: bool) -> bytes:
        raise AssertionError("no upstream here speaks the echo dialect")


class EchoDialect:
    name = "echo"
    native_path = "/v1/echo"

    def __init__(self) -> None:
        self.finished: list[dict[str, Any]] = []

    async def prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("say"), str):
            raise InvalidRequest("'say' must be a string", param="say")
        return {"model": body.get("model"), "stream": bool(body.get("stream")),
                "messages": [{"role": "user", "content": body["say"]}]}

    def translation(self, body: dict[str, Any]) -> EchoTranslation:
        return EchoTranslation()

    def native_body(self, body: dict[str, Any], model: str, policy: Policy) -> dict[str, Any]:
        raise AssertionError("no upstream here speaks the echo dialect")

    def error_body(self, exc: GenieHiveError) -> bytes:
        return json.dumps({"oops": exc.message, "status": exc.http_status}).encode()

    async def finish(self, body: dict[str, Any], translation: Any) -> None:
        self.finished.append(translation.result)


@pytest.fixture
async def echo(nursery: trio.Nursery, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Hive, EchoDialect]]:
    dialect = EchoDialect()
    monkeypatch.setattr(dialects, "served", lambda gateway: {"/v1/echo": dialect})
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path, extra=KEYS, environ=ENV)
    h.client.headers["x-api-key"] = ENV["APPS_KEY"]
    yield h, dialect
    await h.client.aclose()
    with trio.fail_after(10):
        await h.running.stop()


async def test_a_whole_answer_comes_back_in_the_dialect_with_its_own_length(echo) -> None:
    hive, dialect = echo
    with trio.fail_after(10):
        response = await hive.client.post("/v1/echo", json={"model": "m1", "say": "hi there"})
    assert response.status_code == 200, response.text
    assert response.json() == {"said": "echo: hi there"}
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-geniehive-service"]
    # The upstream was asked in chat; the finished answer was handed to the dialect.
    sent = calls(hive.fake)[-1]["json"]
    assert sent["messages"] == [{"role": "user", "content": "hi there"}]
    assert dialect.finished == [{"said": "echo: hi there"}]


async def test_a_stream_is_translated_event_by_event(echo) -> None:
    hive, dialect = echo
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/echo", json={"model": "m1", "say": "one two three", "stream": True}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "event: end\ndata: {}"
    pieces = [json.loads(e.split("data: ", 1)[1]) for e in events[:-1]]
    assert "".join(pieces) == "echo: one two three"
    assert dialect.finished == [{"said": "echo: one two three"}]


async def test_errors_use_the_dialects_shape(echo) -> None:
    hive, dialect = echo
    with trio.fail_after(10):
        unknown = await hive.client.post("/v1/echo", json={"model": "nope", "say": "x"})
        bad = await hive.client.post("/v1/echo", json={"model": "m1", "say": 3})
        refused = await hive.client.post(
            "/v1/echo", json={"model": "m1", "say": "x"}, headers={"x-api-key": "wrong"}
        )
    assert unknown.status_code == 404
    assert unknown.json()["status"] == 404 and "nope" in unknown.json()["oops"]
    assert bad.status_code == 400 and bad.json()["oops"] == "'say' must be a string"
    assert refused.status_code == 401 and set(refused.json()) == {"oops", "status"}
    assert dialect.finished == []


async def test_a_stream_cut_after_its_start_ends_with_the_dialects_error_event(echo) -> None:
    hive, dialect = echo
    hive.fake.set_fault("reset_mid_stream", after_chunks=2, times=1)
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/echo", json={"model": "m1", "say": "one two three four", "stream": True}
        )
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0].startswith("event: piece")
    assert events[-1].startswith("event: failed") and "broke off" in events[-1]
    assert dialect.finished == []  # an answer cut short is not finished


async def test_a_stream_cut_by_the_shutdown_ends_with_the_dialects_error_event(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialects, "served", lambda gateway: {"/v1/echo": EchoDialect()})
    fake = FakeUpstream(["m1"])
    with trio.fail_after(20):
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, upstream_toml("fake", port, ["chat"]))
        config.write_text(config.read_text().replace("shutdown_grace_s = 5",
                                                     "shutdown_grace_s = 0.2"))
        running = await gateway_in_process(nursery, config)
        fake.set_fault("hold_stream", after_chunks=1, times=1)
        body = {"model": "m1", "say": "one two three", "stream": True}
        async with (
            httpx.AsyncClient(base_url=running.url, timeout=10) as client,
            client.stream("POST", "/v1/echo", json=body) as response,
        ):
            chunks = response.aiter_raw()
            raw = await chunks.__anext__()
            running.shutdown.set()
            raw += b"".join([chunk async for chunk in chunks])
        await running.done.wait()
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[0].startswith("event: piece")
    assert events[-1].startswith("event: failed") and "shutting down" in events[-1]


async def test_a_stream_ends_with_the_dialects_last_event(echo, caplog) -> None:
    """The upstream sends its last event and then keeps the stream open: the client's
    answer still ends there, whole, and the request is logged as answered."""
    hive, dialect = echo
    hive.fake.set_fault("hold_stream", after_chunks=4, times=1)  # 3 words and [DONE]
    caplog.set_level("INFO", logger="geniehive.request")
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/echo", json={"model": "m1", "say": "one two", "stream": True}
        )
        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if "endpoint=echo" in r.getMessage()]

        while not logged():  # the line is written once the request's task has finished
            await trio.sleep(0.01)
    hive.fake.release()
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "event: end\ndata: {}"
    assert dialect.finished == [{"said": "echo: one two"}]
    [line] = logged()
    assert " status=200 " in line
