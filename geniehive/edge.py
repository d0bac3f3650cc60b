"""Serving HTTP with hypercorn plus the connection limits its trio worker lacks (SPEC §13).

hypercorn's trio worker accepts without bound and closes a connection that trickles its
request head only when `keep_alive_timeout` runs out. `serve_http` is
`hypercorn.trio.serve` (lifespan, sockets, TLS, graceful shutdown) with two changes, both
read from an `EdgeConfig`:

- `max_connections`: each bind holds at most this many connections open. Past it, accepting
  waits: new connections queue in the kernel's backlog (costing this process no descriptor)
  and are served as soon as one of the open ones closes.
- `header_timeout_s`: a request head must be complete within this many seconds of the
  connection opening or, on a keep-alive connection, of its first byte arriving (the idle
  wait between requests stays `keep_alive_timeout`). Past it an HTTP/1.1 client that sent
  part of a head gets a 408 `request_timeout` with `Connection: close`; the connection closes.

It also writes a fixed-length answer's head and body in one send (hypercorn writes them
separately): see `EdgeTCPServer.protocol_send`.

Authentication before the body (geniehive/gate.py) and body timeouts (geniehive/asgi.py) are
the ASGI app's business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any
from wsgiref.handlers import format_date_time

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from geniehive.errors import RequestTimeout


class EdgeConfig(HyperConfig):
    """hypercorn's settings plus ours (the defaults of `[server]`)."""

    header_timeout_s: float = 10.0
    max_connections: int = 4096

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        """hypercorn's headers added to every answer, the Date formatted once a second."""
        if not self.include_date_header or self.alt_svc_headers or self._quic_addresses:
            return super().response_headers(protocol)
        headers = [(b"date", http_date(time.time()))]
        if self.include_server_header:
            headers.append((b"server", f"hypercorn-{protocol}".encode("ascii")))
        return headers


_DATE: list[Any] = [-1, b""]  # (the second, its Date header value)


def http_date(now: float) -> bytes:
    """The HTTP Date of `now` (RFC 9110 IMF-fixdate), formatted once per second."""
    second = int(now)
    if _DATE[0] != second:
        _DATE[:] = [second, format_date_time(second).encode("ascii")]
    return _DATE[1]


def slow_head_answer(header_timeout_s: float) -> bytes:
    """The raw HTTP/1.1 408 sent to a client whose request head is late."""
    error = RequestTimeout(f"the request head did not arrive within {header_timeout_s:g} s")
    body = error.body()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


# Set (in the app's task, around one ASGI send) when more bytes of the same answer follow at
# once: what that send writes waits for them, and all go out in one write.
HOLD_WRITES: ContextVar[bool] = ContextVar("geniehive_hold_writes", default=False)


def holds_head(data: bytes) -> bool:
    """Whether bytes hypercorn writes right after a request head arrived are a final
    response head (not `100 Continue`) announcing a Content-Length: such a head can wait
    for its body, which the app sends next, and go out in the same write."""
    if not data.startswith(b"HTTP/1.") or data[9:10] == b"1":
        return False
    end = data.find(b"\r\n\r\n")
    return end > 0 and b"\r\ncontent-length:" in data[:end].lower()


class IdleTimer:
    """hypercorn's keep-alive timer for one connection, as one task for the connection's
    life rather than one started each time an answer ends (`TrioSingleTask`).

    Rule, as hypercorn's: while the connection is idle (no request under way), it is
    closed `timeout_s` after it became idle, or at once when the server's shutdown begins
    (`terminated`); a request under way is never cut by it. `restart` and `stop` keep
    hypercorn's meaning (start the timer; end it for good, the connection is closing);
    `idle()` and `busy()` re-arm and disarm it per request without a task switch.
    """

    def __init__(self, timeout_s: float, terminated: Any,
                 close: Callable[[], Awaitable[None]]) -> None:
        self._timeout_s = timeout_s
        self._terminated = terminated
        self._close = close
        self._scope: trio.CancelScope | None = None
        self._busy = False
        self._became_idle: trio.Event | None = None
        self._started = False
        self._stopped = False

    async def restart(self, task_group: Any, action: Any = None) -> None:
        """Start the timer, the connection being idle (`action`, hypercorn's, is unused)."""
        self.idle()
        if not self._started:
            self._started = True
            task_group._nursery.start_soon(self._run)

    async def stop(self) -> None:
        """End the timer for good, without closing."""
        self._started = self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def idle(self) -> None:
        self._busy = False
        if self._scope is not None:
            self._scope.deadline = trio.current_time() + self._timeout_s
        if self._became_idle is not None:
            self._became_idle.set()

    def busy(self) -> None:
        self._busy = True
        if self._scope is not None:
            self._scope.deadline = math.inf

    async def _run(self) -> None:
        if self._stopped:  # stopped before this task first ran
            return
        with trio.CancelScope() as scope:
            self._scope = scope
            scope.deadline = math.inf if self._busy else trio.current_time() + self._timeout_s
            await self._terminated.wait()
            while self._busy:  # the shutdown began during a request: close once it ends
                self._became_idle = trio.Event()
                await self._became_idle.wait()
        self._scope = None
        if not self._stopped:
            with trio.CancelScope(shield=True):
                await self._close()


class EdgeTCPServer(TCPServer):
    """hypercorn's connection handler with a deadline on each request head, writing a
    fixed-length answer's head together with its body."""

    def __init__(self, header_timeout_s: float, answer: bytes, *args: Any) -> None:
        super().__init__(*args)
        self._header_timeout_s = header_timeout_s
        self._late_answer = answer
        # The first head is due header_timeout_s after the connection opened.
        self._head_deadline = trio.current_time() + header_timeout_s
        self._awaiting_head = True
        self._head_bytes = False  # part of the awaited head has arrived
        self._receiving: trio.CancelScope | None = None
        self._answer_due = False  # a request head arrived; its answer's head is not written
        self._idle_timer = IdleTimer(self.config.keep_alive_timeout, self.context.terminated,
                                     self._initiate_server_close)
        self.idle_task = self._idle_timer  # type: ignore[assignment]  # same interface
        self._held: bytes | None = None  # a fixed-length answer's head, waiting for its body

    async def protocol_send(self, event: Any) -> None:
        # A fixed-length answer's head is held until the next write (its body, or the empty
        # end of an empty body) and sent with it: one send instead of two; so is whatever is
        # written while HOLD_WRITES is set. Any other event (the answer's end, a close)
        # writes what is held first, so nothing is reordered or lost.
        if type(event) is RawData:
            data = event.data
            if HOLD_WRITES.get():
                self._answer_due = False
                self._held = data if self._held is None else self._held + data
                return
            if self._held is not None:
                event = RawData(data=self._held + data)
                self._held = None
            elif self._answer_due and not data.startswith(b"HTTP/1.1 1"):
                self._answer_due = False
                if holds_head(data):
                    self._held = data
                    return
            await super().protocol_send(event)
            return
        if self._held is not None:
            held, self._held = self._held, None
            await super().protocol_send(RawData(data=held))
        # Updated(idle=False): a head is complete; Updated(idle=True): the answer is done and
        # the connection waits for the next request (hypercorn's keep-alive timer runs).
        if isinstance(event, Updated):
            self._answer_due = not event.idle
            self._awaiting_head = event.idle
            self._head_bytes = False
            self._set_head_deadline(math.inf)
            if event.idle and self._buffered_head():
                self._head_bytes = True
                self._set_head_deadline(trio.current_time() + self._header_timeout_s)
            # hypercorn's own handling of Updated: (re)start or stop the keep-alive timer.
            if event.idle:
                self._idle_timer.idle()
            else:
                self._idle_timer.busy()
            return
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        try:
            await self._read_loop()
        finally:
            # The peer is gone: without this, the keep-alive timer would keep the connection
            # (its descriptor and its max_connections slot) until keep_alive_timeout, or,
            # with a request under way, until the shutdown.
            await self.idle_task.stop()

    async def _read_loop(self) -> None:
        while True:
            deadline = self._head_deadline if self._awaiting_head else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._receiving = scope
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                finally:
                    self._receiving = None
            if scope.cancelled_caught:
                await self._refuse_late_head()
                break
            if data and self._awaiting_head and not self._head_bytes:
                self._head_bytes = True
                if self._head_deadline == math.inf and self._speaks_h11():
                    self._set_head_deadline(trio.current_time() + self._header_timeout_s)
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    def _set_head_deadline(self, deadline: float) -> None:
        self._head_deadline = deadline
        if self._receiving is not None:
            self._receiving.deadline = deadline if self._awaiting_head else math.inf

    def _speaks_h11(self) -> bool:
        # HTTP/2 multiplexes requests and pings on an idle connection: only its first
        # request is held to the deadline from the connection's opening.
        protocol = getattr(self, "protocol", None)
        return protocol is not None and isinstance(protocol.protocol, H11Protocol)

    def _buffered_head(self) -> bool:
        """Whether bytes of the next (pipelined) request wait in h11's buffer."""
        wrapper = getattr(self, "protocol", None)
        protocol = wrapper.protocol if wrapper is not None else None
        return isinstance(protocol, H11Protocol) and bool(protocol.connection.trailing_data[0])

    async def _refuse_late_head(self) -> None:
        if self._head_bytes and self._speaks_h11():
            await self.protocol_send(RawData(data=self._late_answer))
        # hypercorn's keep-alive timer would hold the connection's task group (and its
        # descriptor) open until keep_alive_timeout: stop it and close now.
        await self.idle_task.stop()
        await self._close()


class BoundedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener that accepts only while fewer than `slots` connections are open.

    The connection's handler releases its slot when the connection ends.
    """

    def __init__(self, inner: trio.abc.Listener[Any], slots: trio.Semaphore) -> None:
        self.inner = inner
        self.slots = slots

    async def accept(self) -> trio.abc.Stream:
        await self.slots.acquire()
        try:
            return await self.inner.accept()
        except BaseException:
            self.slots.release()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _serve_connection(
    slots: trio.Semaphore, make_server: Callable[[Any], Awaitable[None]], stream: Any
) -> None:
    try:
        await make_server(stream)
    finally:
        slots.release()


async def _serve_bounded(
    listener: trio.abc.Listener[Any], max_connections: int,
    make_server: Callable[[Any], Awaitable[None]], handler_nursery: trio.Nursery,
) -> None:
    """Accept on one bind, at most `max_connections` connections open at once."""
    slots = trio.Semaphore(max_connections)
    await trio.serve_listeners(
        partial(_serve_connection, slots, make_server), [BoundedListener(listener, slots)],
        handler_nursery=handler_nursery,
    )


def _listeners(config: HyperConfig) -> tuple[list[trio.abc.Listener[Any]], list[str]]:
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[trio.abc.Listener[Any]] = []
    binds = []
    for sock in sockets.secure_sockets:
        assert ssl_context is not None  # hypercorn makes secure sockets only with a context
        sock.listen(config.backlog)
        listeners.append(trio.SSLListener(
            trio.SocketListener(trio.socket.from_stdlib_socket(sock)), ssl_context,
            https_compatible=True,
        ))
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds


async def serve_http(
    app: Any,
    config: HyperConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app on `config.bind` until `shutdown_trigger` returns, then drain for
    `config.graceful_timeout`. Reports started with the bound URLs."""
    header_timeout_s = getattr(config, "header_timeout_s", EdgeConfig.header_timeout_s)
    max_connections = getattr(config, "max_connections", EdgeConfig.max_connections)
    config.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, state)
    context = WorkerContext(None)
    answer = slow_head_answer(header_timeout_s)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners, binds = _listeners(config)
            make_server = partial(
                EdgeTCPServer, header_timeout_s, answer, asgi, config, context,
                ConnectionState(state.copy()),
            )
            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(
                            _serve_bounded, listener, max_connections, make_server, server_nursery
                        )
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
