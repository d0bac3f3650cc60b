"""The one JSON parser for everything a client or a node sends.

Rule: a body is parsed exactly one way, and that way leaves nothing for another parser to
read differently. Python's `json.loads` is lenient where the JSON text format (RFC 8259) is
not, and the gateway forwards the client's bytes as they are, so every leniency is a place
where the gateway and the upstream could see two different requests. Refused here:

- text that is not UTF-8 (a byte order mark included: RFC 8259 §8.1);
- the bare literals `NaN`, `Infinity` and `-Infinity`, and numbers too large for a double
  (`1e400`), which Python would read as infinity;
- an object with the same key twice, at any depth: parsers disagree on which one wins (the
  gateway would check one `model`, the upstream could serve the other);
- a string escaping half of a UTF-16 surrogate pair (`"\\ud800"`): it is no character, and
  the body could not be encoded as UTF-8 again (I-JSON, RFC 7493 §2.1);
- nesting deeper than `MAX_DEPTH` containers, or too deep for the interpreter's recursion.

Everything is reported as `JSONRejected`, whose `problem` completes a sentence about the text
("the request body " + problem) and whose `param` is the path of the offending key (e.g.
`messages[2].role`) when there is one. Pure: imports no I/O.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64
COUNT_BELOW_CHARS = 8192  # see _may_be_too_deep
# Faster here than `in` with a three-character needle (0.4 against 1.3 ns a character).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONRejected(ValueError):
    """Text the strict parser refuses; `problem` says why, `param` is the key's path, if any."""

    def __init__(self, problem: str, param: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.param = param


class _DuplicateKey(Exception):
    """Raised from inside the scanner; turned into JSONRejected with the key's path."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]], dict: type = dict, len: Any = len) -> dict:
    # The scanner hands every object over as its list of pairs; a dict with fewer entries
    # than pairs had a key twice. Locals bound as defaults: this runs once per object.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise JSONRejected(f"holds {name}, which is not a JSON value")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONRejected(f"holds the number {text[:40]}, which is too large for a double")
    return value


# Built once: json.loads with keyword arguments builds a new decoder on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_constant, parse_float=_float
)


class _Pairs(list):
    """An object kept as its pairs, for finding where a duplicate key is (error path only)."""

    __slots__ = ()


_PAIRS_DECODER = json.JSONDecoder(object_pairs_hook=_Pairs)


def parse(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of a JSON text. Raises JSONRejected saying what is wrong."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONRejected("is not UTF-8 text") from None
    if text.startswith("\ufeff"):
        raise JSONRejected("starts with a byte order mark, which JSON text must not have")
    try:
        value = _DECODER.decode(text)
    except _DuplicateKey as exc:
        raise _duplicate(text, exc.key) from None
    except JSONRejected:
        raise
    except RecursionError:
        raise JSONRejected(f"is nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, or an integer over Python's digit limit
        raise JSONRejected(f"is not valid JSON: {_reason(exc)}") from None
    if _may_be_too_deep(text, max_depth) and _too_deep(value, max_depth):
        raise JSONRejected(f"is nested deeper than {max_depth} levels")
    # A surrogate can only come from a \uD800-\uDFFF escape; paired ones were joined into
    # one character by the scanner, so what is left is lone and cannot be encoded again.
    # Looking for a backslash is memchr-fast; the pattern runs only when there is one.
    if "\\" in text and _SURROGATE_ESCAPE.search(text) and (
        where := _lone_surrogate(value)
    ) is not None:
        raise JSONRejected("holds a lone UTF-16 surrogate, which is not a character",
                           param=where or None)
    return value


def _may_be_too_deep(text: str, max_depth: int) -> bool:
    """A cheap bound: whether `text` has room for more than `max_depth` nested containers.

    Counting brackets scans every character (about 2 GB/s here) and walking the parsed value
    visits every container; the count wins on short texts, the walk on long ones, where most
    bytes are string contents (a 200 kB chat body: count 115 us, walk 30 us).
    """
    if len(text) <= 2 * max_depth:
        return False
    if len(text) > COUNT_BELOW_CHARS:
        return True
    return text.count("{") + text.count("[") > max_depth


def parse_object(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object a text holds. Raises JSONRejected (also when it is not an object)."""
    value = parse(raw, max_depth=max_depth)
    if not isinstance(value, dict):
        raise JSONRejected("must be a JSON object")
    return value


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    # The only other ValueError the scanner raises: int()'s limit on digits (CVE-2020-10735).
    return "a number has too many digits"


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether `value` nests more than `max_depth` containers. Iterative: no recursion limit."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        container, level = pop()
        if level > max_depth:
            return True
        for child in container.values() if type(container) is dict else container:
            if type(child) is dict or type(child) is list:
                push((child, level + 1))
    return False


def _lone_surrogate(value: Any) -> str | None:
    """The path of the first string (or key) holding a lone surrogate; None when none does."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if type(item) is str:
            if not _encodable(item):
                return where
        elif type(item) is dict:
            for key, child in item.items():
                if not _encodable(key):
                    return where  # the object holding the key: the key cannot be shown
                stack.append((child, f"{where}.{key}" if where else key))
        elif type(item) is list:
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _duplicate(text: str, key: str) -> JSONRejected:
    """The error for a key given twice, naming the first such key in document order."""
    try:
        tree = _PAIRS_DECODER.decode(text)
    except (ValueError, RecursionError):
        return JSONRejected(f"has the key '{key}' twice", param=key)
    stack: list[tuple[Any, str]] = [(tree, "")]
    while stack:
        value, where = stack.pop()
        if type(value) is _Pairs:
            seen: set[str] = set()
            for name, _ in value:
                if name in seen:
                    path = f"{where}.{name}" if where else name
                    inside = f" in '{where}'" if where else ""
                    return JSONRejected(f"has the key '{name}' twice{inside}", param=path)
                seen.add(name)
            children = [(v, f"{where}.{k}" if where else k) for k, v in value]
        elif type(value) is list:
            children = [(v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))
    return JSONRejected(f"has the key '{key}' twice", param=key)
