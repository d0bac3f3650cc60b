"""Clients that stop reading, and answers cut by a shutdown, on real sockets."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from geniehive import ws
from geniehive.errors import ShuttingDown
from tests.fakes.upstream import FakeUpstream
from tests.harness import gateway_in_process, upstream_toml, write_config
from tests.hive import Hive
from tests.wsclient import connect, receive, request

CHAT = [{"role": "user", "content": "flood me"}]
# One-off faults name the path: the prober and discovery call the fake meanwhile.
CHAT_PATH = "/v1/chat/completions"


async def start(nursery: trio.Nursery, tmp_path: Path, server: str,
                fake: FakeUpstream | None = None) -> Hive:
    """A hive whose [server] table also holds `server` (TOML lines)."""
    fake = fake or FakeUpstream(["m1"])
    port = await nursery.start(fake.serve)
    config = write_config(tmp_path, upstream_toml("fake", port, ["chat", "embeddings"]))
    text = config.read_text().replace("shutdown_grace_s = 5\n", "", 1)
    config.write_text(text.replace("[server]\n", f"[server]\n{server}\n", 1))
    running = await gateway_in_process(nursery, config)
    client = httpx.AsyncClient(base_url=running.url, timeout=10)
    return Hive(running.url, fake, port, running.gateway, client, running)


async def stuck_client(url: str, body: dict[str, object],
                       path: str = "/v1/chat/completions") -> trio.socket.SocketType:
    """A raw client with a tiny receive buffer that sends `body` and then never reads."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    await sock.connect((host, int(port)))
    raw = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n").encode()
    await sock.send(head + raw)
    return sock


async def test_a_client_that_stops_reading_is_cut_off_and_its_upstream_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        hive = await start(nursery, tmp_path, "write_timeout_s = 0.5")
        # ~64 MiB of events: far more than every socket buffer on the way holds.
        hive.fake.set_fault("flood", times=1, path=CHAT_PATH, chunks=4000, chunk_bytes=16384)
        sock = await stuck_client(hive.url, {"model": "m1", "messages": CHAT, "stream": True})
        try:
            flood = await hive.fake.wait_for_request(lambda r: r["fault"] == "flood")
            # Everyone else is served while the stuck stream waits out its timeout.
            answer = await hive.client.post(
                "/v1/chat/completions", json={"model": "m1", "messages": CHAT}
            )
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["message"]["content"] == "echo: flood me"
            with trio.fail_after(5):
                record = await hive.fake.wait_cancelled(flood["index"])
            assert not record["completed"]
            metrics = (await hive.client.get("/metrics")).text
            assert 'geniehive_client_write_timeouts_total{endpoint="chat"} 1.0' in metrics
            assert 'endpoint="chat",route_type="direct",service="fake/chat",status="499"' \
                in metrics
        finally:
            sock.close()
        await hive.client.aclose()
        await hive.running.stop()


async def test_a_large_answer_the_client_does_not_read_is_cut_at_the_write_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        # One embedding of ~16 MB of JSON: more than the socket buffers hold.
        fake = FakeUpstream(["m1"], embedding_dim=800_000)
        hive = await start(nursery, tmp_path, "write_timeout_s = 0.5", fake)
        sock = await stuck_client(hive.url, {"model": "m1", "input": "big"}, "/v1/embeddings")
        try:
            await fake.wait_for_request(lambda r: r["path"] == "/v1/embeddings")
            counted = 'geniehive_client_write_timeouts_total{endpoint="embeddings"} 1.0'
            with trio.fail_after(5):
                while counted not in (await hive.client.get("/metrics")).text:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert hive.gateway.active_requests <= 1  # the scrape itself
            # The connection was reset: the client never gets a whole-looking answer.
            received = 0
            try:
                while chunk := await sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < 16_000_000
        finally:
            sock.close()
        await hive.client.aclose()
        await hive.running.stop()


async def stuck_websocket(url: str, message: dict[str, object]) -> trio.socket.SocketType:
    """A raw websocket client with a tiny receive buffer that sends `message` once the
    handshake is done and then never reads."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    conn = WSConnection(ConnectionType.CLIENT)
    await sock.send(conn.send(Request(host=host, target=ws.PATH)))
    while not any(isinstance(e, AcceptConnection) for e in conn.events()):
        conn.receive_data(await sock.recv(4096))
    await sock.send(conn.send(TextMessage(data=json.dumps(message))))
    return sock


async def test_a_websocket_client_that_stops_reading_loses_its_requests_and_upstreams(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        hive = await start(nursery, tmp_path, "write_timeout_s = 0.5")
        hive.fake.set_fault("flood", times=1, path=CHAT_PATH, chunks=4000, chunk_bytes=16384)
        body = {"model": "m1", "messages": CHAT}
        sock = await stuck_websocket(hive.url, {"type": "chat.request", "id": "r1", "body": body})
        try:
            flood = await hive.fake.wait_for_request(lambda r: r["fault"] == "flood")
            answer = await hive.client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200
            with trio.fail_after(5):
                record = await hive.fake.wait_cancelled(flood["index"])
            assert not record["completed"]
            metrics = (await hive.client.get("/metrics")).text
            assert 'geniehive_client_write_timeouts_total{endpoint="chat_ws"} 1.0' in metrics
        finally:
            sock.close()
        await hive.client.aclose()
        await hive.running.stop()


def events_of(raw: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


async def test_a_stream_cut_by_the_shutdown_ends_with_one_shutting_down_event(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        hive = await start(nursery, tmp_path, "shutdown_grace_s = 0.5")
        hive.fake.set_fault("stall_mid_stream", after_chunks=2, times=1, path=CHAT_PATH)
        body = {"model": "m1", "messages": CHAT, "stream": True}
        raw = b""
        async with hive.client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()
            while raw.count(b"\n\n") < 2:
                raw += await chunks.__anext__()
            began = trio.current_time()
            nursery.start_soon(hive.running.stop)
            raw += b"".join([chunk async for chunk in chunks])  # ends: the connection closes
        events = events_of(raw)
        assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:2])
        assert len(events) == 3 and b"[DONE]" not in raw
        error = json.loads(events[2])["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error"
        assert error["message"]
        await hive.running.done.wait()
        assert trio.current_time() - began < 4
        await hive.client.aclose()


async def test_a_request_without_an_answer_head_at_the_cut_is_503_shutting_down(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        hive = await start(nursery, tmp_path, "shutdown_grace_s = 0.5")
        hive.fake.set_fault("slow_headers", delay_s=30, times=1, path=CHAT_PATH)
        async with trio.open_nursery() as inner:
            answers: list[httpx.Response] = []

            async def ask() -> None:
                answers.append(await hive.client.post(
                    "/v1/chat/completions", json={"model": "m1", "messages": CHAT}
                ))

            inner.start_soon(ask)
            await hive.fake.wait_for_request(lambda r: r["fault"] == "slow_headers")
            await hive.running.stop()
        assert answers[0].status_code == 503
        assert answers[0].json()["error"]["code"] == "shutting_down"
        await hive.client.aclose()


async def test_a_client_that_does_not_read_cannot_hold_the_shutdown(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        hive = await start(nursery, tmp_path, "shutdown_grace_s = 0.5")  # write timeout 60 s
        hive.fake.set_fault("flood", times=1, path=CHAT_PATH, chunks=4000, chunk_bytes=16384)
        sock = await stuck_client(hive.url, {"model": "m1", "messages": CHAT, "stream": True})
        try:
            flood = await hive.fake.wait_for_request(lambda r: r["fault"] == "flood")
            await trio.sleep(0.3)  # the gateway's writes back up
            began = trio.current_time()
            await hive.running.stop()
            assert trio.current_time() - began < 5  # the grace and a short last-words budget
            assert (await hive.fake.wait_finished(flood["index"]))["cancelled"]
        finally:
            sock.close()
        await hive.client.aclose()


async def test_a_websocket_request_live_at_the_cut_gets_shutting_down_then_close_1001(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "PING_INTERVAL_S", None)  # see tests/app/test_ws.py
    with trio.fail_after(20):
        hive = await start(nursery, tmp_path, "shutdown_grace_s = 0.5")
        hive.fake.set_fault("stall_mid_stream", after_chunks=2, times=1, path=CHAT_PATH)
        async with connect(hive.url) as sock:
            await sock.send_message(request("r1", "cut me"))
            first = await receive(sock)
            assert first["type"] == "chat.chunk"
            began = trio.current_time()
            nursery.start_soon(hive.running.stop)
            messages = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    messages.append(await receive(sock))
        assert closed.value.reason.code == 1001
        terminal = [m for m in messages if m["type"] != "chat.chunk"]
        assert terminal == [{"type": "error", "id": "r1",
                             "error": ShuttingDown("the gateway is shutting down").error_object()}]
        await hive.running.done.wait()
        assert trio.current_time() - began < 4
        await hive.client.aclose()


async def test_a_websocket_client_that_does_not_read_cannot_hold_the_shutdown(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "PING_INTERVAL_S", None)
    with trio.fail_after(20):
        hive = await start(nursery, tmp_path, "shutdown_grace_s = 0.5")  # write timeout 60 s
        hive.fake.set_fault("flood", times=1, path=CHAT_PATH, chunks=4000, chunk_bytes=16384)
        body = {"model": "m1", "messages": CHAT}
        sock = await stuck_websocket(hive.url, {"type": "chat.request", "id": "r1", "body": body})
        try:
            flood = await hive.fake.wait_for_request(lambda r: r["fault"] == "flood")
            await trio.sleep(0.3)  # the gateway's writes back up
            began = trio.current_time()
            await hive.running.stop()
            assert trio.current_time() - began < 5
            assert (await hive.fake.wait_finished(flood["index"]))["cancelled"]
        finally:
            sock.close()
        await hive.client.aclose()
