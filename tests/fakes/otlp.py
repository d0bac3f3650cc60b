"""A tiny OTLP/HTTP trace receiver: accepts `POST /v1/traces`, answers 200, keeps the bodies.

`OTLPReceiver.serve` runs in the test's nursery on 127.0.0.1 (port 0); `bodies` holds the raw
protobuf requests (for checks on the exported bytes), `spans()` decodes them into plain
`ReceivedSpan`s with `opentelemetry.proto` (the test extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h11
import trio

MAX_BODY = 16 * 1024 * 1024


@dataclass
class ReceivedEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class ReceivedSpan:
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL...
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    service_name: str
    events: list[ReceivedEvent] = field(default_factory=list)


class OTLPReceiver:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        self.url = ""
        self._arrived = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.url)

    async def wait_for_spans(self, count: int) -> list[ReceivedSpan]:
        """The spans received, once there are at least `count` (the caller holds the
        deadline)."""
        while True:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            self._arrived = trio.Event()
            await self._arrived.wait()

    def spans(self) -> list[ReceivedSpan]:
        return [span for body in self.bodies for span in decode(body)]

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is not h11.DONE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                path = request.target.decode()
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                ok = request.method == b"POST" and path == "/v1/traces"
                if ok:
                    self.paths.append(path)
                    self.content_types.append(headers.get("content-type", ""))
                    self.bodies.append(body)
                    self._arrived.set()
                status = 200 if ok else 404
                await stream.send_all(conn.send(h11.Response(
                    status_code=status,
                    headers=[("content-type", "application/x-protobuf"),
                             ("content-length", "0")],
                )))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one `ExportTraceServiceRequest`."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    name=span.name,
                    kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=_attributes(span.attributes),
                    status=Status.StatusCode.Name(span.status.code).removeprefix(
                        "STATUS_CODE_"),
                    service_name=resource.get("service.name", ""),
                    events=[ReceivedEvent(e.name, e.time_unix_nano, _attributes(e.attributes))
                            for e in span.events],
                ))
    return spans


def _attributes(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in values:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out
