"""The node endpoints, the heartbeat listener and the node agent against a real control plane."""

from __future__ import annotations

import json
import logging
import re
import ssl
import subprocess
import textwrap
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geniehive.adapters.loader import load_adapters
from geniehive.api_nodes import run_heartbeat_listener
from geniehive.config import load_control, load_node
from geniehive.gateway import Gateway
from geniehive.models import Host, Snapshot
from geniehive.node import run_node
from geniehive.registry import open_registry
from geniehive.registry_follow import Leadership
from tests.fakes.upstream import FakeUpstream
from tests.harness import Wire, upstream_toml, write_config
from tests.nodeapi import assert_error, heartbeat, payload, start

KEYS = textwrap.dedent(
    """
    [[auth.keys]]
    name = "node"
    key_env = "NODE_KEY"
    scopes = ["node"]

    [[auth.keys]]
    name = "reader"
    key_env = "READ_KEY"
    scopes = ["read", "inference"]
    """
)
ENV = {"NODE_KEY": "node-secret", "READ_KEY": "read-secret"}


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Any]:
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path)
    yield running, client
    await client.aclose()
    with trio.fail_after(10):
        await running.stop()


async def test_register_is_in_the_snapshot_when_the_200_arrives(control: Any) -> None:
    running, client = control
    with trio.fail_after(5):
        response = await client.post("/v1/nodes/register", json=payload())
    # Checked before any other checkpoint: the write was published before the answer.
    snapshot = running.gateway.snapshot
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["host"]["host_id"] == "gpu-01"
    assert body["host"]["labels"] == {"trust_tier": "trusted"}
    assert snapshot.hosts["gpu-01"].last_heartbeat is not None
    service = snapshot.services["gpu-01-vllm/chat"]
    assert (service.host_id, service.base_url) == ("gpu-01", "http://127.0.0.1:9")
    assert service.asset("node-model").loaded is True


async def test_a_service_owned_by_another_host_is_409_naming_both(control: Any) -> None:
    running, client = control
    with trio.fail_after(5):
        assert (await client.post("/v1/nodes/register", json=payload())).status_code == 200
        response = await client.post("/v1/nodes/register", json=payload(host_id="gpu-02"))
    error = assert_error(response, 409, "conflict")
    assert "gpu-01-vllm/chat" in error["message"] and "gpu-01" in error["message"]
    assert "gpu-02" not in running.gateway.snapshot.hosts


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"address": "127.0.0.1", "services": []}, "host_id"),
        (payload(services=[{"service_id": "a/chat", "operation": "chat", "adapter": "openai"}]),
         "services[0].base_url"),
        (payload(services=[{"service_id": "a/chat", "operation": "chat", "adapter": "nope",
                            "base_url": "http://127.0.0.1:9"}]), "services[0].adapter"),
        (payload(labels={"trust_tier": 1}), "labels.trust_tier"),
    ],
)
async def test_malformed_register_is_400_naming_the_field(
    control: Any, body: Any, param: str
) -> None:
    _, client = control
    with trio.fail_after(5):
        response = await client.post("/v1/nodes/register", json=body)
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"host_id": NaN}', b"[" * 100_000])
async def test_a_body_that_is_not_json_is_400(control: Any, raw: bytes) -> None:
    _, client = control
    with trio.fail_after(5):
        response = await client.post("/v1/nodes/heartbeat", content=raw)
    assert_error(response, 400, "invalid_request")


async def test_the_local_host_cannot_be_claimed_by_a_node(control: Any) -> None:
    _, client = control
    with trio.fail_after(5):
        response = await client.post("/v1/nodes/heartbeat", json=heartbeat(host_id="local"))
    assert assert_error(response, 400, "invalid_request")["param"] == "host_id"


async def test_heartbeat_from_an_unknown_host_is_404_unknown_host(control: Any) -> None:
    _, client = control
    with trio.fail_after(5):
        response = await client.post("/v1/nodes/heartbeat", json=heartbeat(host_id="ghost"))
    assert assert_error(response, 404, "unknown_host")["param"] == "host_id"


async def test_heartbeat_replaces_the_services_and_records_metrics(control: Any) -> None:
    running, client = control
    with trio.fail_after(5):
        await client.post("/v1/nodes/register", json=payload())
        before = running.gateway.snapshot.hosts["gpu-01"].last_heartbeat
        response = await client.post("/v1/nodes/heartbeat", json=heartbeat())
    assert response.status_code == 200
    snapshot = running.gateway.snapshot
    assert "gpu-01-vllm/chat" not in snapshot.services  # an empty list means none now
    assert snapshot.hosts["gpu-01"].metrics == {"gpu_count": 0}
    assert snapshot.hosts["gpu-01"].last_heartbeat >= before


async def test_services_sent_as_before_are_not_read_again_and_a_change_is_checked(
    control: Any,
) -> None:
    running, client = control
    services = payload()["services"]
    with trio.fail_after(5):
        await client.post("/v1/nodes/register", json=payload())
        await client.post("/v1/nodes/heartbeat", json=heartbeat(services=services))
        first = running.gateway.snapshot.services["gpu-01-vllm/chat"]
        again = await client.post("/v1/nodes/heartbeat", json=heartbeat(services=services))
        kept = running.gateway.snapshot.services["gpu-01-vllm/chat"]
        broken = [{**services[0], "assets": [{"asset_id": "node-model", "loaded": "yes"}]}]
        refused = await client.post("/v1/nodes/heartbeat", json=heartbeat(services=broken))
        # Another host sending the same JSON gets services of its own, checked for it.
        await client.post("/v1/nodes/register", json=payload(host_id="gpu-02", service="b/chat"))
        theirs = await client.post("/v1/nodes/heartbeat", json=heartbeat("gpu-02", services))
    assert again.status_code == 200
    assert kept is first  # the same reading: neither parsed nor written again
    assert assert_error(refused, 400, "invalid_request")["param"] == \
        "services[0].assets[0].loaded"
    assert running.gateway.snapshot.services["gpu-01-vllm/chat"] is first
    assert assert_error(theirs, 409, "conflict")["param"] == "services"


async def test_the_answer_names_the_hosts_upstreams_with_requests_in_flight(
    control: Any,
) -> None:
    running, client = control
    with trio.fail_after(5):
        registered = await client.post("/v1/nodes/register", json=payload())
        assert registered.json()["active_upstreams"] == []
        running.gateway.live.attempt_started("gpu-01-vllm/chat", 0.0)  # a request runs there
        beat = await client.post("/v1/nodes/heartbeat",
                                 json=heartbeat(services=payload()["services"]))
        assert beat.json()["active_upstreams"] == ["gpu-01-vllm"]
        running.gateway.live.attempt_abandoned("gpu-01-vllm/chat")
        beat = await client.post("/v1/nodes/heartbeat",
                                 json=heartbeat(services=payload()["services"]))
        assert beat.json()["active_upstreams"] == []


async def test_node_endpoints_need_a_key_with_the_node_scope(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            url = "/v1/nodes/register"
            assert_error(await client.post(url, json=payload()), 401, "invalid_api_key")
            wrong = {"X-GenieHive-Node-Key": "nope"}
            assert_error(await client.post(url, json=payload(), headers=wrong), 401,
                         "invalid_api_key")
            reader = {"Authorization": "Bearer read-secret"}
            assert_error(await client.post(url, json=payload(), headers=reader), 403,
                         "insufficient_scope")
            node = {"X-GenieHive-Node-Key": "node-secret"}
            assert (await client.post(url, json=payload(), headers=node)).status_code == 200
            bearer = {"Authorization": "Bearer node-secret"}
            response = await client.post("/v1/nodes/heartbeat", json=heartbeat(), headers=bearer)
            assert response.status_code == 200
        await running.stop()


# --- the node agent against the control plane -----------------------------------------------


def node_file(tmp_path: Path, control_url: str, upstream_port: int, body: str = "") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(textwrap.dedent(
        f"""
        [node]
        host_id = "gpu-t"
        address = "127.0.0.1"
        labels = {{ trust_tier = "trusted" }}

        [control]
        url = "{control_url}"
        node_key_env = "NODE_KEY"

        [heartbeat]
        interval_s = 0.1

        [inventory]
        model_roots = ["models"]
        """
    ) + upstream_toml("gpu-t-fake", upstream_port, ["chat", "embeddings"]) + body)
    return path


async def wait_for(predicate: Any) -> None:
    # The registry publishes snapshots without an event to wait on; poll (under a deadline).
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_the_agent_registers_heartbeats_and_re_registers_when_forgotten(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF")
    with trio.fail_after(20):
        fake = FakeUpstream(["node-model"])
        port = await nursery.start(fake.serve)
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        await client.aclose()
        config = load_node(node_file(tmp_path, running.url, port), ENV)
        agent = trio.CancelScope()

        async def run_agent(*, task_status: Any) -> None:
            with agent:
                await run_node(config, task_status=task_status)

        await nursery.start(run_agent)
        gateway = running.gateway
        await wait_for(lambda: "gpu-t-fake/chat" in gateway.snapshot.services)
        snapshot = gateway.snapshot
        host = snapshot.hosts["gpu-t"]
        assert host.capabilities["discovered_models"] == [
            {"path": str(tmp_path / "models" / "tiny.gguf"), "size_bytes": 4}
        ]
        service = snapshot.services["gpu-t-fake/embeddings"]
        assert service.base_url == f"http://127.0.0.1:{port}"
        assert service.asset("node-model").loaded is True
        assert service.state.health == "healthy"

        first = host.last_heartbeat
        await wait_for(lambda: gateway.snapshot.hosts["gpu-t"].last_heartbeat > first)

        await gateway.registry.forget_host("gpu-t")
        assert "gpu-t" not in gateway.snapshot.hosts
        await wait_for(lambda: "gpu-t-fake/chat" in gateway.snapshot.services)
        agent.cancel()
        await running.stop()


async def test_the_agent_starts_before_its_control_plane_is_up(tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback (discard): the first attempt fails, yet the agent
    # reports started, so a node can boot before the control plane.
    config = load_node(node_file(tmp_path, "http://127.0.0.1:9", 9), ENV)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_node, config)
            nursery.cancel_scope.cancel()


# --- the listener on its own port, and host expiry ------------------------------------------


async def test_with_nodes_bind_the_endpoints_leave_the_client_port(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "geniehive.nodes")
    with trio.fail_after(10):
        running, client = await start(nursery, tmp_path, '[nodes]\nbind = ["127.0.0.1:0"]\n')
        async with client:
            response = await client.post("/v1/nodes/register", json=payload())
            assert response.status_code in (404, 405)
            node_url = re.search(r"node endpoints listening on (\S+)", caplog.text).group(1)
            async with httpx.AsyncClient(base_url=node_url, timeout=5) as node:
                assert (await node.post("/v1/nodes/register", json=payload())).status_code == 200
                assert "gpu-01" in running.gateway.snapshot.hosts
                assert_error(await node.post("/v1/nodes/register", json={}), 400,
                             "invalid_request")
                assert_error(await node.post("/v1/chat/completions", json={}), 404, "not_found")
                big = b" " * (5 * 1024 * 1024)
                assert_error(await node.post("/v1/nodes/heartbeat", content=big), 413,
                             "request_too_large")
                assert (await node.get("/healthz")).status_code == 200
        await running.stop()


@pytest.mark.parametrize("port", ["client", "node"])
async def test_an_oversized_node_body_is_413_and_the_connection_serves_the_next_request(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture, port: str
) -> None:
    caplog.set_level(logging.INFO, "geniehive.nodes")
    on_node_port = '[nodes]\nbind = ["127.0.0.1:0"]\n'
    with trio.fail_after(20):
        running, client = await start(nursery, tmp_path, on_node_port if port == "node" else "")
        await client.aclose()
        url = running.url
        if port == "node":
            url = re.search(r"node endpoints listening on (\S+)", caplog.text).group(1)
        wire = await Wire.open(url)
        big = [b" " * 65536] * 80  # 5 MiB, chunked: over the node body limit
        status, _, body = await wire.request("POST", "/v1/nodes/heartbeat", big)
        assert (status, json.loads(body)["error"]["code"]) == (413, "request_too_large")
        status, headers, body = await wire.request(
            "POST", "/v1/nodes/register", [json.dumps(payload()).encode()],
            (("x-request-id", "register-1"),),
        )
        await wire.aclose()
        await running.stop()
    assert status == 200, body
    assert headers["x-request-id"] == "register-1"


def make_certs(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hive-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("control", "gpu-01"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")


async def raw_get(url: str, context: ssl.SSLContext) -> bytes:
    """What a GET /healthz over TLS gets back; b"" when the server drops the connection.

    Raw trio streams, not httpx: with TLS 1.3 the server rejects a missing client certificate
    only after the handshake, and httpx then leaves its request body generator unclosed.
    """
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    try:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        return await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""
    finally:
        await trio.aclose_forcefully(stream)


async def test_node_port_with_mtls_refuses_a_node_without_a_certificate(
    tmp_path: Path,
) -> None:
    make_certs(tmp_path)
    config = load_control(write_config(tmp_path, textwrap.dedent(
        """
        [nodes]
        bind = ["127.0.0.1:0"]
        [nodes.tls]
        certfile = "control.pem"
        keyfile = "control.key"
        ca_certs = "ca.pem"
        require_client_cert = true
        """
    )), {})
    with trio.fail_after(10):
        async with open_registry(config.registry.path) as registry, \
                httpx.AsyncClient() as upstreams, trio.open_nursery() as nursery:
            gateway = Gateway(config, registry, load_adapters(), upstreams)
            [url] = await nursery.start(run_heartbeat_listener, gateway)
            assert url.startswith("https://127.0.0.1:")
            anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            assert await raw_get(url, anonymous) == b""
            with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            with_cert.load_cert_chain(str(tmp_path / "gpu-01.pem"), str(tmp_path / "gpu-01.key"))
            async with httpx.AsyncClient(verify=with_cert) as client:
                response = await client.post(f"{url}/v1/nodes/register", json=payload())
            assert response.status_code == 200
            nursery.cancel_scope.cancel()


async def test_client_port_with_mtls_refuses_a_client_without_a_certificate(
    tmp_path: Path,
) -> None:
    # The client port's TLS section honours require_client_cert as the node port's does
    # (without `nodes.bind`, node traffic arrives on this port).
    from geniehive.daemon import hypercorn_config, serve_proxy

    make_certs(tmp_path)
    config = load_control(write_config(tmp_path, textwrap.dedent(
        """
        [server.tls]
        certfile = "control.pem"
        keyfile = "control.key"
        ca_certs = "ca.pem"
        require_client_cert = true
        """
    )), {})

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            [url] = await nursery.start(
                serve_proxy, ok, hypercorn_config(["127.0.0.1:0"], config), shutdown
            )
            assert url.startswith("https://127.0.0.1:")
            anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            assert await raw_get(url, anonymous) == b""
            with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            with_cert.load_cert_chain(str(tmp_path / "gpu-01.pem"), str(tmp_path / "gpu-01.key"))
            assert (await raw_get(url, with_cert)).startswith(b"HTTP/1.1 200")
            shutdown.set()


class MemoryRegistry:
    """Just the registry calls the listener makes, in memory: SQLite runs in a worker thread,
    which the autojump clock would take for idleness and jump past."""

    def __init__(self) -> None:
        self.snapshot = Snapshot(version=1, hosts={}, services={}, roles={})

    def put(self, host: Host) -> None:
        hosts = {**self.snapshot.hosts, host.host_id: host}
        self.snapshot = Snapshot(self.snapshot.version + 1, hosts, {}, {})

    async def forget_stale(self, cutoff: float) -> list[str]:
        await trio.lowlevel.checkpoint()
        gone = sorted(h for h, host in self.snapshot.hosts.items()
                      if not host.is_local and host.last_heartbeat < cutoff)
        hosts = {h: host for h, host in self.snapshot.hosts.items() if h not in gone}
        self.snapshot = Snapshot(self.snapshot.version + 1, hosts, {}, {})
        return gone


class ListenerGateway:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.registry = MemoryRegistry()
        self.leadership = Leadership()  # alone, so leading

    @property
    def snapshot(self) -> Snapshot:
        return self.registry.snapshot


async def test_a_silent_host_goes_stale_once_then_is_forgotten(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "geniehive.nodes")
    config = load_control(write_config(
        tmp_path, "[nodes]\nstale_after_s = 3\nforget_after_s = 30\n"), {})
    gateway = ListenerGateway(config)

    def wall() -> float:
        return 1_000_000.0 + trio.current_time()

    def beat() -> None:
        gateway.registry.put(Host("gpu-01", "127.0.0.1", last_heartbeat=wall()))

    beat()
    gateway.registry.put(Host("local", "127.0.0.1", is_local=True))
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_heartbeat_listener, gateway, wall_clock=wall))
            await trio.sleep(2)
            assert "gpu-01 stale" not in caplog.text
            await trio.sleep(10)
            assert caplog.text.count("host gpu-01 stale") == 1
            beat()
            await trio.sleep(2)
            assert caplog.text.count("host gpu-01 online") == 2  # first seen, then back
            await trio.sleep(40)
            assert "gpu-01" not in gateway.snapshot.hosts
            assert "local" in gateway.snapshot.hosts  # the local host is never forgotten
            assert caplog.text.count("host gpu-01 forgotten") == 1
            assert caplog.text.count("host gpu-01 stale") == 2
            nursery.cancel_scope.cancel()


async def test_a_restart_gives_long_silent_hosts_a_full_forget_period(
    tmp_path: Path, autojump_clock: Any
) -> None:
    # Down for longer than forget_after_s: the hosts it knew come back from the registry
    # with old heartbeats; they must get the chance to heartbeat before being forgotten.
    config = load_control(write_config(
        tmp_path, "[nodes]\nstale_after_s = 3\nforget_after_s = 30\n"), {})
    gateway = ListenerGateway(config)

    def wall() -> float:
        return 1_000_000.0 + trio.current_time()

    gateway.started_wall = wall()
    gateway.registry.put(Host("gpu-01", "127.0.0.1", last_heartbeat=wall() - 3600))
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_heartbeat_listener, gateway, wall_clock=wall))
            await trio.sleep(25)
            assert "gpu-01" in gateway.snapshot.hosts
            await trio.sleep(10)
            assert "gpu-01" not in gateway.snapshot.hosts
            nursery.cancel_scope.cancel()
