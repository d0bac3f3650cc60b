"""A control plane in the test's own trio run and the node payloads the node tests send it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.harness import InProcess, gateway_in_process, write_config


def payload(host_id: str = "gpu-01", service: str = "gpu-01-vllm/chat", **extra: Any) -> Any:
    return {
        "host_id": host_id,
        "address": "127.0.0.1",
        "labels": {"trust_tier": "trusted"},
        "services": [{
            "service_id": service, "operation": "chat", "adapter": "openai",
            "base_url": "http://127.0.0.1:9",
            "assets": [{"asset_id": "node-model", "loaded": True}],
        }],
        **extra,
    }


def heartbeat(host_id: str = "gpu-01", services: list[Any] | None = None) -> Any:
    return {"host_id": host_id, "metrics": {"gpu_count": 0}, "services": services or []}


async def start(nursery: trio.Nursery, tmp_path: Path, body: str = "",
                env: dict[str, str] | None = None) -> tuple[InProcess, httpx.AsyncClient]:
    running = await gateway_in_process(nursery, write_config(tmp_path, body), env)
    return running, httpx.AsyncClient(base_url=running.url, timeout=5)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error
