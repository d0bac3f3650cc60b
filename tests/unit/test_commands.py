"""The pure parts of the client commands: tables, explanations, workloads and reports."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from geniehive import api_keys, benchreport, commands
from geniehive.commands import (
    BUILTIN_WORKLOADS,
    Case,
    CaseResult,
    build_report,
    parse_sse_lines,
    parse_workloads,
    progress_stream,
    render_explanation,
    render_progress,
    render_status,
    render_table,
)
from geniehive.errors import InvalidRequest

EXPLANATION = {
    "model": "general_assistant", "operation": "chat", "match": "role",
    "role": "general_assistant", "fallback_role": None, "route": "role:general_assistant",
    "strategy": "scored", "error": None, "message": "", "close_matches": [],
    "candidates": [
        {"service_id": "a/chat", "host_id": "local", "upstream_model": "qwen3:8b",
         "score": 0.65, "breakdown": {"loaded": 0.35, "latency": 0.3, "queue": -0.03,
                                      "runtime": 0.62},
         "family_rank": 0, "loaded": True, "pool": True},
        {"service_id": "c/chat", "host_id": "gpu-01", "upstream_model": "llama3",
         "score": 0.3, "breakdown": {"loaded": 0.0, "runtime": 0.3},
         "family_rank": 1, "loaded": False, "pool": False},
    ],
    "excluded": [{"service_id": "b/chat", "gate": "availability", "detail": "draining"}],
    "fallbacks_remaining": [], "fallbacks_without_candidates": [],
}  # fmt: skip


def test_table_pads_columns_and_shows_missing_values_as_dashes() -> None:
    text = render_table(("A", "LONGER"), [("x", None), ("wide cell", [1, 2])])
    assert text.splitlines() == ["A          LONGER", "x          -", "wide cell  1,2"]


def test_cells_round_floats_and_render_booleans() -> None:
    assert [commands.cell(v) for v in (1234.567, 0.12345, True, [], "")] == [
        "1235", "0.123", "yes", "-", "-",
    ]  # fmt: skip


def test_explanation_lists_choice_candidates_with_breakdown_and_gates() -> None:
    lines = render_explanation(EXPLANATION).splitlines()
    assert lines[0] == (
        "general_assistant (chat): match role, role general_assistant, strategy scored"
    )
    assert lines[1] == "chosen: a/chat -> qwen3:8b"
    text = "\n".join(lines)
    assert "loaded=+0.35 latency=+0.30 queue=-0.03 runtime=0.62" in text
    assert "failover" in text.split("c/chat", 1)[1].splitlines()[0]
    excluded = text.split("EXCLUDED", 1)[1]
    assert "b/chat" in excluded and "availability" in excluded and "draining" in excluded


def test_explanation_without_candidates_says_why() -> None:
    expl = {**EXPLANATION, "candidates": [], "error": "no_healthy_upstream",
            "message": "no routable service", "fallback_role": None,
            "fallbacks_without_candidates": [{"role": "red_hat",
                                              "excluded": [["b/chat", "availability"]]}]}
    text = render_explanation(expl)
    assert "no choice: no_healthy_upstream: no routable service" in text
    assert "CANDIDATES" not in text
    assert "fallback red_hat had no candidate: b/chat (availability)" in text


def test_status_has_a_row_per_host_service_and_role() -> None:
    hosts = [{"host_id": "local", "address": "127.0.0.1", "state": "online",
              "last_heartbeat_age_s": None, "service_count": 1, "is_local": True}]
    services = [{"service_id": "a/chat", "host_id": "local", "operation": "chat",
                 "health": "healthy", "availability": "available", "gate": None,
                 "assets": [{"asset_id": "qwen3:8b", "loaded": True},
                            {"asset_id": "cold", "loaded": False}],
                 "slots_total": 2, "in_flight": 2, "queued": 5,
                 "measured": {"in_flight": 2, "p50_latency_ms": 812.5}},
                {"service_id": "b/chat", "host_id": "local", "operation": "chat",
                 "health": "healthy", "availability": "available", "gate": None,
                 "assets": [], "slots_total": None, "in_flight": 7, "queued": 0,
                 "measured": {"in_flight": 7, "p50_latency_ms": None}}]
    roles = [{"role_id": "general_assistant", "operation": "chat",
              "routing": {"strategy": "scored"}, "targets": ["a/chat"], "fallback_used": None}]
    capacity = {"waiting": 5, "waiting_by_priority": {"high": 1, "normal": 4, "low": 0},
                "max_queue": 1000, "queue_timeout_s": 60.0, "refused": {"queue_full": 3},
                "rate_limited": 2}
    text = render_status(hosts, services, roles, capacity)
    lines = text.splitlines()
    service_line = next(line for line in lines if line.startswith("a/chat"))
    assert service_line.split() == [
        "a/chat", "local", "chat", "healthy", "available", "qwen3:8b", "2/2", "5", "812", "-",
    ]  # fmt: skip
    assert next(line for line in lines if line.startswith("b/chat")).split()[6] == "7/-"
    assert "general_assistant  chat  scored" in text
    queue = text.split("QUEUE\n", 1)[1].splitlines()
    assert queue[0] == "waiting 5 of at most 1000 (high 1, normal 4, low 0); longest wait 60.0 s"
    assert queue[1] == "refused: queue_full 3, rate_limited 2"


GIB = 1024**3


def test_status_shows_each_host_s_memory_in_one_cell() -> None:
    gpu = {"host_id": "gpu-01", "address": "10.0.0.5", "state": "online",
           "last_heartbeat_age_s": 1.5, "service_count": 2, "is_local": False,
           "memory": {"gpus": [{"index": 0}], "gpu_total_bytes": 24 * GIB,
                      "gpu_used_bytes": int(3.1 * GIB), "models": [], "loaded_count": 2,
                      "loaded_vram_bytes": int(6.6 * GIB)}}
    cpu = {**gpu, "host_id": "cpu-01", "memory": {"gpus": [], "gpu_total_bytes": None,
                                                   "gpu_used_bytes": None, "models": [],
                                                   "loaded_count": 0,
                                                   "loaded_vram_bytes": None}}
    unread = {**gpu, "host_id": "gpu-02",
              "memory": {**gpu["memory"], "gpu_used_bytes": None, "loaded_vram_bytes": None}}
    lines = render_status([gpu, cpu, unread], [], []).splitlines()
    assert "MEMORY" in lines[1].split()
    assert "GPU 3.1/24.0 GiB, 2 loaded (6.6 GiB)" in next(li for li in lines if "gpu-01" in li)
    assert "  0 loaded  " in next(li for li in lines if "cpu-01" in li)
    assert "GPU ?/24.0 GiB, 2 loaded  " in next(li for li in lines if "gpu-02" in li)


def test_builtin_workloads_have_two_short_cases_each() -> None:
    assert set(BUILTIN_WORKLOADS) == {"chat.short_reasoning", "chat.concise_support"}
    for workload in BUILTIN_WORKLOADS.values():
        assert len(workload.cases) == 2
        for case in workload.cases:
            assert case.max_tokens <= 64 and case.expect
            assert case.messages[-1]["role"] == "user"


def test_a_case_passes_on_any_expected_substring_ignoring_case() -> None:
    case = Case("c", ({"role": "user", "content": "q"},), ("Reset", "restart"))
    assert case.passed("Please RESET your password.")
    assert not case.passed("Call support.")


def test_workloads_parse_from_toml_tables() -> None:
    found = parse_workloads({"workloads": {"chat.x": {"description": "d", "cases": [
        {"id": "one", "prompt": "Say yes", "expect": "yes"},
        {"id": "two", "messages": [{"role": "user", "content": "hi"}], "expect": ["hi", "hello"],
         "max_tokens": 8},
    ]}}})  # fmt: skip
    one, two = found["chat.x"].cases
    assert one.messages[-1] == {"role": "user", "content": "Say yes"}
    assert one.expect == ("yes",)
    assert (two.messages, two.expect, two.max_tokens) == (
        ({"role": "user", "content": "hi"},), ("hi", "hello"), 8,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({}, "workloads"),
        ({"workloads": {"w": {"cases": []}}}, "workloads.w.cases"),
        ({"workloads": {"w": {"cases": [{"id": "a", "prompt": "p"}]}}},
         "workloads.w.cases[0].expect"),
        ({"workloads": {"w": {"cases": [{"id": "a", "expect": "x"}]}}}, "workloads.w.cases[0]"),
        ({"workloads": {"w": {"cases": [{"id": "a", "prompt": "p", "expect": "x", "t": 1}]}}},
         "workloads.w.cases[0].t"),
        ({"workloads": {"w": {"cases": [{"id": "a", "prompt": "p", "expect": "x",
                                         "max_tokens": 0}]}}}, "workloads.w.cases[0].max_tokens"),
    ],
)  # fmt: skip
def test_bad_workloads_name_the_dotted_path(data: dict, path: str) -> None:
    with pytest.raises(ValueError, match=r"^" + path.replace("[", r"\[").replace(".", r"\.")):
        parse_workloads(data)


def test_sse_lines_yield_events_until_done_and_raise_on_error_event() -> None:
    lines = ["data: {\"a\": 1}", "", ": comment", "data:{\"b\": 2}", "data: [DONE]",
             "data: {\"c\": 3}"]  # fmt: skip
    assert list(parse_sse_lines(lines)) == [{"a": 1}, {"b": 2}]
    with pytest.raises(commands.CommandError, match="upstream gone"):
        list(parse_sse_lines(['data: {"error": {"message": "upstream gone"}}']))


def test_progress_bar_fills_in_proportion() -> None:
    assert render_progress(1, 4, "case", width=8) == "\r[##......] 1/4 case"
    assert render_progress(4, 4, "done", width=8) == "\r[########] 4/4 done"


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_progress_bar_is_drawn_only_on_a_terminal() -> None:
    terminal, pipe = Stream(tty=True), Stream(tty=False)
    assert progress_stream(terminal) is terminal
    assert progress_stream(pipe) is None
    pipe.close()
    assert progress_stream(pipe) is None


def test_each_case_keeps_its_answer_cut_to_4_kib_at_a_character_boundary() -> None:
    short = CaseResult("short", True, "x/chat", "m", text="The sky is blue.")
    long = CaseResult("long", False, "x/chat", "m", text="a" + "é" * 3000)  # 6,001 bytes
    report = build_report("w", "m", [short, long], "rid", "2025-01-02T03:04:05Z")
    kept, cut = report["cases"]
    assert (kept["answer"], kept["answer_truncated"]) == ("The sky is blue.", False)
    assert cut["answer_truncated"] is True
    assert cut["answer"] == "a" + "é" * 2047  # 4,095 bytes: the next "é" would pass 4,096
    assert long.text.startswith(cut["answer"])


def test_reports_with_and_without_answers_are_both_ingested() -> None:
    results_ = [CaseResult("a", True, "x/chat", "m", 100.0, text="hello " * 2000)]
    new = build_report("w", "m", results_, "rid", "2025-01-02T03:04:05Z")
    old = {**new, "cases": [{k: v for k, v in c.items() if not k.startswith("answer")}
                            for c in new["cases"]]}
    assert len(json.dumps(new["cases"])) < 4096 + 200
    for report in (new, old):
        [sample] = benchreport.parse_report(report, now=0.0)
        assert sample.service_id == "x/chat"


def results() -> list[CaseResult]:
    return [
        CaseResult("a", True, "x/chat", "m", 100.0, 20.0, 50.0, 10, 5),
        CaseResult("b", False, "x/chat", "m", 300.0, 40.0, 30.0, 12, 7),
        CaseResult("c", True, "y/chat", "m", 200.0, 10.0, 80.0, 9, 4),
        CaseResult("d", error="503: no routable service"),
    ]


def test_report_has_one_sample_per_serving_service_with_spec_results() -> None:
    report = build_report("chat.short_reasoning", "general_assistant", results(),
                          "rid", "2025-01-02T03:04:05Z")  # fmt: skip
    assert [s["service_id"] for s in report["samples"]] == ["x/chat", "y/chat"]
    x = report["samples"][0]
    assert x["benchmark_id"] == "rid-0" and x["asset_id"] == "m"
    assert x["results"] == {
        "case_count": 2, "pass_rate": 0.5, "p50_latency_ms": 200.0, "ttft_ms": 30.0,
        "tokens_per_sec": 40.0, "prompt_tokens": 22, "completion_tokens": 12, "error_count": 0,
    }  # fmt: skip
    assert [c["case_id"] for c in report["cases"]] == ["a", "b", "c", "d"]
    assert report["cases"][3]["error"] == "503: no routable service"
    assert {"report_id", "observed_at", "source", "samples"} <= set(report)


def test_the_gateway_accepts_the_report_the_bench_writes() -> None:
    report = build_report("chat.short_reasoning", "m", results(), "rid", "2025-01-02T03:04:05Z")
    samples = benchreport.parse_report(report, now=0.0)
    assert [(s.benchmark_id, s.service_id, s.workload) for s in samples] == [
        ("rid-0", "x/chat", "chat.short_reasoning"), ("rid-1", "y/chat", "chat.short_reasoning"),
    ]  # fmt: skip
    assert samples[0].results["pass_rate"] == 0.5


def test_a_sample_without_ids_gets_a_stable_id_and_the_report_time() -> None:
    body = {"observed_at": "2025-01-02T03:04:05Z",
            "samples": [{"service_id": "x/chat", "workload": "w", "results": {}}]}
    first = benchreport.parse_report(body, now=1.0)[0]
    again = benchreport.parse_report(body, now=2.0)[0]
    assert first.benchmark_id == again.benchmark_id and first.benchmark_id.startswith("bm_")
    assert first.observed_at == "2025-01-02T03:04:05Z"
    bare = benchreport.parse_report({"samples": body["samples"]}, now=0.0)[0]
    assert bare.observed_at == "1970-01-01T00:00:00Z"


def test_a_report_with_a_negative_rate_is_rejected() -> None:
    body = {"samples": [{"service_id": "x/chat", "workload": "w",
                         "results": {"pass_rate": -1}}]}  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"^samples\[0\]\.results\.pass_rate"):
        benchreport.parse_report(body, now=0.0)


def test_stored_keys_become_authenticator_keys() -> None:
    from geniehive.auth import Authenticator, hash_secret
    from geniehive.registry import StoredKey

    salt = b"\x01" * 16
    stored = StoredKey("abc", "app", salt.hex(), hash_secret(salt, "s3cret").hex(),
                       ("inference",), ("m*",))  # fmt: skip
    authenticator = Authenticator()
    authenticator.set_named([api_keys.named_key(stored)])
    principal = authenticator.identify("gh_abc_s3cret")
    assert principal is not None and principal.name == "app" and principal.models == ("m*",)
    assert authenticator.identify("gh_abc_wrong") is None
    assert "hash" not in api_keys.key_view(stored) and "salt" not in api_keys.key_view(stored)


def test_client_commands_register_with_argparse() -> None:
    parser = argparse.ArgumentParser(prog="geniehive")
    commands.add_client_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", "create", "app", "--scope", "read", "--url", "http://h:1"])
    assert (args.command, args.keys_action, args.name, args.scope, args.url) == (
        "keys", "create", "app", ["read"], "http://h:1",
    )  # fmt: skip
    args = parser.parse_args(["bench", "run", "--model", "m", "--workload", "w", "--ingest"])
    assert (args.bench_action, args.ingest, args.output) == ("run", True, None)
    args = parser.parse_args(["route", "m1", "--kind", "embeddings"])
    assert (args.model, args.kind) == ("m1", "embeddings")
    assert set(commands.COMMANDS) == {"status", "route", "keys", "bench"}
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["keys", "create", "app", "--scope", "root"])
    assert exit_info.value.code == 2


def test_keys_create_takes_the_limits_and_keys_list_shows_them_in_one_cell() -> None:
    parser = argparse.ArgumentParser(prog="geniehive")
    commands.add_client_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", "create", "app", "--max-in-flight", "2",
                              "--requests-per-minute", "60", "--priority", "high",
                              "--weight", "2"])
    assert (args.max_in_flight, args.requests_per_minute, args.priority, args.weight) == (
        2, 60, "high", 2.0)
    plain = parser.parse_args(["keys", "create", "app"])
    assert (plain.max_in_flight, plain.requests_per_minute, plain.priority, plain.weight) == (
        None, None, None, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "create", "app", "--priority", "urgent"])
    key = {"key_id": "abc", "name": "app", "scopes": ["inference"], "models": [],
           "disabled": False, "created_at": 0}
    table = commands.render_keys([
        {**key, "max_in_flight": 2, "requests_per_minute": 60, "priority": "high",
         "weight": 2.0},
        {**key, "key_id": "def", "max_in_flight": None, "requests_per_minute": 30,
         "priority": None, "weight": 1.0},
        {**key, "key_id": "ghi", "max_in_flight": None, "requests_per_minute": None,
         "priority": None, "weight": 1.0},
    ]).splitlines()
    assert table[0].endswith("LIMITS")
    assert table[1].endswith("2 in flight, 60/min, high, weight 2")
    assert table[2].endswith("  30/min")
    assert table[3].endswith("  -")
