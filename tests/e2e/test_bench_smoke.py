"""The performance harness runs end to end in its seconds-long smoke mode.

It needs wrk and nginx (the fake upstream) from Debian; when they are missing the test fails
with the exact install command, because CI installs them.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import procs
from bench.report import read_report

pytestmark = pytest.mark.e2e


def test_bench_smoke_writes_reports_with_numbers(tmp_path: Path) -> None:
    missing = procs.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; install with: {procs.install_hint(missing)}")
    done = subprocess.run(
        [sys.executable, str(procs.BENCH / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=str(procs.REPO), check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = read_report(tmp_path)  # also checks that report.md renders report.json
    report, markdown = written.results, written.markdown
    assert markdown.startswith("# GenieHive performance report")
    assert markdown in done.stdout

    cells = {(c["kind"], c["target"]): c["summary"] for c in report["chat"]}
    assert set(cells) == {(k, t) for k in ("json", "sse") for t in ("direct", "gateway")}
    for summary in cells.values():
        assert summary["rps_median"] > 0
        assert summary["non_2xx"] == 0 and summary["socket_errors"] == 0
    assert report["added_latency"]
    assert all(math.isfinite(a["added_p50_ms"]) for a in report["added_latency"])

    assert report["first_byte"]["gateway"]["samples"] > 0
    assert report["sse_events"]["gateway"]["events_per_s"] > 0
    assert report["sse_events"]["gateway"]["errors"] == 0
    held = report["held_streams"]
    assert held["held"] == held["streams"] and held["errors"] == 0
    assert held["rss_mib"] > 0 and held["after_release"] == "ok"
    assert [row["services"] for row in report["routes"]] == [10, 100]
    assert all(row["direct10_us"] > 0 for row in report["routes"])
    for row in report["routes"]:  # the churn case decides over every service, under traffic
        assert row["role_all_live_churn_candidates"] == row["services"]
        assert row["role_all_live_churn_us"] > 0
    assert set(report["route_growth"]) >= {"role_all_live", "role_all_live_churn"}
    capacity = report["capacity"]
    for count in (1, 3, 50):
        assert capacity[f"idle_{count}_us"] > 0 and capacity[f"idle_{count}_rpm_us"] > 0
    # Every timed release admitted one waiting request, with 1,000 waiting each time.
    assert capacity["admitted"] == capacity["releases"] > 0
    assert 0 < capacity["admit_median_us"] <= capacity["admit_p99_us"]
    bursts = {row["queue"]: row for row in report["capacity_burst"]}
    assert set(bursts) == {"roomy queue", "short queue"}
    for row in bursts.values():
        assert row["problems"] == [], row
        assert row["answered"] == row["sent"]
        assert max(row["max_active"]) <= row["slots_per_upstream"]
    assert bursts["roomy queue"]["ok"] == bursts["roomy queue"]["sent"]
    short = bursts["short queue"]
    assert short["refused_429"] > 0 and short["refused_with_retry_after"] == short["refused_429"]
    assert "## The admission queue" in markdown
    placed = report["placement"]  # tiny: 4 hosts, one of each kind
    assert placed["services"] == 40 and all(placed["mixed_classes"].values())
    assert placed["mixed_us"] > 0 and placed["warm_us"] > 0 and placed["place_ns"]["all"] > 0
    assert "## Placement in route decisions" in markdown
    sticky = report["affinity"]
    assert sticky["remembered"] == sticky["sessions"] == 100_000
    assert sticky["hit_us"] > 0 and sticky["miss_us"] > 0
    assert "## Session affinity" in markdown
    # The smoke run starts no real model server, and says so.
    assert set(report["coldstart"]["not_measured"]) == {"by_hand", "gateway"}
    assert "gateway: not measured: not run in this mode" in markdown
    # The failover scorecard on its smoke scenarios, each against a fresh gateway: the
    # faulty upstream was tried first and the client got the healthy answer.
    card = report["failover"]
    assert {row["scenario"] for row in card["rows"]} == {"refuse", "reset before content", "5xx"}
    for row in card["rows"]:
        assert row["exercised"] in ("yes", "n/a"), row
        assert row["outcome"] == row["expect"] == "rescued", row
        assert row["attempts"] == "2" and row["ms"] < 5000, row
    assert card["unexpected"] == 0 and "## Failover scorecard" in markdown
    first = report["ttfb"]["preamble"]  # content after a preamble, direct and through it
    for target in ("direct", "gateway"):
        assert first[target]["samples"] == 3 and first[target]["errors"] == 0
        assert first[target]["first_content_ms"] >= report["ttfb"]["delay_s"] * 1000
    assert "## Time to first content" in markdown
    by_workers = {row["target"]: row["summary"] for row in report["workers"]["rows"]}
    assert set(by_workers) == {"direct", "workers=1", "workers=2"}
    assert all(row["rps_median"] > 0 and row["non_2xx"] == row["socket_errors"] == 0
               for row in by_workers.values())
    assert "## Workers" in markdown
    # 20 simulated nodes registered on the node port, then heartbeated for 3 s: every beat
    # sent was answered, and each window has the gateway's CPU and the latencies.
    beats = report["heartbeats"]
    assert beats["register"]["nodes"] == 20 and beats["backend"] == "sqlite"
    assert len(beats["windows"]) == 2
    for window in beats["windows"]:
        assert window["beats"] > 0 and window["errors"] == window["skipped"] == 0, window
        assert window["gateway_cpu_pct"] > 0 and 0 < window["p50_ms"] <= window["p99_ms"]
    assert beats["summary"]["errors"] == 0 and beats["summary"]["p99_ratio"] is not None
    assert "## Heartbeats of 20 nodes" in markdown
    # Tracing off and on, alternated: every case answered by both, and the spans of every
    # request the traced gateway answered reached the sink (three each).
    traced = report["tracing"]
    assert [(c["kind"], c["concurrency"]) for c in traced["cases"]] == [
        ("json", 1), ("json", 16), ("sse", 16)]
    for case in traced["cases"]:
        for mode in ("off", "on"):
            summary = case[mode]["summary"]
            assert summary["rps_median"] > 0, case
            assert summary["non_2xx"] == summary["socket_errors"] == 0, case
            assert case[mode]["cpu_us_per_req"] > 0, case
        assert math.isfinite(case["added_p50_ms"])
    assert traced["on_requests"] > 0
    assert traced["sink"]["spans"] >= 3 * traced["on_requests"]
    assert "## Tracing: what it costs" in markdown
    assert report["targets"] and "## Targets" in markdown
