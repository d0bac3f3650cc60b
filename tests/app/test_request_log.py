"""The request log: one line per request, whatever a client puts in the values it logs."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import trio

from geniehive.cli import JsonFormatter, TextFormatter
from tests.hive import Hive
from tests.wsclient import connect, request

FORGED = "m1\n2026-12-02 00:00:00 INFO geniehive.request: request id=forged key=admin"


@pytest.fixture(params=["text", "json"])
def request_log(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """The request logger's output, formatted as `geniehive serve` formats it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if request.param == "json" else formatter)
    logger = logging.getLogger("geniehive.request")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def test_a_model_name_with_a_newline_cannot_forge_a_log_line(
    hive: Hive, request_log: io.StringIO
) -> None:
    body = {"model": FORGED, "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(10):
        reply = await hive.client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 404
        while not request_log.getvalue():  # written once the answer has been sent
            await trio.sleep(0.01)
    lines = request_log.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "id=forged" in lines[0]  # still there, inside the one real line
    if lines[0].startswith("{"):
        assert FORGED in json.loads(lines[0])["message"]
    else:
        assert "model=m1\\x0a2026-12-02" in lines[0]


async def test_each_line_names_the_endpoint_the_client_called(
    hive: Hive, request_log: io.StringIO
) -> None:
    # One model behind all three: only the endpoint tells the requests apart.
    hi = [{"role": "user", "content": "hi"}]
    with trio.fail_after(10):
        chat = await hive.client.post("/v1/chat/completions", json={"model": "m1", "messages": hi})
        responses = await hive.client.post("/v1/responses", json={"model": "m1", "input": "hi"})
        messages = await hive.client.post("/v1/messages", json={
            "model": "m1", "max_tokens": 16, "messages": hi})
        while len(request_log.getvalue().splitlines()) < 3:
            await trio.sleep(0.01)
    assert [chat.status_code, responses.status_code, messages.status_code] == [200] * 3
    lines = request_log.getvalue().splitlines()
    for line, endpoint in zip(lines, ["chat", "responses", "messages"], strict=True):
        assert f" endpoint={endpoint} " in line and " status=200 " in line, line


def logged_bytes(line: str) -> int:
    """The `bytes=` field of a request log line (text or JSON format)."""
    if line.startswith("{"):
        line = json.loads(line)["message"]
    found = re.search(r" bytes=(\d+)", line)
    assert found, line
    return int(found.group(1))


async def test_an_error_answer_is_logged_with_the_bytes_of_its_body(
    hive: Hive, request_log: io.StringIO
) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(10):
        reply = await hive.client.post("/v1/chat/completions", json=body)
        while not request_log.getvalue():
            await trio.sleep(0.01)
    assert reply.status_code == 404
    [line] = request_log.getvalue().splitlines()
    assert logged_bytes(line) == len(reply.content) > 0


async def test_a_websocket_error_is_logged_with_the_bytes_of_its_message(
    hive: Hive, request_log: io.StringIO
) -> None:
    hive.fake.set_fault("status", status=400, message="nope", times=1)
    with trio.fail_after(10):
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "hi"))
            raw = await sock.get_message()
        while not request_log.getvalue():
            await trio.sleep(0.01)
    assert json.loads(raw)["type"] == "error"
    [line] = request_log.getvalue().splitlines()
    assert logged_bytes(line) == len(raw)


def test_text_format_escapes_every_control_character_but_keeps_tracebacks() -> None:
    formatter = TextFormatter("%(message)s")
    value = "a\r\x00\x1b\u2028\x85é b"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "v=%s", (value,), None)
    assert formatter.format(record) == "v=a\\x0d\\x00\\x1b\\u2028\\x85é b"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    assert text.startswith("failed\nTraceback")
    assert text.endswith("ValueError: boom")
