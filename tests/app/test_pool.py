"""The keep-alive pool against raw upstreams on 127.0.0.1:0 that misbehave exactly as needed.

Each upstream is a few lines of trio speaking bytes, so every claim about framing, reuse,
closing and retrying is checked against what a real socket saw.
"""

from __future__ import annotations

import functools
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from geniehive.pool import (
    BodyTooLarge,
    ConnectFailed,
    ConnectTimeout,
    PoolError,
    PoolResponse,
    ProtocolFailed,
    Target,
    UpstreamPool,
    parse_target,
)

# ---------------------------------------------------------------------------------------------
# A raw upstream


@dataclass
class Req:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes


class Wire:
    """One accepted connection, read as bytes.

    `eof` is set once the client closed it, `closed` once this side closed it.
    """

    def __init__(self, stream: trio.SocketStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.buf = bytearray()
        self.requests: list[Req] = []
        self.eof = trio.Event()
        self.closed = trio.Event()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof.set()
            return False
        self.buf += data
        return True

    async def read_until(self, sep: bytes) -> bytes | None:
        while (end := self.buf.find(sep)) < 0:
            if not await self._fill():
                return None
        out = bytes(self.buf[: end + len(sep)])
        del self.buf[: end + len(sep)]
        return out

    async def read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self._fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_request(self) -> Req | None:
        head = await self.read_until(b"\r\n\r\n")
        if head is None:
            return None
        line, *lines = head[:-4].split(b"\r\n")
        method, target, _ = line.split(b" ")
        headers = {}
        for raw in lines:
            name, _, value = raw.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            body = await self._read_chunked()
        else:
            body = await self.read_exact(int(headers.get(b"content-length", b"0")))
        assert body is not None, "client closed mid-request"
        req = Req(method, target, headers, body)
        self.requests.append(req)
        return req

    async def _read_chunked(self) -> bytes | None:
        parts = []
        while (size_line := await self.read_until(b"\r\n")) is not None:
            size = int(size_line.strip(), 16)
            chunk = await self.read_exact(size + 2)
            if chunk is None:
                return None
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])
        return None

    async def wait_eof(self) -> None:
        while await self._fill():
            pass

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.socket.close()


Handler = Callable[[Wire], Awaitable[None]]


@dataclass
class Upstream:
    handler: Handler
    port: int = 0
    wires: list[Wire] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.wires)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve_one(self, stream: trio.SocketStream) -> None:
        wire = Wire(stream, len(self.wires))
        self.wires.append(wire)
        try:
            async with stream:
                await self.handler(wire)
        finally:
            wire.closed.set()


async def start_upstream(nursery: trio.Nursery, handler: Handler) -> Upstream:
    upstream = Upstream(handler)
    serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
    listeners = await nursery.start(serve, upstream.serve_one, 0)
    upstream.port = listeners[0].socket.getsockname()[1]
    return upstream


def reply(body: bytes = b"ok", status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


async def keep_alive(wire: Wire) -> None:
    """A well-behaved upstream: answer every request with its own body (or b'ok')."""
    while (req := await wire.read_request()) is not None:
        await wire.send(reply(req.body or b"ok"))


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    try:
        yield pool
    finally:
        with trio.fail_after(5):
            await pool.aclose()


async def fetch(pool: UpstreamPool, url: str, **kw: object) -> tuple[int, bytes]:
    response = await pool.request(kw.pop("method", "GET"), url, [], **kw)  # type: ignore[arg-type]
    try:
        return response.status, await response.read_all()
    finally:
        await response.aclose()


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        await trio.lowlevel.checkpoint()
        yield piece


# ---------------------------------------------------------------------------------------------
# URL parsing (pure)


def test_parse_target_splits_origin_path_and_host_header() -> None:
    assert parse_target("http://127.0.0.1:8080/v1/chat?x=1") == Target(
        ("http", "127.0.0.1", 8080), b"/v1/chat?x=1", b"127.0.0.1:8080"
    )
    assert parse_target("HTTP://Example.COM") == Target(
        ("http", "example.com", 80), b"/", b"example.com"
    )
    assert parse_target("https://h:443/a") == Target(("https", "h", 443), b"/a", b"h")
    assert parse_target("http://[::1]:9/") == Target(("http", "::1", 9), b"/", b"[::1]:9")


@pytest.mark.parametrize(
    "url", ["ftp://h/", "/v1/chat", "http:///x", "http://u:p@h/", "http://h:99999/", "http://h/é"]
)
def test_parse_target_rejects_what_it_cannot_send(url: str) -> None:
    with pytest.raises(ValueError):
        parse_target(url)


# ---------------------------------------------------------------------------------------------
# Keep-alive, expiry, the keep-alive race


async def test_sequential_requests_share_one_upstream_connection(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        assert await fetch(pool, up.url(), method="POST", body=b"one") == (200, b"one")
        assert await fetch(pool, up.url(), method="POST", body=b"two") == (200, b"two")
        assert up.accepted == 1
        assert len(up.wires[0].requests) == 2


async def test_request_carries_host_target_framing_and_caller_headers(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        headers = [(b"X-Trace", b"abc"), (b"Host", b"spoofed"), (b"Content-Length", b"999")]
        response = await pool.request("POST", up.url("/v1/x?a=1"), headers, b"hello")
        assert await response.read_all() == b"hello"
        await response.aclose()
        req = up.wires[0].requests[0]
        assert (req.method, req.target) == (b"POST", b"/v1/x?a=1")
        assert req.headers[b"host"] == f"127.0.0.1:{up.port}".encode()
        assert req.headers[b"content-length"] == b"5"
        assert req.headers[b"x-trace"] == b"abc"


async def test_idle_connection_is_reused_within_expiry_and_replaced_after(
    nursery: trio.Nursery,
) -> None:
    now = [100.0]
    pool = UpstreamPool(idle_expiry_s=10.0, clock=lambda: now[0])
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        await fetch(pool, up.url())
        now[0] += 9.9
        await fetch(pool, up.url())
        assert up.accepted == 1
        now[0] += 10.1
        assert await fetch(pool, up.url()) == (200, b"ok")
        assert up.accepted == 2
        await up.wires[0].eof.wait()  # the expired connection was closed, not leaked
        await pool.aclose()


async def test_upstream_closing_an_idle_connection_goes_unnoticed(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def one_then_close(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(reply())

    with trio.fail_after(5):
        up = await start_upstream(nursery, one_then_close)
        assert await fetch(pool, up.url()) == (200, b"ok")
        await up.wires[0].closed.wait()
        assert await fetch(pool, up.url()) == (200, b"ok")
        assert up.accepted == 2


async def test_reused_connection_dropped_before_any_response_byte_is_retried_once(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    """The keep-alive race: the upstream timed the connection out as the request arrived."""

    async def first_connection_dies_on_second_request(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(reply(b"first"))
        if wire.index == 0:
            await wire.read_request()  # read it, then hang up without answering

    with trio.fail_after(5):
        up = await start_upstream(nursery, first_connection_dies_on_second_request)
        assert await fetch(pool, up.url()) == (200, b"first")
        assert await fetch(pool, up.url(), method="POST", body=b"x") == (200, b"first")
        assert up.accepted == 2
        assert [len(w.requests) for w in up.wires] == [2, 1]


async def test_fresh_connection_dropped_before_response_is_not_retried(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def hang_up(wire: Wire) -> None:
        await wire.read_request()

    with trio.fail_after(5):
        up = await start_upstream(nursery, hang_up)
        with pytest.raises(ProtocolFailed):
            await pool.request("POST", up.url(), [], b"x")
        assert up.accepted == 1


async def test_reused_connection_is_not_retried_once_a_streamed_body_was_consumed(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def first_ok_then_hang_up(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(reply())
        await wire.read_request()

    with trio.fail_after(5):
        up = await start_upstream(nursery, first_ok_then_hang_up)
        await fetch(pool, up.url())
        with pytest.raises(ProtocolFailed):
            await pool.request("POST", up.url(), [], chunks(b"cannot", b"replay"))
        assert up.accepted == 1


# ---------------------------------------------------------------------------------------------
# Response framing


async def test_chunked_response_arrives_piece_by_piece_then_connection_is_reused(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    client_has_first = trio.Event()

    async def chunked(wire: Wire) -> None:
        while await wire.read_request() is not None:
            await wire.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
            await client_has_first.wait()
            await wire.send(b"3\r\ntwo\r\n0\r\n\r\n")

    with trio.fail_after(5):
        up = await start_upstream(nursery, chunked)
        response = await pool.request("GET", up.url(), [])
        assert response.header(b"transfer-encoding") == b"chunked"
        assert await response.read_chunk() == b"one"
        client_has_first.set()
        assert await response.read_chunk() == b"two"
        assert await response.read_chunk() is None
        await response.aclose()
        assert await fetch(pool, up.url()) == (200, b"onetwo")
        assert up.accepted == 1


async def test_content_length_response_is_read_exactly(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def json_reply(wire: Wire) -> None:
        while await wire.read_request() is not None:
            await wire.send(reply(b'{"a":1}', extra=b"Content-Type: application/json\r\n"))

    with trio.fail_after(5):
        up = await start_upstream(nursery, json_reply)
        response = await pool.request("GET", up.url(), [])
        assert response.status == 200
        assert response.header(b"content-type") == b"application/json"
        assert response.headers == [
            (b"content-length", b"7"),
            (b"content-type", b"application/json"),
        ]
        assert await response.read_all() == b'{"a":1}'
        await response.aclose()


async def test_body_without_length_is_read_until_close_and_not_reused(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def until_close(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(b"HTTP/1.1 200 OK\r\n\r\nall of ")
        await wire.send(b"this")

    with trio.fail_after(5):
        up = await start_upstream(nursery, until_close)
        assert await fetch(pool, up.url()) == (200, b"all of this")
        assert await fetch(pool, up.url()) == (200, b"all of this")
        assert up.accepted == 2


async def test_head_204_and_304_carry_no_body_and_keep_the_connection(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def bodiless(wire: Wire) -> None:
        answers = [b"200 OK\r\ncontent-length: 100", b"204 No Content", b"304 Not Modified"]
        for answer in answers:
            await wire.read_request()
            await wire.send(b"HTTP/1.1 %s\r\n\r\n" % answer)
        await keep_alive(wire)

    with trio.fail_after(5):
        up = await start_upstream(nursery, bodiless)
        assert await fetch(pool, up.url(), method="HEAD") == (200, b"")
        assert await fetch(pool, up.url()) == (204, b"")
        assert await fetch(pool, up.url()) == (304, b"")
        assert await fetch(pool, up.url()) == (200, b"ok")
        assert up.accepted == 1


async def test_100_continue_is_skipped(nursery: trio.Nursery, pool: UpstreamPool) -> None:
    async def continue_first(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"done"))

    with trio.fail_after(5):
        up = await start_upstream(nursery, continue_first)
        assert await fetch(pool, up.url(), method="POST", body=b"x") == (200, b"done")


async def test_read_all_limit_raises_body_too_large_and_drops_the_connection(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        response = await pool.request("POST", up.url(), [], b"x" * 100)
        with pytest.raises(BodyTooLarge):
            await response.read_all(limit=99)
        await response.aclose()
        await up.wires[0].eof.wait()


# ---------------------------------------------------------------------------------------------
# Request bodies


async def test_async_iterable_body_without_length_is_sent_chunked(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        body = chunks(b"he", b"", b"llo")
        assert await fetch(pool, up.url(), method="POST", body=body) == (200, b"hello")
        req = up.wires[0].requests[0]
        assert req.headers[b"transfer-encoding"] == b"chunked"
        assert b"content-length" not in req.headers


async def test_async_iterable_body_with_content_length_is_sent_as_is(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        body = chunks(b"he", b"llo")
        status_body = await fetch(pool, up.url(), method="PUT", body=body, content_length=5)
        assert status_body == (200, b"hello")
        req = up.wires[0].requests[0]
        assert req.headers[b"content-length"] == b"5"
        assert b"transfer-encoding" not in req.headers


async def test_streamed_body_shorter_than_its_content_length_fails_and_closes(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def read_head_only(wire: Wire) -> None:
        await wire.read_until(b"\r\n\r\n")
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, read_head_only)
        with pytest.raises(ProtocolFailed):
            await pool.request("POST", up.url(), [], chunks(b"abc"), content_length=5)
        await up.wires[0].eof.wait()


# ---------------------------------------------------------------------------------------------
# Failures


async def test_refused_connection_raises_connect_failed(pool: UpstreamPool) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(5), pytest.raises(ConnectFailed):
            await pool.request("GET", f"http://127.0.0.1:{port}/", [])


async def test_connect_deadline_raises_connect_timeout(nursery: trio.Nursery) -> None:
    pool = UpstreamPool(connect_timeout_s=0)
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        with pytest.raises(ConnectTimeout):
            await pool.request("GET", up.url(), [])


async def test_garbage_response_raises_protocol_failed(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def garbage(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(b"SPAM SPAM SPAM\r\n\r\n")
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, garbage)
        with pytest.raises(ProtocolFailed):
            await pool.request("GET", up.url(), [])
        await up.wires[0].eof.wait()


@pytest.mark.parametrize("hang_up", ["reset", "close"])
async def test_upstream_dropping_mid_body_raises_protocol_failed_from_read_chunk(
    nursery: trio.Nursery, pool: UpstreamPool, hang_up: str
) -> None:
    async def half_body(wire: Wire) -> None:
        if wire.index > 0:
            await keep_alive(wire)
            return
        await wire.read_request()
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        if hang_up == "reset":
            wire.reset()

    with trio.fail_after(5):
        up = await start_upstream(nursery, half_body)
        response = await pool.request("GET", up.url(), [])
        try:
            with pytest.raises(ProtocolFailed):
                while await response.read_chunk() is not None:
                    pass
        finally:
            await response.aclose()
        assert await fetch(pool, up.url()) == (200, b"ok")  # on a new connection
        assert up.accepted == 2


# ---------------------------------------------------------------------------------------------
# Cancellation and unread bodies never leave a half-used connection in the pool


async def cancel_once_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


async def test_cancellation_mid_body_closes_the_connection(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def stall_mid_body(wire: Wire) -> None:
        if wire.index > 0:
            await keep_alive(wire)
            return
        await wire.read_request()
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, stall_mid_body)
        response = await pool.request("GET", up.url(), [])
        assert await response.read_chunk() == b"01234"
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_once_blocked, scope)
            try:
                await response.read_chunk()
            finally:
                with trio.CancelScope(shield=True):
                    await response.aclose()
        assert scope.cancelled_caught
        await up.wires[0].eof.wait()
        assert await fetch(pool, up.url()) == (200, b"ok")
        assert up.accepted == 2


async def test_cancellation_while_sending_the_body_closes_the_connection(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def endless_body() -> AsyncIterator[bytes]:
        yield b"start"
        await trio.sleep_forever()

    async def read_until_eof(wire: Wire) -> None:
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, read_until_eof)
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_once_blocked, scope)
            await pool.request("POST", up.url(), [], endless_body())
        assert scope.cancelled_caught
        await up.wires[0].eof.wait()
        assert b"start" in up.wires[0].buf


async def test_cancellation_while_waiting_for_headers_closes_the_connection(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def never_answer(wire: Wire) -> None:
        await wire.read_request()
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, never_answer)
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_once_blocked, scope)
            await pool.request("GET", up.url(), [])
        assert scope.cancelled_caught
        await up.wires[0].eof.wait()


async def test_unread_body_closes_the_connection_instead_of_reusing_it(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def big_then_ok(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\npartial")
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, big_then_ok)
        response = await pool.request("GET", up.url(), [])
        await response.aclose()
        await response.aclose()  # idempotent
        await up.wires[0].eof.wait()


async def test_body_received_in_full_is_reused_even_if_the_end_was_not_asked_for(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        response = await pool.request("GET", up.url(), [])
        assert await response.read_chunk() == b"ok"  # never asked for the None that follows
        await response.aclose()
        await fetch(pool, up.url())
        assert up.accepted == 1


# ---------------------------------------------------------------------------------------------
# Bounds and Connection: close


async def test_third_concurrent_request_waits_for_a_free_connection(nursery: trio.Nursery) -> None:
    pool = UpstreamPool(max_connections_per_origin=2)
    opened: list[PoolResponse] = []

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        opened.append(await pool.request("GET", up.url(), []))

    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        async with trio.open_nursery() as clients:
            for _ in range(3):
                await clients.start(hold)
            await trio.testing.wait_all_tasks_blocked()
            assert (len(opened), up.accepted) == (2, 2)
            await opened[0].read_all()
            await opened[0].aclose()
        assert len(opened) == 3
        assert up.accepted == 2  # the third request took the connection the first gave back
        for response in opened[1:]:
            await response.aclose()
        await pool.aclose()


async def test_connection_close_from_the_upstream_is_honoured(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    async def says_close(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(reply(extra=b"Connection: close\r\n"))
        await wire.wait_eof()

    with trio.fail_after(5):
        up = await start_upstream(nursery, says_close)
        await fetch(pool, up.url())
        await up.wires[0].eof.wait()
        await fetch(pool, up.url())
        assert up.accepted == 2


async def test_connection_close_from_the_caller_is_honoured(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        response = await pool.request("GET", up.url(), [(b"connection", b"close")])
        await response.read_all()
        await response.aclose()
        await up.wires[0].eof.wait()


async def test_closed_pool_refuses_requests_and_closes_returning_connections(
    nursery: trio.Nursery,
) -> None:
    pool = UpstreamPool()
    with trio.fail_after(5):
        up = await start_upstream(nursery, keep_alive)
        response = await pool.request("GET", up.url(), [])
        await pool.aclose()
        await response.read_all()
        await response.aclose()
        await up.wires[0].eof.wait()
        with pytest.raises(PoolError):
            await pool.request("GET", up.url(), [])


async def test_idle_connection_closed_by_upstream_is_skipped_even_for_a_streamed_body(
    nursery: trio.Nursery, pool: UpstreamPool
) -> None:
    """A streamed body cannot be replayed, so the dead idle connection must be seen first."""

    async def one_then_close(wire: Wire) -> None:
        await wire.read_request()
        await wire.send(reply())

    with trio.fail_after(5):
        up = await start_upstream(nursery, one_then_close)
        await fetch(pool, up.url())
        await up.wires[0].closed.wait()
        assert await fetch(pool, up.url(), method="POST", body=chunks(b"x")) == (200, b"ok")
        assert up.accepted == 2


# ---------------------------------------------------------------------------------------------
# https


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


async def test_https_upstream_is_verified_and_kept_alive(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    upstream = Upstream(keep_alive)
    serve = functools.partial(trio.serve_ssl_over_tcp, host="127.0.0.1", https_compatible=True)
    with trio.fail_after(5):
        listeners = await nursery.start(serve, upstream.serve_one, 0, server_context)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        url = f"https://127.0.0.1:{port}/v1/x"
        pool = UpstreamPool(ssl_context=client_context)
        assert await fetch(pool, url, method="POST", body=b"one") == (200, b"one")
        assert await fetch(pool, url, method="POST", body=b"two") == (200, b"two")
        assert upstream.accepted == 1
        assert upstream.wires[0].requests[0].headers[b"host"] == f"127.0.0.1:{port}".encode()
        await pool.aclose()
        with pytest.raises(ConnectFailed):  # the default context does not trust our CA
            await fetch(UpstreamPool(), url)
