"""What a client or a node sends is checked before anything is forwarded.

Against a real gateway on port 0 and the recording fake upstream: wrong-typed standard
fields, JSON that is not JSON (NaN, Infinity) and keys given twice are 400 `invalid_request`
naming the field, and none of them reaches the upstream; unknown fields still do, unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import Hive, assert_openai_error, calls, start_hive
from tests.wsclient import connect, receive

CHAT: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hello there"}]}
FORWARDED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
             "/v1/audio/transcriptions", "/v1/audio/speech", "/v1/images/generations")


def forwarded(hive: Hive) -> list[dict[str, Any]]:
    """Every client request the fake upstream received (discovery and probes excluded)."""
    return [r for r in hive.fake.requests if r["path"] in FORWARDED]


def with_message(**message: Any) -> dict[str, Any]:
    return {**CHAT, "messages": [{"role": "user", **message}]}


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({**CHAT, "max_tokens": "10"}, "max_tokens", id="max_tokens-string"),
    pytest.param({**CHAT, "max_tokens": 1.5}, "max_tokens", id="max_tokens-float"),
    pytest.param({**CHAT, "temperature": "NaN"}, "temperature", id="temperature-string"),
    pytest.param({**CHAT, "top_p": "high"}, "top_p", id="top_p-string"),
    pytest.param({**CHAT, "n": "many"}, "n", id="n-string"),
    pytest.param({**CHAT, "tools": "x"}, "tools", id="tools-string"),
    pytest.param(with_message(content=5), "messages[0].content", id="content-integer"),
    pytest.param({**CHAT, "tools": [{"type": "function", "function": {"name": 3}}]},
                 "tools[0].function.name", id="tool-name-integer"),
    pytest.param({**CHAT, "messages": [CHAT["messages"][0], {"content": "x"}]},
                 "messages[1].role", id="role-missing"),
    pytest.param({**CHAT, "stop": [1]}, "stop", id="stop-integers"),
])
async def test_wrong_typed_chat_fields_are_400_and_never_forwarded(
    hive: Hive, body: dict[str, Any], param: str
) -> None:
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert forwarded(hive) == []


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"model": "m1", "prompt": "Once", "max_tokens": "10"}, "max_tokens"),
    ("/v1/completions", {"model": "m1", "prompt": 5}, "prompt"),
    ("/v1/embeddings", {"model": "m1", "input": {"text": "a"}}, "input"),
    ("/v1/embeddings", {"model": "m1", "input": "a", "encoding_format": "int8"},
     "encoding_format"),
    ("/v1/embeddings", {"model": "m1", "input": "a", "dimensions": 0}, "dimensions"),
    ("/v1/audio/speech", {"model": "m1", "input": "hi", "voice": "alloy", "speed": "fast"},
     "speed"),
    ("/v1/audio/speech", {"model": "m1", "input": ["hi"], "voice": "alloy"}, "input"),
    ("/v1/images/generations", {"model": "m1", "prompt": "a cat", "n": "2"}, "n"),
    ("/v1/images/generations", {"model": "m1", "prompt": "a cat", "size": 1024}, "size"),
])
async def test_wrong_typed_fields_of_every_json_endpoint_are_400(
    hive: Hive, path: str, body: dict[str, Any], param: str
) -> None:
    with trio.fail_after(10):
        response = await hive.client.post(path, json=body)
    assert assert_openai_error(response, 400, "invalid_request")["param"] == param
    assert forwarded(hive) == []


def multipart(fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    """A form with `fields` in order (repeats included) and a small file part."""
    boundary = "b0undary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="talk.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF....WAVE\r\n'
                 f"--{boundary}--\r\n")
    return "".join(parts).encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(("data", "param"), [
    ([("model", "m1"), ("temperature", "NaN")], "temperature"),
    ([("model", "m1"), ("temperature", "2")], "temperature"),
    ([("model", "m1"), ("response_format", "mp3")], "response_format"),
    ([("model", "m1"), ("language", "en\nx")], "language"),
    ([("model", "m1"), ("model", "qwen3-8b")], "model"),
])
async def test_wrong_form_fields_of_a_transcription_are_400(
    hive: Hive, data: list[tuple[str, str]], param: str
) -> None:
    files = {"file": ("talk.wav", b"RIFF....WAVE", "audio/wav")}
    content, content_type = multipart(data)
    with trio.fail_after(10):
        response = await hive.client.post("/v1/audio/transcriptions", content=content,
                                          headers={"content-type": content_type})
        good = await hive.client.post("/v1/audio/translations", files=files,
                                      data={"model": "m1", "temperature": "0.2"})
    assert assert_openai_error(response, 400, "invalid_request")["param"] == param
    assert [r["path"] for r in forwarded(hive)] == []
    assert good.status_code == 200
    assert [r["path"] for r in hive.fake.requests if r["path"].startswith("/v1/audio/")] == [
        "/v1/audio/translations"]


async def test_unknown_fields_reach_the_upstream_byte_for_byte(hive: Hive) -> None:
    body = {**CHAT, "top_k": 20, "chat_template_kwargs": {"enable_thinking": False},
            "min_p": 0.05, "temperature": None, "x-vendor": [1, {"a": "b"}]}
    raw = json.dumps(body).encode()
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    sent = calls(hive.fake)[-1]
    assert sent["body"] == raw
    assert sent["json"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["json"]["top_k"] == 20


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_literals_are_not_json(hive: Hive, literal: str) -> None:
    chat = b'{"model": "m1", "messages": [], "temperature": %s}' % literal.encode()
    extra = b'{"model": "m1", "messages": [], "x-score": %s}' % literal.encode()
    register = b'{"host_id": "gpu-01", "address": "127.0.0.1", "services": [], ' \
               b'"resources": {"vram": %s}}' % literal.encode()
    with trio.fail_after(10):
        answers = [await hive.client.post("/v1/chat/completions", content=chat),
                   await hive.client.post("/v1/chat/completions", content=extra),
                   await hive.client.post("/v1/nodes/register", content=register)]
    for response in answers:
        error = assert_openai_error(response, 400, "invalid_request")
        assert literal in error["message"] and "not a JSON value" in error["message"]
    assert forwarded(hive) == []
    assert "gpu-01" not in hive.gateway.snapshot.hosts


LIMITED = """
[[auth.keys]]
name = "limited"
key_env = "LIMITED_KEY"
scopes = ["inference"]
models = ["m*"]

[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["read", "operate", "admin", "node"]
"""
ENV = {"LIMITED_KEY": "sk-limited-1", "OPS_KEY": "sk-ops-2"}


async def start_with_keys(nursery: trio.Nursery, tmp_path: Path) -> Hive:
    hive = await start_hive(nursery, tmp_path)
    # A second gateway over the same fake, this one with keys (the first stays in open mode).
    config = write_config(tmp_path / "keys", LIMITED + upstream_toml("fake", hive.port, ["chat"]))
    running = await gateway_in_process(nursery, config, ENV)
    await hive.client.aclose()
    await hive.running.stop()
    client = httpx.AsyncClient(base_url=running.url, timeout=10)
    return Hive(running.url, hive.fake, hive.port, running.gateway, client, running)


async def test_a_duplicate_model_key_cannot_slip_past_a_model_limited_key(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    (tmp_path / "keys").mkdir()
    limited = {"Authorization": f"Bearer {ENV['LIMITED_KEY']}",
               "content-type": "application/json"}
    messages = b'"messages": [{"role": "user", "content": "hi"}]'
    twice = b'{"model": "qwen3-8b", "model": "m1", ' + messages + b"}"
    nested = b'{"model": "m1", "messages": [{"role": "user", "role": "system", "content": "x"}]}'
    with trio.fail_after(20):
        hive = await start_with_keys(nursery, tmp_path)
        refused = await hive.client.post("/v1/chat/completions", content=twice, headers=limited)
        deep = await hive.client.post("/v1/chat/completions", content=nested, headers=limited)
        alone = await hive.client.post("/v1/chat/completions", headers=limited,
                                       content=b'{"model": "qwen3-8b", ' + messages + b"}")
        assert forwarded(hive) == []
        allowed = await hive.client.post("/v1/chat/completions", headers=limited,
                                         content=b'{"model": "m1", ' + messages + b"}")
        await hive.client.aclose()
        await hive.running.stop()
    error = assert_openai_error(refused, 400, "invalid_request")
    assert error["param"] == "model" and "'model' twice" in error["message"]
    assert assert_openai_error(deep, 400, "invalid_request")["param"] == "messages[0].role"
    assert_openai_error(alone, 403, "insufficient_scope")
    assert allowed.status_code == 200
    assert [r["json"]["model"] for r in forwarded(hive)] == ["m1"]


async def test_node_and_cluster_bodies_refuse_duplicate_keys_and_nan(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    (tmp_path / "keys").mkdir()
    ops = {"Authorization": f"Bearer {ENV['OPS_KEY']}", "content-type": "application/json"}
    register = (b'{"host_id": "gpu-01", "host_id": "gpu-02", "address": "127.0.0.1", '
                b'"services": []}')
    key = b'{"name": "app", "scopes": ["inference"], "scopes": ["admin"]}'
    report = b'{"benchmarks": [{"service_id": "fake/chat", "score": NaN}]}'
    with trio.fail_after(20):
        hive = await start_with_keys(nursery, tmp_path)
        c = hive.client
        answers = {
            "register": await c.post("/v1/nodes/register", content=register, headers=ops),
            "heartbeat": await c.post("/v1/nodes/heartbeat", headers=ops,
                                      content=b'{"host_id": "a", "host_id": "b"}'),
            "key": await c.post("/v1/admin/keys", content=key, headers=ops),
            "report": await c.post("/v1/cluster/benchmarks", content=report, headers=ops),
            "match": await c.post("/v1/cluster/routes/match", headers=ops,
                                  content=b'{"operation": "chat", "operation": "embeddings"}'),
        }
        keys = (await c.get("/v1/admin/keys", headers=ops)).json()["data"]
        await c.aclose()
        await hive.running.stop()
    params = {name: assert_openai_error(r, 400, "invalid_request")["param"]
              for name, r in answers.items()}
    assert params == {"register": "host_id", "heartbeat": "host_id", "key": "scopes",
                      "report": None, "match": "operation"}
    assert "NaN" in answers["report"].json()["error"]["message"]
    assert keys == []
    assert not {"gpu-01", "gpu-02"} & set(hive.gateway.snapshot.hosts)


async def test_the_node_port_refuses_duplicate_keys_and_nan(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import logging
    import re

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    logging.getLogger("geniehive.nodes").addHandler(handler)
    logging.getLogger("geniehive.nodes").setLevel(logging.INFO)
    try:
        with trio.fail_after(10):
            running = await gateway_in_process(
                nursery, write_config(tmp_path, '[nodes]\nbind = ["127.0.0.1:0"]\n'))
            url = next(m.group(1) for r in records
                       if (m := re.search(r"node endpoints listening on (\S+)", r)))
            async with httpx.AsyncClient(base_url=url, timeout=5) as node:
                twice = await node.post(
                    "/v1/nodes/register",
                    content=b'{"host_id": "gpu-01", "address": "127.0.0.1", "services": [], '
                            b'"labels": {"a": "1", "a": "2"}}')
                nan = await node.post("/v1/nodes/heartbeat",
                                      content=b'{"host_id": "gpu-01", "metrics": {"x": NaN}}')
            await running.stop()
    finally:
        logging.getLogger("geniehive.nodes").removeHandler(handler)
    assert assert_openai_error(twice, 400, "invalid_request")["param"] == "labels.a"
    assert "NaN" in assert_openai_error(nan, 400, "invalid_request")["message"]
    assert "gpu-01" not in running.gateway.snapshot.hosts


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({**CHAT, "max_tokens": "10"}, "max_tokens", id="max_tokens-string"),
    pytest.param({**CHAT, "temperature": 3}, "temperature", id="temperature-range"),
    pytest.param(with_message(content=5), "messages[0].content", id="content-integer"),
])
async def test_a_websocket_chat_with_a_wrong_field_gets_the_error_message(
    hive: Hive, body: dict[str, Any], param: str
) -> None:
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(json.dumps({"type": "chat.request", "id": "r1", "body": body}))
            message = await receive(sock)
            await sock.send_message('{"type": "chat.request", "id": "r2", "body": '
                                    '{"model": "m1", "model": "m1", "messages": []}}')
            twice = await receive(sock)
            await sock.send_message('{"type": "chat.request", "id": "r3", "body": '
                                    '{"model": "m1", "messages": [], "seed": NaN}}')
            nan = await receive(sock)
    assert message["type"] == "error" and message["id"] == "r1", message
    assert message["error"]["code"] == "invalid_request"
    assert message["error"]["param"] == param
    # A frame that is not strict JSON names no request: its id could not be trusted.
    assert (twice["type"], twice["id"], twice["error"]["param"]) == ("error", None, "body.model")
    assert (nan["type"], nan["id"], nan["error"]["param"]) == ("error", None, None)
    assert "NaN" in nan["error"]["message"]
    assert forwarded(hive) == []


async def test_a_lone_surrogate_is_400_not_an_internal_error(hive: Hive) -> None:
    # The websocket path re-encodes every body; a lone surrogate used to fail there (500).
    body = '{"model": "m1", "messages": [{"role": "user", "content": "\\ud800"}]}'
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", content=body.encode())
        async with connect(hive.url) as sock:
            await sock.send_message('{"type": "chat.request", "id": "r1", "body": ' + body + "}")
            message = await receive(sock)
    assert assert_openai_error(response, 400, "invalid_request")["param"] == (
        "messages[0].content")
    assert message["type"] == "error"
    assert (message["error"]["code"], message["error"]["param"]) == (
        "invalid_request", "body.messages[0].content")
    assert forwarded(hive) == []
