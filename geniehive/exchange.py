"""The values one forwarded request is made of, shared by the proxy, the websocket and the relay.

    Inbound    the parsed client request (with its Upload, for multipart operations) and
               the capabilities it needs (`body_needs`)
    Writer     where the answer goes: `start(status, headers)` once, then `body(chunk, more)`
    Outcome    what happened: status, the service that answered, attempts and their failures
    Transport  the seam the relay sends upstream requests through (`pool.UpstreamPool` in
               production, an in-memory fake in tests), answering `UpstreamResponse`s

Rule: plain values and protocols, no I/O (no trio, httpx or quart here); the edge that
builds a Writer supplies its two coroutines, and the relay only calls them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from geniehive.dialects import Dialect, DialectWriter
    from geniehive.traced import RequestTrace

StartFn = Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]]
BodyFn = Callable[[bytes, bool], Awaitable[None]]


@dataclass(slots=True)
class Upload:
    """A multipart upload, spooled by the proxy: form fields plus one file."""

    fields: list[tuple[str, str]]
    file_field: str
    filename: str
    content_type: str
    file: Any  # a seekable binary file object
    size: int


@dataclass(slots=True)
class Inbound:
    """One parsed client request."""

    endpoint: str  # an adapters.OPENAI_PATHS key: chat, completion, embeddings, transcription...
    operation: str
    model: str
    stream: bool = False
    body: dict[str, Any] | None = None
    raw: bytes | None = None  # the client's body bytes, sent as they are when nothing changed
    upload: Upload | None = None
    request_id: str = ""
    hops: bytes = b""  # the hop header to send upstream (empty: this gateway's id alone)
    # Its place at the admission queue (geniehive/capacity.py): the key's name and limits,
    # the priority class (0 high, 1 normal, 2 low) and the longest wait it asked for.
    key: str = "open"
    key_limit: int | None = None
    weight: float = 1.0
    priority: int = 1
    max_wait_s: float | None = None
    # A dialect request (geniehive/dialects/): the dialect, the client's own body (`body` is
    # its chat translation) and, once relaying, the writer that translates the answer back.
    dialect: Dialect | None = None
    dialect_body: dict[str, Any] | None = None
    answer: DialectWriter | None = None
    # The capabilities the request needs from a model (`body_needs`): routed only to services
    # whose asset has them or does not say.
    needs: frozenset[str] = frozenset()
    # The session it names (geniehive/affinity.py), None when it names none.
    session: str | None = None
    # Tracing (geniehive/tracing.py): the request's server span when tracing is on, and the
    # W3C trace headers its upstream request carries (the client's own when tracing is off).
    trace: RequestTrace | None = None
    trace_headers: tuple[tuple[bytes, bytes], ...] = ()


NO_NEEDS: frozenset[str] = frozenset()
TOOLS = frozenset({"tools"})
VISION = frozenset({"vision"})
TOOLS_AND_VISION = frozenset({"tools", "vision"})
IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


def body_needs(body: dict[str, Any]) -> frozenset[str]:
    """The capabilities a chat body needs: `tools` for a non-empty `tools` list, `vision` for
    an image part (`image_url`, `image`, `input_image`) in any message's content. Cheap: the
    parts are scanned only in messages whose content is a list (plain text content is not)."""
    tools = bool(body.get("tools")) if "tools" in body else False
    vision = False
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in IMAGE_PARTS for part in content
            ):
                vision = True
                break
    if tools:
        return TOOLS_AND_VISION if vision else TOOLS
    return VISION if vision else NO_NEEDS


@dataclass(slots=True)
class Writer:
    """Where the answer goes: `start(status, headers)` once, then `body(chunk, more)`.

    `sse` says the answer is an event stream (set before its start), `ended` that its last
    body part was written, `pending_since` when the send under way began (None: none is):
    what ends an answer cut by a shutdown, and what the write timeout watches.
    `body_follows` (set before the start) promises that the first body part is written right
    after the start, so the head may wait for it and go out in the same write.
    """

    start: StartFn
    body: BodyFn
    started: bool = False
    bytes_out: int = 0
    sse: bool = False
    ended: bool = False
    pending_since: float | None = None
    body_follows: bool = False


@dataclass(slots=True)
class Outcome:
    """What became of one request, for its response headers, its log line and the metrics."""

    status: int = 0
    service_id: str | None = None
    upstream_model: str | None = None
    route: str = "direct"
    attempts: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (service id, why)
    ttft_ms: float | None = None
    queued_ms: float | None = None  # how long it waited for a slot, when it did
    load_ms: float | None = None  # how long it waited for a start or a load, when it did
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Session affinity (geniehive/affinity.py): hit | miss | moved, None without a session.
    affinity: str | None = None

    def take_usage(self, usage: Any) -> None:
        """Remember the token counts of an upstream `usage` object, if it is one."""
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if prompt is None and completion is None:  # a native dialect's own usage
                prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
            self.prompt_tokens = prompt if isinstance(prompt, int) else None
            self.completion_tokens = completion if isinstance(completion, int) else None


class UpstreamResponse(Protocol):
    """An upstream answer whose headers have arrived (`pool.PoolResponse`).

    `read_chunk` returns the next body bytes, None at the end; `aclose` is always called,
    never blocks, and closes the connection unless the body was read to its end.
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None: ...

    async def read_chunk(self) -> bytes | None: ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    """Sends one request upstream and returns once its response headers arrived.

    Raises what `pool.UpstreamPool.request` raises: `pool.ConnectFailed`,
    `pool.ConnectTimeout`, `pool.ProtocolFailed` (all `pool.PoolError`). Bounding the wait
    for the headers is the caller's (a cancel scope around the call).
    """

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        content_length: int | None = None,
    ) -> UpstreamResponse: ...
