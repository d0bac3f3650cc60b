"""How the edge writes answers onto the client's connection (geniehive/edge.py): a
fixed-length answer in one write, a streamed answer's head at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from wsgiref.handlers import format_date_time

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from geniehive.edge import HOLD_WRITES, EdgeConfig, EdgeTCPServer, http_date

REQUEST = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class RecordingStream:
    """A socket stream (plain TCP to hypercorn: no handshake) that remembers each
    send_all's bytes."""

    def __init__(self, sock: Any) -> None:
        self.inner = trio.SocketStream(sock)
        self.socket = self.inner.socket
        self.writes: list[bytes] = []

    async def send_all(self, data: Any) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed after {got!r}"
        got += chunk
    return got


@asynccontextmanager
async def connection(
    app: Any, keep_alive_s: float = 5.0, context: WorkerContext | None = None,
) -> AsyncIterator[tuple[RecordingStream, trio.SocketStream]]:
    """One connection served by EdgeTCPServer over a socket pair: (server side, client)."""
    ours, theirs = trio.socket.socketpair()
    recording = RecordingStream(ours)
    client = trio.SocketStream(theirs)
    config = EdgeConfig()
    config.keep_alive_timeout = keep_alive_s
    server = EdgeTCPServer(10.0, b"", wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                           context or WorkerContext(None), ConnectionState({}), recording)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            yield recording, client
            nursery.cancel_scope.cancel()
    finally:
        ours.close()
        theirs.close()


async def fixed(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    body = b'{"ok": true}' if scope["method"] == "POST" else b""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"Content-Length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def test_a_fixed_length_answer_goes_out_in_one_write() -> None:
    with trio.fail_after(5):
        async with connection(fixed) as (server, client):
            for _ in range(2):  # and again on the kept-alive connection
                server.writes.clear()
                await client.send_all(REQUEST)
                got = await read_until(client, b'{"ok": true}')
                assert got.startswith(b"HTTP/1.1 200 ")
                assert [w for w in server.writes if w] == [got]


async def test_an_empty_fixed_length_answer_is_written_whole() -> None:
    async def empty(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def zero(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(5):
        for app, status in ((empty, b"204"), (zero, b"200")):
            async with connection(app) as (server, client):
                await client.send_all(REQUEST)
                got = await read_until(client, b"\r\n\r\n")
                assert got.startswith(b"HTTP/1.1 " + status)
                assert [w for w in server.writes if w] == [got]


async def test_a_streamed_answer_s_head_reaches_the_client_before_its_body_exists() -> None:
    head_seen = trio.Event()

    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await head_seen.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": False})

    with trio.fail_after(5):
        async with connection(streamed) as (_, client):
            await client.send_all(REQUEST)
            head = await read_until(client, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" in head
            head_seen.set()
            await read_until(client, b"data: 1")


async def test_a_fixed_length_head_whose_app_fails_before_the_body_still_goes_out() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        raise RuntimeError("gone before the body")

    with trio.fail_after(5):
        async with connection(broken) as (_, client):
            await client.send_all(REQUEST)
            got = b""
            while chunk := await client.receive_some(65536):
                got += chunk
            # The head, then the connection closes: the short body shows the failure.
            assert got.startswith(b"HTTP/1.1 200 ") and b"content-length: 10" in got.lower()


async def test_what_is_sent_while_writes_are_held_goes_out_with_the_answer_s_end() -> None:
    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        token = HOLD_WRITES.set(True)  # the body follows at once
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        HOLD_WRITES.reset(token)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        token = HOLD_WRITES.set(True)  # the last part and the chunked end together
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})
        HOLD_WRITES.reset(token)

    with trio.fail_after(5):
        async with connection(streamed) as (server, client):
            await client.send_all(REQUEST)
            got = await read_until(client, b"0\r\n\r\n")
            writes = [w for w in server.writes if w]
            assert b"".join(writes) == got
            assert len(writes) == 2
            assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b"data: 1\n\n\r\n")
            assert writes[1].startswith(b"9\r\ndata: 2") and writes[1].endswith(b"0\r\n\r\n")


async def read_to_end(stream: trio.SocketStream) -> bytes:
    got = b""
    while chunk := await stream.receive_some(65536):
        got += chunk
    return got


async def test_an_idle_kept_alive_connection_closes_after_the_keep_alive_timeout() -> None:
    with trio.fail_after(5):
        async with connection(fixed, keep_alive_s=0.3) as (_, client):
            for _ in range(2):  # the timer restarts after each answer
                await client.send_all(REQUEST)
                await read_until(client, b'{"ok": true}')
                await trio.sleep(0.15)  # idle, but less than the timeout: still open
            started = trio.current_time()
            assert await read_to_end(client) == b""
            assert 0.1 <= trio.current_time() - started < 2


async def test_a_shutdown_closes_an_idle_connection_and_lets_a_request_under_way_finish() -> None:
    release = trio.Event()
    started = trio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        started.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"12")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    async def noop(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    with trio.fail_after(5):
        context = WorkerContext(None)
        async with connection(slow, context=context) as (_, busy), \
                connection(noop, context=context) as (_, idle):
            await busy.send_all(REQUEST)
            await started.wait()
            await context.terminated.set()
            assert await read_to_end(idle) == b""  # closed at once
            release.set()
            answer = await read_to_end(busy)  # answered, then closed
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"ok": true}')


def test_the_date_header_is_hypercorns_and_follows_the_clock() -> None:
    config = EdgeConfig()
    ours = config.response_headers("h11")
    theirs = HyperConfig.response_headers(config, "h11")
    assert [name for name, _ in ours] == [name for name, _ in theirs] == [b"date", b"server"]
    assert http_date(1_700_000_000.2) == format_date_time(1_700_000_000).encode()
    assert http_date(1_700_000_000.9) == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(1_700_000_001.0) == b"Tue, 14 Nov 2023 22:13:21 GMT"
