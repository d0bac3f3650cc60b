"""A gateway in the test's own trio run in front of a recording fake upstream, and what the
app tests assert about it: the OpenAI error shape and the calls the upstream received."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello there"}]}

# Client keys with the scopes the gateway tests need, and their secrets.
KEYS = """
[[auth.keys]]
name = "apps"
key_env = "APPS_KEY"
scopes = ["inference"]

[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["read", "operate"]
"""
ENV = {"APPS_KEY": "sk-apps-123", "OPS_KEY": "sk-ops-456"}


@dataclass
class Hive:
    url: str
    fake: FakeUpstream
    port: int
    gateway: Any
    client: httpx.AsyncClient
    running: InProcess


async def start_hive(
    nursery: trio.Nursery, tmp_path: Path, *, models: list[str] | None = None,
    operations: list[str] | None = None, extra: str = "", fake: FakeUpstream | None = None,
    environ: dict[str, str] | None = None,
) -> Hive:
    fake = fake or FakeUpstream(models or ["m1", "qwen3-8b"])
    port = await nursery.start(fake.serve)
    ops = operations or ["chat", "completion", "embeddings", "transcription"]
    config = write_config(tmp_path, extra + upstream_toml("fake", port, ops))
    running = await gateway_in_process(nursery, config, environ)
    client = httpx.AsyncClient(base_url=running.url, timeout=10)
    return Hive(running.url, fake, port, running.gateway, client, running)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def calls(fake, path: str = "/v1/chat/completions") -> list[dict]:
    """The requests the fake received on one path (discovery and probes excluded)."""
    return [r for r in fake.requests if r["path"] == path]
