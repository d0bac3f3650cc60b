"""A recording fake OpenAI-compatible upstream with exact fault injection, for the test suite.

Built on trio streams and h11 rather than a web framework so a test controls every byte and
every pause. Each connection is one task; while a response is being sent a second task reads
the socket, so a client that goes away is noticed within milliseconds and the request is
recorded as cancelled.

In-process::

    fake = FakeUpstream(["m1"])
    port = await nursery.start(fake.serve)
    fake.set_fault("stall_mid_stream", after_chunks=2, times=1)
    ...                                   # the client gives up
    record = await fake.wait_cancelled(0)

As a process: ``python -m tests.fakes.upstream --port 0 --model m1`` prints ``LISTENING <port>``
and serves until SIGTERM/SIGINT; the ``/_fake/...`` control endpoints drive it from outside (``GET /_fake/load``: the requests
being answered now and the most at once).

Fault modes, ``set_fault(mode, *, times=None, path=None, **params)``; ``times=None`` makes the
fault persistent, ``times=n`` applies it to the next n requests whose path starts with
``path`` (without ``path``: the next n POST requests, so that a gateway's probes and discovery
calls, all GETs, cannot use up a fault meant for a request) and then falls back to the
persistent one. ``/_fake/`` requests are
never faulted nor recorded. A whole body counts as two chunks (its halves).

- ``ok``
- ``status``: ``status`` (500), ``message``, ``code``, or a raw ``body`` + ``content_type``;
  extra ``headers`` (e.g. ``{"retry-after": "1"}``)
- ``slow_headers``: sleep ``delay_s`` (1.0) before the response headers
- ``reset_mid_stream``: send ``after_chunks`` (1) chunks, then reset the TCP connection
- ``stall_mid_stream``: send ``after_chunks`` (1) chunks, then stall until the client leaves
- ``garbage``: ``kind`` ``bad_http`` (non-HTTP bytes), ``not_json`` (a valid 200 whose JSON body
  is not JSON), ``bad_length`` (Content-Length shorter than the body), or ``raw`` bytes; then close
- ``hold_stream``: send ``after_chunks`` (1) chunks, then wait for ``release()``
- ``delay_chunks``: sleep ``delay_s`` (0.05) between chunks
- ``flood``: answer a chat stream of ``chunks`` (2000) events of ``chunk_bytes`` (16384) bytes
  of content each, as fast as the client takes them (a client that stops reading leaves the
  fake blocked in its write; closing the connection then records the request as cancelled)
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio

from tests.fakes import replies
from tests.fakes.replies import BadRequest, Reply

RECEIVE_BYTES = 65536
SUMMARY_BODY_LIMIT = 4096
FAULT_PARAMS: dict[str, set[str]] = {
    "ok": set(),
    "status": {"status", "message", "code", "body", "content_type", "headers"},
    "slow_headers": {"delay_s"},
    "reset_mid_stream": {"after_chunks"},
    "stall_mid_stream": {"after_chunks"},
    "garbage": {"kind", "raw"},
    "hold_stream": {"after_chunks"},
    "delay_chunks": {"delay_s"},
    "flood": {"chunks", "chunk_bytes"},
}
GARBAGE = {
    "bad_http": b"this is not an HTTP response\r\n\x00\xff\xfe\r\n\r\n",
    "not_json": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n"
    b"Connection: close\r\n\r\nnot json",
    "bad_length": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
    b"\r\nnot json",
}


@dataclass
class Fault:
    """A fault mode with its parameters; `remaining` counts down for one-off faults."""

    mode: str = "ok"
    params: dict[str, Any] = field(default_factory=dict)
    remaining: int | None = None
    path: str | None = None

    def applies_to(self, path: str, method: str = "POST") -> bool:
        if self.path is None:
            return self.remaining is None or method == "POST"
        return path.startswith(self.path)


class FakeUpstream:
    """An OpenAI-compatible server that records every request and misbehaves on demand."""

    def __init__(self, models: list[str] | None = None, *, name: str = "fake",
                 reply: str | None = None, transcript: str | None = None,
                 embedding_dim: int = 8, ignore_base64: bool = False,
                 strict_models: bool = False) -> None:
        self.models = list(models) if models is not None else ["fake-model"]
        self.name = name
        self.reply = reply  # chat/completion content; None echoes the prompt
        self.transcript = transcript  # audio text; None names the uploaded file
        self.embedding_dim = embedding_dim
        self.ignore_base64 = ignore_base64
        self.strict_models = strict_models  # answer 404 for models not in `models`
        self.requests: list[dict[str, Any]] = []
        # POST requests being answered now, and the most at once: a request stops counting just
        # before its last bytes go out, so a client that sends its next request only after
        # an answer ended never sees two counted.
        self.active = 0
        self.max_active = 0
        self._answering: set[int] = set()
        self.port: int | None = None
        self._persistent = Fault()
        self._next: Fault | None = None
        self._held = trio.Event()
        self._changed = trio.Event()

    # -- control ----------------------------------------------------------------------------

    def set_fault(self, mode: str, *, times: int | None = None, path: str | None = None,
                  **params: Any) -> None:
        """Set the persistent fault (`times=None`) or one for the next `times` requests."""
        if mode not in FAULT_PARAMS:
            raise ValueError(f"unknown fault mode {mode!r}")
        unknown = set(params) - FAULT_PARAMS[mode]
        if unknown:
            raise ValueError(f"unknown parameters for {mode!r}: {sorted(unknown)}")
        if times is not None and times < 1:
            raise ValueError("times must be a positive count or None")
        if mode == "hold_stream":
            self._held = trio.Event()
        fault = Fault(mode, params, times, path)
        if times is None:
            self._persistent, self._next = fault, None
        else:
            self._next = fault

    def release(self) -> None:
        """Let every response held by `hold_stream` send the rest of its chunks."""
        self._held.set()

    def _take_fault(self, path: str, method: str) -> Fault:
        pending = self._next
        if pending is not None and pending.applies_to(path, method):
            pending.remaining = (pending.remaining or 1) - 1  # a one-off always has a count
            if pending.remaining <= 0:
                self._next = None
            return pending
        return self._persistent if self._persistent.applies_to(path) else Fault()

    # -- waiting ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, find: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        while (found := find()) is None:
            await self._changed.wait()
        return found

    async def wait_for_request(self, pred: Callable[[dict[str, Any]], bool] | None = None,
                               *, start: int = 0) -> dict[str, Any]:
        """The first record from `start` on whose body has arrived and that matches `pred`."""
        def find() -> dict[str, Any] | None:
            for record in self.requests[start:]:
                ready = record["body_complete"] or record["finished_at"] is not None
                if ready and (pred is None or pred(record)):
                    return record
            return None
        return await self._wait_until(find)

    async def wait_cancelled(self, index: int) -> dict[str, Any]:
        """Block until request `index` is recorded as cancelled by the client."""
        return await self._wait_until(lambda: self._record_if(index, "cancelled"))

    async def wait_finished(self, index: int) -> dict[str, Any]:
        """Block until request `index` has ended, whichever way."""
        return await self._wait_until(lambda: self._record_if(index, "finished_at"))

    def _record_if(self, index: int, key: str) -> dict[str, Any] | None:
        if index < len(self.requests) and self.requests[index][key]:
            return self.requests[index]
        return None

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the real port through `task_status`, and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started(self.port)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(stream, conn):
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass  # the client left between requests or spoke broken HTTP: nothing to answer

    async def _serve_one(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Answer one request; True when the connection may carry another."""
        event = await _next_event(stream, conn)
        if not isinstance(event, h11.Request):
            return False
        record = self._open_record(event)
        try:
            body = await _read_body(stream, conn)
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            self._finish(record, "cancelled")
            return False
        self._take_body(record, body)
        if record["control"]:
            fault, reply = Fault(), self._control(record)
        else:
            fault = self._take_fault(record["path"], record["method"])
            record["fault"] = fault.mode
            reply = self._route(record)
        outcome = await self._respond(stream, conn, record, fault, reply)
        return outcome == "completed" and conn.our_state is h11.DONE \
            and conn.their_state is h11.DONE

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection,
                       record: dict[str, Any], fault: Fault, reply: Reply) -> str:
        """Send `reply` under `fault` while watching for the client to leave."""
        outcome = "cancelled"
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                await _wait_peer_gone(stream, conn)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                outcome = await self._deliver(stream, conn, fault, reply, record)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                outcome = "cancelled"
            nursery.cancel_scope.cancel()
        self._finish(record, outcome)
        if outcome == "reset":
            # Linger 0 turns close into a TCP RST: the client sees a reset, not a clean EOF.
            stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        if outcome != "completed":
            await stream.aclose()
        return outcome

    async def _deliver(self, stream: trio.SocketStream, conn: h11.Connection, fault: Fault,
                       reply: Reply, record: dict[str, Any]) -> str:
        params = fault.params
        if fault.mode == "garbage":
            raw = params.get("raw") or GARBAGE[params.get("kind", "bad_http")]
            await stream.send_all(raw.encode() if isinstance(raw, str) else raw)
            return "garbage"
        if fault.mode == "status":
            reply = _status_reply(params)
        if fault.mode == "flood":
            reply = _flood_reply(params)
        if fault.mode == "slow_headers":
            await trio.sleep(params.get("delay_s", 1.0))
        pieces, headers = self._framing(reply)
        await _send(stream, conn, h11.Response(status_code=reply.status, headers=headers))
        record["status"] = reply.status
        for index in range(len(pieces) + 1):
            if await self._before_piece(fault, index, len(pieces)) == "reset":
                return "reset"
            if index >= len(pieces) - 1:
                self._ending(record)
            if index == len(pieces):
                await _send(stream, conn, h11.EndOfMessage())
            elif pieces[index]:
                await _send(stream, conn, h11.Data(data=pieces[index]))
        return "completed"

    async def _before_piece(self, fault: Fault, index: int, count: int) -> str | None:
        """Apply the per-chunk faults before piece `index` (`count` means the end)."""
        at_cut = index == fault.params.get("after_chunks", 1)
        if fault.mode == "reset_mid_stream" and at_cut:
            return "reset"
        if fault.mode == "stall_mid_stream" and at_cut:
            await trio.sleep_forever()
        if fault.mode == "hold_stream" and at_cut:
            await self._held.wait()
        if fault.mode == "delay_chunks" and 0 < index < count:
            await trio.sleep(fault.params.get("delay_s", 0.05))
        return None

    def _framing(self, reply: Reply) -> tuple[list[bytes], list[tuple[str, str]]]:
        headers = [("content-type", reply.content_type), ("x-fake-name", self.name),
                   *reply.headers]
        if reply.events is not None:
            return reply.events, headers  # no length: h11 frames each piece as its own chunk
        headers.append(("content-length", str(len(reply.body))))
        half = len(reply.body) // 2
        return [reply.body[:half], reply.body[half:]], headers

    # -- recording --------------------------------------------------------------------------

    def _open_record(self, event: h11.Request) -> dict[str, Any]:
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        record = {
            "index": None, "method": event.method.decode(), "path": path, "query": query,
            "headers": headers, "body": b"", "json": None, "form": {}, "form_items": [],
            "files": {}, "body_complete": False, "received_at": trio.current_time(),
            "fault": None, "status": None, "outcome": None, "completed": False,
            "cancelled": False, "cancelled_at": None, "finished_at": None,
            "control": path.startswith("/_fake/"),
        }
        if not record["control"]:
            record["index"] = len(self.requests)
            self.requests.append(record)
            if record["method"] == "POST":  # requests, not a gateway's probes and discovery
                self._answering.add(record["index"])
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            self._notify()
        return record

    def _ending(self, record: dict[str, Any]) -> None:
        if record["index"] in self._answering:
            self._answering.discard(record["index"])
            self.active -= 1

    def _take_body(self, record: dict[str, Any], body: bytes) -> None:
        record["body"] = body
        record["body_complete"] = True
        content_type = record["headers"].get("content-type", "")
        if body and content_type.startswith("multipart/form-data"):
            try:
                form = replies.parse_multipart(body, content_type)
            except BadRequest as exc:
                record["form_error"] = str(exc)
            else:
                record.update(form=form.fields, form_items=form.items, files=form.files)
        elif body:
            try:  # any content type: some clients omit it on JSON bodies
                record["json"] = json.loads(body)
            except ValueError:
                pass  # left as None: the endpoint answers 400
        self._notify()

    def _finish(self, record: dict[str, Any], outcome: str) -> None:
        self._ending(record)
        now = trio.current_time()
        record.update(outcome=outcome, finished_at=now, completed=outcome == "completed")
        if outcome == "cancelled":
            record.update(cancelled=True, cancelled_at=now)
        self._notify()

    # -- endpoints --------------------------------------------------------------------------

    def _route(self, record: dict[str, Any]) -> Reply:
        routes: dict[str, dict[str, Callable[[dict[str, Any]], Reply]]] = {
            "/v1/models": {"GET": lambda r: replies.render_models(self.models)},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
            "/v1/embeddings": {"POST": self._embeddings},
            "/v1/audio/transcriptions": {"POST": lambda r: self._audio(r, "transcribe")},
            "/v1/audio/translations": {"POST": lambda r: self._audio(r, "translate")},
            "/health": {"GET": lambda r: replies.json_reply({"status": "ok", "name": self.name})},
        }
        methods = routes.get(record["path"])
        if methods is None:
            return replies.error_reply(404, f"no route {record['path']}", "not_found")
        handler = methods.get(record["method"])
        if handler is None:
            return replies.error_reply(405, f"{record['method']} not allowed", "method_not_allowed")
        try:
            return handler(record)
        except BadRequest as exc:
            return replies.error_reply(exc.status, str(exc), exc.code)

    def _json_body(self, record: dict[str, Any]) -> dict[str, Any]:
        body = record["json"]
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        if self.strict_models and model not in self.models:
            raise BadRequest(f"The model `{model}` does not exist", status=404,
                             code="model_not_found")
        return body

    def _chat(self, record: dict[str, Any]) -> Reply:
        body = self._json_body(record)
        request_id = f"chatcmpl-fake{record['index']}"
        tool = replies.wants_tool_call(body)
        if tool is not None:
            return replies.render_tool_call(body, tool, request_id)
        text = self.reply if self.reply is not None else (
            replies.tool_reply_text(body) or replies.chat_reply_text(body))
        return replies.render_chat(body, text, request_id)

    def _completion(self, record: dict[str, Any]) -> Reply:
        body = self._json_body(record)
        text = self.reply if self.reply is not None else replies.completion_reply_text(body)
        return replies.render_completion(body, text, f"cmpl-fake{record['index']}")

    def _embeddings(self, record: dict[str, Any]) -> Reply:
        body = self._json_body(record)
        return replies.render_embeddings(body, self.embedding_dim, self.ignore_base64)

    def _audio(self, record: dict[str, Any], task: str) -> Reply:
        if "form_error" in record:
            raise BadRequest(record["form_error"])
        form = replies.Form(record["form_items"], record["files"])
        upload = record["files"].get("file", {})
        text = self.transcript or f"fake {task} of {upload.get('filename')}"
        return replies.render_transcription(form, task, text)

    def _control(self, record: dict[str, Any]) -> Reply:
        method, path, body = record["method"], record["path"], record["json"] or {}
        try:
            if (method, path) == ("GET", "/_fake/requests"):
                return replies.json_reply([summarize(r) for r in self.requests])
            if (method, path) == ("GET", "/_fake/load"):
                return replies.json_reply({"active": self.active, "max_active": self.max_active})
            if (method, path) == ("POST", "/_fake/release"):
                self.release()
            elif (method, path) == ("POST", "/_fake/fault"):
                params = dict(body)
                self.set_fault(params.pop("mode", "ok"), **params)
            elif (method, path) == ("POST", "/_fake/models"):
                if body.get("id") not in self.models:
                    self.models.append(str(body["id"]))
            elif method == "DELETE" and path.startswith("/_fake/models/"):
                model = urllib.parse.unquote(path.removeprefix("/_fake/models/"))
                if model not in self.models:
                    return replies.error_reply(404, f"no model {model}", "model_not_found")
                self.models.remove(model)
            else:
                return replies.error_reply(404, f"no control route {method} {path}", "not_found")
        except (ValueError, KeyError, TypeError) as exc:
            return replies.error_reply(400, f"bad control request: {exc}")
        return replies.json_reply({"ok": True, "models": self.models})


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy of a record; bodies over 4 KiB are left out."""
    out = {k: v for k, v in record.items() if k not in ("body", "json", "control")}
    body = record["body"]
    out["body_size"] = len(body)
    if len(body) <= SUMMARY_BODY_LIMIT:
        out["body"] = body.decode("utf-8", "replace")
        out["json"] = record["json"]
    return out


def _flood_reply(params: dict[str, Any]) -> Reply:
    content = "x" * int(params.get("chunk_bytes", 16384))
    chunk = json.dumps({
        "id": "chatcmpl-flood", "object": "chat.completion.chunk", "model": "flood",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    })
    event = f"data: {chunk}\n\n".encode()
    events = [event] * int(params.get("chunks", 2000)) + [b"data: [DONE]\n\n"]
    return Reply(content_type="text/event-stream", events=events)


def _status_reply(params: dict[str, Any]) -> Reply:
    status = int(params.get("status", 500))
    headers = list((params.get("headers") or {}).items())
    if "body" in params:
        raw = params["body"]
        return Reply(status=status, body=raw.encode() if isinstance(raw, str) else raw,
                     content_type=params.get("content_type", "application/json"),
                     headers=headers)
    message = params.get("message", f"fake upstream error {status}")
    reply = replies.error_reply(status, message, params.get("code"))
    reply.headers = headers
    return reply


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            await _send(stream, conn, h11.InformationalResponse(status_code=100, headers=[]))
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def _read_body(stream: trio.SocketStream, conn: h11.Connection) -> bytes:
    """The whole request body; h11 undoes content-length and chunked framing."""
    parts = []
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            parts.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        else:
            raise h11.RemoteProtocolError("connection closed inside the request body")


async def _wait_peer_gone(stream: trio.SocketStream, conn: h11.Connection) -> None:
    """Return once the client closes or resets; bytes it pipelines are kept for later."""
    while True:
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        conn.receive_data(data)


# -- process mode -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.upstream",
                                     description="A recording fake OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", dest="models", default=None)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--reply", default=None)
    parser.add_argument("--embedding-dim", type=int, default=8)
    return parser.parse_args(argv)


async def run_process(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, announcing the bound port on stdout."""
    fake = FakeUpstream(args.models, name=args.name, reply=args.reply,
                        embedding_dim=args.embedding_dim)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(fake.serve, host=args.host, port=args.port))
            print(f"LISTENING {port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
    trio.run(run_process, parse_args(argv))


if __name__ == "__main__":
    main()
