"""Readiness, auth and the model listing against an in-process gateway."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.config import ConfigError, load_control
from geniehive.daemon import serve_control
from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import CHAT, ENV, KEYS, Hive, assert_openai_error


async def test_health_and_readiness_need_no_key(hive: Hive) -> None:
    with trio.fail_after(10):
        health = await hive.client.get("/healthz")
        ready = await hive.client.get("/readyz")
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "pending": []}


async def test_readiness_turns_503_when_shutdown_begins(hive: Hive) -> None:
    hive.gateway.ready = False  # what the daemon does when a graceful shutdown starts
    with trio.fail_after(10):
        ready = await hive.client.get("/readyz")
    assert ready.status_code == 503
    hive.gateway.ready = True


async def test_models_lists_assets_and_roles_with_metadata(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == sorted(ids)
    assert {"m1", "qwen3-8b", "general_assistant", "white_hat"} <= set(ids)
    m1 = next(m for m in body["data"] if m["id"] == "m1")
    assert m1["object"] == "model"
    meta = m1["geniehive"]
    assert meta["route_type"] == "asset"
    assert meta["services"] == ["fake/chat", "fake/completion", "fake/embeddings",
                                "fake/transcription"]
    assert meta["loaded"] is True
    assert meta["health"] == "healthy"
    role = next(m for m in body["data"] if m["id"] == "general_assistant")
    assert role["geniehive"]["route_type"] == "role"
    assert role["geniehive"]["healthy_target_count"] == 1
    assert role["geniehive"]["effective_policy"]["system_prompt"]


async def test_model_entry_by_id_and_role_prefix(hive: Hive) -> None:
    with trio.fail_after(10):
        one = await hive.client.get("/v1/models/m1")
        role = await hive.client.get("/v1/models/role/general_assistant")
        missing = await hive.client.get("/v1/models/none-such")
    assert one.json()["id"] == "m1"
    assert role.json()["geniehive"]["route_type"] == "role"
    assert_openai_error(missing, 404, "not_found")


async def test_model_added_upstream_appears_without_restart(hive: Hive) -> None:
    hive.fake.models.append("freshly-pulled")
    with trio.fail_after(5):
        while True:
            ids = [m["id"] for m in (await hive.client.get("/v1/models")).json()["data"]]
            if "freshly-pulled" in ids:
                break
            await trio.sleep(0.05)
    with trio.fail_after(5):
        response = await hive.client.post(
            "/v1/chat/completions", json={**CHAT, "model": "freshly-pulled"}
        )
    assert response.status_code == 200


async def test_unknown_route_under_v1_is_json_404(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.get("/v1/nothing-here")
    assert_openai_error(response, 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_unknown_v1_path_is_a_404_naming_method_and_path(
    hive: Hive, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geniehive.request")
    with trio.fail_after(10):
        response = await hive.client.request(method, "/v1/foo", json={},
                                             headers={"User-Agent": "agent/1.0"})
    error = assert_openai_error(response, 404, "not_found")
    assert error["message"] == f"no route for {method} /v1/foo"
    assert error["type"] == "invalid_request_error"
    [record] = [r for r in caplog.records if "no route" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f'no route for "{method}" "/v1/foo" user_agent="agent/1.0"'


async def test_the_log_line_of_an_unknown_path_quotes_and_caps_what_the_client_sent(
    hive: Hive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geniehive.request")
    agent = 'x" status=200 key=admin ' + "a" * 5000
    with trio.fail_after(10):
        response = await hive.client.post("/v1/x%0Aforged", headers={"User-Agent": agent})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no route for POST /v1/x\nforged"
    [line] = [r.getMessage() for r in caplog.records if "no route" in r.getMessage()]
    assert "\n" not in line
    assert line.startswith('no route for "POST" "/v1/x\\nforged" user_agent="x\\" status=200')
    assert len(line) < 400 and line.endswith('aaa..."')


async def test_head_and_get_of_the_root_answer_200(hive: Hive) -> None:
    with trio.fail_after(10):
        head = await hive.client.head("/")
        get = await hive.client.get("/")
    assert (head.status_code, head.content) == (200, b"")
    assert get.status_code == 200 and get.json()["status"] == "ok"


async def test_auth_401_403_and_both_headers(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(10):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        config = write_config(tmp_path, KEYS + upstream_toml("fake", port, ["chat"]))
        running = await gateway_in_process(nursery, config, ENV)
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert_openai_error(await client.get("/v1/models"), 401, "invalid_api_key")
            assert_openai_error(
                await client.post("/v1/chat/completions", json=CHAT), 401, "invalid_api_key"
            )
            wrong = {"Authorization": "Bearer sk-nope"}
            assert_openai_error(
                await client.post("/v1/chat/completions", json=CHAT, headers=wrong),
                401, "invalid_api_key",
            )
            ops = {"X-Api-Key": ENV["OPS_KEY"]}
            denied = await client.post("/v1/chat/completions", json=CHAT, headers=ops)
            error = assert_openai_error(denied, 403, "insufficient_scope")
            assert ENV["OPS_KEY"] not in denied.text and "inference" in error["message"]
            bearer = {"Authorization": f"Bearer {ENV['APPS_KEY']}"}
            x_api = {"X-Api-Key": ENV["APPS_KEY"]}
            assert (await client.post("/v1/chat/completions", json=CHAT,
                                      headers=bearer)).status_code == 200
            assert (await client.post("/v1/chat/completions", json=CHAT,
                                      headers=x_api)).status_code == 200
            assert (await client.get("/v1/models", headers=x_api)).status_code == 200
        await running.stop()


async def test_open_mode_ignores_presented_keys(hive: Hive) -> None:
    with trio.fail_after(10):
        response = await hive.client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer whatever"}
        )
    assert response.status_code == 200


async def test_unknown_adapter_aborts_start(tmp_path: Path) -> None:
    config = load_control(
        write_config(tmp_path, upstream_toml("odd", 9, ["chat"], adapter="nosuchkind")), {}
    )
    with trio.fail_after(10), pytest.raises(ConfigError) as info:
        await serve_control(config, handle_signals=False)
    assert info.value.problems == [
        "upstreams[0].adapter: unknown adapter 'nosuchkind' (known: " + _known() + ")"
    ]


def _known() -> str:
    from geniehive.adapters.loader import load_adapters

    return ", ".join(sorted(load_adapters()))


async def test_errors_of_the_quart_app_carry_one_request_id(hive: Hive) -> None:
    with trio.fail_after(10):
        named = await hive.client.get("/v1/models/no-such-model", headers={"X-Request-Id": "r-7"})
        unrouted = await hive.client.get("/no/such/path")
        wrong_method = await hive.client.delete("/v1/models")
    assert assert_openai_error(named, 404, "not_found")["param"] == "model"
    assert named.headers.get_list("x-request-id") == ["r-7"]
    assert_openai_error(unrouted, 404, "not_found")
    assert_openai_error(wrong_method, 405, "method_not_allowed")
    for response in (unrouted, wrong_method):
        assert len(response.headers.get_list("x-request-id")) == 1
