"""Client dialects: the Anthropic Messages and OpenAI Responses APIs on the chat operation.

A dialect is a client API that is not OpenAI chat but means the same thing. Its request is
translated into an OpenAI chat body at the edge, so routing, roles, policy, capacity,
failover, metrics and logs apply unchanged; its answer is translated back on the way out by
`DialectWriter`, which sits between the relay and the client's writer:

    client body ──Dialect.to_chat──▶ chat body ──relay──▶ upstream /v1/chat/completions
    client  ◀──Translation.answer / chunk / done / error── the upstream's chat answer

Where an upstream speaks the dialect itself (the adapter lists it in `native_dialects`), the
relay sends the client's own body to the dialect's path instead (`Dialect.native_body`: the
model rewritten and the role's policy put into the dialect's own fields) and the writer
passes the answer through `Translation.native_answer` / `native_event`, which only strip
what the policy strips.

Rule: the dialect modules (`messages.py`, `responses.py`) are pure translations; the only
I/O is `Dialect.prepare` and `Dialect.finish` (the stored responses of the Responses API),
and `DialectWriter` only calls the writer it wraps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from geniehive.errors import GenieHiveError
from geniehive.exchange import Writer
from geniehive.sse import EVENT_END, parse_event_lines

log = logging.getLogger("geniehive.dialects")

if TYPE_CHECKING:
    from geniehive.gateway import Gateway
    from geniehive.models import Policy


class Translation(Protocol):
    """One request's answer, translated from OpenAI chat into the dialect (made per request
    by `Dialect.translation`).

    `answer` turns a whole `chat.completion` body into the dialect's JSON answer; a stream
    goes `chunk` (one `chat.completion.chunk` object each, already parsed) ... then `done`
    when it ended well, or `error` (an OpenAI error object) when it broke off after its
    start; each returns the SSE bytes to send (possibly empty). A native upstream's answer
    goes through `native_answer` (a parsed JSON answer) or `native_event` (one SSE event's
    bytes, blank line included), with `strip` saying whether reasoning is removed.
    `result` is the dialect's whole answer once it is complete (a stream's too), else None.
    """

    result: dict[str, Any] | None

    def answer(self, chat: dict[str, Any]) -> dict[str, Any]: ...

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...

    def done(self) -> bytes: ...

    def error(self, error: dict[str, Any]) -> bytes: ...

    def native_answer(self, answer: dict[str, Any], strip: bool) -> dict[str, Any]: ...

    def native_event(self, event: bytes, strip: bool) -> bytes: ...


class Dialect(Protocol):
    """A client API translated onto the chat operation (one instance per gateway).

    `name` is what adapters list in `native_dialects`; `native_path` the upstream path that
    speaks it natively. `prepare` validates the client's body and returns the OpenAI chat
    body (raising `InvalidRequest` with the field's `param`); it may read stored state (a
    previous response). `translation` starts the answer's translation for one request.
    `native_body` is the client's body for an upstream that speaks the dialect, with `model`
    rewritten and the effective policy applied in the dialect's own fields. `error_body`
    renders an error in the dialect's shape; `finish` runs once the answer is complete,
    before its last bytes are written (it stores a response that asked to be stored).
    """

    name: str
    native_path: str

    async def prepare(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def translation(self, body: dict[str, Any]) -> Translation: ...

    def native_body(self, body: dict[str, Any], model: str, policy: Policy) -> dict[str, Any]: ...

    def error_body(self, exc: GenieHiveError) -> bytes: ...

    async def finish(self, body: dict[str, Any], translation: Translation) -> None: ...


def served(gateway: Gateway) -> dict[str, Dialect]:
    """The dialects the gateway serves, by client path (`app.create_asgi` registers them)."""
    from geniehive.dialects.messages import MessagesDialect
    from geniehive.dialects.responses import ResponsesDialect

    return {"/v1/messages": MessagesDialect(gateway), "/v1/responses": ResponsesDialect(gateway)}


class DialectWriter:
    """The relay's writer for a dialect request: the relay writes an OpenAI chat answer (or,
    with `native` set before its start, the upstream's own dialect answer) and the client's
    writer receives the dialect's.

    A JSON answer is held whole, translated and written with its new length; an event
    stream is cut into events and each translated as it arrives. It offers the `Writer`
    fields the relay reads and sets (`started`, `sse`, `ended`, `bytes_out`), mirrored onto
    the client's writer, which the edge's watchers read. A stream ends with the dialect's
    last event (`message_stop`, `response.completed`): `ended` is then set and whatever the
    upstream still sends is dropped. Once the answer is complete,
    `finish` runs before the bytes that complete it are written, so a client that reads the
    end of an answer can rely on what `finish` did (a stored response can be fetched).
    """

    def __init__(
        self, client: Writer, translation: Translation,
        finish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.translation = translation
        self._finish = finish
        self.native = False  # set per attempt by the relay, before the start
        self.strip = True  # likewise: reasoning is stripped from a native answer
        self.complete = False  # the answer ended well (a whole body, or a stream's end)
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._buf = b""
        self._done = False
        self.writer = Writer(self._start, self._body)

    # The relay holds `self.writer`; these mirror what it sets onto the client's writer.
    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.writer.started = True
        self.client.sse = self.writer.sse
        if self.writer.sse:
            await self.client.start(status, headers)
            return
        self._status, self._headers = status, headers  # held until the whole body is in

    async def _body(self, chunk: bytes, more: bool) -> None:
        self.writer.bytes_out += len(chunk)
        if self.writer.sse:
            await self._events(chunk, more)
            return
        self._parts.append(chunk)
        if more:
            return
        raw = b"".join(self._parts)
        self._parts = []
        out = self._translate_json(raw)
        await self._finished()
        headers = [
            (k, str(len(out)).encode() if k == b"content-length" else v)
            for k, v in self._headers
        ]
        self.writer.ended = True
        await self.client.start(self._status, headers)
        await self.client.body(out, False)

    def _translate_json(self, raw: bytes) -> bytes:
        """A whole JSON answer in the dialect; a body that is not a JSON object (an error
        body passed on as it came) is sent unchanged."""
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(data, dict) or self._status >= 400:
            return raw
        if self.native:
            out = self.translation.native_answer(data, self.strip)
        else:
            out = self.translation.answer(data)
        self.complete = True
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()

    async def _events(self, chunk: bytes, more: bool) -> None:
        if self.writer.ended:
            return  # the dialect's answer was whole: what the upstream sends after is not
        self._buf += chunk
        out: list[bytes] = []
        while not self.complete:
            found = EVENT_END.search(self._buf)
            if found is None:
                break
            event = self._buf[:found.end()]
            self._buf = self._buf[found.end():]
            out.append(self._event(event))
        if self.complete:
            # Its last event is out: the client's answer ends here, and the relay, seeing
            # `ended`, stops reading (a client may leave at once, as Codex does).
            more = False
            self._buf = b""
        if not more:
            if self._buf.strip():
                out.append(self._event(self._buf + b"\n\n"))
            self._buf = b""
            if not self._done and not self.native:
                # The stream ended without its last word: the answer is what arrived.
                self._done = True
                out.append(self.translation.done())
            self.writer.ended = True
        data = b"".join(out)
        await self._finished()
        if data or not more:
            await self.client.body(data, more)

    async def _finished(self) -> None:
        """Run `finish` once, when the answer has become complete."""
        if self.complete and self._finish is not None:
            finish, self._finish = self._finish, None
            try:
                await finish()
            except Exception:  # the answer itself is fine: it is still delivered
                log.exception("a dialect answer could not be finished")

    def _event(self, event: bytes) -> bytes:
        if self.native:
            out = self.translation.native_event(event, self.strip)
            self.complete = self.translation.result is not None
            return out
        _, data = parse_event_lines(event)
        if data is None or self._done:
            return b""
        if data.strip() == b"[DONE]":
            self._done = True
            self.complete = True
            return self.translation.done()
        try:
            parsed = json.loads(data)
        except ValueError:
            return b""
        if not isinstance(parsed, dict):
            return b""
        error = parsed.get("error")
        if isinstance(error, dict) and "choices" not in parsed:
            self._done = True
            return self.translation.error(error)
        return self.translation.chunk(parsed)
