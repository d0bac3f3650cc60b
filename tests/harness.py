"""Test harness: a gateway in-process or as a real process, fake upstreams, config files.

In-process (app tests): `gateway_in_process(nursery, tmp_path, toml)` starts `serve_control`
in the test's nursery on 127.0.0.1:0 and returns its base URL and a stop function.

As processes (e2e): `spawn_gateway` and `spawn_fake` start `python -m geniehive serve` and
`python -m tests.fakes.upstream` and wait, under the caller's deadline, for the line that
says they are listening.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from geniehive.adapters import ProbeResult
from geniehive.config import LaunchConfig, UpstreamConfig, load_control

REPO = Path(__file__).resolve().parent.parent
# Synchronous SDK clients made by a test; tests/conftest.py closes them when it ends (their
# pooled sockets would otherwise be left to the garbage collector: a ResourceWarning in
# whichever test runs then).
OPENED_CLIENTS: list[Any] = []


def closing(client: Any) -> Any:
    """`client`, closed at the end of the test."""
    OPENED_CLIENTS.append(client)
    return client
LISTEN_RE = re.compile(rb"GenieHive listening on (http://[0-9.]+:\d+)")


def write_config(tmp_path: Path, body: str, *, name: str = "geniehive.toml",
                 roles: bool = True) -> Path:
    """A control file in tmp_path: 127.0.0.1:0, its registry beside it, plus `body`."""
    head = textwrap.dedent(
        f"""
        [server]
        bind = ["127.0.0.1:0"]
        shutdown_grace_s = 5

        [registry]
        path = "state/geniehive.sqlite3"

        [roles]
        catalogs = [{'"' + str(REPO / "conf" / "roles" / "*.toml") + '"' if roles else ""}]
        """
    )
    text = head + textwrap.dedent(body)
    if "[prober]" not in text:
        text += "\n[prober]\ninterval_s = 0.2\ntimeout_s = 1\n"
    if "[discovery]" not in text:
        text += "\n[discovery]\ninterval_s = 0.2\n"
    path = tmp_path / name
    path.write_text(text)
    return path


def upstream_toml(upstream_id: str, port: int, operations: list[str],
                  adapter: str = "openai", extra: str = "") -> str:
    ops = ", ".join(f'"{o}"' for o in operations)
    return textwrap.dedent(
        f"""
        [[upstreams]]
        id = "{upstream_id}"
        adapter = "{adapter}"
        base_url = "http://127.0.0.1:{port}"
        operations = [{ops}]
        timeout_s = 2
        """
    ) + textwrap.dedent(extra)



def node_file(tmp_path: Path, control_url: str, upstreams: str, *,
              host_id: str = "gpu-t") -> Path:
    """A node's file: `host_id` on 127.0.0.1, its key from NODE_KEY, heartbeats every 0.1 s,
    then `upstreams` (e.g. `upstream_toml(...)`)."""
    path = tmp_path / "node.toml"
    path.write_text(textwrap.dedent(
        f"""
        [node]
        host_id = "{host_id}"
        address = "127.0.0.1"

        [control]
        url = "{control_url}"
        node_key_env = "NODE_KEY"

        [heartbeat]
        interval_s = 0.1
        """
    ) + upstreams)
    return path


def managed_upstream(uid: str, command: list[str], port: int | None = None,
                     **launch: object) -> UpstreamConfig:
    """A managed upstream (`launch`) running `command` from the repository, on `port`."""
    return UpstreamConfig(
        id=uid, adapter="openai", base_url=f"http://127.0.0.1:{port or free_port()}",
        timeout_s=1.0,
        launch=LaunchConfig(command=tuple(command), cwd=REPO, **launch),  # type: ignore[arg-type]
    )


def managed_fake(uid: str, **launch: object) -> UpstreamConfig:
    """A managed upstream running the recording fake upstream (tests/fakes/upstream.py)."""
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port), "--name", uid]
    return managed_upstream(uid, command, port, **launch)


async def http_probe(up: UpstreamConfig) -> ProbeResult:
    """A launcher probe: the upstream's `/health` answers 200."""
    async with httpx.AsyncClient(timeout=1.0) as client:
        try:
            response = await client.get(f"{up.base_url}/health")
        except httpx.ConnectError:
            return ProbeResult(False, "connect refused")
    return ProbeResult(response.status_code == 200, f"HTTP {response.status_code}")


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"

@dataclass
class InProcess:
    url: str
    shutdown: trio.Event
    done: trio.Event
    gateway: Any = None

    async def stop(self) -> None:
        self.shutdown.set()
        await self.done.wait()


async def gateway_in_process(
    nursery: trio.Nursery, config_path: Path, environ: dict[str, str] | None = None
) -> InProcess:
    from geniehive import daemon

    config = load_control(config_path, environ or {})
    shutdown = trio.Event()
    done = trio.Event()
    holder: dict[str, Any] = {}

    async def run(*, task_status: Any) -> None:
        try:
            await daemon.serve_control(
                config, shutdown=shutdown, handle_signals=False, task_status=task_status,
                on_gateway=lambda g: holder.setdefault("gateway", g),
            )
        finally:
            done.set()

    binds = await nursery.start(run)
    return InProcess(binds[0], shutdown, done, holder.get("gateway"))


@dataclass
class Proc:
    process: trio.Process
    url: str
    output: bytearray = field(default_factory=bytearray)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    async def wait_for_text(self, text: str) -> None:
        """Wait until the process has printed `text` (the caller holds the deadline)."""
        wanted = text.encode()
        while wanted not in self.output:  # another process's output: nothing to wait on
            await trio.sleep(0.01)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


async def _spawn(nursery: trio.Nursery, argv: list[str], pattern: re.Pattern[bytes],
                 env: dict[str, str] | None, merge: bool) -> Proc:
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else None,
        env=_env(env), cwd=str(REPO),
    )
    assert process.stdout is not None
    output = bytearray()
    found = trio.Event()
    result: dict[str, str] = {}

    async def pump() -> None:
        try:
            async for chunk in process.stdout:
                output.extend(chunk)
                if not found.is_set():
                    match = pattern.search(output)
                    if match:
                        result["url"] = match.group(1).decode()
                        found.set()
        finally:
            found.set()
            if process.poll() is None:
                process.kill()  # the test ended (or failed): never leave a process behind
            # Reap it even while cancelled: an unreaped child keeps its pidfd open and warns
            # when collected. A killed process exits at once; the bound is only a guard.
            with trio.move_on_after(10) as reap:
                reap.shield = True
                await process.wait()
                await process.stdout.aclose()

    nursery.start_soon(pump)
    await found.wait()
    if "url" not in result:
        await process.wait()
        raise RuntimeError(f"{argv} exited {process.returncode} before listening:\n"
                           + output.decode("utf-8", "replace"))
    return Proc(process, result["url"], output)


def free_port() -> int:
    """A loopback port that was free a moment ago, for servers that cannot bind port 0
    or must come back on the same one: bind port 0, read it, release it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def spawn_node(nursery: trio.Nursery, config: Path,
                     env: dict[str, str] | None = None) -> Proc:
    """`geniehive node` on `config`, returned once it has registered with its control plane;
    `env` adds to the test's environment."""
    argv = [sys.executable, "-m", "geniehive", "node", "--config", str(config)]
    return await _spawn(nursery, argv, re.compile(rb"(registered) with"), env, merge=True)


async def spawn_gateway(nursery: trio.Nursery, config: Path,
                        env: dict[str, str] | None = None) -> Proc:
    argv = [sys.executable, "-m", "geniehive", "serve", "--config", str(config)]
    return await _spawn(nursery, argv, LISTEN_RE, env, merge=True)


async def spawn_fake(nursery: trio.Nursery, *models: str, port: int = 0,
                     module: str = "tests.fakes.upstream", extra: list[str] | None = None
                     ) -> Proc:
    argv = [sys.executable, "-m", module, "--port", str(port)]
    for model in models:
        argv += ["--model", model]
    argv += extra or []
    proc = await _spawn(nursery, argv, re.compile(rb"LISTENING (\d+)"), None, merge=False)
    proc.url = f"http://127.0.0.1:{proc.url}"
    return proc


async def stop(proc: Proc, sig: int = signal.SIGTERM) -> int:
    """Signal a process and wait for its exit status."""
    if proc.process.returncode is None:
        proc.process.send_signal(sig)
    return await proc.process.wait()


async def wait_ready(client: Any, url: str) -> None:
    """Poll /readyz until it answers 200 (the caller holds the deadline)."""
    while True:
        try:
            response = await client.get(f"{url}/readyz")
            if response.status_code == 200:
                return
        except Exception:
            pass
        await trio.sleep(0.05)


class Wire:
    """One HTTP/1.1 client connection (h11 over a trio stream), to see what a server does
    with the connection itself: whether an answer leaves it usable for the next request."""

    def __init__(self, stream: trio.SocketStream) -> None:
        import h11

        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, url: str) -> Wire:
        return cls(await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1])))

    async def request(
        self, method: str, path: str, parts: list[bytes], headers: tuple[tuple[str, str], ...] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request with a chunked body of `parts`; (status, headers, body).

        Raises h11.LocalProtocolError when the previous answer closed the connection.
        """
        import h11

        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        head = [("host", "127.0.0.1"), ("transfer-encoding", "chunked"), *headers]
        await self.stream.send_all(self.conn.send(h11.Request(
            method=method, target=path, headers=head)))
        for part in parts:
            await self.stream.send_all(self.conn.send(h11.Data(data=part)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        status, answer_headers, body = 0, {}, bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, answer_headers, bytes(body)

    async def aclose(self) -> None:
        await self.stream.aclose()
