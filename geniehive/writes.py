"""Writes to clients that may stop reading: the write timeout and bounded last words.

Rule: a client that accepts no bytes for `server.write_timeout_s` loses its connection, so
its request ends and the upstream call behind it is cancelled (docs/deployment.md, "Clients
that stop reading"); a last message at shutdown gets a short budget, never more.

Why closing the connection, not cancelling: hypercorn's trio worker writes each ASGI `send`
to the socket inside a shielded cancel scope (`TCPServer.protocol_send` in
hypercorn/trio/tcp_server.py), so a send blocked under TCP backpressure cannot be cancelled;
it ends only when its socket is closed. Another task therefore watches the clock of the
pending send and aborts the connection: the blocked send then returns (hypercorn treats it as
the client going away) and the request sees `http.disconnect` or `websocket.disconnect`.

    PendingSend              what the watchers read: `pending_since`, None when no send waits
    wait_stalled()           returns once one send has waited `timeout_s`
    wait_stalled_or_gone()   the same for an HTTP request, or False when the client leaves
    release_on_cut()         at a cut, gives a pending send a short budget, then aborts
    abort_connection()       closes the client's socket with a reset
    send_bounded()           sends last messages within a budget, shielded, then aborts
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any, Protocol

import trio

from geniehive.asgi import Message, Send

log = logging.getLogger("geniehive.request")

LAST_WORDS_BUDGET_S = 1.0  # the longest a last message at shutdown may take to go out
_LINGER_RESET = struct.pack("ii", 1, 0)


class PendingSend(Protocol):
    pending_since: float | None  # when the send under way began (trio clock)


async def wait_stalled(pending: PendingSend, timeout_s: float) -> None:
    """Return once one send has been pending for `timeout_s` seconds.

    Sleeps until the pending send (if any) would be due, so a stream of quick sends costs
    this task no wake-ups at all.
    """
    while True:
        since = pending.pending_since
        now = trio.current_time()
        if since is not None and now - since >= timeout_s:
            return
        await trio.sleep_until((since if since is not None else now) + timeout_s)


async def wait_stalled_or_gone(
    pending: PendingSend, timeout_s: float, receive: Callable[[], Awaitable[Any]]
) -> bool:
    """Watch an HTTP request after its body was read: True once one send has been pending
    for `timeout_s`, False when the client disconnects."""
    due = trio.current_time() + timeout_s
    while True:
        with trio.CancelScope(deadline=due):
            while (await receive())["type"] != "http.disconnect":
                pass
            return False
        # The deadline passed: has the send pending now waited that long?
        since = pending.pending_since
        now = trio.current_time()
        if since is not None and now - since >= timeout_s:
            return True
        due = (since if since is not None else now) + timeout_s


async def release_on_cut(pending: PendingSend, send: Send) -> None:
    """While a cancellation cuts the request, give a pending send LAST_WORDS_BUDGET_S to
    finish, then abort the connection so the cut cannot wait on a client that does not
    read. Call from an `except trio.Cancelled` (it shields itself)."""
    if pending.pending_since is None:
        return
    with trio.CancelScope(shield=True):
        with trio.move_on_after(LAST_WORDS_BUDGET_S):
            # Polled: an event set by every send would cost the hot path for this rare case.
            while pending.pending_since is not None:  # noqa: ASYNC110
                await trio.sleep(0.01)
            return
        abort_connection(send)


def abort_connection(send: Send) -> bool:
    """Close the client connection behind an ASGI `send` with a TCP reset.

    The reset (linger 0) drops what the client never read instead of leaving it queued in the
    kernel. Returns False when the connection could not be found (a server other than
    hypercorn): the request is then only cancelled.
    """
    stream = _client_stream(send)
    if stream is None:
        log.warning("cannot abort the client connection: no hypercorn transport found")
        return False
    sock = stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket
    with suppress(OSError):  # already closed: closing again is harmless
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, _LINGER_RESET)
    sock.close()
    return True


def _client_stream(send: Send) -> Any:
    """The connection's byte stream behind hypercorn's `send`.

    hypercorn hands the app `HTTPStream.app_send` (or `WSStream.app_send`), whose `send` is
    the protocol's (`H11Protocol` or `H2Protocol`) `stream_send`, whose `send` is
    `TCPServer.protocol_send`; the TCPServer holds the trio stream.
    """
    owner = getattr(send, "__self__", None)
    for _ in range(3):
        stream = getattr(owner, "stream", None)
        if isinstance(stream, trio.SocketStream | trio.SSLStream):
            return stream
        owner = getattr(getattr(owner, "send", None), "__self__", None)
    return None


async def send_bounded(send: Send, messages: Iterable[Message],
                       budget_s: float = LAST_WORDS_BUDGET_S) -> None:
    """Send `messages` shielded from the cancellation in progress, within `budget_s`; past it
    the connection is aborted, which frees a send the client never accepted."""
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:

            async def abort_later() -> None:
                await trio.sleep(budget_s)
                abort_connection(send)

            nursery.start_soon(abort_later)
            try:
                for message in messages:
                    await send(message)
            except Exception as exc:  # the client may be gone already: nothing to tell it
                log.debug("last message not sent: %r", exc)
            nursery.cancel_scope.cancel()


