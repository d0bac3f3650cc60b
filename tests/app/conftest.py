"""Fixtures for app tests: a fake upstream and a gateway in the test's own trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config


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
) -> Hive:
    fake = fake or FakeUpstream(models or ["m1", "qwen3-8b"])
    port = await nursery.start(fake.serve)
    ops = operations or ["chat", "completion", "embeddings", "transcription"]
    config = write_config(tmp_path, extra + upstream_toml("fake", port, ops))
    running = await gateway_in_process(nursery, config)
    client = httpx.AsyncClient(base_url=running.url, timeout=10)
    return Hive(running.url, fake, port, running.gateway, client, running)


@pytest.fixture
async def hive(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Hive]:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path)
    yield h
    await h.client.aclose()
    with trio.fail_after(10):
        await h.running.stop()
