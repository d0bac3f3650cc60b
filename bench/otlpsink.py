"""A lean OTLP/HTTP trace sink for the tracing phase, run as its own process on the load CPU.

    python -m bench.otlpsink --port 0      prints `LISTENING <port>` once bound

`POST /v1/traces` is answered 200 at once; the body (an `ExportTraceServiceRequest`,
protobuf) is decoded only to count its spans, then dropped, so a long run holds no memory.
`GET /stats` answers `{"posts": ..., "spans": ..., "bytes": ...}` received so far.

Rule: it must never be what slows an export down: it answers before the gateway's exporter
could time out, and a body it cannot decode is counted as a post of no span, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import h11
import trio

MAX_BODY = 32 * 1024 * 1024


class Counts:
    def __init__(self) -> None:
        self.posts = 0
        self.spans = 0
        self.bytes = 0

    def add(self, body: bytes) -> None:
        self.posts += 1
        self.bytes += len(body)
        self.spans += count_spans(body)

    def body(self) -> bytes:
        return json.dumps({"posts": self.posts, "spans": self.spans,
                           "bytes": self.bytes}).encode()


def count_spans(body: bytes) -> int:
    """The spans in one OTLP/HTTP protobuf export request (0 when it does not decode)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError:
        return 0
    return sum(len(scope.spans) for resource in request.resource_spans
               for scope in resource.scope_spans)


async def read_request(conn: h11.Connection,
                       stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
    """The next request and its body; None once the peer has closed."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and conn.their_state is h11.IDLE:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def serve_peer(stream: trio.SocketStream, counts: Counts) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while (found := await read_request(conn, stream)) is not None:
            request, body = found
            target = request.target.split(b"?")[0]
            answer, status = b"", 200
            if (request.method, target) == (b"POST", b"/v1/traces"):
                counts.add(body)
            elif (request.method, target) == (b"GET", b"/stats"):
                answer = counts.body()
            else:
                status = 404
            kind = "application/json" if answer else "application/x-protobuf"
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                ("content-type", kind), ("content-length", str(len(answer)))])))
            await stream.send_all(conn.send(h11.Data(data=answer)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def serve(port: int) -> None:
    counts = Counts()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"LISTENING {listeners[0].socket.getsockname()[1]}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await serve_peer(stream, counts)

    await trio.serve_listeners(handler, listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
