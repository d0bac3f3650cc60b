"""The strict JSON parser: what it reads like json.loads, and every text it refuses."""

from __future__ import annotations

import json

import pytest

from geniehive import strictjson
from geniehive.strictjson import MAX_DEPTH, JSONRejected, parse, parse_object


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.parametrize("text", [
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
    '{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}',  # one key per object, at any depth
    '[1, -2, 3.5, 1e308, -1e-400, true, false, null, "NaN", "x\\u00e9\\ud83d\\ude00"]',
    '"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["',
    '{"": 1, " ": 2}',
    "  {}  ",
    nested(MAX_DEPTH),
    nested_objects(MAX_DEPTH),
])
def test_valid_json_reads_as_json_loads_reads_it(text: str) -> None:
    assert parse(text) == json.loads(text)
    assert parse(text.encode()) == json.loads(text)


@pytest.mark.parametrize(("raw", "problem"), [
    (b'{"t": NaN}', "holds NaN, which is not a JSON value"),
    (b'{"t": Infinity}', "holds Infinity, which is not a JSON value"),
    (b'[-Infinity]', "holds -Infinity, which is not a JSON value"),
    (b'{"t": 1e400}', "holds the number 1e400, which is too large for a double"),
    (b'[-2E+999]', "holds the number -2E+999, which is too large for a double"),
    (b'{"a": 1,}', "is not valid JSON: Expecting property name enclosed in double quotes "
                   "(line 1, column 9)"),
    (b"{not json", "is not valid JSON: Expecting property name enclosed in double quotes "
                   "(line 1, column 2)"),
    (b"", "is not valid JSON: Expecting value (line 1, column 1)"),
    (b'{"a": 1} x', "is not valid JSON: Extra data (line 1, column 10)"),
    (b"[" + b"1" * 5000 + b"]", "is not valid JSON: a number has too many digits"),
    (b'{"a": "\xff"}', "is not UTF-8 text"),
    ('{"a": 1}'.encode("utf-16"), "is not UTF-8 text"),
    (b'\xef\xbb\xbf{"a": 1}', "starts with a byte order mark, which JSON text must not have"),
    (nested(MAX_DEPTH + 1).encode(), f"is nested deeper than {MAX_DEPTH} levels"),
    (nested_objects(MAX_DEPTH + 1).encode(), f"is nested deeper than {MAX_DEPTH} levels"),
    (b"[" * 100_000, f"is nested deeper than {MAX_DEPTH} levels"),  # RecursionError inside
    (b"[" * 100_000 + b"]" * 100_000, f"is nested deeper than {MAX_DEPTH} levels"),
])
def test_refused_texts_say_why(raw: bytes, problem: str) -> None:
    with pytest.raises(JSONRejected) as refused:
        parse(raw)
    assert (refused.value.problem, refused.value.param) == (problem, None)


def test_deep_nesting_in_a_long_text_is_found_by_walking() -> None:
    # Longer than the bracket-count shortcut: the parsed value is walked instead.
    # The object is level 1, so the list under "deep" adds its own 64 (or 63) levels.
    text = '{"pad": "' + "x" * strictjson.COUNT_BELOW_CHARS + '", "deep": ' + nested(64) + "}"
    with pytest.raises(JSONRejected, match="nested deeper than 64"):
        parse(text)
    shallow = '{"pad": "' + "[" * strictjson.COUNT_BELOW_CHARS + '", "deep": ' + nested(63) + "}"
    assert parse(shallow)["pad"].startswith("[[[")


def test_the_depth_limit_is_the_callers() -> None:
    assert parse(nested(3), max_depth=3) == [[[]]]
    with pytest.raises(JSONRejected, match="nested deeper than 2 levels"):
        parse(nested(3), max_depth=2)


@pytest.mark.parametrize(("text", "problem", "param"), [
    ('{"model": "forbidden-model", "model": "m"}', "has the key 'model' twice", "model"),
    ('{"model": "m", "messages": [{"role": "user"}, {"role": "user", "role": "system"}]}',
     "has the key 'role' twice in 'messages[1]'", "messages[1].role"),
    ('{"a": {"b": {"c": 1, "d": 2, "c": 3}}}', "has the key 'c' twice in 'a.b'", "a.b.c"),
    ('[[{"x": 1}], [{"y": 1, "y": 1}]]', "has the key 'y' twice in '[1][0]'", "[1][0].y"),
    # The first duplicate in document order is named, even if a deeper object closed first.
    ('{"a": {"b": 1, "b": 2}, "a": 3}', "has the key 'a' twice", "a"),
    # The same key spelt with an escape is the same key.
    ('{"model": "x", "mod\\u0065l": "m"}', "has the key 'model' twice", "model"),
])
def test_a_key_given_twice_is_refused_with_its_path(text: str, problem: str, param: str) -> None:
    with pytest.raises(JSONRejected) as refused:
        parse(text)
    assert (refused.value.problem, refused.value.param) == (problem, param)


def test_a_duplicate_before_invalid_text_is_still_named() -> None:
    # The duplicate is met first; the text after it does not parse at all.
    with pytest.raises(JSONRejected) as refused:
        parse('{"a": {"k": 1, "k": 2}, "b": [}')
    assert (refused.value.problem, refused.value.param) == ("has the key 'k' twice", "k")


@pytest.mark.parametrize(("text", "param"), [
    ('{"a": "\\ud800"}', "a"),
    ('{"a": ["x", "y\\uDC00z"]}', "a[1]"),
    ('{"m": [{"role": "user", "content": "\\udbff"}]}', "m[0].content"),
    ('{"m": {"\\ud800": 1}}', "m"),  # a key is not shown: it cannot be encoded
    ('"\\ud83d"', None),
    ('"\\ude00\\ud83d"', None),  # both halves, in the wrong order
])
def test_a_lone_surrogate_is_refused(text: str, param: str | None) -> None:
    with pytest.raises(JSONRejected) as refused:
        parse(text)
    assert refused.value.problem == "holds a lone UTF-16 surrogate, which is not a character"
    assert refused.value.param == param


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    assert parse('{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}') == {"a": "\U0001f600",
                                                                  "b": "\\ud800"}


@pytest.mark.parametrize("text", ["[1, 2]", '"text"', "3", "null", "true"])
def test_parse_object_refuses_other_top_levels(text: str) -> None:
    with pytest.raises(JSONRejected) as refused:
        parse_object(text)
    assert refused.value.problem == "must be a JSON object"
    assert parse(text) == json.loads(text)


def test_rejections_are_value_errors() -> None:
    # Callers that only know ValueError still refuse the text.
    with pytest.raises(ValueError):
        parse('{"a": NaN}')
