"""How the failover scorecard (bench/failover.py) scores what a client got, and what the time
to first content (bench/ttfb.py) counts as content."""

from __future__ import annotations

import json

from bench.failover import (
    CLEAN,
    FIRST,
    LATE,
    RESCUED,
    SECOND,
    WRONG,
    classify_json,
    classify_stream,
)
from geniehive.sse import ContentWatch

WHOLE = "echo: one two"


def sse(*payloads: object) -> str:
    return "".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n" for p in payloads)


def delta(**fields: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


ROLE = delta(role="assistant")
HEAD, TAIL = delta(content="echo: one"), delta(content=" two")
ERROR = {"error": {"message": "upstream reset", "code": "upstream_error"}}


def test_the_whole_stream_from_the_healthy_upstream_is_rescued() -> None:
    text = ": keep-alive\n\n" + sse(ROLE, HEAD, TAIL, "[DONE]")
    assert classify_stream(text, WHOLE, f"{SECOND}/chat")[0] == RESCUED


def test_the_whole_stream_from_the_faulty_upstream_is_late() -> None:
    assert classify_stream(sse(HEAD, TAIL, "[DONE]"), WHOLE, f"{FIRST}/chat")[0] == LATE


def test_an_error_event_without_done_is_a_clean_error() -> None:
    outcome, detail = classify_stream(sse(HEAD, ERROR), WHOLE, f"{FIRST}/chat")
    assert outcome == CLEAN and "upstream_error" in detail


def test_a_cut_that_looks_whole_or_ends_silently_or_relays_garbage_is_wrong() -> None:
    assert classify_stream(sse(HEAD, "[DONE]"), WHOLE, f"{SECOND}/chat")[0] == WRONG
    assert classify_stream(sse(HEAD), WHOLE, f"{SECOND}/chat")[0] == WRONG
    assert classify_stream(sse(HEAD, ERROR, "[DONE]"), WHOLE, f"{SECOND}/chat")[0] == WRONG
    assert classify_stream(sse(HEAD, "not json"), WHOLE, f"{SECOND}/chat")[0] == WRONG


def test_an_error_status_is_clean_only_with_an_openai_error_body() -> None:
    assert classify_json(502, json.dumps(ERROR).encode(), WHOLE, None)[0] == CLEAN
    assert classify_json(502, b"<html>bad gateway</html>", WHOLE, None)[0] == WRONG
    whole = {"choices": [{"message": {"role": "assistant", "content": WHOLE}}]}
    assert classify_json(200, json.dumps(whole).encode(), WHOLE, f"{SECOND}/chat")[0] == RESCUED


def test_a_role_only_chunk_is_not_content_but_text_or_a_finish_reason_is() -> None:
    """What bench/ttfb.py times as the first content (the gateway's own ContentWatch)."""
    watch = ContentWatch()
    assert not watch.feed((": keep-alive\n\n" + sse(ROLE)).encode())
    assert not watch.feed(b'data: {"choices":[{"delta":{"content":"hi"}')  # half
    assert watch.feed(b"}]}\n\n") == "content"
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    assert ContentWatch().feed(sse(finish).encode()) == "content"
