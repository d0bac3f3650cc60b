"""A pure parser of the Prometheus text exposition format, for adapters reading `/metrics`.

Part of the public plugin API: `from geniehive.adapters.prometheus import parse_prometheus`.
vLLM and llama.cpp publish their load (running and waiting requests, KV-cache usage) this way.

Rule: never raise on a foreign or damaged line; a metrics page is advisory, so a line that
does not parse is skipped and the rest of the page still counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

__all__ = ["Samples", "metric_max", "metric_sum", "parse_prometheus"]

# name -> [(labels, value)], in page order.
Samples = dict[str, list[tuple[dict[str, str], float]]]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\})')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_SPECIAL = {"+Inf": math.inf, "-Inf": -math.inf, "Inf": math.inf, "NaN": math.nan}


def parse_prometheus(text: str) -> Samples:
    """Every sample on a metrics page by metric name; comments and broken lines are skipped."""
    samples: Samples = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parsed = _parse_line(line)
        if parsed is not None:
            name, labels, value = parsed
            samples.setdefault(name, []).append((labels, value))
    return samples


def _parse_line(line: str) -> tuple[str, dict[str, str], float] | None:
    match = _NAME.match(line)
    if match is None:
        return None
    name, rest = match.group(), line[match.end() :]
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        parsed = _parse_labels(rest)
        if parsed is None:
            return None
        labels, rest = parsed
    # After the value may come a timestamp, which load readings do not need.
    fields = rest.split()
    if not fields:
        return None
    value = _parse_value(fields[0])
    return None if value is None else (name, labels, value)


def _parse_labels(rest: str) -> tuple[dict[str, str], str] | None:
    """The labels of `{a="1",b="2"} 3` and the text after the closing brace."""
    labels: dict[str, str] = {}
    position = 1
    if rest[1:].lstrip().startswith("}"):
        return labels, rest[rest.index("}") + 1 :]
    while True:
        match = _LABEL.match(rest, position)
        if match is None:
            return None
        labels[match[1]] = re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group()], match[2])
        position = match.end()
        if match[3] == "}":
            return labels, rest[position:]
        if rest[position:].lstrip().startswith("}"):  # a trailing comma is allowed
            return labels, rest[rest.index("}", position) + 1 :]


def _parse_value(text: str) -> float | None:
    if text in _SPECIAL:
        return _SPECIAL[text]
    try:
        return float(text)
    except ValueError:
        return None


def _values(samples: Mapping[str, list[tuple[dict[str, str], float]]],
            names: Iterable[str]) -> list[float] | None:
    """The finite values of the first of `names` present on the page."""
    for name in names:
        if name in samples:
            return [v for _, v in samples[name] if math.isfinite(v)]
    return None


def metric_sum(samples: Samples, *names: str) -> float | None:
    """The sum over label sets of the first of `names` on the page (None when absent)."""
    values = _values(samples, names)
    if values is None:
        return None
    total = float(sum(values))
    return total if math.isfinite(total) else None  # finite values can still sum to inf


def metric_max(samples: Samples, *names: str) -> float | None:
    """The largest value over label sets of the first of `names` on the page."""
    values = _values(samples, names)
    return max(values) if values else None
