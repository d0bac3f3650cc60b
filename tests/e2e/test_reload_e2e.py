"""Hot reload on a real `geniehive serve`: SIGHUP and `POST /v1/admin/reload` change roles,
keys, routing and upstreams while a stream in flight keeps going to its end."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.upstream import FakeUpstream
from tests.harness import REPO, Proc, free_port, spawn_gateway, upstream_toml, write_config

pytestmark = pytest.mark.e2e

ENV = {"OPS_KEY": "ops-secret-1", "OLD_KEY": "old-secret-1", "NEW_KEY": "new-secret-1"}
OPS = {"Authorization": "Bearer ops-secret-1"}
OPS_KEY = """
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["inference", "admin"]
"""
OLD_KEY = """
[[auth.keys]]
name = "old"
key_env = "OLD_KEY"
scopes = ["inference"]
"""
NEW_KEY = """
[[auth.keys]]
name = "new"
key_env = "NEW_KEY"
scopes = ["inference"]
"""
ASK = [{"role": "user", "content": "hi"}]


def control_file(tmp_path: Path, body: str, roles: list[str]) -> Path:
    """The control file with only the roles of `roles.toml` (each a plain chat role)."""
    catalog = tmp_path / "roles.toml"
    catalog.write_text("".join(f'[roles.{r}]\noperation = "chat"\n' for r in roles))
    path = write_config(tmp_path, body, roles=False)
    text = path.read_text().replace("catalogs = []", f'catalogs = ["{catalog}"]')
    path.write_text(text)
    return path


def chat(model: str, *, stream: bool = False) -> dict[str, object]:
    return {"model": model, "messages": ASK, "stream": stream}


async def start_fake(nursery: trio.Nursery, *models: str) -> tuple[FakeUpstream, int]:
    fake = FakeUpstream(list(models))
    return fake, await nursery.start(fake.serve)


async def sighup_and_wait(gateway: Proc) -> None:
    """Send SIGHUP and wait for the reload to be logged (the first of the process)."""
    gateway.process.send_signal(signal.SIGHUP)
    await gateway.wait_for_text("reloaded ")


def content_of(raw: bytes) -> str:
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]
    assert events[-1] == b"[DONE]", raw
    assert not any(b'"error"' in e for e in events), raw
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])


async def test_sighup_adds_a_role_and_a_key_and_a_stream_in_flight_completes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake, port = await start_fake(nursery, "m1")
        upstream = upstream_toml("one", port, ["chat"])
        config = control_file(tmp_path, OPS_KEY + OLD_KEY + upstream, ["alpha"])
        gateway = await spawn_gateway(nursery, config, ENV)
        fake.set_fault("hold_stream", after_chunks=1, times=1, path="/v1/chat/completions")
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
            client.stream("POST", "/v1/chat/completions", json=chat("m1", stream=True),
                          headers=OPS) as stream,
        ):
            chunks = stream.aiter_raw()
            raw = await chunks.__anext__()
            # A new role and key, the old key gone, other routing limits.
            routing = "\n[routing]\nmax_attempts = 1\nfirst_token_timeout_s = 30\n"
            config = control_file(tmp_path, OPS_KEY + NEW_KEY + routing + upstream,
                                  ["alpha", "beta"])
            await sighup_and_wait(gateway)
            beta = await client.post("/v1/chat/completions", json=chat("beta"), headers=OPS)
            new = await client.post("/v1/chat/completions", json=chat("alpha"),
                                    headers={"Authorization": "Bearer new-secret-1"})
            old = await client.post("/v1/chat/completions", json=chat("alpha"),
                                    headers={"Authorization": "Bearer old-secret-1"})
            fake.release()
            raw += b"".join([chunk async for chunk in chunks])
        assert beta.status_code == 200, beta.text
        assert beta.headers["x-geniehive-route"] == "role:beta"
        assert new.status_code == 200, new.text
        assert old.status_code == 401
        assert content_of(raw)  # the whole answer, ended by [DONE], no error event
        assert stream.status_code == 200
        log = gateway.text()
        assert "changed auth.keys, routing, roles" in log
        assert gateway.process.returncode is None


async def test_reload_adds_and_removes_upstreams_and_the_removed_ones_stream_finishes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake1, port1 = await start_fake(nursery, "m1")
        _, port2 = await start_fake(nursery, "m2")
        one, two = upstream_toml("one", port1, ["chat"]), upstream_toml("two", port2, ["chat"])
        config = control_file(tmp_path, OPS_KEY + one, ["alpha"])
        gateway = await spawn_gateway(nursery, config, ENV)
        fake1.set_fault("hold_stream", after_chunks=1, times=1, path="/v1/chat/completions")
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=OPS) as client,
            client.stream("POST", "/v1/chat/completions", json=chat("m1", stream=True)) as stream,
        ):
            chunks = stream.aiter_raw()
            raw = await chunks.__anext__()
            before = await client.post("/v1/chat/completions", json=chat("m2"))
            control_file(tmp_path, OPS_KEY + two, ["alpha"])
            reloaded = await client.post("/v1/admin/reload")
            added = await client.post("/v1/chat/completions", json=chat("m2"))
            removed = await client.post("/v1/chat/completions", json=chat("m1"))
            fake1.release()
            raw += b"".join([chunk async for chunk in chunks])
        assert before.status_code == 404
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json() == {"status": "reloaded", "changed": ["upstreams"],
                                   "restart_needed": []}
        assert added.status_code == 200, added.text
        assert added.json()["model"] == "m2"
        assert removed.status_code == 404
        assert content_of(raw)
        # Nothing but the held stream reached the removed upstream after the reload.
        assert [r["path"] for r in fake1.requests if r["method"] == "POST"] == [
            "/v1/chat/completions"
        ]


async def test_a_broken_file_changes_nothing_and_names_every_problem(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        _, port = await start_fake(nursery, "m1")
        upstream = upstream_toml("one", port, ["chat"])
        config = control_file(tmp_path, OPS_KEY + OLD_KEY + upstream, ["alpha"])
        gateway = await spawn_gateway(nursery, config, ENV)
        broken = "\n[routing]\nbogus = 1\nmax_attempts = 0\n"
        control_file(tmp_path, OPS_KEY + broken + upstream, ["alpha", "beta"])
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=OPS) as client:
            refused = await client.post("/v1/admin/reload")
            alpha = await client.post("/v1/chat/completions", json=chat("alpha"))
            beta = await client.post("/v1/chat/completions", json=chat("beta"))
            old = await client.post("/v1/chat/completions", json=chat("alpha"),
                                    headers={"Authorization": "Bearer old-secret-1"})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "invalid_config"
        assert error["type"] == "invalid_request_error"
        paths = sorted(p.split(":")[0] for p in error["problems"])
        assert paths == ["routing.bogus", "routing.max_attempts"]
        assert all(p in error["message"] for p in error["problems"])
        assert alpha.status_code == 200
        assert beta.status_code == 404  # the role of the refused file was not added
        assert old.status_code == 200  # the key it left out still works
        log = gateway.text()
        assert "routing.bogus" in log and "routing.max_attempts" in log


async def test_a_changed_bind_is_reported_as_needing_a_restart_and_not_applied(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        _, port = await start_fake(nursery, "m1")
        upstream = upstream_toml("one", port, ["chat"])
        config = control_file(tmp_path, OPS_KEY + upstream, ["alpha"])
        gateway = await spawn_gateway(nursery, config, ENV)
        other = free_port()
        text = config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{other}"')
        config.write_text(text.replace("interval_s = 0.2\ntimeout", "interval_s = 0.3\ntimeout"))
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=OPS) as client:
            answer = await client.post("/v1/admin/reload")
            still = await client.post("/v1/chat/completions", json=chat("m1"))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "reloaded", "changed": ["prober"],
                                 "restart_needed": ["server.bind"]}
        assert still.status_code == 200  # still served where it was
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", other)
        assert "server.bind changed but is read only at start: restart" in gateway.text()


async def test_the_reload_endpoint_needs_the_admin_scope(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        config = control_file(tmp_path, OPS_KEY + OLD_KEY, ["alpha"])
        gateway = await spawn_gateway(nursery, config, ENV)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            inference = await client.post("/v1/admin/reload",
                                          headers={"Authorization": "Bearer old-secret-1"})
            anonymous = await client.post("/v1/admin/reload")
            admin = await client.post("/v1/admin/reload", headers=OPS)
        assert inference.status_code == 403
        assert inference.json()["error"]["code"] == "insufficient_scope"
        assert anonymous.status_code == 401
        assert admin.json() == {"status": "reloaded", "changed": [], "restart_needed": []}


def managed_toml(upstream_id: str, port: int, model: str) -> str:
    """A managed upstream (`launch`): the fake upstream as a process of the gateway's."""
    command = ["python", "-m", "tests.fakes.upstream", "--port", str(port), "--model", model]
    return upstream_toml(upstream_id, port, ["chat"], extra=textwrap.dedent(f"""
        [upstreams.launch]
        command = {json.dumps(command)}
        cwd = "{REPO}"
        ready_timeout_s = 20
        stop_grace_s = 2
    """))


async def refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_a_managed_upstream_added_by_reload_is_started_and_stopped_when_removed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        _, port = await start_fake(nursery, "m1")
        one = upstream_toml("one", port, ["chat"])
        config = control_file(tmp_path, OPS_KEY + one, ["alpha"])
        gateway = await spawn_gateway(nursery, config, ENV)
        managed_port = free_port()
        control_file(tmp_path, OPS_KEY + one + managed_toml("managed", managed_port, "mm"),
                     ["alpha"])
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=OPS) as client:
            added = await client.post("/v1/admin/reload")
            # Started in the background, then discovered: routable soon after (another
            # process's state: nothing to wait on but polling).
            while (await client.post("/v1/chat/completions", json=chat("mm"))).status_code \
                    != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)
            control_file(tmp_path, OPS_KEY + one, ["alpha"])
            removed = await client.post("/v1/admin/reload")
            while not await refused(managed_port):  # noqa: ASYNC110 - the process stopped
                await trio.sleep(0.1)
            gone = await client.post("/v1/chat/completions", json=chat("mm"))
        assert added.json()["changed"] == ["upstreams"]
        assert removed.json()["changed"] == ["upstreams"]
        assert gone.status_code == 404
        assert "managed upstream managed: stopped by a reload" in gateway.text()
