"""Micro-benchmark: requests/s through UpstreamPool vs httpx.AsyncClient to one keep-alive upstream.

The upstream is a minimal trio + h11 keep-alive server in a child process (pinned to the last
CPU when there are two or more, the client to the first), answering every POST with a small
JSON body. Each client sends N requests one after another, then N spread over C concurrent
tasks, and prints requests/s.

    python bench/pool_vs_httpx.py [--requests 5000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import h11
import httpx
import trio

from geniehive.pool import UpstreamPool

REPLY = b'{"id":"cmpl-1","object":"chat.completion","choices":[{"message":{"content":"hi"}}]}'
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'
HEADERS = [(b"content-type", b"application/json"), (b"authorization", b"Bearer x")]


# ---------------------------------------------------------------------------------------------
# The upstream (child process)


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event


async def _serve_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    head = [("content-type", "application/json"), ("content-length", str(len(REPLY)))]
    try:
        while type(await _next(conn, stream)) is h11.Request:
            while type(await _next(conn, stream)) is not h11.EndOfMessage:
                pass
            out = conn.send(h11.Response(status_code=200, headers=head))
            out += conn.send(h11.Data(data=REPLY)) + conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.RemoteProtocolError):
        pass


async def _serve_connection_raw(stream: trio.SocketStream) -> None:
    """Just enough HTTP/1.1 for this client pair (Content-Length bodies), to take the
    upstream's own parsing cost out of the measurement."""
    out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(REPLY),
        REPLY,
    )
    buf = b""
    try:
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, buf = buf[:end].lower(), buf[end + 4 :]
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end >= 0 else None])
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            buf = buf[length:]
            await stream.send_all(out)
    except trio.BrokenResourceError:
        pass


async def serve(raw: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(_serve_connection_raw if raw else _serve_connection, listeners)


# ---------------------------------------------------------------------------------------------
# The clients


Call = Callable[[], Awaitable[None]]


def pool_call(pool: UpstreamPool, url: str) -> Call:
    async def call() -> None:
        response = await pool.request("POST", url, HEADERS, BODY)
        try:
            assert len(await response.read_all()) == len(REPLY)
        finally:
            await response.aclose()

    return call


def httpx_call(client: httpx.AsyncClient, url: str) -> Call:
    headers = [(k.decode(), v.decode()) for k, v in HEADERS]

    async def call() -> None:
        response = await client.post(url, content=BODY, headers=headers)
        assert len(response.content) == len(REPLY)

    return call


async def rate(call: Call, requests: int, concurrency: int) -> tuple[float, float]:
    """Requests per second, and the client's own CPU time per request in microseconds."""
    per_task = requests // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    start, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    done = per_task * concurrency
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / done * 1e6


async def compare(port: int, args: argparse.Namespace) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    pool = UpstreamPool()
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as client:
        clients = {"UpstreamPool": pool_call(pool, url), "httpx": httpx_call(client, url)}
        for call in clients.values():
            await rate(call, 200, 1)  # warm up: connections, caches
        for round_no in range(1, args.rounds + 1):
            for name, call in clients.items():
                seq, seq_cpu = await rate(call, args.requests, 1)
                conc, conc_cpu = await rate(call, args.requests, args.concurrency)
                print(
                    f"round {round_no}  {name:13s} sequential {seq:6.0f} req/s "
                    f"({seq_cpu:4.0f} us CPU/req)   concurrency {args.concurrency}: "
                    f"{conc:6.0f} req/s ({conc_cpu:4.0f} us CPU/req)",
                    flush=True,
                )
    await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--raw-upstream",
        action="store_true",
        help="a hand-rolled upstream instead of h11, so the upstream is not the bottleneck",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.raw_upstream)
        return
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", *(["--raw-upstream"] * args.raw_upstream)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        if len(cpus) >= 2:
            os.sched_setaffinity(server.pid, {cpus[-1]})
            os.sched_setaffinity(0, {cpus[0]})
        trio.run(compare, port, args)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
