"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import OPENED_CLIENTS


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    """Close the synchronous SDK clients the test made (tests.harness.closing)."""
    yield
    while OPENED_CLIENTS:
        OPENED_CLIENTS.pop().close()
