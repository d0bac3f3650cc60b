"""A lean keep-alive HTTP/1.1 client pool over trio streams, for forwarding to upstreams.

Rule: this is the hot path, so it does as little as possible per request — bytes throughout,
pre-encoded header names, one parsed-URL cache, one write for a small request — and it never
hands a half-used connection back to the pool. A connection is reused only when its response
body was read to the end and both sides allow keep-alive; anything else (an unread body, an
error, a cancellation at any point) closes it.

Timeouts: the pool applies only `connect_timeout_s`. The time to response headers and the gaps
between body chunks are the caller's to bound, with `trio.fail_after` around `request()` and
around each `read_chunk()`; cancellation closes the connection.

The request is written in full before the response is read (as most HTTP/1.1 clients do);
an upstream that answers early and hangs up still has its answer read. An upstream that
streams a large response while refusing to read a large request body would stall both sides.

Retries: exactly one, on a fresh connection, when a reused idle connection turns out to be
closed by the server before any response byte (the keep-alive race: the server timed the
connection out as we sent on it). Never otherwise, and never once a streamed body has started
to be consumed, because it cannot be replayed.

Exceptions::

    PoolError                   the pool is closed
     +-- ConnectFailed          refused, unreachable, DNS, TLS handshake
     +-- ConnectTimeout         no connection within connect_timeout_s
     +-- ProtocolFailed         garbage, reset, closed early, bad framing, unsendable request
          +-- BodyTooLarge      read_all(limit=...) saw more than limit bytes

`ValueError` for a URL that is not an absolute http(s) URL (a caller bug, not an upstream
failure). Exceptions raised by a caller's body iterable propagate unchanged.
"""

from __future__ import annotations

import select
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import NamedTuple
from urllib.parse import urlsplit

import h11
import trio

__all__ = [
    "BodyTooLarge",
    "ConnectFailed",
    "ConnectTimeout",
    "PoolError",
    "PoolResponse",
    "ProtocolFailed",
    "Target",
    "UpstreamPool",
    "parse_target",
]

RECEIVE_BYTES = 65536
# Bodies up to this size go out in the same write as the request head (one syscall, one
# segment); bigger ones are written separately rather than copied into one buffer.
COALESCE_BYTES = 65536
MAX_CACHED_TARGETS = 1024

HOST = b"host"
CONTENT_LENGTH = b"content-length"
TRANSFER_ENCODING = b"transfer-encoding"
CHUNKED = b"chunked"
# Framing and Host are the pool's to set; a caller's copy would contradict ours.
OWNED_HEADERS = frozenset({HOST, CONTENT_LENGTH, TRANSFER_ENCODING})
NO_BODY_METHODS = frozenset({b"GET", b"HEAD"})
# What `h11.Connection.next_event` returns; callers match on `type(event)`, and `_Conn`
# reads more bytes itself on NEED_DATA.
NextEvent = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]
DEFAULT_PORTS = {"http": 80, "https": 443}
END_OF_MESSAGE = h11.EndOfMessage()

# What a dead or misbehaving peer looks like from our side of the socket.
IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
PEER_FAILURES = (*IO_ERRORS, h11.RemoteProtocolError)


class PoolError(Exception):
    """Root of the pool's errors."""


class ConnectFailed(PoolError):
    """The connection could not be made: refused, unreachable, DNS, TLS handshake."""


class ConnectTimeout(PoolError):
    """No connection within the pool's connect_timeout_s."""


class ProtocolFailed(PoolError):
    """The exchange broke: garbage, reset, closed early, bad framing, unsendable request."""


class BodyTooLarge(ProtocolFailed):
    """The response body exceeded the limit given to read_all."""


class _Stale(Exception):
    """A reused connection was closed by the server before any response byte."""


# ---------------------------------------------------------------------------------------------
# Pure parts


Origin = tuple[str, str, int]


class Target(NamedTuple):
    """A parsed request URL: where to connect, what to ask for, what to say in Host."""

    origin: Origin
    path: bytes
    host_header: bytes


def parse_target(url: str) -> Target:
    """Split an absolute http(s) URL into origin, request target and Host header value.

    Raises ValueError for anything else.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    if parts.username is not None:
        raise ValueError(f"credentials in URLs are not supported: {url!r}")
    port = parts.port or DEFAULT_PORTS[scheme]  # .port raises ValueError on a bad port
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    shown = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS[scheme]:
        shown = f"{shown}:{port}"
    try:
        return Target((scheme, host, port), path.encode("ascii"), shown.encode("ascii"))
    except UnicodeEncodeError:
        raise ValueError(f"URL must be ASCII (percent-encode it): {url!r}") from None


def request_headers(
    target: Target,
    method: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | AsyncIterable[bytes],
    content_length: int | None,
) -> list[tuple[bytes, bytes]]:
    """The headers to send: Host first, the caller's, then the body framing."""
    out = [(HOST, target.host_header)]
    out.extend(h for h in headers if h[0].lower() not in OWNED_HEADERS)
    if isinstance(body, bytes | bytearray | memoryview):
        if body or method not in NO_BODY_METHODS:
            out.append((CONTENT_LENGTH, b"%d" % len(body)))
    elif content_length is not None:
        out.append((CONTENT_LENGTH, b"%d" % content_length))
    else:
        out.append((TRANSFER_ENCODING, CHUNKED))
    return out


def _reusable(conn: h11.Connection) -> bool:
    """True when both sides finished cleanly, want keep-alive and nothing extra arrived."""
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE and not conn.trailing_data[0]


# ---------------------------------------------------------------------------------------------
# I/O


class _Conn:
    """One upstream connection: the stream, its raw socket, and its h11 state."""

    __slots__ = (
        "check_alive",
        "got_bytes",
        "h11",
        "idle_since",
        "origin",
        "pulled_body",
        "sock",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        sock: trio.socket.SocketType,
        origin: Origin,
        *,
        tls: bool,
    ) -> None:
        self.stream = stream
        self.sock = sock
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT)
        # A TLS 1.3 server may send session tickets after the handshake, so a readable idle
        # TLS socket is not proof of death; there we rely on the single retry instead.
        self.check_alive = not tls and hasattr(select, "poll")
        self.idle_since = 0.0
        self.got_bytes = False
        self.pulled_body = False

    def close(self) -> None:
        """Close at once, without blocking; a task blocked on the socket gets woken."""
        self.sock.close()

    def looks_alive(self) -> bool:
        """An idle connection that is readable has EOF or junk waiting: either way, unusable."""
        if not self.check_alive:
            return True
        try:
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    async def write(self, data: bytes) -> bool:
        """Send; False when the peer is gone (its early answer may still be readable)."""
        try:
            await self.stream.send_all(data)
        except IO_ERRORS:
            return False
        return True

    async def next_event(self) -> NextEvent:
        h = self.h11
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if data:
                self.got_bytes = True
            # h11 types `data` as bytes but appends it to a bytearray: any bytes-like works,
            # and converting would copy every read.
            h.receive_data(data)  # type: ignore[arg-type]


class PoolResponse:
    """A response whose headers have arrived; the body is read on demand.

    Always `aclose()` it (in a `finally`): that returns the connection to the pool or
    closes it, and frees the connection slot.
    """

    __slots__ = ("_conn", "_done", "_pool", "_slot", "headers", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Conn,
        event: h11.Response,
        slot: trio.Semaphore,
    ) -> None:
        self.status: int = event.status_code
        self.headers: list[tuple[bytes, bytes]] = list(event.headers)
        self._pool = pool
        self._conn: _Conn | None = conn
        self._slot = slot
        self._done = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read_chunk(self) -> bytes | None:
        """The next piece of the body as it arrives; None at its end.

        Raises ProtocolFailed when the upstream resets, closes early or breaks the framing,
        or when the response was already closed.
        """
        if self._done:
            return None
        conn = self._conn
        if conn is None:
            raise ProtocolFailed("the response is closed")
        try:
            while True:
                event = await conn.next_event()
                if type(event) is h11.Data:
                    if event.data:
                        return bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    self._done = True
                    return None
                elif type(event) is h11.ConnectionClosed:
                    raise ProtocolFailed("upstream closed the connection mid-response")
        except PEER_FAILURES as exc:
            self._discard()
            raise ProtocolFailed(f"upstream failed mid-body: {exc!r}") from exc
        except BaseException:
            self._discard()
            raise

    async def read_all(self, limit: int | None = None) -> bytes:
        """The rest of the body. Raises ProtocolFailed, or BodyTooLarge past `limit` bytes."""
        parts: list[bytes] = []
        total = 0
        while (chunk := await self.read_chunk()) is not None:
            total += len(chunk)
            if limit is not None and total > limit:
                self._discard()
                raise BodyTooLarge(f"response body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Give the connection back if the exchange finished cleanly, else close it.

        Idempotent; never blocks and never checkpoints, so it is safe in a cancelled or
        shielded `finally`.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        try:
            if not self._done:
                self._done = _ended_in_buffer(conn)
            if self._done and _reusable(conn.h11):
                self._pool._checkin(conn)
            else:
                conn.close()
        finally:
            self._slot.release()

    def _discard(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()
            self._slot.release()


def _ended_in_buffer(conn: _Conn) -> bool:
    """Whether the body's end is already parsed-ready, e.g. a fully received
    Content-Length body whose caller stopped reading at the last byte."""
    try:
        return type(conn.h11.next_event()) is h11.EndOfMessage
    except h11.ProtocolError:
        return False


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections per origin (scheme, host, port), newest reused first.

    The relay's `geniehive.exchange.Transport`; its responses are `UpstreamResponse`s.

    At most `max_connections_per_origin` requests run at once per origin (each holds its
    connection until its response is closed); further ones wait for a slot. At most
    `max_idle_per_origin` idle connections are kept; one idle for longer than `idle_expiry_s`
    (measured with `clock`) is closed when the pool next touches that origin.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        max_connections_per_origin: int = 1024,
        max_idle_per_origin: int = 64,
        idle_expiry_s: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections_per_origin
        self._max_idle = max_idle_per_origin
        self._idle_expiry_s = idle_expiry_s
        self._clock = clock
        self._ssl_context = ssl_context
        self._targets: dict[str, Target] = {}
        self._slots: dict[Origin, trio.Semaphore] = {}
        self._idle: dict[Origin, deque[_Conn]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        content_length: int | None = None,
    ) -> PoolResponse:
        """Send a request; return once the response headers arrived.

        A bytes body goes out with Content-Length; an async iterable with Content-Length when
        `content_length` is given, else chunked. Raises ConnectFailed, ConnectTimeout,
        ProtocolFailed, PoolError (closed pool), ValueError (bad URL).
        """
        if self._closed:
            raise PoolError("the pool is closed")
        target = self._targets.get(url) or self._remember(url)
        slot = self._slots.get(target.origin) or self._new_slot(target.origin)
        verb = method.encode("ascii")
        try:
            event = h11.Request(
                method=verb,
                target=target.path,
                headers=request_headers(target, verb, headers, body, content_length),
            )
        except h11.LocalProtocolError as exc:
            raise ProtocolFailed(f"cannot send this request: {exc}") from exc
        await slot.acquire()
        try:
            return await self._exchange(target.origin, event, body, slot)
        except BaseException:
            slot.release()
            raise

    async def aclose(self) -> None:
        """Close the idle connections; responses still open close theirs when done.

        Never blocks and never checkpoints.
        """
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

    def _remember(self, url: str) -> Target:
        if len(self._targets) >= MAX_CACHED_TARGETS:
            self._targets.clear()
        target = self._targets[url] = parse_target(url)
        return target

    def _new_slot(self, origin: Origin) -> trio.Semaphore:
        slot = self._slots[origin] = trio.Semaphore(self._max_connections)
        return slot

    async def _exchange(
        self,
        origin: Origin,
        event: h11.Request,
        body: bytes | AsyncIterable[bytes],
        slot: trio.Semaphore,
    ) -> PoolResponse:
        conn = self._checkout(origin)
        if conn is not None:
            try:
                return await self._attempt(conn, event, body, slot, reused=True)
            except _Stale:
                pass
        conn = await self._connect(origin)
        return await self._attempt(conn, event, body, slot, reused=False)

    async def _attempt(
        self,
        conn: _Conn,
        event: h11.Request,
        body: bytes | AsyncIterable[bytes],
        slot: trio.Semaphore,
        *,
        reused: bool,
    ) -> PoolResponse:
        try:
            await _send(conn, event, body)
        except h11.LocalProtocolError as exc:
            conn.close()
            raise ProtocolFailed(f"cannot send this request: {exc}") from exc
        except BaseException:  # a cancellation or the caller's body iterable failing
            conn.close()
            raise
        try:
            response = await _receive_head(conn)
        except PEER_FAILURES as exc:
            conn.close()
            if reused and not conn.got_bytes and not conn.pulled_body:
                raise _Stale from exc
            raise ProtocolFailed(f"upstream failed before the response: {exc!r}") from exc
        except BaseException:
            conn.close()
            raise
        return PoolResponse(self, conn, response, slot)

    def _checkout(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        deadline = self._clock() - self._idle_expiry_s
        while idle:
            conn = idle.pop()
            if conn.idle_since < deadline:
                # Newest first: if this one expired, every older one has too.
                conn.close()
                while idle:
                    idle.pop().close()
                return None
            if conn.looks_alive():
                return conn
            conn.close()
        return None

    def _checkin(self, conn: _Conn) -> None:
        if self._closed or self._max_idle <= 0:
            conn.close()
            return
        conn.h11.start_next_cycle()
        now = self._clock()
        conn.idle_since = now
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        deadline = now - self._idle_expiry_s
        while idle and (idle[0].idle_since < deadline or len(idle) >= self._max_idle):
            idle.popleft().close()
        idle.append(conn)

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            with trio.fail_after(self._connect_timeout_s):
                if scheme == "https":
                    tls = await self._open_tls(host, port)
                    return _Conn(tls, tls.transport_stream.socket, origin, tls=True)
                tcp = await trio.open_tcp_stream(host, port)
                return _Conn(tcp, tcp.socket, origin, tls=False)
        except trio.TooSlowError:
            raise ConnectTimeout(
                f"no connection to {host}:{port} within {self._connect_timeout_s} s"
            ) from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc

    async def _open_tls(self, host: str, port: int) -> trio.SSLStream[trio.SocketStream]:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        stream = await trio.open_ssl_over_tcp_stream(
            host,
            port,
            ssl_context=self._ssl_context,
            https_compatible=True,
        )
        try:
            # Handshake now, inside the connect timeout, rather than lazily on first send.
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream


async def _send(conn: _Conn, event: h11.Request, body: bytes | AsyncIterable[bytes]) -> None:
    """Write the request. A peer that goes away mid-write is not an error here: it may have
    answered early (say, 413 before reading the body), so the caller reads the head next."""
    h = conn.h11
    conn.got_bytes = conn.pulled_body = False
    head = h.send(event)
    if not isinstance(body, bytes | bytearray | memoryview):
        await _send_stream(conn, head, body)
        return
    if body:
        h.send_with_data_passthrough(h11.Data(data=body))
    h.send(END_OF_MESSAGE)
    if len(body) <= COALESCE_BYTES:
        await conn.write(head + body if body else head)
    elif await conn.write(head):
        await conn.write(body)


async def _send_stream(conn: _Conn, head: bytes, body: AsyncIterable[bytes]) -> None:
    h = conn.h11
    if not await conn.write(head):
        return
    conn.pulled_body = True  # from here on the body cannot be replayed
    async for chunk in body:
        if not chunk:
            continue
        parts = h.send_with_data_passthrough(h11.Data(data=chunk))
        assert parts is not None  # h11 returns None only for ConnectionClosed
        if not await conn.write(b"".join(parts)):
            return
    tail = h.send(END_OF_MESSAGE)
    if tail:
        await conn.write(tail)


async def _receive_head(conn: _Conn) -> h11.Response:
    while True:
        event = await conn.next_event()
        if type(event) is h11.Response:
            return event
        if type(event) is not h11.InformationalResponse:  # 100 Continue and friends: skip
            raise trio.BrokenResourceError("connection closed before the response")
