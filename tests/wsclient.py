"""A websocket chat client for tests: frames a `chat.request` and owns its TCP stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from geniehive import ws


def chat(text: str, model: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def request(request_id: str, text: str, **extra: Any) -> str:
    return json.dumps({"type": "chat.request", "id": request_id, "body": chat(text, **extra)})


@asynccontextmanager
async def connect(hive_url: str, headers: list[tuple[str, str]] | None = None
                  ) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client on a TCP stream this test owns.

    trio-websocket 0.12 (`open_websocket_url` included) never closes its socket after the
    server closed the websocket first (its reader stops at EOF without closing the stream),
    which the suite's ResourceWarning-as-error setting turns into a failure of a later test.
    Owning the stream lets us close it.
    """
    host, port = hive_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        async with trio.open_nursery() as nursery:
            sock = await wrap_client_stream(
                nursery, stream, host, ws.PATH, extra_headers=headers or [],
                max_message_size=16 * 1024 * 1024,
            )
            try:
                yield sock
            finally:
                await sock.aclose()
    finally:
        await stream.aclose()


async def receive(sock: WebSocketConnection) -> dict[str, Any]:
    return json.loads(await sock.get_message())
