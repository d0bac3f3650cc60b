"""The pieces of an upstream exchange the relay puts together: answer headers, the idle
timer on an answer's chunks, tokens/s, base64 embeddings and multipart upload bodies.

Rule: no routing and no state; each piece is small and tested through the relay.
"""

from __future__ import annotations

import base64
import secrets
import struct
from collections.abc import AsyncIterator
from typing import Any

import trio

from geniehive.adapters import UpstreamRequest
from geniehive.exchange import Upload, UpstreamResponse

__all__ = [
    "JSON_HEADERS",
    "SSE_HEADERS",
    "IdleTimed",
    "encode_embeddings",
    "encode_multipart",
    "floats_to_base64",
    "length_header",
    "tokens_per_sec",
]


def floats_to_base64(vector: list[float]) -> str:
    """Little-endian float32, as the OpenAI API encodes `encoding_format: base64`."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
JSON_HEADERS = ((b"content-type", b"application/json"),)

class IdleTimed:
    """The body chunks of an upstream answer; trio.TooSlowError when a gap exceeds `idle_s`.

    One cancel scope per read, created directly (cheaper than `trio.fail_after`'s context
    manager on a path that runs for every chunk). Only the wait for the upstream is timed:
    the time the caller spends writing to a slow client is not an upstream gap.
    """

    __slots__ = ("idle_s", "response")

    def __init__(self, response: UpstreamResponse, idle_s: float) -> None:
        self.response = response
        self.idle_s = idle_s

    def __aiter__(self) -> IdleTimed:
        return self

    async def __anext__(self) -> bytes:
        with trio.CancelScope(deadline=trio.current_time() + self.idle_s) as scope:
            chunk = await self.response.read_chunk()
        if scope.cancelled_caught:
            raise trio.TooSlowError
        if chunk is None:
            raise StopAsyncIteration
        return chunk


def length_header(raw: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(raw)).encode())


def tokens_per_sec(
    usage: Any, events: int, start: float | None, end: float
) -> float | None:
    if start is None or end <= start:
        return None
    tokens = None
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        tokens = usage["completion_tokens"]
    elif events:
        tokens = events
    if not tokens:
        return None
    return tokens / (end - start)


def encode_embeddings(data: Any) -> bool:
    changed = False
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        for item in data["data"]:
            if isinstance(item, dict) and isinstance(item.get("embedding"), list):
                item["embedding"] = floats_to_base64(item["embedding"])
                changed = True
    return changed


def encode_multipart(
    request: UpstreamRequest, upload: Upload
) -> tuple[str, int, AsyncIterator[bytes]]:
    """A multipart body streamed from the spooled upload, with its exact length."""
    boundary = f"----geniehive{secrets.token_hex(12)}"
    head = bytearray()
    for name, value in request.fields:
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{quote_field(name)}"\r\n\r\n'
        ).encode()
        head += value.encode() + b"\r\n"
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; '
        f'name="{quote_field(request.file_field)}"; '
        f'filename="{quote_field(upload.filename)}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + upload.size + len(tail)

    async def body() -> AsyncIterator[bytes]:
        yield bytes(head)
        upload.file.seek(0)
        while True:
            # The spooled upload may live on disk: read it off the event loop.
            block = await trio.to_thread.run_sync(upload.file.read, 256 * 1024)
            if not block:
                break
            yield block
        yield tail

    return boundary, length, body()


def quote_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
