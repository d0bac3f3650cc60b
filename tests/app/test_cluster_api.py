"""The operator API against an in-process gateway: listings, drain, explanations, benchmarks,
named keys, and the client commands that read them."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.commands import cmd_bench_run, cmd_keys, cmd_route, cmd_status
from geniehive.models import Asset, Host, Service
from tests.fakes.upstream import FakeUpstream
from tests.harness import Wire, gateway_in_process, upstream_toml, write_config
from tests.hive import CHAT, Hive, assert_openai_error

ADMIN_KEY = "ops-secret-key-123"
ADMIN_TOML = """
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["inference", "read", "operate", "admin"]
"""
ROUND_ROBIN = '\n[routing]\nstrategy = "round_robin"\n'


async def start_many(
    nursery: trio.Nursery, tmp_path: Path, names: list[str], model: str, extra: str = "",
    environ: dict[str, str] | None = None,
) -> Hive:
    """A gateway over one fake upstream per name, each serving `model` for chat."""
    fakes, body = [], extra
    for name in names:
        fake = FakeUpstream([model], name=name)
        port = await nursery.start(fake.serve)
        fakes.append(fake)
        body += upstream_toml(name, port, ["chat"])
    running = await gateway_in_process(nursery, write_config(tmp_path, body), environ)
    client = httpx.AsyncClient(base_url=running.url, timeout=10)
    return Hive(running.url, fakes[0], fakes[0].port or 0, running.gateway, client, running)


async def stop(h: Hive) -> None:
    await h.client.aclose()
    await h.running.stop()


def by_id(items: list[dict], key: str) -> dict[str, dict]:
    return {item[key]: item for item in items}


async def add_node(h: Hive, host_id: str, heard_ago_s: float) -> None:
    now = time.time()
    # The prober will probe it: loopback, where nothing listens on port 9 (discard).
    host = Host(host_id, "127.0.0.1", labels={"trust_tier": "trusted"},
                last_heartbeat=now - heard_ago_s, registered_at=now - heard_ago_s)
    service = Service(f"{host_id}/chat", host_id, "chat", "openai", "http://127.0.0.1:9")
    await h.gateway.registry.register_host(host, [service])


# --- listings -------------------------------------------------------------------------------


async def test_hosts_list_local_online_and_silent_node_stale(hive: Hive) -> None:
    with trio.fail_after(10):
        await add_node(hive, "gpu-01", heard_ago_s=100)
        hosts = by_id((await hive.client.get("/v1/cluster/hosts")).json()["data"], "host_id")
    assert hosts["local"]["state"] == "online" and hosts["local"]["is_local"] is True
    assert hosts["local"]["service_count"] == 4
    assert hosts["gpu-01"]["state"] == "stale"
    assert hosts["gpu-01"]["last_heartbeat_age_s"] >= 100
    assert hosts["gpu-01"]["labels"] == {"trust_tier": "trusted"}


GIB = 1024**3


async def add_ollama_node(h: Hive) -> None:
    """A node with one GPU (as nvidia-smi read it) and an Ollama serving chat and embeddings,
    one model loaded and one only installed."""
    now = time.time()
    gpus = [{"index": 0, "name": "RTX 4090", "memory_total_bytes": 24 * GIB,
             "memory_used_bytes": 7 * GIB, "utilization_pct": 5.0}]
    host = Host("gpu-01", "127.0.0.1", resources={"gpu_count": 1}, last_heartbeat=now,
                registered_at=now, metrics={"gpu_count": 1, "gpus": gpus})
    assets = (Asset("qwen3:8b", loaded=True, size_bytes=5 * GIB, vram_bytes=6 * GIB,
                    expires_at="2025-01-01T00:30:00Z"),
              Asset("llama3.2:3b", loaded=False, size_bytes=2 * GIB))
    services = [Service(f"ol/{op}", "gpu-01", op, "ollama", "http://127.0.0.1:9", assets=assets)
                for op in ("chat", "embeddings")]
    await h.gateway.registry.register_host(host, services)


async def test_hosts_show_their_gpus_and_the_memory_of_their_models(hive: Hive) -> None:
    with trio.fail_after(10):
        await add_ollama_node(hive)
        hosts = by_id((await hive.client.get("/v1/cluster/hosts")).json()["data"], "host_id")
    memory = hosts["gpu-01"]["memory"]
    assert memory["gpus"] == [{"index": 0, "name": "RTX 4090", "total_bytes": 24 * GIB,
                               "used_bytes": 7 * GIB}]
    assert (memory["gpu_total_bytes"], memory["gpu_used_bytes"]) == (24 * GIB, 7 * GIB)
    assert memory["models"] == [
        {"model": "qwen3:8b", "services": ["ol/chat", "ol/embeddings"], "loaded": True,
         "size_bytes": 5 * GIB, "vram_bytes": 6 * GIB, "expires_at": "2025-01-01T00:30:00Z"},
        {"model": "llama3.2:3b", "services": ["ol/chat", "ol/embeddings"], "loaded": False,
         "size_bytes": 2 * GIB, "vram_bytes": None, "expires_at": None},
    ]
    assert (memory["loaded_count"], memory["loaded_vram_bytes"]) == (1, 6 * GIB)
    assert hosts["local"]["memory"]["gpus"] == []


async def test_services_show_health_breaker_and_measured_load(hive: Hive) -> None:
    with trio.fail_after(10):
        await add_node(hive, "gpu-01", heard_ago_s=100)
        assert (await hive.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        services = by_id(
            (await hive.client.get("/v1/cluster/services")).json()["data"], "service_id"
        )
    chat = services["fake/chat"]
    assert chat["health"] == "healthy" and chat["probe"] == "healthy"
    assert chat["routable"] is True and chat["gate"] is None
    assert chat["breaker"] == "closed" and chat["availability"] == "available"
    assert chat["health_since"] is not None
    assert {a["asset_id"] for a in chat["assets"]} == {"m1", "qwen3-8b"}
    assert chat["measured"]["requests"] == 1 and chat["measured"]["in_flight"] == 0
    assert chat["measured"]["p50_latency_ms"] > 0
    node = services["gpu-01/chat"]
    assert (node["health"], node["gate"], node["routable"]) == ("stale", "host_stale", False)
    assert "api_key" not in chat


async def test_roles_and_health_counts(hive: Hive) -> None:
    with trio.fail_after(10):
        await add_node(hive, "gpu-01", heard_ago_s=100)
        roles = by_id((await hive.client.get("/v1/cluster/roles")).json()["data"], "role_id")
        counts = (await hive.client.get("/v1/cluster/health")).json()
    general = roles["general_assistant"]
    assert general["targets"] == ["fake/chat"] and general["chosen"] == "fake/chat"
    assert general["policy"]["system_prompt"] == "You are a helpful, concise assistant."
    assert general["routing"]["preferred_families"][0] == "qwen3"
    assert roles["embedder"]["targets"] == ["fake/embeddings"]
    assert counts["hosts"] == {"total": 2, "online": 1, "stale": 1}
    assert counts["services"]["routable"] == 4 and counts["services"]["down"] == 1
    assert counts["roles"]["without_target"] == 0


# --- drain, resume, forget --------------------------------------------------------------------


async def test_drain_takes_a_service_out_of_routing_and_resume_brings_it_back(hive: Hive) -> None:
    with trio.fail_after(10):
        drained = await hive.client.post("/v1/cluster/services/fake/chat/drain")
        assert drained.json()["service"]["availability"] == "draining"
        refused = await hive.client.post("/v1/chat/completions", json=CHAT)
        error = assert_openai_error(refused, 503, "no_healthy_upstream")
        assert "fake/chat (availability)" in error["message"]
        explained = (await hive.client.get(
            "/v1/cluster/routes/resolve", params={"model": "m1"})).json()
        assert explained["excluded"][0]["gate"] == "availability"
        resumed = await hive.client.post("/v1/cluster/services/fake/chat/resume")
        assert resumed.json()["service"]["routable"] is True
        assert (await hive.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        missing = await hive.client.post("/v1/cluster/services/nope/chat/drain")
    assert_openai_error(missing, 404, "not_found")


async def test_forget_removes_a_node_host_but_never_the_local_one(hive: Hive) -> None:
    with trio.fail_after(10):
        await add_node(hive, "gpu-01", heard_ago_s=1)
        gone = await hive.client.delete("/v1/cluster/hosts/gpu-01")
        local = await hive.client.delete("/v1/cluster/hosts/local")
        unknown = await hive.client.delete("/v1/cluster/hosts/gpu-01")
    assert gone.json() == {"status": "ok", "host_id": "gpu-01"}
    assert "gpu-01" not in hive.gateway.snapshot.hosts
    assert "gpu-01/chat" not in hive.gateway.snapshot.services
    assert_openai_error(local, 400, "invalid_request")
    assert_openai_error(unknown, 404, "unknown_host")


# --- explanations -----------------------------------------------------------------------------


async def test_resolve_explains_without_advancing_round_robin(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    names = ["u0", "u1", "u2", "u3"]
    with trio.fail_after(15):
        h = await start_many(nursery, tmp_path, names, "shared", extra=ROUND_ROBIN)
        served, predicted = [], []
        for index in range(8):
            if index in (2, 5):
                explained = await h.client.get(
                    "/v1/cluster/routes/resolve", params={"model": "shared", "kind": "chat"}
                )
                predicted.append((index, explained.json()["candidates"][0]["service_id"]))
            response = await h.client.post(
                "/v1/chat/completions", json={**CHAT, "model": "shared"}
            )
            served.append(response.headers["x-geniehive-service"])
        await stop(h)
    assert sorted(served[:4]) == [f"{n}/chat" for n in names]
    assert served[4:] == served[:4]
    assert all(served[index] == service for index, service in predicted)


async def test_resolve_names_bad_parameters_and_explains_unknown_names(hive: Hive) -> None:
    with trio.fail_after(10):
        missing = await hive.client.get("/v1/cluster/routes/resolve")
        bad_kind = await hive.client.get(
            "/v1/cluster/routes/resolve", params={"model": "m1", "kind": "dance"}
        )
        unknown = await hive.client.get("/v1/cluster/routes/resolve", params={"model": "qwen3-8"})
    assert assert_openai_error(missing, 400, "invalid_request")["param"] == "model"
    assert assert_openai_error(bad_kind, 400, "invalid_request")["param"] == "kind"
    assert unknown.json()["error"] == "model_not_found"
    assert "qwen3-8b" in unknown.json()["close_matches"]


async def test_match_returns_sorted_scores_within_unit_range(hive: Hive) -> None:
    with trio.fail_after(10):
        answer = await hive.client.post(
            "/v1/cluster/routes/match",
            json={"task": "translate a scientific paper faithfully", "kind": "chat"},
        )
        bad = await hive.client.post("/v1/cluster/routes/match", json={"limit": -1})
        not_object = await hive.client.post("/v1/cluster/routes/match", json=[1])
    candidates = answer.json()["candidates"]
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert candidates[0]["candidate_id"] == "scientific_translator"
    assert assert_openai_error(bad, 400, "invalid_request")["param"] == "limit"
    assert_openai_error(not_object, 400, "invalid_request")


async def test_an_oversized_operator_body_is_413_and_the_connection_serves_the_next_request(
    hive: Hive,
) -> None:
    limit = hive.gateway.config.server.max_body_bytes
    match = json.dumps({"task": "translate a scientific paper faithfully", "kind": "chat"})
    with trio.fail_after(30):
        wire = await Wire.open(hive.url)
        # Chunked, so no Content-Length tells the server in advance.
        big = [b" " * (1024 * 1024)] * (limit // (1024 * 1024) + 1)
        status, _, body = await wire.request("POST", "/v1/cluster/routes/match", big)
        assert (status, json.loads(body)["error"]["code"]) == (413, "request_too_large")
        status, _, body = await wire.request("POST", "/v1/cluster/routes/match", [match.encode()])
        await wire.aclose()
    assert status == 200, body
    assert json.loads(body)["candidates"]


# --- benchmarks -------------------------------------------------------------------------------


# Within `registry.benchmark_retention_days` (30) of now: older samples are not kept.
OBSERVED = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(service_id: str, workload: str = "chat.short_reasoning", **results: float) -> dict:
    sample = {"service_id": service_id, "asset_id": "qwen3-8b", "workload": workload,
              "results": {"case_count": 2, "pass_rate": 1.0, "ttft_ms": 200,
                          "tokens_per_sec": 60, **results}}
    return {"report_id": "r1", "observed_at": OBSERVED, "source": "test",
            "samples": [sample]}


async def test_benchmarks_are_ingested_listed_and_filtered(hive: Hive) -> None:
    with trio.fail_after(10):
        first = await hive.client.post("/v1/cluster/benchmarks", json=report("fake/chat"))
        again = await hive.client.post("/v1/cluster/benchmarks", json=report("fake/chat"))
        other = report("fake/chat", workload="chat.concise_support")
        await hive.client.post("/v1/cluster/benchmarks", json=other)
        everything = (await hive.client.get("/v1/cluster/benchmarks")).json()["data"]
        filtered = (await hive.client.get(
            "/v1/cluster/benchmarks", params={"workload": "chat.concise_support"})).json()
        none = (await hive.client.get(
            "/v1/cluster/benchmarks", params={"service_id": "fake/embeddings"})).json()
    assert first.json()["ingested"] == 1
    assert first.json()["benchmark_ids"] == again.json()["benchmark_ids"]  # replaced, not added
    assert len(everything) == 2
    assert [s["workload"] for s in filtered["data"]] == ["chat.concise_support"]
    assert filtered["data"][0]["observed_at"] == OBSERVED
    assert 0 < filtered["data"][0]["quality"] <= 1
    assert none["data"] == []


async def test_bad_reports_get_400_naming_the_field(hive: Hive) -> None:
    cases = {
        "samples": {"samples": "no"},
        "samples[0].workload": {"samples": [{"service_id": "fake/chat", "results": {}}]},
        "samples[0].results.pass_rate": report("fake/chat", pass_rate="high"),
        "samples[0].service_id": report("bad id!"),
        "samples[0].observed_at": {"samples": [{**report("fake/chat")["samples"][0],
                                                "observed_at": "yesterday"}]},
        "samples[0].colour": {"samples": [{**report("fake/chat")["samples"][0],
                                           "colour": "red"}]},
    }
    with trio.fail_after(10):
        for field, body in cases.items():
            response = await hive.client.post("/v1/cluster/benchmarks", json=body)
            error = assert_openai_error(response, 400, "invalid_request")
            assert error["message"].startswith(field), (field, error)
    assert hive.gateway.snapshot.benchmarks == ()


async def test_a_benchmark_sample_feeds_the_scored_strategy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        h = await start_many(nursery, tmp_path, ["a", "b"], "qwen3-8b")
        before = (await h.client.get(
            "/v1/cluster/routes/resolve", params={"model": "general_assistant"})).json()
        await h.client.post("/v1/cluster/benchmarks", json=report("b/chat"))
        after = (await h.client.get(
            "/v1/cluster/routes/resolve", params={"model": "general_assistant"})).json()
        served = await h.client.post(
            "/v1/chat/completions", json={**CHAT, "model": "general_assistant"})
        await stop(h)
    assert before["candidates"][0]["service_id"] == "a/chat"  # a tie goes to the lower id
    assert after["candidates"][0]["service_id"] == "b/chat"
    assert after["candidates"][0]["breakdown"]["benchmark"] > 0.9
    assert served.headers["x-geniehive-service"] == "b/chat"


# --- named keys -------------------------------------------------------------------------------


async def test_named_keys_are_created_used_disabled_enabled_and_deleted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with trio.fail_after(15):
        h = await start_many(nursery, tmp_path, ["fake"], "m1", extra=ADMIN_TOML,
                             environ={"OPS_KEY": ADMIN_KEY})
        c = h.client
        assert (await c.get("/v1/admin/keys")).status_code == 401
        created = await c.post("/v1/admin/keys", headers=admin,
                               json={"name": "app", "scopes": ["inference"], "models": ["m*"]})
        assert created.status_code == 201
        key, key_id = created.json()["key"], created.json()["key_id"]
        assert key.startswith(f"gh_{key_id}_")
        user = {"Authorization": f"Bearer {key}"}

        async def chat() -> int:
            return (await c.post("/v1/chat/completions", json=CHAT, headers=user)).status_code

        assert await chat() == 200
        assert (await c.get("/v1/cluster/hosts", headers=user)).status_code == 403
        listed = await c.get("/v1/admin/keys", headers=admin)
        await c.post(f"/v1/admin/keys/{key_id}/disable", headers=admin)
        disabled = await chat()
        await c.post(f"/v1/admin/keys/{key_id}/enable", headers=admin)
        enabled = await chat()
        await c.delete(f"/v1/admin/keys/{key_id}", headers=admin)
        deleted = await chat()
        remaining = (await c.get("/v1/admin/keys", headers=admin)).json()["data"]
        unknown = await c.delete(f"/v1/admin/keys/{key_id}", headers=admin)
        await stop(h)
    secret = key.split("_", 2)[2]
    assert secret not in listed.text and "hash" not in listed.text and "salt" not in listed.text
    assert listed.json()["data"][0] == {**listed.json()["data"][0], "key_id": key_id,
                                        "name": "app", "scopes": ["inference"],
                                        "models": ["m*"], "disabled": False}
    assert (disabled, enabled, deleted) == (401, 200, 401)
    assert remaining == []
    assert_openai_error(unknown, 404, "not_found")


async def test_named_keys_survive_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"name": "reader", "scopes": ["read"]}
    with trio.fail_after(20):
        first = await start_many(nursery, tmp_path, ["fake"], "m1", extra=ADMIN_TOML,
                                 environ={"OPS_KEY": ADMIN_KEY})
        key = (await first.client.post("/v1/admin/keys", headers=admin, json=body)).json()["key"]
        await stop(first)
        second = await start_many(nursery, tmp_path, ["fake"], "m1", extra=ADMIN_TOML,
                                  environ={"OPS_KEY": ADMIN_KEY})
        answer = await second.client.get(
            "/v1/cluster/health", headers={"Authorization": f"Bearer {key}"})
        await stop(second)
    assert answer.status_code == 200


async def test_key_requests_are_validated(nursery: trio.Nursery, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with trio.fail_after(15):
        h = await start_many(nursery, tmp_path, ["fake"], "m1", extra=ADMIN_TOML,
                             environ={"OPS_KEY": ADMIN_KEY})
        bad_scope = await h.client.post("/v1/admin/keys", headers=admin,
                                        json={"name": "x", "scopes": ["root"]})
        no_name = await h.client.post("/v1/admin/keys", headers=admin, json={"scopes": ["read"]})
        await stop(h)
    assert assert_openai_error(bad_scope, 400, "invalid_request")["param"] == "scopes"
    assert assert_openai_error(no_name, 400, "invalid_request")["param"] == "name"


# --- the client commands against a live gateway ------------------------------------------------


def client_args(url: str, **extra: object) -> argparse.Namespace:
    return argparse.Namespace(url=url, api_key=None, json=False, **extra)


async def test_status_and_route_print_services_and_gates(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(15):
        h = await start_many(nursery, tmp_path, ["a", "b"], "qwen3-8b")
        await h.client.post("/v1/cluster/services/b/chat/drain")
        status = await trio.to_thread.run_sync(cmd_status, client_args(h.url))
        status_out = capsys.readouterr().out
        route = await trio.to_thread.run_sync(
            cmd_route, client_args(h.url, model="general_assistant", kind="chat"))
        route_out = capsys.readouterr().out
        await stop(h)
    assert status == 0 and route == 0
    assert "a/chat" in status_out and "draining" in status_out and "availability" in status_out
    assert "general_assistant" in status_out
    assert "chosen: a/chat -> qwen3-8b" in route_out
    excluded = route_out.split("EXCLUDED", 1)[1]
    assert "b/chat" in excluded and "availability" in excluded


async def test_route_of_an_unroutable_name_exits_1(
    hive: Hive, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(10):
        status = await trio.to_thread.run_sync(
            cmd_route, client_args(hive.url, model="no-such-model", kind="chat"))
    assert status == 1
    assert "model_not_found" in capsys.readouterr().out


async def test_bench_run_reports_the_serving_service_and_ingests(
    hive: Hive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workloads = tmp_path / "workloads.toml"
    workloads.write_text(
        '[workloads."chat.echo"]\n'
        '[[workloads."chat.echo".cases]]\nid = "hello"\nprompt = "say hello"\nexpect = "hello"\n'
        '[[workloads."chat.echo".cases]]\nid = "miss"\nprompt = "say hi"\nexpect = "absent"\n'
    )
    output = tmp_path / "report.json"
    args = client_args(hive.url, model="m1", workload="chat.echo", workloads=workloads,
                       ingest=True, output=output)
    with trio.fail_after(15):
        status = await trio.to_thread.run_sync(cmd_bench_run, args)
        stored = (await hive.client.get(
            "/v1/cluster/benchmarks", params={"workload": "chat.echo"})).json()["data"]
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "\r" not in captured.err and "[" not in captured.err  # piped: no progress bar
    written = json.loads(output.read_text())
    answers = {case["case_id"]: case["answer"] for case in written["cases"]}
    assert answers == {"hello": "echo: say hello", "miss": "echo: say hi"}
    [sample] = written["samples"]
    assert (sample["service_id"], sample["asset_id"]) == ("fake/chat", "m1")
    assert sample["results"]["case_count"] == 2 and sample["results"]["pass_rate"] == 0.5
    assert sample["results"]["ttft_ms"] is not None and sample["results"]["completion_tokens"] > 0
    assert [s["benchmark_id"] for s in stored] == [sample["benchmark_id"]]
    assert "ingested 1 sample(s)" in captured.out


async def test_keys_command_creates_lists_and_disables(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def keys(action: str, api_key: str | None = ADMIN_KEY, **extra: object) -> int:
        args = argparse.Namespace(url=h.url, api_key=api_key, keys_action=action, **extra)
        return cmd_keys(args)

    with trio.fail_after(15):
        h = await start_many(nursery, tmp_path, ["fake"], "m1", extra=ADMIN_TOML,
                             environ={"OPS_KEY": ADMIN_KEY})
        created = await trio.to_thread.run_sync(
            lambda: keys("create", name="app", scope=["inference"], model=None))
        created_out = capsys.readouterr().out
        key = created_out.split("key: ", 1)[1].split()[0]
        key_id = key.split("_")[1]
        disabled = await trio.to_thread.run_sync(lambda: keys("disable", key_id=key_id))
        listed = await trio.to_thread.run_sync(lambda: keys("list"))
        list_out = capsys.readouterr().out
        refused = await trio.to_thread.run_sync(lambda: keys("list", api_key=key))
        refused_err = capsys.readouterr().err
        await stop(h)
    assert (created, disabled, listed, refused) == (0, 0, 0, 1)
    assert key.startswith("gh_") and key not in list_out
    row = next(line for line in list_out.splitlines() if line.startswith(key_id))
    assert row.split()[:5] == [key_id, "app", "inference", "*", "disabled"]
    assert refused_err.strip() == "error: 401: invalid API key"
