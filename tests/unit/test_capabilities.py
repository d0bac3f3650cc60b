"""Model capabilities and the capability gate, on values (no I/O).

Claims: a chat body needs `tools` when it carries a non-empty `tools` list and `vision` when
a message holds an image part; a request with needs is routed only to services whose asset
has them or does not say (unknown passes), direct or role, with the `capability` exclusion
naming what is missing, and a 503 message naming the gate when it excluded every service;
a plain request is routed as before. `min_context` reads the model's maximum context where
known. Capabilities travel through the registry's JSON (an old row without them decodes as
unknown), node payloads (a non-list or non-string refused, an unknown name dropped) and the
configuration (an unknown name refused with its dotted path), and the configured ones win
over discovered ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from geniehive.assets import merge_assets
from geniehive.config import ConfigError, load_control
from geniehive.errors import InvalidRequest
from geniehive.exchange import body_needs
from geniehive.models import Asset, Role, RoutingPolicy, Service, Snapshot
from geniehive.nodewire import parse_register, render_register
from geniehive.routing import Exclusion, RoutingContext, explain, next_fallback, resolve
from geniehive.wire import decode_asset, encode_asset

TOOLS = frozenset({"tools"})
VISION = frozenset({"vision"})
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def svc(service_id: str, *assets: Asset) -> Service:
    return Service(service_id, "local", "chat", "openai", "http://127.0.0.1:1", assets=assets)


def snap(services: list[Service], roles: list[Role] = ()) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(1, {}, {s.service_id: s for s in services}, {r.role_id: r for r in roles})


def ctx() -> RoutingContext:
    return RoutingContext(now=1000.0, stale_after_s=15.0)


def ids(decision: Any) -> list[str]:
    return [c.service_id for c in decision.candidates]


def caps(*names: str) -> frozenset[str]:
    return frozenset(names)


# ---------------------------------------------------------------- what a request needs


@pytest.mark.parametrize(
    ("body", "needs"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, frozenset()),
        ({"model": "m", "messages": [], "tools": []}, frozenset()),
        ({"model": "m", "messages": [], "tools": [{"type": "function"}]}, TOOLS),
        ({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]},
         VISION),
        ({"model": "m", "tools": [{"type": "function"}], "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [IMAGE]}]}, TOOLS | VISION),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         frozenset()),
    ],
)
def test_a_chat_body_needs_tools_for_tools_and_vision_for_an_image(
    body: dict[str, Any], needs: frozenset[str]
) -> None:
    assert body_needs(body) == needs


# ---------------------------------------------------------------- the gate


def test_a_tools_request_goes_only_to_the_capable_or_unknown_and_a_plain_one_anywhere() -> None:
    snapshot = snap([
        svc("able", Asset("m", loaded=True, capabilities=caps("completion", "tools"))),
        svc("plain", Asset("m", loaded=True, capabilities=caps("completion"))),
        svc("unknown", Asset("m", loaded=True)),
    ])
    tools = resolve(snapshot, "m", "chat", ctx(), needs=TOOLS)
    plain = resolve(snapshot, "m", "chat", ctx())
    assert sorted(ids(tools)) == ["able", "unknown"]
    assert tools.excluded == (Exclusion("plain", "capability", "no tools support"),)
    assert sorted(ids(plain)) == ["able", "plain", "unknown"]
    assert plain.excluded == ()


def test_a_role_picks_the_capable_asset_of_a_service_and_excludes_one_without() -> None:
    snapshot = snap(
        [
            svc("mixed", Asset("text", loaded=True, capabilities=caps("completion")),
                Asset("eyes", loaded=False, capabilities=caps("completion", "vision"))),
            svc("blind", Asset("t2", loaded=True, capabilities=caps("completion", "tools"))),
        ],
        [Role("general", "chat")],
    )
    vision = resolve(snapshot, "general", "chat", ctx(), needs=VISION)
    assert [(c.service_id, c.upstream_model) for c in vision.candidates] == [("mixed", "eyes")]
    assert vision.excluded == (Exclusion("blind", "capability", "no vision support"),)
    plain = resolve(snapshot, "general", "chat", ctx())
    assert {(c.service_id, c.upstream_model) for c in plain.candidates} == {
        ("mixed", "text"), ("blind", "t2")}


def test_every_service_excluded_by_the_gate_is_a_503_naming_it_and_the_explanation_too() -> None:
    snapshot = snap(
        [svc("a", Asset("m", capabilities=caps("completion"))),
         svc("b", Asset("n", capabilities=caps("completion", "vision")))],
        [Role("general", "chat")],
    )
    direct = resolve(snapshot, "m", "chat", ctx(), needs=TOOLS)
    role = resolve(snapshot, "general", "chat", ctx(), needs=TOOLS | VISION)
    assert (direct.error, direct.message) == (
        "no_healthy_upstream", "no service for 'm' supports tools")
    assert role.message == "no service for 'general' supports tools and vision"
    explained = explain(role)
    assert explained["needs"] == ["tools", "vision"]
    assert explained["excluded"] == [
        {"service_id": "a", "gate": "capability", "detail": "no tools and vision support"},
        {"service_id": "b", "gate": "capability", "detail": "no tools support"},
    ]


def test_fallback_roles_are_walked_with_the_requests_needs() -> None:
    snapshot = snap(
        [svc("plain", Asset("m", loaded=True, capabilities=caps("completion"))),
         svc("able", Asset("t", loaded=True, family="big",
                           capabilities=caps("completion", "tools")))],
        [Role("small", "chat", routing=RoutingPolicy(preferred_families=("m",),
                                                      fallback_roles=("big",))),
         Role("big", "chat")],
    )
    # `small` keeps only the capable service; when it fails at request time, the fallback
    # role is resolved with the same needs and keeps only it too.
    first = resolve(snapshot, "small", "chat", ctx(), needs=TOOLS)
    assert ids(first) == ["able"]
    follow = next_fallback(snapshot, first, ctx())
    assert follow is not None and ids(follow) == ["able"] and follow.needs == TOOLS


def test_min_context_reads_the_maximum_context_where_known() -> None:
    snapshot = snap(
        [svc("grows", Asset("a", loaded=True, context_length=4096, max_context=40960)),
         svc("small", Asset("b", loaded=True, context_length=4096)),
         svc("capped", Asset("c", loaded=True, context_length=32768, max_context=8192))],
        [Role("long", "chat", routing=RoutingPolicy(min_context=16384))],
    )
    decision = resolve(snapshot, "long", "chat", ctx())
    assert ids(decision) == ["grows"]
    assert {e.service_id for e in decision.excluded} == {"small", "capped"}


# ---------------------------------------------------------------- where capabilities travel


def test_the_registry_json_keeps_capabilities_and_an_old_row_reads_unknown() -> None:
    asset = Asset("m", capabilities=caps("tools", "completion"), max_context=8192)
    encoded = encode_asset(asset)
    assert encoded["capabilities"] == ["completion", "tools"]
    assert decode_asset(encoded) == asset
    old = {k: v for k, v in encoded.items() if k not in ("capabilities", "max_context")}
    assert decode_asset(old) == Asset("m")
    assert decode_asset(encode_asset(Asset("m"))).capabilities is None


def node_payload(capabilities: Any) -> dict[str, Any]:
    return {"host_id": "gpu-01", "address": "10.0.0.5", "services": [{
        "service_id": "gpu-01-ol/chat", "operation": "chat", "adapter": "ollama",
        "base_url": "http://10.0.0.5:11434",
        "assets": [{"asset_id": "m", "capabilities": capabilities, "max_context": 40960}],
    }]}


def test_a_node_reports_capabilities_and_unknown_names_are_dropped() -> None:
    host, services = parse_register(node_payload(["tools", "vision", "teleport"]))
    (asset,) = services[0].assets
    assert (asset.capabilities, asset.max_context) == (caps("tools", "vision"), 40960)
    again = parse_register(render_register(host, services))[1][0].assets[0]
    assert again == asset
    assert parse_register(node_payload(None))[1][0].assets[0].capabilities is None


@pytest.mark.parametrize(
    ("value", "where"),
    [("tools", "services[0].assets[0].capabilities"),
     (["tools", 3], "services[0].assets[0].capabilities[1]")],
)
def test_a_node_capability_list_of_the_wrong_type_is_refused(value: Any, where: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_register(node_payload(value))
    assert info.value.param == where


def control(tmp_path: Path, capabilities: str) -> Path:
    path = tmp_path / "geniehive.toml"
    path.write_text(f"""
[[upstreams]]
id = "ol"
adapter = "ollama"
base_url = "http://127.0.0.1:11434"
[[upstreams.assets]]
asset_id = "m"
capabilities = {capabilities}
""", encoding="utf-8")
    return path


def test_configured_capabilities_load_and_an_unknown_name_is_an_error(tmp_path: Path) -> None:
    config = load_control(control(tmp_path, '["tools", "vision"]'), {})
    assert config.upstreams[0].assets[0].capabilities == caps("tools", "vision")
    with pytest.raises(ConfigError) as info:
        load_control(control(tmp_path, '["tools", "wings"]'), {})
    assert info.value.problems == [
        "upstreams[0].assets[0].capabilities[1]: expected one of completion, tools, vision, "
        "thinking, embedding, got 'wings'"
    ]


def test_configured_capabilities_win_over_discovered_ones() -> None:
    discovered = [Asset("m", loaded=True, capabilities=caps("completion", "tools"),
                        max_context=40960),
                  Asset("n", loaded=True, capabilities=caps("completion"))]
    configured = [Asset("m", capabilities=caps("completion")), Asset("n")]
    merged = {a.asset_id: a for a in merge_assets(configured, discovered)}
    assert merged["m"].capabilities == caps("completion")
    assert merged["m"].max_context == 40960
    assert merged["n"].capabilities == caps("completion")  # not configured: discovery's
