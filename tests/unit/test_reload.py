"""The pure rules of a reload: what needs a restart, what changed, which upstreams moved, and
the shape of a refusal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from geniehive.affinity import Affinity
from geniehive.config import UpstreamConfig, load_control
from geniehive.reload import (
    RESTART_NEEDED,
    ReloadRejected,
    changed_parts,
    keep_restart_keys,
    open_mode_problem,
    restart_needed,
    upstream_changes,
)
from tests.harness import write_config


def config_of(tmp_path: Path, body: str = ""):
    return load_control(write_config(tmp_path, body, roles=False), {})


def test_a_changed_bind_and_registry_need_a_restart_and_keep_their_old_values(
    tmp_path: Path,
) -> None:
    old = config_of(tmp_path)
    new = replace(old, server=replace(old.server, bind=("127.0.0.1:9999",), max_body_bytes=5),
                  registry=replace(old.registry, path=tmp_path / "other.sqlite3"),
                  routing=replace(old.routing, max_attempts=7))
    assert restart_needed(old, new) == ["server.bind", "server.max_body_bytes", "registry.path"]
    kept = keep_restart_keys(old, new)
    assert kept.server == old.server and kept.registry == old.registry
    assert kept.routing.max_attempts == 7  # applied
    assert changed_parts(old, kept) == ["routing"]


def test_a_changed_tracing_section_needs_a_restart_and_is_not_reported_applied(
    tmp_path: Path,
) -> None:
    """The exporter is built once at start: a reload cannot turn tracing on, off or aside."""
    old = config_of(tmp_path)
    new = replace(old, tracing=replace(old.tracing, otlp_endpoint="http://127.0.0.1:4318",
                                       service_name="other", sample_ratio=0.5))
    assert restart_needed(old, new) == [
        "tracing.otlp_endpoint", "tracing.service_name", "tracing.sample_ratio"]
    kept = keep_restart_keys(old, new)
    assert kept.tracing == old.tracing
    assert changed_parts(old, kept) == []


def test_every_restart_key_names_a_config_value(tmp_path: Path) -> None:
    old = config_of(tmp_path)
    assert restart_needed(old, old) == []
    assert len(RESTART_NEEDED) == len(set(RESTART_NEEDED))


def test_changed_parts_name_keys_roles_and_upstreams(tmp_path: Path) -> None:
    old = config_of(tmp_path)
    up = UpstreamConfig(id="a", adapter="openai", base_url="http://127.0.0.1:1")
    new = replace(old, auth_keys=(), upstreams=(up,), local_labels={"zone": "x"},
                  breaker=replace(old.breaker, failures=9))
    assert changed_parts(old, new) == ["breaker", "local.labels", "upstreams"]


def test_upstream_changes_sort_added_removed_and_changed() -> None:
    a = UpstreamConfig(id="a", adapter="openai", base_url="http://127.0.0.1:1")
    b = UpstreamConfig(id="b", adapter="openai", base_url="http://127.0.0.1:2")
    c = UpstreamConfig(id="c", adapter="openai", base_url="http://127.0.0.1:3")
    b2 = replace(b, timeout_s=9.0)
    changes = upstream_changes([a, b], [b2, c])
    assert changes.added == (c,)
    assert changes.removed == (a,)
    assert changes.changed == ((b, b2),)
    assert upstream_changes([a], [a]) == upstream_changes([], [])


def test_open_mode_is_refused_off_loopback(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    exposed = replace(config, server=replace(config.server, bind=("0.0.0.0:8800",)))
    assert open_mode_problem(config, 0) == []
    assert open_mode_problem(exposed, 1) == []  # a named key remains
    [problem] = open_mode_problem(exposed, 0)
    assert problem.startswith("auth.keys:") and "0.0.0.0:8800" in problem


def test_a_refusal_lists_every_problem_in_the_openai_shape() -> None:
    error = ReloadRejected(["routing.bogus: unknown key", "routing.max_attempts: must be >= 1"])
    body = error.error_object()
    assert error.http_status == 400
    assert body["code"] == "invalid_config" and body["type"] == "invalid_request_error"
    assert body["problems"] == list(error.problems)
    assert "routing.bogus: unknown key" in body["message"]
    assert "routing.max_attempts" in body["message"]


def test_a_smaller_affinity_bound_forgets_the_least_recent_sessions_now() -> None:
    affinity = Affinity(600.0, 10)
    for n in range(5):
        affinity.remember("k", "m", f"s{n}", "svc", 0.0)
    affinity.resize(60.0, 2)
    assert len(affinity) == 2
    assert affinity.get("k", "m", "s4", 1.0) == "svc"
    assert affinity.get("k", "m", "s0", 1.0) is None
    assert affinity.ttl_s == 60.0
