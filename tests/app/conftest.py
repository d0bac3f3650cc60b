"""Fixtures for app tests: a fake upstream and a gateway in the test's own trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.hive import Hive, start_hive


@pytest.fixture
async def hive(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Hive]:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path)
    yield h
    await h.client.aclose()
    with trio.fail_after(10):
        await h.running.stop()
