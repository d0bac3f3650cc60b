"""Slow and hostile clients on the wire: header and body timeouts, the key gate before the
body, the connection bound and OPTIONS without a key, on real sockets."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geniehive.app import create_app
from tests.fakes.upstream import FakeUpstream
from tests.harness import InProcess, gateway_in_process, upstream_toml, write_config

KEY = "sk-edge-apps"
ADMIN_KEY = "sk-edge-admin"
KEYS = textwrap.dedent(
    """
    [[auth.keys]]
    name = "apps"
    key_env = "APPS_KEY"
    scopes = ["inference", "node"]

    [[auth.keys]]
    name = "admin"
    key_env = "ADMIN_KEY"
    scopes = ["admin", "read", "operate"]
    """
)
ENV = {"APPS_KEY": KEY, "ADMIN_KEY": ADMIN_KEY}
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def edge_config(tmp_path: Path, port: int, server: str, extra: str = "") -> Path:
    """A control file with `server` lines added to its [server] table."""
    path = write_config(tmp_path, extra + upstream_toml("fake", port, ["chat"]))
    text = path.read_text().replace("shutdown_grace_s = 5", "shutdown_grace_s = 5\n" + server)
    path.write_text(text)
    return path


async def start_edge(
    nursery: trio.Nursery, tmp_path: Path, server: str, *, keys: bool = False, extra: str = ""
) -> InProcess:
    fake = FakeUpstream(["m1"])
    port = await nursery.start(fake.serve)
    config = edge_config(tmp_path, port, server, (KEYS if keys else "") + extra)
    return await gateway_in_process(nursery, config, ENV if keys else None)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def connect(url: str) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port_of(url))


async def read_to_close(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def head(method: str, path: str, *extra: str, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def slow(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[InProcess]:
    """Open mode, small timeouts."""
    with trio.fail_after(10):
        running = await start_edge(
            nursery, tmp_path, "header_timeout_s = 0.5\nbody_timeout_s = 0.5"
        )
    yield running
    with trio.fail_after(10):
        await running.stop()


@pytest.fixture
async def keyed(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[InProcess]:
    """Keys configured, the node endpoints on the client port."""
    with trio.fail_after(10):
        running = await start_edge(nursery, tmp_path, "body_timeout_s = 5", keys=True)
    yield running
    with trio.fail_after(10):
        await running.stop()


# --- header timeout -------------------------------------------------------------------------


async def test_a_trickled_head_is_closed_after_the_header_timeout_while_others_are_served(
    slow: InProcess,
) -> None:
    with trio.fail_after(15):
        stream = await connect(slow.url)
        started = trio.current_time()
        await stream.send_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answers: list[int] = []

        async def trickle() -> None:
            try:
                for byte in b"X-Slow: " + b"a" * 200:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def others() -> None:
            async with httpx.AsyncClient(base_url=slow.url, timeout=5) as client:
                for _ in range(5):
                    answers.append((await client.get("/v1/models")).status_code)
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(others)
            async with trio.open_nursery() as trickling:
                trickling.start_soon(trickle)
                raw = await read_to_close(stream)
                closed_after = trio.current_time() - started
                trickling.cancel_scope.cancel()
        await stream.aclose()
    status, headers, body = parse_answer(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.4 <= closed_after < 5
    assert answers == [200] * 5


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    slow: InProcess,
) -> None:
    with trio.fail_after(15):
        stream = await connect(slow.url)
        started = trio.current_time()
        raw = await read_to_close(stream)
        closed_after = trio.current_time() - started
        await stream.aclose()
    assert raw == b""
    assert 0.4 <= closed_after < 5


async def test_the_keep_alive_wait_between_requests_is_not_cut_by_the_header_timeout(
    slow: InProcess,
) -> None:
    with trio.fail_after(15):
        async with httpx.AsyncClient(base_url=slow.url, timeout=5) as client:
            first = await client.get("/healthz")
            await trio.sleep(1.0)  # twice the header timeout, well inside keep_alive_timeout
            second = await client.get("/healthz")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.extensions["network_stream"] is second.extensions["network_stream"]


async def test_a_pipelined_head_left_unfinished_is_held_to_the_header_timeout(
    slow: InProcess,
) -> None:
    with trio.fail_after(15):
        stream = await connect(slow.url)
        await stream.send_all(head("GET", "/healthz") + b"GET /healthz HTTP/1.1\r\nHost: x")
        started = trio.current_time()
        raw = await read_to_close(stream)
        closed_after = trio.current_time() - started
        await stream.aclose()
    first, _, rest = raw.partition(b"HTTP/1.1 408")
    assert first.startswith(b"HTTP/1.1 200")
    assert b"request_timeout" in rest
    assert 0.4 <= closed_after < 5


# --- body timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/nodes/register", "/v1/cluster/routes/match"]
)
async def test_an_announced_body_that_never_comes_is_408_and_closed(
    slow: InProcess, path: str
) -> None:
    with trio.fail_after(15):
        stream = await connect(slow.url)
        await stream.send_all(head("POST", path, length=100_000))
        started = trio.current_time()
        raw = await read_to_close(stream)
        closed_after = trio.current_time() - started
        await stream.aclose()
    status, headers, body = parse_answer(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.4 <= closed_after < 5


async def test_a_body_that_stalls_midway_is_408_and_closed(slow: InProcess) -> None:
    with trio.fail_after(15):
        stream = await connect(slow.url)
        await stream.send_all(head("POST", "/v1/chat/completions", length=100_000))
        for _ in range(4):  # gaps under the body timeout keep it going
            await stream.send_all(b" " * 100)
            await trio.sleep(0.25)
        stalled = trio.current_time()
        raw = await read_to_close(stream)
        closed_after = trio.current_time() - stalled
        await stream.aclose()
    status, headers, _ = parse_answer(raw)
    assert (status, headers["connection"]) == (408, "close")
    assert 0.2 <= closed_after < 5


# --- the key gate before the body -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nodes/register", "/v1/chat/completions",
                                  "/v1/cluster/benchmarks"])
async def test_an_unauthenticated_big_post_is_refused_before_its_body_and_closed(
    keyed: InProcess, path: str
) -> None:
    with trio.fail_after(10):
        stream = await connect(keyed.url)
        await stream.send_all(head("POST", path, "X-Api-Key: wrong", length=4 * 1024 * 1024))
        raw = await read_to_close(stream)  # only the head was sent: this must not wait for it
        await stream.aclose()
    status, headers, body = parse_answer(raw)
    assert status == 401
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


async def test_a_refused_forwarding_request_is_still_counted_in_the_metrics(
    keyed: InProcess,
) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=keyed.url, timeout=5) as client:
            refused = await client.post("/v1/chat/completions", json=CHAT)
            metrics = await client.get("/metrics", headers={"X-Api-Key": ADMIN_KEY})
    assert refused.status_code == 401
    counted = [line for line in metrics.text.splitlines()
               if line.startswith("geniehive_requests_total{") and 'status="401"' in line]
    assert counted and 'endpoint="chat"' in counted[0]


async def test_the_node_port_refuses_before_the_body_and_times_out_slow_bodies(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "geniehive.nodes")
    with trio.fail_after(15):
        running = await start_edge(
            nursery, tmp_path, "header_timeout_s = 0.5\nbody_timeout_s = 0.5", keys=True,
            extra='[nodes]\nbind = ["127.0.0.1:0"]\n',
        )
        match = re.search(r"node endpoints listening on (\S+)", caplog.text)
        assert match is not None
        node_url = match.group(1)
        refused = await connect(node_url)
        await refused.send_all(head("POST", "/v1/nodes/register", length=4 * 1024 * 1024))
        refused_raw = await read_to_close(refused)
        slow_body = await connect(node_url)
        await slow_body.send_all(
            head("POST", "/v1/nodes/register", f"X-GenieHive-Node-Key: {KEY}", length=1000))
        slow_raw = await read_to_close(slow_body)
        slow_head = await connect(node_url)
        await slow_head.send_all(b"POST /v1/nodes/register HTTP/1.1\r\n")
        head_raw = await read_to_close(slow_head)
        for stream in (refused, slow_body, slow_head):
            await stream.aclose()
        await running.stop()
    status, headers, _ = parse_answer(refused_raw)
    assert (status, headers["connection"]) == (401, "close")
    assert parse_answer(slow_raw)[0] == 408
    assert parse_answer(head_raw)[0] == 408


async def test_a_valid_key_still_reaches_the_routes(keyed: InProcess) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=keyed.url, timeout=5) as client:
            chat = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={"Authorization": f"Bearer {KEY}"})
            scoped = await client.get("/v1/cluster/hosts", headers={"X-Api-Key": KEY})
            probe = await client.get("/healthz")
            page = await client.get("/playground")
            root = await client.head("/")  # Claude Code's first request, sent without a key
    assert chat.status_code == 200
    assert scoped.status_code == 403  # the scope check stays with the route
    assert (probe.status_code, page.status_code, root.status_code) == (200, 200, 200)


# --- OPTIONS --------------------------------------------------------------------------------


def concrete(rule: str) -> str:
    return re.sub(r"<[^>]+>", "x", rule)


async def test_options_needs_a_key_on_every_route_but_the_probes(keyed: InProcess) -> None:
    rules = sorted({concrete(r.rule) for r in create_app(keyed.gateway).url_map.iter_rules()
                    if not r.rule.startswith("/static")})
    assert "/metrics" in rules and "/v1/admin/keys" in rules
    without: dict[str, int] = {}
    with_key: dict[str, int] = {}
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=keyed.url, timeout=5) as client:
            for path in rules:
                without[path] = (await client.options(path)).status_code
                with_key[path] = (await client.options(
                    path, headers={"X-Api-Key": ADMIN_KEY})).status_code
    expected = {p: 200 if p in ("/healthz", "/readyz") else 401 for p in rules}
    assert without == expected
    assert with_key == dict.fromkeys(rules, 200)


# --- the connection bound -------------------------------------------------------------------


async def test_past_max_connections_a_new_connection_waits_for_a_free_slot(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        running = await start_edge(nursery, tmp_path, "max_connections = 3\nheader_timeout_s = 30")
        holders = [await connect(running.url) for _ in range(3)]
        await trio.sleep(0.2)  # let the gateway accept them
        answered: list[Any] = []
        done = trio.Event()

        async def fourth() -> None:
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
                answered.append((await client.get("/healthz")).status_code)
            done.set()

        nursery.start_soon(fourth)
        await trio.sleep(0.5)
        waited = list(answered)
        await holders[0].aclose()
        await done.wait()
        for stream in holders[1:]:
            await stream.aclose()
        await running.stop()
    assert waited == []
    assert answered == [200]


# --- invalid keys from one address ----------------------------------------------------------


async def test_repeated_wrong_secrets_are_429_with_retry_after_while_right_keys_pass(
    keyed: InProcess,
) -> None:
    admin = {"X-Api-Key": ADMIN_KEY}
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=keyed.url, timeout=5) as client:
            created = (await client.post("/v1/admin/keys", headers=admin,
                                         json={"name": "app", "scopes": ["inference"]})).json()
            right = {"Authorization": f"Bearer {created['key']}"}
            wrong = {"Authorization": f"Bearer gh_{created['key_id']}_wrong-secret"}
            assert (await client.get("/v1/models", headers=right)).status_code == 200
            statuses = [(await client.get("/v1/models", headers=wrong)).status_code
                        for _ in range(11)]
            throttled = await client.get("/v1/models", headers=wrong)
            still = await client.post("/v1/chat/completions", json=CHAT, headers=right)
            static = await client.get("/v1/models", headers={"X-Api-Key": KEY})
    assert statuses == [401] * 10 + [429]
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "too_many_auth_failures"
    assert int(throttled.headers["retry-after"]) >= 1
    assert (still.status_code, static.status_code) == (200, 200)
