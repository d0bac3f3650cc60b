"""`[server] workers = 2` on a real `geniehive serve`: one supervising parent, two worker
processes answering on one port, restarted when killed, signalled with the parent, and one
READY=1 for systemd."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import Proc, alive, spawn_gateway, upstream_toml, write_config

pytestmark = pytest.mark.e2e

STARTED_RE = re.compile(r"worker (\d+) started \(pid (\d+)\)")
ASK = [{"role": "user", "content": "hi"}]


def fresh_client(url: str) -> httpx.AsyncClient:
    """A client that opens a new connection for every request (the kernel picks a worker
    per connection)."""
    return httpx.AsyncClient(base_url=url, timeout=10,
                             limits=httpx.Limits(max_keepalive_connections=0))


def worker_pids(gateway: Proc) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the parent's log."""
    return {int(i): int(pid) for i, pid in STARTED_RE.findall(gateway.text())}


def control_file(tmp_path: Path, roles: list[str], body: str = "") -> Path:
    catalog = tmp_path / "roles.toml"
    catalog.write_text("".join(f'[roles.{r}]\noperation = "chat"\n' for r in roles))
    path = write_config(tmp_path, "[server]\nworkers = 2\n" + body, roles=False)
    # write_config's head has its own [server]: fold ours into it.
    text = path.read_text().replace("catalogs = []", f'catalogs = ["{catalog}"]')
    text = text.replace("[server]\nworkers = 2\n", "", 1).replace(
        "[server]\n", "[server]\nworkers = 2\n", 1)
    path.write_text(text)
    return path


async def workers_answering(url: str, count: int) -> list[int]:
    """The worker index behind each of `count` /healthz calls on fresh connections; every
    call must answer 200."""
    seen = []
    async with fresh_client(url) as client:
        for _ in range(count):
            response = await client.get("/healthz")
            assert response.status_code == 200, response.text
            seen.append(response.json()["worker"])
    return seen


async def test_two_workers_answer_on_one_port(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(40):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        config = control_file(tmp_path, ["alpha"], upstream_toml("one", port, ["chat"]))
        gateway = await spawn_gateway(nursery, config)
        assert gateway.text().count("GenieHive listening on") == 1
        assert set(await workers_answering(gateway.url, 40)) == {0, 1}
        async with fresh_client(gateway.url) as client:
            for _ in range(20):
                chat = await client.post("/v1/chat/completions",
                                         json={"model": "alpha", "messages": ASK})
                assert chat.status_code == 200, chat.text
        pids = worker_pids(gateway)
        assert len(set(pids.values())) == 2 and gateway.process.pid not in pids.values()


async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        gateway = await spawn_gateway(nursery, control_file(tmp_path, ["alpha"]))
        victim = worker_pids(gateway)[1]
        os.kill(victim, signal.SIGKILL)
        # Meanwhile worker 0 answers; a connection refused in the handover may be retried.
        async with fresh_client(gateway.url) as client:
            for _ in range(20):
                while True:
                    try:
                        response = await client.get("/healthz")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
                assert response.status_code == 200
        await gateway.wait_for_text(f"worker 1 (pid {victim}) exited with signal SIGKILL; "
                                    "restarting")
        while worker_pids(gateway)[1] == victim:  # noqa: ASYNC110 - another process's log
            await trio.sleep(0.05)
        while 1 not in await workers_answering(gateway.url, 10):
            pass  # the new worker 1 is still starting
        assert set(await workers_answering(gateway.url, 40)) == {0, 1}
        assert gateway.process.returncode is None


async def test_sigterm_stops_every_worker_and_the_parent_exits_0(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        gateway = await spawn_gateway(nursery, control_file(tmp_path, ["alpha"]))
        pids = list(worker_pids(gateway).values())
        assert all(alive(pid) for pid in pids)
        gateway.process.send_signal(signal.SIGTERM)
        assert await gateway.process.wait() == 0, gateway.text()
        assert not any(alive(pid) for pid in pids), gateway.text()
        assert "restarting" not in gateway.text()


async def test_sighup_to_the_parent_reloads_every_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake = FakeUpstream(["m1"])
        port = await nursery.start(fake.serve)
        upstream = upstream_toml("one", port, ["chat"])
        gateway = await spawn_gateway(nursery, control_file(tmp_path, ["alpha"], upstream))
        beta = {"model": "beta", "messages": ASK}
        async with fresh_client(gateway.url) as client:
            before = await client.post("/v1/chat/completions", json=beta)
            control_file(tmp_path, ["alpha", "beta"], upstream)
            gateway.process.send_signal(signal.SIGHUP)
            while gateway.text().count("reloaded ") < 2:  # noqa: ASYNC110 - one per worker
                await trio.sleep(0.05)
            after = [await client.post("/v1/chat/completions", json=beta) for _ in range(20)]
        assert before.status_code == 404
        assert [r.status_code for r in after] == [200] * 20
        assert "server.bind changed" not in gateway.text()  # the concrete port is kept


async def test_the_parent_reports_ready_once_and_stopping_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    address = tmp_path / "notify"
    env = {"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}
    states: list[str] = []

    async def until(sock: trio.socket.SocketType, state: str) -> None:
        start = len(states)
        while state not in states[start:]:
            states.extend((await sock.recv(4096)).decode().splitlines())

    with trio.fail_after(40):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(str(address))
            async with trio.open_nursery() as nursery:
                gateway = await spawn_gateway(nursery, control_file(tmp_path, ["alpha"]), env)
                await until(sock, "READY=1")
                assert set(await workers_answering(gateway.url, 20)) == {0, 1}
                await until(sock, "WATCHDOG=1")
                gateway.process.send_signal(signal.SIGHUP)
                await until(sock, "RELOADING=1")
                await until(sock, "READY=1")
                assert gateway.text().count("reloaded ") == 2  # both, before READY=1
                gateway.process.send_signal(signal.SIGTERM)
                await until(sock, "STOPPING=1")
                assert await gateway.process.wait() == 0
                with trio.move_on_after(0.2):
                    await until(sock, "never")
    # Started, then reloaded: never once per worker.
    assert states.count("READY=1") == 2, [s for s in states if s != "WATCHDOG=1"]
    assert states.count("STOPPING=1") == 1, states


async def test_a_worker_that_cannot_start_stops_the_parent(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    (tmp_path / "blocked").write_text("a file where the registry's folder should be")
    config = control_file(tmp_path, ["alpha"])
    config.write_text(config.read_text().replace("state/geniehive", "blocked/geniehive", 1))
    with trio.fail_after(40):
        with pytest.raises(RuntimeError, match="exited 1 before listening") as caught:
            await spawn_gateway(nursery, config)
    assert "before it was ready: stopping" in str(caught.value)
    assert "restarting" not in str(caught.value)


async def test_the_supervising_parent_imports_no_app() -> None:
    code = ("import sys, geniehive.cli, geniehive.workers; "
            "print(sorted(m for m in ('quart', 'quart_trio', 'hypercorn', 'geniehive.app', "
            "'geniehive.daemon') if m in sys.modules))")
    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
    assert done.stdout.decode().strip() == "[]"


async def test_what_one_worker_is_told_every_worker_knows(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    from tests.harness import node_file, spawn_node

    with trio.fail_after(40):
        fake = FakeUpstream(["shared"])
        port = await nursery.start(fake.serve)
        gateway = await spawn_gateway(nursery, control_file(tmp_path, []))
        # The node's heartbeats keep one connection, so one worker hears it; both route to it.
        node = await spawn_node(nursery, node_file(
            tmp_path, gateway.url, upstream_toml("gpu-w-up", port, ["chat"]), host_id="gpu-w"),
            {"NODE_KEY": "unused-in-open-mode"})
        async def ask() -> tuple[int, httpx.Response]:
            """The worker behind one new connection, and its answer to a chat for the node's
            model (both on that connection)."""
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
                worker = (await client.get("/healthz")).json()["worker"]
                chat = await client.post("/v1/chat/completions",
                                         json={"model": "shared", "messages": ASK})
                return worker, chat

        # Until both workers have answered for the node: the one that heard it at once, the
        # other once it read the first one's writes (within a second).
        knowing: set[int] = set()
        while knowing != {0, 1}:
            worker, chat = await ask()
            if chat.status_code == 200:
                knowing.add(worker)
            else:
                await trio.sleep(0.05)
        answers = [await ask() for _ in range(30)]
        assert {worker for worker, _ in answers} == {0, 1}
        for _, chat in answers:
            assert chat.status_code == 200, chat.text
            assert chat.headers["x-geniehive-service"] == "gpu-w-up/chat"
        node.process.send_signal(signal.SIGTERM)
        assert await node.process.wait() == 0
