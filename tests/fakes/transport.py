"""An `httpx.MockTransport` route table for adapter unit tests: no sockets, every call seen.

    seen = []
    async with open_adapter(LlamaCppAdapter, routes({("GET", "/health"): ok}, seen)) as a:
        ...

A route's answer is an `httpx.Response` or a function of the request (to raise a transport
error or answer from the body). A request no route names fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx

from geniehive.adapters import Adapter, Asset, UpstreamContext

Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]
Handler = Callable[[httpx.Request], httpx.Response]
A = TypeVar("A", bound=Adapter)


def routes(table: Mapping[tuple[str, str], Answer], seen: list[httpx.Request]) -> Handler:
    """A handler answering (method, path) from `table` and recording every request."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = table.get((request.method, request.url.path))
        if answer is None:
            raise AssertionError(f"unexpected {request.method} {request.url}")
        return answer(request) if callable(answer) else answer
    return handler


def refuse(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected, got {request.method} {request.url}")


def connect_refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@asynccontextmanager
async def open_adapter(
    factory: Callable[[UpstreamContext], A],
    handler: Handler = refuse,
    *,
    base_url: str = "http://upstream.test:8000",
    assets: tuple[Asset, ...] = (),
    api_key: str | None = None,
    **extra: Any,
) -> AsyncIterator[A]:
    """The adapter `factory` builds over a client whose every request goes to `handler`."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = UpstreamContext("up1", base_url, client, timeout_s=2.0,
                              configured_assets=assets, api_key=api_key, **extra)
        yield factory(ctx)
