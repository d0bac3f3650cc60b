"""The benchmark report's files: written and read by bench/report.py, and always in agreement."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.report import (
    JSON_NAME,
    MARKDOWN_NAME,
    ReportError,
    check_targets,
    read_report,
    render,
    write_report,
)


def results() -> dict[str, Any]:
    """A small report as bench/run.py assembles one, with one figure not measured (NaN)."""
    summary = {"rps_median": 812.5, "rps_min": 790.0, "rps_max": 830.25, "p50_ms": 1.2,
               "p99_ms": 3.4, "non_2xx": 0, "socket_errors": 0, "gateway_cpu_pct": 97.0}
    out: dict[str, Any] = {
        "command": "bench/run.py --smoke", "mode": "smoke", "started": "2026-01-02T03:04:05Z",
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "python": "3.11.7",
                    "kernel": "6.1", "wrk": "wrk 4.2", "nginx": "nginx 1.22",
                    "revision": "abc1234"},
        "cpus": {"gateway": 0, "load": 1}, "plan": {"runs": 1, "duration_s": 1},
        "chat": [{"kind": "json", "concurrency": 16, "target": "gateway", "summary": summary}],
        "added_latency": [{"kind": "json", "concurrency": 1, "added_p50_ms": math.nan,
                           "per_run_ms": [0.5]}],
        "routes": [{"services": 10, "snapshot_build_ms": 0.5, "direct10_us": 12.0,
                    "role_gated_us": 14.0, "role_all_us": 20.0}],
        "route_growth": {"role_all_live": 9.5},
    }
    out["targets"] = check_targets(out)
    return out


def test_written_report_reads_back_as_the_same_results_and_markdown(tmp_path: Path) -> None:
    written = write_report(tmp_path, results())
    assert (tmp_path / MARKDOWN_NAME).read_text() == written.markdown + "\n"
    read = read_report(tmp_path)
    assert read.markdown == written.markdown == render(results())
    assert json.dumps(read.results, sort_keys=True) == json.dumps(results(), sort_keys=True)
    assert "| target | JSON chat req/s at concurrency 16 | ≥ 800 req/s | 812.50 | ok |" \
        in read.markdown


def test_an_edited_markdown_no_longer_reads_as_the_report(tmp_path: Path) -> None:
    write_report(tmp_path, results())
    md = tmp_path / MARKDOWN_NAME
    md.write_text(md.read_text().replace("812.50", "1,812.50"))
    with pytest.raises(ReportError, match=r"report\.md is not the rendering of report\.json"):
        read_report(tmp_path)


def test_results_from_another_run_disagree_with_the_markdown(tmp_path: Path) -> None:
    write_report(tmp_path, results())
    other = results()
    other["chat"][0]["summary"]["rps_median"] = 700.0
    (tmp_path / JSON_NAME).write_text(json.dumps(other))
    with pytest.raises(ReportError, match="not the rendering"):
        read_report(tmp_path)


@pytest.mark.parametrize(("name", "content", "message"), [
    (JSON_NAME, None, "cannot read the report"),
    (JSON_NAME, "{not json", "cannot read the report"),
    (JSON_NAME, "[1, 2]", "not a results object"),
    (JSON_NAME, '{"mode": "smoke"}', "not a benchmark report"),
    (MARKDOWN_NAME, None, "cannot read the report"),
])
def test_a_folder_that_is_not_a_report_is_refused_naming_the_file(
    tmp_path: Path, name: str, content: str | None, message: str,
) -> None:
    write_report(tmp_path, results())
    if content is None:
        (tmp_path / name).unlink()
    else:
        (tmp_path / name).write_text(content)
    with pytest.raises(ReportError, match=message) as caught:
        read_report(tmp_path)
    assert str(tmp_path) in str(caught.value)
