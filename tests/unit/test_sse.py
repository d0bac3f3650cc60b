"""SSE relay: byte-exact framing, reasoning stripping, and what the stream reports to metrics."""

from __future__ import annotations

import json

import pytest

from geniehive.sse import (
    SSEStripper,
    contains_reasoning,
    encode_error_event,
    parse_event_lines,
    strip_reasoning,
)

PLAIN = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
REASONING = b'data: {"choices":[{"delta":{"reasoning_content":"hmm","content":null}}]}\n\n'
REASONING_STRIPPED = b'data: {"choices":[{"delta":{"content":null}}]}\n\n'
USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}'
    b"\n\n"
)
DONE = b"data: [DONE]\n\n"
SAMPLE = PLAIN + REASONING + b": keep-alive\n\n" + USAGE + DONE
SAMPLE_OUT = PLAIN + REASONING_STRIPPED + b": keep-alive\n\n" + USAGE + DONE


def relay(chunks: list[bytes], *, strip: bool = True) -> tuple[bytes, SSEStripper]:
    stripper = SSEStripper(strip=strip)
    out = b"".join(stripper.feed(chunk) for chunk in chunks) + stripper.flush()
    return out, stripper


def test_plain_events_pass_through_as_the_same_bytes():
    out, _ = relay([PLAIN + PLAIN])
    assert out == PLAIN + PLAIN


def test_event_with_reasoning_is_reencoded_without_it():
    assert relay([REASONING])[0] == REASONING_STRIPPED


def test_events_nested_too_deep_to_parse_or_walk_are_relayed_as_they_came():
    import sys

    too_deep = b'data: {"reasoning":"x","a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n\n"
    # parsed fine, but deeper than the recursion left to walk it
    depth = sys.getrecursionlimit()
    walkable = b'data: {"reasoning":"x","a":' + b"[" * (depth - 100) + b"]" * (depth - 100)
    walkable += b"}\n\n"
    for event in (too_deep, walkable):
        assert relay([event, PLAIN])[0] == event + PLAIN


def test_sample_stream_relays_exactly():
    out, stripper = relay([SAMPLE])
    assert out == SAMPLE_OUT
    assert stripper.events == 3
    assert stripper.done_seen is True
    assert stripper.usage == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


@pytest.mark.parametrize("split", range(1, len(SAMPLE)))
def test_stream_split_at_any_byte_gives_the_same_output(split):
    out, stripper = relay([SAMPLE[:split], SAMPLE[split:]])
    assert out == SAMPLE_OUT
    assert (stripper.events, stripper.done_seen) == (3, True)


def test_stream_fed_one_byte_at_a_time_gives_the_same_output():
    chunks = [SAMPLE[i : i + 1] for i in range(len(SAMPLE))]
    out, stripper = relay(chunks)
    assert out == SAMPLE_OUT
    assert stripper.usage is not None


def test_nothing_is_relayed_before_an_event_is_complete():
    stripper = SSEStripper()
    assert stripper.feed(PLAIN[:-1]) == b""
    assert stripper.feed(b"\n") == PLAIN


def test_crlf_stream_plain_events_keep_their_bytes():
    crlf = PLAIN.replace(b"\n", b"\r\n") + DONE.replace(b"\n", b"\r\n")
    for split in range(1, len(crlf)):
        assert relay([crlf[:split], crlf[split:]])[0] == crlf


def test_crlf_event_with_reasoning_is_reencoded_with_lf():
    crlf = REASONING.replace(b"\n", b"\r\n") + PLAIN.replace(b"\n", b"\r\n")
    expected = REASONING_STRIPPED + PLAIN.replace(b"\n", b"\r\n")
    for split in range(1, len(crlf)):
        assert relay([crlf[:split], crlf[split:]])[0] == expected, split


def test_cr_only_stream_is_framed_at_double_cr():
    cr = PLAIN.replace(b"\n", b"\r") + REASONING.replace(b"\n", b"\r")
    expected = PLAIN.replace(b"\n", b"\r") + REASONING_STRIPPED
    for split in range(1, len(cr)):
        assert relay([cr[:split], cr[split:]])[0] == expected, split


def test_cr_terminated_event_is_relayed_without_waiting_for_the_next_read():
    stripper = SSEStripper()
    assert stripper.feed(PLAIN.replace(b"\n", b"\r")) == PLAIN.replace(b"\n", b"\r")


def test_lf_completing_a_crlf_after_a_read_boundary_stays_with_its_event():
    # "\r\n\r" then "\n": the first read already ends the event; the "\n" belongs to it.
    event = REASONING.replace(b"\n", b"\r\n")
    stripper = SSEStripper()
    first = stripper.feed(event[:-1])
    second = stripper.feed(event[-1:] + PLAIN)
    assert first == REASONING_STRIPPED
    assert second == PLAIN
    plain = PLAIN.replace(b"\n", b"\r\n")
    stripper = SSEStripper()
    assert stripper.feed(plain[:-1]) + stripper.feed(b"\n") == plain


def test_mixed_line_endings_terminate_events():
    stream = b"data: 1\r\n\ndata: 2\n\r\ndata: 3\r\r\ndata: 4\n\r"
    stripper = SSEStripper()
    assert stripper.feed(stream) == stream
    assert stripper.events == 4


def test_data_without_space_is_parsed_and_stripped():
    event = b'data:{"reasoning":"x","choices":[]}\n\n'
    assert relay([event])[0] == b'data: {"choices":[]}\n\n'


def test_multiline_data_is_joined_with_newline_before_parsing():
    event = b'data: {"choices":[{"delta":\ndata: {"reasoning_content":"r","content":"c"}}]}\n\n'
    assert relay([event])[0] == b'data: {"choices":[{"delta":{"content":"c"}}]}\n\n'


def test_event_and_id_lines_are_kept_around_the_reencoded_data():
    event = b'event: chunk\nid: 7\ndata: {"reasoning":"r","a":1}\n: note\n\n'
    assert relay([event])[0] == b'event: chunk\nid: 7\ndata: {"a":1}\n: note\n\n'


def test_done_and_non_json_data_pass_unchanged():
    events = b"data: [DONE]\n\n" + b'data: "reasoning" is not json {\n\n'
    out, stripper = relay([events])
    assert out == events
    assert stripper.done_seen is True
    assert stripper.events == 1


def test_false_positive_scan_relays_original_bytes():
    # The word appears inside content; nothing to remove, so no re-encoding.
    event = b'data: {"choices":[{"delta":{"content":"reasoning_content"}}],  "x" : 1}\n\n'
    assert relay([event])[0] == event


def test_non_ascii_text_survives_reencoding():
    event = 'data: {"reasoning":"r","content":"héllo ✓"}\n\n'.encode()
    assert relay([event])[0] == 'data: {"content":"héllo ✓"}\n\n'.encode()


def test_nested_reasoning_is_removed_at_any_depth():
    event = b'data: {"a":{"b":[{"reasoning":{"reasoning_content":1},"c":2}]},"reasoning":3}\n\n'
    assert relay([event])[0] == b'data: {"a":{"b":[{"c":2}]}}\n\n'


def test_stripping_disabled_relays_everything_and_still_observes():
    out, stripper = relay([SAMPLE], strip=False)
    assert out == SAMPLE
    assert (stripper.events, stripper.done_seen) == (3, True)
    assert stripper.usage == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def test_usage_null_is_not_taken_and_last_usage_object_wins():
    stream = (
        b'data: {"choices":[],"usage":{"total_tokens":1}}\n\n'
        b'data: {"choices":[],"usage":null}\n\n'
        b'data: {"choices":[],"usage": {"total_tokens":2}}\n\n'
        b'data: {"choices":[],"usage":null}\n\n'
    )
    assert relay([stream])[1].usage == {"total_tokens": 2}


def test_usage_is_captured_from_an_event_that_is_also_stripped():
    event = b'data: {"choices":[{"delta":{"reasoning":"r"}}],"usage":{"total_tokens":3}}\n\n'
    out, stripper = relay([event])
    assert out == b'data: {"choices":[{"delta":{}}],"usage":{"total_tokens":3}}\n\n'
    assert stripper.usage == {"total_tokens": 3}


def test_stream_without_done_reports_it():
    _, stripper = relay([PLAIN, PLAIN])
    assert (stripper.events, stripper.done_seen, stripper.usage) == (2, False, None)


def test_flush_returns_trailing_partial_event_as_is():
    stripper = SSEStripper()
    assert stripper.feed(PLAIN + b'data: {"reasoning":"r"}\n') == PLAIN
    assert stripper.flush() == b'data: {"reasoning":"r"}\n'
    assert stripper.flush() == b""
    assert stripper.events == 2


def test_flush_observes_a_done_without_blank_line():
    stripper = SSEStripper()
    stripper.feed(PLAIN + b"data: [DONE]\n")
    stripper.flush()
    assert stripper.done_seen is True


def test_comment_only_events_are_not_counted():
    _, stripper = relay([b": ping\n\n: ping\n\n"])
    assert stripper.events == 0


def test_strip_reasoning_returns_same_object_when_nothing_changes():
    obj = {"choices": [{"message": {"content": "x"}}], "n": [1, 2]}
    assert strip_reasoning(obj) is obj


def test_strip_reasoning_copies_only_changed_paths_and_leaves_input_alone():
    untouched = {"k": [1]}
    obj = {
        "choices": [{"message": {"content": "x", "reasoning_content": "r"}}],
        "other": untouched,
    }
    result = strip_reasoning(obj)
    assert result == {"choices": [{"message": {"content": "x"}}], "other": {"k": [1]}}
    assert result["other"] is untouched
    assert obj["choices"][0]["message"]["reasoning_content"] == "r"


def test_strip_reasoning_on_scalars_and_lists():
    assert strip_reasoning("reasoning") == "reasoning"
    assert strip_reasoning([{"reasoning": 1}, 2]) == [{}, 2]


def test_contains_reasoning_scans_bytes():
    assert contains_reasoning(b'{"reasoning_content":null}') is True
    assert contains_reasoning(b'{"reasoning": "x"}') is True
    assert contains_reasoning(b'{"reasoning_effort":"low"}') is False
    assert contains_reasoning(b'{"content":"hi"}') is False


def test_encode_error_event_is_one_data_event():
    error = {"message": "upstream reset", "type": "upstream_error", "param": None, "code": None}
    raw = encode_error_event(error)
    assert raw == (
        b'data: {"error":{"message":"upstream reset","type":"upstream_error",'
        b'"param":null,"code":null}}\n\n'
    )
    assert json.loads(raw[len(b"data: ") : -2]) == {"error": error}


def test_parse_event_lines_marks_data_position():
    lines, data = parse_event_lines(b"event: x\r\ndata: a\r\ndata:b\r\ndata\r\nid: 1\r\n\r\n")
    assert lines == [b"event: x", None, b"id: 1"]
    assert data == b"a\nb\n"
    assert parse_event_lines(b": comment\n\n") == ([b": comment"], None)
    # "datum:" is another field, not data.
    assert parse_event_lines(b"datum: 1\n\n") == ([b"datum: 1"], None)


def test_event_verdicts_tell_content_from_preamble_and_failure() -> None:
    from geniehive.sse import event_verdict

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return json.dumps({"choices": [{"index": 0, "delta": delta,
                                        "finish_reason": finish}]}).encode()

    assert event_verdict(chunk({"role": "assistant"})) == ""
    assert event_verdict(chunk({"content": ""})) == ""
    assert event_verdict(chunk({"content": "Hi"})) == "content"
    assert event_verdict(chunk({"reasoning_content": "hmm"})) == "content"
    assert event_verdict(chunk({"tool_calls": [{"index": 0, "id": "c"}]})) == "content"
    assert event_verdict(chunk({}, "stop")) == "content"
    assert event_verdict(b'{"choices":[{"index":0,"text":"x","finish_reason":null}]}') == \
        "content"
    assert event_verdict(b'{"choices":[],"usage":{"prompt_tokens":1}}') == ""
    assert event_verdict(b"[DONE]") == "content"
    assert event_verdict(b'{"error":{"message":"boom"}}') == "error"
    assert event_verdict(b"not json") == ""
    # Anthropic Messages and OpenAI Responses events, as native upstreams send them.
    assert event_verdict(b'{"type":"message_start","message":{}}') == ""
    assert event_verdict(b'{"type":"ping"}') == ""
    assert event_verdict(b'{"type":"content_block_start","content_block":{"type":"text"}}') == ""
    assert event_verdict(
        b'{"type":"content_block_start","content_block":{"type":"tool_use"}}') == "content"
    assert event_verdict(b'{"type":"content_block_delta","delta":{}}') == "content"
    assert event_verdict(b'{"type":"response.created","response":{}}') == ""
    assert event_verdict(b'{"type":"response.output_text.delta","delta":"x"}') == "content"
    assert event_verdict(b'{"type":"response.failed","response":{}}') == "error"


def test_the_content_watch_finds_the_first_content_across_split_reads() -> None:
    from geniehive.sse import ContentWatch

    watch = ContentWatch()
    stream = (b': keep-alive\n\ndata: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
              b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n')
    verdicts = [watch.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)]
    assert verdicts[-1] == "content" and set(verdicts[:-1]) == {""}
    last = ContentWatch()
    assert last.feed(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\ndata: [DONE]') == ""
    assert last.end() == "content"
