"""The benchmark report, written by `geniehive bench run` and parsed by
`POST /v1/cluster/benchmarks`: one module, so both sides agree on its shape.

A report has one sample per (service, asset) that really served, with the cases' outcomes
listed beside (each with its answer, cut to ANSWER_BYTES); parsing checks every field of the
samples and names the first bad one.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from geniehive.errors import InvalidRequest
from geniehive.models import BenchmarkSample, valid_id

SOURCE = "geniehive bench run"
# Numeric result fields a report may carry; other result keys are kept as sent.
RESULT_NUMBERS = (
    "case_count", "pass_rate", "p50_latency_ms", "ttft_ms", "tokens_per_sec",
    "prompt_tokens", "completion_tokens", "quality_score", "completion_rate",
    "tool_success_rate", "error_count",
)  # fmt: skip
# Of each case's answer text kept in the report, in UTF-8 bytes; a longer one is cut (at a
# character boundary) and marked `answer_truncated`.
ANSWER_BYTES = 4096
SAMPLE_KEYS = frozenset(
    {"benchmark_id", "service_id", "asset_id", "workload", "observed_at", "results"}
)


# --- writing ----------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """One case as `bench run` measured it; the answer `text` decides `passed`."""

    case_id: str
    passed: bool = False
    service_id: str | None = None
    asset_id: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_sec: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    text: str = field(default="", repr=False)


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def sample_results(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The `results` of one report sample from the cases one service answered."""
    return {
        "case_count": len(results),
        "pass_rate": round(sum(1 for r in results if r.passed) / len(results), 4),
        "p50_latency_ms": _median(r.latency_ms for r in results),
        "ttft_ms": _median(r.ttft_ms for r in results),
        "tokens_per_sec": _median(r.tokens_per_sec for r in results),
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "error_count": sum(1 for r in results if r.error),
    }


def case_view(result: CaseResult) -> dict[str, Any]:
    """One case's outcome as the report lists it, with its answer (see bounded_answer), so
    that a failed case can be read, not only counted."""
    keys = ("case_id", "passed", "service_id", "latency_ms", "ttft_ms", "error")
    view = {key: getattr(result, key) for key in keys}
    view["answer"], view["answer_truncated"] = bounded_answer(result.text)
    return view


def bounded_answer(text: str, limit: int = ANSWER_BYTES) -> tuple[str, bool]:
    """`text` cut to at most `limit` UTF-8 bytes at a character boundary, and whether it was."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text, False
    return encoded[:limit].decode("utf-8", "ignore"), True


def build_report(
    workload: str, model: str, results: Sequence[CaseResult], report_id: str, observed_at: str
) -> dict[str, Any]:
    """The benchmark report: one sample per (service, asset) that really served.

    Cases that reached no service (no `X-GenieHive-Service`) are listed but feed no sample.
    """
    groups: dict[tuple[str, str | None], list[CaseResult]] = {}
    for result in results:
        if result.service_id:
            groups.setdefault((result.service_id, result.asset_id), []).append(result)
    samples = [
        {
            "benchmark_id": f"{report_id}-{index}",
            "service_id": service_id,
            "asset_id": asset_id,
            "workload": workload,
            "observed_at": observed_at,
            "results": sample_results(group),
        }
        for index, ((service_id, asset_id), group) in enumerate(
            sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or ""))
        )
    ]
    cases = [case_view(r) for r in results]
    return {
        "report_id": report_id,
        "observed_at": observed_at,
        "source": SOURCE,
        "model": model,
        "workload": workload,
        "samples": samples,
        "cases": cases,
    }


# --- parsing ----------------------------------------------------------------------------------


def default_benchmark_id(
    service_id: str, asset_id: str | None, workload: str, observed_at: str
) -> str:
    """A stable id, so ingesting the same report twice replaces rather than duplicates."""
    text = "\x1f".join((service_id, asset_id or "", workload, observed_at))
    return "bm_" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _text(data: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"{path}{key}: required", param=f"{path}{key}")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise InvalidRequest(f"{path}{key}: expected a non-empty string", param=f"{path}{key}")
    return value


def _timestamp(data: Mapping[str, Any], key: str, path: str) -> str | None:
    value = _text(data, key, path)
    if value is not None:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(
                f"{path}{key}: expected an ISO 8601 time", param=f"{path}{key}"
            ) from None
    return value


def _results(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{path}: expected an object", param=path)
    for key in RESULT_NUMBERS:
        number = value.get(key)
        if number is None:
            continue
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or not math.isfinite(number)
            or number < 0
        ):
            raise InvalidRequest(
                f"{path}.{key}: expected a non-negative number", param=f"{path}.{key}"
            )
    return value


def parse_sample(data: Any, index: int, default_observed_at: str) -> BenchmarkSample:
    """One report sample. Raises InvalidRequest naming the field."""
    path = f"samples[{index}]."
    if not isinstance(data, dict):
        raise InvalidRequest(f"samples[{index}]: expected an object", param=f"samples[{index}]")
    unknown = sorted(set(data) - SAMPLE_KEYS)
    if unknown:
        raise InvalidRequest(f"{path}{unknown[0]}: unknown field", param=f"{path}{unknown[0]}")
    service_id = _text(data, "service_id", path, required=True)
    if not valid_id(service_id):
        raise InvalidRequest(
            f"{path}service_id: expected 1-128 letters, digits and . _ : / -",
            param=f"{path}service_id",
        )
    workload = _text(data, "workload", path, required=True)
    asset_id = _text(data, "asset_id", path)
    observed_at = _timestamp(data, "observed_at", path) or default_observed_at
    results = _results(data.get("results"), f"{path}results")
    benchmark_id = _text(data, "benchmark_id", path) or default_benchmark_id(
        str(service_id), asset_id, str(workload), observed_at
    )
    return BenchmarkSample(
        benchmark_id, str(service_id), asset_id, str(workload), observed_at, results
    )


def parse_report(body: Any, now: float) -> list[BenchmarkSample]:
    """The samples of a benchmark report. Raises InvalidRequest naming the field.

    Other top-level keys (report metadata such as the per-case details) are accepted and
    not stored; a sample without `observed_at` takes the report's, else `now`.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object")
    _text(body, "report_id", "")
    _text(body, "source", "")
    observed_at = _timestamp(body, "observed_at", "") or iso_time(now)
    samples = body.get("samples")
    if not isinstance(samples, list):
        raise InvalidRequest("samples: expected a list", param="samples")
    return [parse_sample(data, index, observed_at) for index, data in enumerate(samples)]


def iso_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
