"""Node payload parsing: every required field, the defaults, and wrong types."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from typing import Any

import pytest

from geniehive.errors import InvalidRequest
from geniehive.models import Asset, Host, Observed, Policy, Service, ServiceState
from geniehive.nodewire import (
    LastServices,
    parse_active_upstreams,
    parse_heartbeat,
    parse_register,
    render_heartbeat,
    render_register,
)


def register_payload() -> dict[str, Any]:
    return {
        "host_id": "gpu-01",
        "address": "10.0.0.5",
        "services": [
            {
                "service_id": "gpu-01-vllm/chat",
                "operation": "chat",
                "adapter": "vllm",
                "base_url": "http://10.0.0.5:8000",
            }
        ],
    }


def full_payload() -> dict[str, Any]:
    payload = register_payload()
    payload.update(
        display_name="GPU box 1",
        labels={"trust_tier": "trusted", "workload_classes": ["batch"]},
        capabilities={"discovered_models": [{"path": "/m/a.gguf", "size_bytes": 10}]},
        resources={"gpu_count": 1},
    )
    payload["services"][0].update(
        assets=[{"asset_id": "qwen3:8b", "loaded": True, "context_length": 32768,
                 "family": "qwen3", "aliases": ["qwen3"], "size_bytes": 5, "vram_bytes": 6}],
        state={"availability": "draining", "accept_requests": False, "health": "healthy"},
        observed={"queue_depth": 2, "in_flight": 1, "slots_total": 4, "slots_busy": 1,
                  "kv_cache_usage": 0.5, "p50_latency_ms": 120, "tokens_per_sec": 40.5,
                  "vram_used_bytes": 7, "loaded_model_count": 1, "max_loaded_models": 3},
        keep_alive="1h30m",
        dialect="openai",
    )
    return payload


def rejected(payload: Any, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_register(payload, **kwargs)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize("field", ["host_id", "address", "services"])
def test_a_missing_top_level_field_is_named(field: str) -> None:
    payload = register_payload()
    del payload[field]
    error = rejected(payload)
    assert error.param == field
    assert error.message == f"{field}: required field missing"


@pytest.mark.parametrize("field", ["service_id", "operation", "adapter", "base_url"])
def test_a_missing_service_field_is_named_with_its_index(field: str) -> None:
    payload = register_payload()
    del payload["services"][0][field]
    error = rejected(payload)
    assert error.param == f"services[0].{field}"
    assert error.message == f"services[0].{field}: required field missing"


def test_a_missing_asset_id_is_named_with_both_indexes() -> None:
    payload = register_payload()
    payload["services"][0]["assets"] = [{"asset_id": "a"}, {"loaded": True}]
    assert rejected(payload).param == "services[0].assets[1].asset_id"


def test_minimal_register_takes_the_defaults() -> None:
    host, services = parse_register(register_payload())
    assert host == Host(host_id="gpu-01", address="10.0.0.5")
    assert services == [
        Service(
            service_id="gpu-01-vllm/chat", host_id="gpu-01", operation="chat",
            adapter="vllm", base_url="http://10.0.0.5:8000",
        )
    ]
    assert services[0].state == ServiceState("available", True, "unknown")
    assert services[0].observed == Observed()


def test_full_register_keeps_every_field() -> None:
    host, [service] = parse_register(full_payload())
    assert host.display_name == "GPU box 1"
    assert host.labels == {"trust_tier": "trusted", "workload_classes": ("batch",)}
    assert host.capabilities["discovered_models"][0]["size_bytes"] == 10
    assert service.assets == (
        Asset("qwen3:8b", loaded=True, context_length=32768, family="qwen3",
              aliases=("qwen3",), size_bytes=5, vram_bytes=6),
    )
    assert service.state == ServiceState("draining", False, "healthy")
    assert service.observed.p50_latency_ms == 120.0
    assert service.observed.queue_depth == 2
    assert (service.observed.max_loaded_models, service.keep_alive) == (3, "1h30m")
    assert service.dialect == "openai"


def test_null_in_an_optional_field_means_not_sent() -> None:
    payload = register_payload()
    payload.update(display_name=None, labels=None)
    payload["services"][0].update(assets=None, state={"health": None})
    host, [service] = parse_register(payload)
    assert host.labels == {} and host.display_name is None
    assert service.assets == () and service.state.health == "unknown"


def test_a_trailing_slash_of_base_url_is_dropped() -> None:
    payload = register_payload()
    payload["services"][0]["base_url"] = "http://10.0.0.5:8000/"
    assert parse_register(payload)[1][0].base_url == "http://10.0.0.5:8000"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("host_id", 5, "expected a string"),
        ("host_id", "bad id!", "expected an id of 1-128 letters, digits and . _ : / -"),
        ("host_id", "local", "'local' is reserved for the control plane itself"),
        ("address", "10.0.0.5/24", "expected a host name or IP address"),
        ("services", {}, "expected a list"),
        ("labels", {"trust_tier": 3}, None),
        ("capabilities", [], "expected an object"),
        ("services[0].base_url", "ftp://x", "expected an http(s) URL"),
        ("services[0].base_url", "http://[::1", "expected an http(s) URL"),
        ("services[0].operation", "dance", None),
        ("services[0].adapter", "", None),
        ("services[0].state", {"health": "great"}, None),
        ("services[0].state", {"accept_requests": "yes"}, None),
        ("services[0].observed", {"queue_depth": -1}, None),
        ("services[0].observed", {"in_flight": True}, None),
        ("services[0].observed", {"kv_cache_usage": "half"}, None),
        ("services[0].observed", {"max_loaded_models": 0}, None),
        ("services[0].keep_alive", "soon", 'expected a duration such as "30m" or "1h30m", a '
         "whole number of seconds >= 1, or -1 (forever)"),
        ("services[0].keep_alive", 0, None),
        ("services[0].dialect", "ollama", "expected one of native, openai"),
        ("services[0].assets", [{"asset_id": "a", "context_length": 0}], None),
        ("services[0].assets", [{"asset_id": "a", "aliases": "x"}], None),
        ("services[0].assets", [{"asset_id": "a"}, {"asset_id": "a"}], None),
        ("services[0].assets", [{"asset_id": "a", "colour": "red"}], None),
        ("services[0].managed", "asleep", "expected one of cold, starting, running, stopping"),
    ],
)
def test_wrong_values_are_400_naming_the_field(path: str, value: Any, message: Any) -> None:
    payload = register_payload()
    target: Any = payload
    *parents, last = path.replace("[0]", ".0").split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value
    error = rejected(payload)
    assert error.param is not None and error.param.startswith(path)
    assert error.message.startswith(f"{error.param}: ")
    if message is not None:
        assert error.message == f"{path}: {message}"


def test_the_url_error_reads_as_the_spec_shows_it() -> None:
    payload = register_payload()
    payload["services"][0]["base_url"] = "not a url"
    assert str(rejected(payload)) == "services[0].base_url: expected an http(s) URL"


def test_an_unknown_field_is_rejected_by_name() -> None:
    payload = register_payload()
    payload["colour"] = "red"
    assert rejected(payload).message == "colour: unknown field"


def test_a_payload_that_is_not_an_object_is_rejected() -> None:
    assert rejected([1, 2]).message == "body: expected an object"


def test_a_duplicate_service_id_is_rejected() -> None:
    payload = register_payload()
    payload["services"].append(copy.deepcopy(payload["services"][0]))
    assert rejected(payload).param == "services[1].service_id"


def test_known_adapters_are_enforced_when_given() -> None:
    error = rejected(register_payload(), adapters={"openai": frozenset()})
    assert error.message == "services[0].adapter: unknown adapter 'vllm' (known: openai)"
    error = rejected(register_payload(), adapters={"vllm": frozenset({"embeddings"})})
    assert error.message == "services[0].adapter: adapter 'vllm' does not serve 'chat'"
    assert parse_register(register_payload(), adapters={"vllm": frozenset()})


def test_free_form_objects_reject_non_finite_numbers_and_deep_nesting() -> None:
    payload = register_payload()
    payload["resources"] = {"x": float("nan")}
    assert rejected(payload).param == "resources.x"
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    payload["resources"] = {"x": deep}
    assert rejected(payload).param.startswith("resources.x")


def test_heartbeat_parses_metrics_and_services() -> None:
    host_id, metrics, services = parse_heartbeat(
        {"host_id": "gpu-01", "metrics": {"gpu_count": 2}, "services": []}
    )
    assert (host_id, dict(metrics), services) == ("gpu-01", {"gpu_count": 2}, [])


def test_heartbeat_requires_its_services_list() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_heartbeat({"host_id": "gpu-01"})
    assert info.value.param == "services"


def test_heartbeat_metrics_default_to_empty() -> None:
    assert parse_heartbeat({"host_id": "gpu-01", "services": []})[1] == {}


def test_render_then_parse_gives_back_the_values() -> None:
    host, services = parse_register(full_payload())
    policy = Policy(system_prompt="be brief", body_defaults={"t": 1})
    services = [replace(s, assets=(*s.assets, Asset("b", policy=policy))) for s in services]
    again = parse_register(render_register(host, services))
    assert again == (host, services)
    hb = parse_heartbeat(render_heartbeat(host.host_id, {"gpus": ({"index": 0},)}, services))
    assert hb == (host.host_id, {"gpus": [{"index": 0}]}, services)


def _mutations(rng: random.Random) -> list[Any]:
    return [None, 0, -1, 1.5, float("inf"), True, "", "x" * 300, "bad id!", [], [1], {},
            {"a": 1}, "http://", rng.random(), [{}], [None]]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def test_random_wrong_types_never_raise_anything_but_invalid_request() -> None:
    rng = random.Random(7)
    base = full_payload()
    paths = _paths(base)
    for _ in range(3000):
        payload = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(paths)
            target: Any = payload
            try:
                for part in parents:
                    target = target[part]
                target[last] = rng.choice(_mutations(rng))
            except (KeyError, IndexError, TypeError):
                continue
        for parse in (parse_register, parse_heartbeat):
            try:
                parse(payload)
            except InvalidRequest as exc:
                assert exc.message.startswith(f"{exc.param or 'body'}: ")


def test_the_managed_state_of_a_service_is_read_and_rendered_only_when_known() -> None:
    assert parse_register(register_payload())[1][0].managed is None  # an older node's payload
    payload = register_payload()
    payload["services"][0]["managed"] = "cold"
    host, services = parse_register(payload)
    assert services[0].managed == "cold"
    assert render_register(host, services)["services"][0]["managed"] == "cold"
    running = replace(services[0], managed="running")
    hb = parse_heartbeat(render_heartbeat(host.host_id, {}, [running]))
    assert hb[2][0].managed == "running"
    unmanaged = replace(services[0], managed=None)
    assert "managed" not in render_heartbeat(host.host_id, {}, [unmanaged])["services"][0]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"status": "ok", "active_upstreams": ["b", "a/x"]}, ["b", "a/x"]),
        ({"status": "ok"}, []),  # an older control plane: none
        ({"active_upstreams": None}, []),
        ({"active_upstreams": "lazy"}, []),
        ({"active_upstreams": {"lazy": True}}, []),
        ({"active_upstreams": ["lazy", 3, None, "", "bad id!", ["x"]]}, ["lazy"]),
        (["lazy"], []),
        (None, []),
    ],
)
def test_the_active_upstreams_of_an_answer_are_read_defensively(
    answer: Any, expected: list[str]
) -> None:
    assert parse_active_upstreams(answer) == expected



def test_services_sent_as_last_time_are_taken_from_the_last_reading() -> None:
    beat = {"host_id": "gpu-01", "services": register_payload()["services"]}
    adapters = {"vllm": frozenset({"chat"})}
    _, _, services = parse_heartbeat(copy.deepcopy(beat), adapters=adapters)
    last = LastServices("gpu-01", beat["services"], services, adapters)
    _, _, reused = parse_heartbeat(copy.deepcopy(beat), adapters=adapters, last=last)
    assert reused is services
    # Anything else is read afresh: other services, another host, other adapters.
    changed = copy.deepcopy(beat)
    changed["services"][0]["base_url"] = "http://10.0.0.5:8001"
    _, _, fresh = parse_heartbeat(changed, adapters=adapters, last=last)
    assert fresh is not services and fresh[0].base_url == "http://10.0.0.5:8001"
    other = {**copy.deepcopy(beat), "host_id": "gpu-02"}
    assert parse_heartbeat(other, adapters=adapters, last=last)[2] is not services
    with pytest.raises(InvalidRequest, match="unknown adapter 'vllm'"):
        parse_heartbeat(copy.deepcopy(beat), adapters={"openai": frozenset()}, last=last)
    # The rest of the body is still checked.
    with pytest.raises(InvalidRequest, match="metrics"):
        parse_heartbeat({**copy.deepcopy(beat), "metrics": 3}, adapters=adapters, last=last)
