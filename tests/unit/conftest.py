"""The unit tier: every test here runs with IP sockets and child processes refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.isolation import forbid


@pytest.fixture(autouse=True)
def _no_sockets_no_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    with forbid(request.node.nodeid):
        yield
