"""Roles through the proxy: policy in the upstream body, fallbacks, route headers."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import Hive, assert_openai_error, calls

ASK = [{"role": "user", "content": "translate: bonjour"}]


async def test_role_request_carries_the_role_policy(hive: Hive) -> None:
    body = {"model": "scientific_translator", "messages": ASK}
    with trio.fail_after(10):
        response = await hive.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-geniehive-route"] == "role:scientific_translator"
    sent = calls(hive.fake)[-1]["json"]
    assert sent["messages"][0] == {
        "role": "system",
        "content": "Translate faithfully. Preserve meaning, structure, citations and "
        "technical terms.",
    }
    assert sent["messages"][1:] == ASK
    assert sent["temperature"] == 0.1  # body_defaults
    # The preferred family (qwen3) was chosen, and thinking is off in llama.cpp/vLLM terms.
    assert sent["model"] == "qwen3-8b"
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}


async def test_client_values_win_over_defaults_and_thinking_choice_is_kept(hive: Hive) -> None:
    body = {"model": "scientific_translator", "messages": ASK, "temperature": 0.9,
            "chat_template_kwargs": {"enable_thinking": True}}
    with trio.fail_after(10):
        await hive.client.post("/v1/chat/completions", json=body)
    sent = calls(hive.fake)[-1]["json"]
    assert sent["temperature"] == 0.9
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}


async def test_role_prefix_and_wrong_operation(hive: Hive) -> None:
    with trio.fail_after(10):
        ok = await hive.client.post(
            "/v1/chat/completions", json={"model": "role/general_assistant", "messages": ASK}
        )
        wrong = await hive.client.post(
            "/v1/chat/completions", json={"model": "embedder", "messages": ASK}
        )
    assert ok.headers["x-geniehive-route"] == "role:general_assistant"
    assert_openai_error(wrong, 400, "wrong_operation")


async def test_fallback_role_used_when_the_role_has_no_healthy_service(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    catalog = tmp_path / "roles.toml"
    catalog.write_text(
        """
[roles.strict]
operation = "chat"
system_prompt = "Be strict."
[roles.strict.routing]
allowed_trust_tiers = ["vault"]
fallback_roles = ["loose"]

[roles.loose]
operation = "chat"
system_prompt = "Be loose."
"""
    )
    with trio.fail_after(10):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, upstream_toml("fake", port, ["chat"]), roles=False)
        config.write_text(config.read_text().replace(
            "catalogs = []", f'catalogs = ["{catalog}"]'))
        running = await gateway_in_process(nursery, config)
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.post(
                "/v1/chat/completions", json={"model": "strict", "messages": ASK}
            )
        assert response.status_code == 200
        assert response.headers["x-geniehive-route"] == "role:strict;fallback:loose"
        # The original role's prompt policy applies.
        sent = calls(fake)[-1]["json"]
        assert sent["messages"][0] == {"role": "system", "content": "Be strict."}
        await running.stop()


async def test_role_with_no_route_anywhere_is_503_naming_gates(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    catalog = tmp_path / "roles.toml"
    catalog.write_text(
        '[roles.vault_only]\noperation = "chat"\n'
        '[roles.vault_only.routing]\nallowed_trust_tiers = ["vault"]\n'
    )
    with trio.fail_after(10):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, upstream_toml("fake", port, ["chat"]), roles=False)
        config.write_text(config.read_text().replace(
            "catalogs = []", f'catalogs = ["{catalog}"]'))
        running = await gateway_in_process(nursery, config)
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.post(
                "/v1/chat/completions", json={"model": "vault_only", "messages": ASK}
            )
        error = assert_openai_error(response, 503, "no_healthy_upstream")
        assert "trust_tier" in error["message"]
        await running.stop()
