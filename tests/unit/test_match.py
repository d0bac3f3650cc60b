"""POST /v1/cluster/routes/match scoring: text, family, runtime and benchmark signals."""

from __future__ import annotations

import pytest

from geniehive.matching import MatchQuery, match, parse_match_query, text_overlap, tokens
from geniehive.models import (
    Asset,
    BenchmarkSample,
    Host,
    Observed,
    Policy,
    Role,
    RoutingPolicy,
    Service,
    Snapshot,
)
from geniehive.routing import RoutingContext, ServiceRuntime

NOW = 1000.0
CTX = RoutingContext(now=NOW, stale_after_s=15.0)


def worked_example() -> Snapshot:
    """The worked example of a match: one role, one service, one stored sample.

    Service text tokens: gpu, 01, chat, llamacpp, fast (from the label "fast-gpu"), qwen3, 5, 9b;
    only "fast" of the query's three tokens is among them, so its text overlap is 1/3.
    """
    host = Host("gpu-01", "10.0.0.5", labels={"device_class": "fast-gpu"}, last_heartbeat=NOW)
    service = Service(
        "gpu-01/chat",
        "gpu-01",
        "chat",
        "llamacpp",
        "http://10.0.0.5:8080",
        assets=(Asset("qwen3.5-9b", loaded=True),),
        observed=Observed(queue_depth=2, p50_latency_ms=1500, tokens_per_sec=22),
    )
    role = Role(
        "general_assistant",
        "chat",
        display_name="General Assistant",
        description="Fast answers to technical questions with careful reasoning",
        routing=RoutingPolicy(preferred_families=("qwen3.5",)),
    )
    sample = BenchmarkSample(
        "bench-1",
        "gpu-01/chat",
        "qwen3.5-9b",
        "chat.short_reasoning",
        "2026-04-27T00:00:00Z",
        {"tokens_per_sec": 30, "ttft_ms": 900, "quality_score": 0.9},
    )
    return Snapshot(
        1, {"gpu-01": host}, {"gpu-01/chat": service}, {"general_assistant": role}, (sample,)
    )


def test_worked_example_scores_role_and_service() -> None:
    answer = match(
        worked_example(),
        {"task": "fast technical reasoning", "workloads": ["chat.short_reasoning"]},
        CTX,
    )
    # runtime = 0.35 loaded + 0.30 (p50 1500 ms) + 0.20 (22 tok/s) - 0.06 (queue 2) = 0.79
    # quality = 0.9 * (0.65 + 0.35 * (30/80 + 0.4)) = 0.829125; benchmark = 0.55 + 0.45 * q
    # role    = 0.25 * 1 + 0.12 * 1 + 0.13 * 0 + 0.25 * 0.79 + 0.25 * 0.92310625 = 0.79828
    # service = 0.20 * 1/3 + 0.45 * 0.79 + 0.35 * 0.92310625 = 0.74525
    assert answer == {
        "tasks": ["fast technical reasoning"],
        "workloads": ["chat.short_reasoning"],
        "kind": None,
        "candidates": [
            {
                "candidate_type": "role",
                "candidate_id": "general_assistant",
                "operation": "chat",
                "score": 0.7983,
                "reasons": [
                    "matches task terms: fast, reasoning, technical",
                    "resolves to gpu-01/chat",
                    "serves a preferred family",
                    "benchmark chat.short_reasoning quality 0.8291",
                ],
                "signals": {
                    "text": 1.0,
                    "family": 1.0,
                    "guardrail": 0.0,
                    "runtime": 0.79,
                    "benchmark": 0.9231,
                },
            },
            {
                "candidate_type": "service",
                "candidate_id": "gpu-01/chat",
                "operation": "chat",
                "score": 0.7453,
                "reasons": [
                    "matches task terms: fast",
                    "loaded: qwen3.5-9b",
                    "benchmark chat.short_reasoning quality 0.8291",
                ],
                "signals": {"text": 0.3333, "runtime": 0.79, "benchmark": 0.9231},
            },
        ],
    }


def test_a_sample_with_a_0_pct_pass_rate_never_raises_a_match_score() -> None:
    query = {"task": "fast technical reasoning", "workloads": ["chat.short_reasoning"]}
    bare = worked_example()
    bare = Snapshot(1, bare.hosts, bare.services, bare.roles, ())
    wrong = BenchmarkSample("bench-0", "gpu-01/chat", "qwen3.5-9b", "chat.short_reasoning",
                            "2026-04-27T00:00:00Z",
                            {"pass_rate": 0.0, "tokens_per_sec": 200, "ttft_ms": 100})
    failed = Snapshot(1, bare.hosts, bare.services, bare.roles, (wrong,))

    def scores(snapshot: Snapshot) -> dict[str, float]:
        return {c["candidate_id"]: c["score"] for c in match(snapshot, query, CTX)["candidates"]}

    before, after = scores(bare), scores(failed)
    assert before["general_assistant"] == 0.5675  # 0.25 + 0.12 + 0.25 * 0.79: about 0.60
    assert after == before


def test_tokens_and_text_overlap() -> None:
    assert tokens("Qwen3.5-9B fast_gpu") == frozenset({"qwen3", "5", "9b", "fast", "gpu"})
    assert text_overlap(tokens("fast cheap"), tokens("fast-gpu")) == 0.5
    assert text_overlap(frozenset(), tokens("x")) == 0.0
    assert text_overlap(tokens("x"), frozenset()) == 0.0


def test_workload_overlap_by_text_when_not_named_exactly() -> None:
    # query tokens: short, reasoning (tasks + workloads); sample workload chat.short_reasoning
    # holds both: overlap 1, benchmark = 0.55 + 0.45 * 0.829125
    answer = match(worked_example(), {"task": "short reasoning", "kind": "chat"}, CTX)
    assert [c["candidate_id"] for c in answer["candidates"]] == ["gpu-01/chat", "general_assistant"]
    service = answer["candidates"][0]
    assert service["signals"] == {"text": 0.0, "runtime": 0.79, "benchmark": 0.9231}
    assert service["score"] == 0.6786  # 0.45 * 0.79 + 0.35 * 0.92310625
    unrelated = match(worked_example(), {"task": "translate poems", "kind": "chat"}, CTX)
    assert [c["signals"]["benchmark"] for c in unrelated["candidates"]] == [0.0, 0.0]


def test_empty_query_takes_the_best_quality_of_all_samples() -> None:
    answer = match(worked_example(), {}, CTX)
    service = next(c for c in answer["candidates"] if c["candidate_type"] == "service")
    assert service["signals"] == {"text": 0.0, "runtime": 0.79, "benchmark": 0.3731}
    assert service["score"] == 0.4861  # 0.45 * 0.79 + 0.35 * 0.45 * 0.829125


def test_a_role_without_a_route_scores_on_text_only() -> None:
    snap = Snapshot(
        1,
        {},
        {},
        {
            "scribe": Role(
                "scribe",
                "chat",
                description="writes notes",
                policy=Policy(system_prompt="Take notes"),
            )
        },
    )
    answer = match(snap, {"task": "take notes"}, CTX)
    assert answer["candidates"] == [
        {
            "candidate_type": "role",
            "candidate_id": "scribe",
            "operation": "chat",
            "score": 0.25,
            "reasons": ["matches task terms: notes, take", "no routable service now"],
            "signals": {
                "text": 1.0,
                "family": 0.0,
                "guardrail": 0.0,
                "runtime": 0.0,
                "benchmark": 0.0,
            },
        }
    ]


def ties_snapshot() -> Snapshot:
    host = Host("h", "10.0.0.1", last_heartbeat=NOW)
    services = {
        sid: Service(sid, "h", op, "openai", "http://10.0.0.1:1", assets=(Asset("m"),))
        for sid, op in (("b-svc", "chat"), ("a-svc", "chat"), ("e-svc", "embeddings"))
    }
    roles = {rid: Role(rid, "chat") for rid in ("zeta", "alpha")}
    return Snapshot(1, {"h": host}, services, roles)


def test_ties_put_roles_before_services_then_ids() -> None:
    # Every candidate scores 0: no text, no runtime points (nothing loaded), no samples.
    answer = match(ties_snapshot(), {"task": "x"}, CTX)
    found = [(c["candidate_type"], c["candidate_id"], c["score"]) for c in answer["candidates"]]
    assert found == [
        ("role", "alpha", 0.0),
        ("role", "zeta", 0.0),
        ("service", "a-svc", 0.0),
        ("service", "b-svc", 0.0),
        ("service", "e-svc", 0.0),
    ]


def test_kind_modality_limit_and_direct_services_filter_candidates() -> None:
    snap = ties_snapshot()
    ids = lambda body: [c["candidate_id"] for c in match(snap, body, CTX)["candidates"]]  # noqa: E731
    assert ids({"kind": "embeddings"}) == ["e-svc"]
    assert ids({"modality": "embedding"}) == ["e-svc"]
    assert ids({"kind": "chat", "include_direct_services": False}) == ["alpha", "zeta"]
    assert ids({"limit": 2}) == ["alpha", "zeta"]
    assert match(snap, {"kind": "chat"}, CTX)["kind"] == "chat"


def test_services_failing_health_gates_are_not_suggested() -> None:
    answer = match(
        ties_snapshot(),
        {"kind": "chat", "include_direct_services": True},
        RoutingContext(now=NOW, runtime={"a-svc": ServiceRuntime(probe="down")}),
    )
    assert [c["candidate_id"] for c in answer["candidates"]] == ["alpha", "zeta", "b-svc"]


def test_parse_match_query_merges_singular_and_plural_fields() -> None:
    query = parse_match_query({"task": "a", "tasks": ["b", "a"], "workload": "w", "limit": 3})
    assert query == MatchQuery(tasks=("a", "b"), workloads=("w",), limit=3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": 3}, "task: expected a string"),
        ({"tasks": "a"}, "tasks: expected a list of strings"),
        ({"workloads": [1]}, "workloads: expected a list of strings"),
        (
            {"kind": "chats"},
            "kind: expected one of chat, completion, embeddings, transcription, speech, image",
        ),
        (
            {"modality": "smell"},
            "modality: expected one of text, embedding, embeddings, audio, image",
        ),
        ({"include_direct_services": "yes"}, "include_direct_services: expected a boolean"),
        ({"limit": -1}, "limit: expected a non-negative integer"),
        ({"limit": True}, "limit: expected a non-negative integer"),
        ({"taks": "x"}, "taks: unknown field"),
    ],
)
def test_malformed_queries_name_the_field(body: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(") + "$"):
        parse_match_query(body)
