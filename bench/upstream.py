"""A fast fake upstream for the streaming measurements, run as its own process.

Rule: it must never be the bottleneck. It speaks just enough HTTP/1.1 (keep-alive,
Content-Length request bodies) over raw trio sockets and answers from pre-built bytes, so
its cost per event is one `send_all`. The request's `model` picks the behaviour:

  bench-events  an SSE chat stream of `--events` chunks, each written separately (so the
                gateway relays them one by one, as it would tokens), then `data: [DONE]`;
  bench-hold    one SSE chunk, then the stream stays open until the peer closes it;
  bench-slow    the small chat completion after `--slow-ms` (the capacity burst);
  anything else the small chat completion at once.

`GET /v1/models` lists those models, which is all discovery and the prober need. The
process counts the chat requests it is answering at once: `GET /_load` says how many now
(`active`), the most ever (`max_active`) and how many it answered; `POST /_load/reset`
zeroes the last two.
Prints `LISTENING <port>` on stdout once the socket is bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys

import trio

EVENTS_MODEL = "bench-events"
HOLD_MODEL = "bench-hold"
SLOW_MODEL = "bench-slow"
MODELS = (EVENTS_MODEL, HOLD_MODEL, SLOW_MODEL)
MAX_HEAD = 64 * 1024


def chunk(text: str) -> bytes:
    """One chunked-transfer frame holding one SSE event."""
    data = f"data: {text}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_event(index: int) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench",
            "choices": [{"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": None}],
        },
        separators=(",", ":"),
    )


def response_head(status: str, content_type: str, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{framing}\r\n"
        "connection: keep-alive\r\n\r\n"
    ).encode()


def canned(body: bytes, content_type: str = "application/json") -> bytes:
    return response_head("200 OK", content_type, len(body)) + body


MODELS_REPLY = canned(
    json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}).encode()
)
JSON_REPLY = canned(
    json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello."},
                 "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        }
    ).encode()
)
SSE_HEAD = response_head("200 OK", "text/event-stream", None)
DONE = chunk("[DONE]") + b"0\r\n\r\n"


class Peer:
    """One client connection: buffered reads of request heads and bodies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def read_request(self) -> tuple[bytes, bytes] | None:
        """(request line, body) of the next request, or None at EOF."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD or not await self._fill():
                return None
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(self.buffer) < length:
            if not await self._fill():
                return None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return head.split("\r\n", 1)[0].encode("latin-1"), body

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer.extend(data)
        return bool(data)


class Load:
    """The chat requests being answered at once, the most ever, and how many were answered."""

    def __init__(self) -> None:
        self.active = self.max_active = self.answered = 0

    def reply(self) -> bytes:
        return canned(json.dumps({"active": self.active, "max_active": self.max_active,
                                  "answered": self.answered}).encode())


async def answer_slowly(stream: trio.SocketStream, load: Load, slow_s: float) -> None:
    load.active += 1
    load.max_active = max(load.max_active, load.active)
    try:
        await trio.sleep(slow_s)
        await stream.send_all(JSON_REPLY)
        load.answered += 1
    finally:
        load.active -= 1


async def serve_peer(stream: trio.SocketStream, events: list[bytes], load: Load,
                     slow_s: float) -> None:
    peer = Peer(stream)
    try:
        while (request := await peer.read_request()) is not None:
            line, body = request
            if line.startswith(b"GET /_load"):
                await stream.send_all(load.reply())
            elif line.startswith(b"POST /_load/reset"):
                load.max_active = load.answered = 0
                await stream.send_all(load.reply())
            elif line.startswith(b"GET"):
                await stream.send_all(MODELS_REPLY)
            elif SLOW_MODEL.encode() in body:
                await answer_slowly(stream, load, slow_s)
            elif EVENTS_MODEL.encode() in body:
                await stream.send_all(SSE_HEAD + events[0])
                for event in events[1:]:
                    await stream.send_all(event)
                await stream.send_all(DONE)
            elif HOLD_MODEL.encode() in body:
                await stream.send_all(SSE_HEAD + events[0])
                # Held until the peer goes away: drain and discard whatever it sends.
                while await stream.receive_some(65536):
                    pass
                return
            else:
                await stream.send_all(JSON_REPLY)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port: int, event_count: int, slow_s: float = 0.0) -> None:
    events = [chunk(sse_event(i)) for i in range(event_count)]
    load = Load()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
    bound = listeners[0].socket.getsockname()[1]
    print(f"LISTENING {bound}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await serve_peer(stream, events, load, slow_s)

    await trio.serve_listeners(handler, listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=int, default=200, help="events per bench-events stream")
    parser.add_argument("--slow-ms", type=float, default=50.0,
                        help="how long a bench-slow answer takes")
    args = parser.parse_args(argv)
    raise_open_files()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.port, max(1, args.events), max(0.0, args.slow_ms) / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
