"""`GET /v1/cluster/events`: the console's live stream against an in-process gateway, and the
hub's coalescing and drop rules on a clock the test turns."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from geniehive.events import (
    HEARTBEAT,
    HEARTBEAT_S,
    ErrorLog,
    EventHub,
    View,
    serve_events,
)
from tests.hive import CHAT, ENV, KEYS, Hive, start_hive

OPS = {"Authorization": f"Bearer {ENV['OPS_KEY']}"}


class Events:
    """One open event stream over its own connection (h11), parsed as events arrive."""

    def __init__(self, sock: trio.SocketStream) -> None:
        import h11

        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    async def _data(self) -> bytes | None:
        import h11

        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.sock.receive_some(65536))
            elif isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode(): v.decode() for k, v in event.headers}
                return b""
            elif isinstance(event, h11.Data):
                return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None

    async def next(self) -> tuple[str, Any]:
        while b"\n\n" not in self.buffer:
            data = await self._data()
            if data is None:
                raise AssertionError("the stream ended")
            self.buffer += data
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                      if not line.startswith(":"))
        if "event" not in fields:
            return await self.next()  # a heartbeat
        return fields["event"], json.loads(fields["data"])

    async def until(self, wanted: Any) -> tuple[str, Any]:
        """The first event for which `wanted(name, data)` holds."""
        while True:
            name, data = await self.next()
            if wanted(name, data):
                return name, data


@asynccontextmanager
async def stream(client: httpx.AsyncClient, headers: dict[str, str] | None = None
                 ) -> AsyncIterator[Events]:
    import h11

    port = int(str(client.base_url).rstrip("/").rsplit(":", 1)[1])
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    events = Events(sock)
    head = [("host", "127.0.0.1"), *(headers or {}).items()]
    await sock.send_all(events.conn.send(h11.Request(
        method="GET", target="/v1/cluster/events", headers=head)))
    await sock.send_all(events.conn.send(h11.EndOfMessage()))
    try:
        while not events.status:
            assert await events._data() is not None
        assert events.status == 200, events.status
        assert events.headers["content-type"].startswith("text/event-stream")
        yield events
    finally:
        await sock.aclose()


async def test_the_stream_needs_a_key_with_the_read_scope(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path, extra=KEYS, environ=ENV)
        missing = await h.client.get("/v1/cluster/events")
        assert missing.status_code == 401
        apps = {"Authorization": f"Bearer {ENV['APPS_KEY']}"}
        assert (await h.client.get("/v1/cluster/events", headers=apps)).status_code == 403
        async with stream(h.client, OPS) as events:
            name, _ = await events.next()
        assert name == "snapshot"
        await h.client.aclose()
        await h.running.stop()


async def test_the_first_event_is_the_state_the_api_lists(hive: Hive) -> None:
    with trio.fail_after(10):
        listed = (await hive.client.get("/v1/cluster/services")).json()["data"]
        async with stream(hive.client) as events:
            name, snapshot = await events.next()
    assert name == "snapshot"
    assert [h["host_id"] for h in snapshot["hosts"]] == ["local"]
    assert snapshot["hosts"][0]["state"] == "online"
    assert "memory" in snapshot["hosts"][0]
    assert [s["service_id"] for s in snapshot["services"]] == [s["service_id"] for s in listed]
    chat = next(s for s in snapshot["services"] if s["service_id"] == "fake/chat")
    assert {"health", "health_reason", "breaker", "slots_total", "queued", "measured"} <= set(chat)
    assert snapshot["roles"] and all("chosen" in r for r in snapshot["roles"])
    assert snapshot["queue"]["waiting"] == 0
    assert snapshot["errors"] == []


async def test_a_drain_arrives_as_a_service_event(hive: Hive) -> None:
    with trio.fail_after(10):
        async with stream(hive.client) as events:
            await events.next()  # the snapshot
            drained = await hive.client.post("/v1/cluster/services/fake/chat/drain")
            assert drained.status_code == 200
            _, service = await events.until(
                lambda n, d: n == "service" and d["service_id"] == "fake/chat"
            )
            assert service["availability"] == "draining"
            assert service["routable"] is False


async def test_a_failed_request_arrives_as_an_error_without_its_prompt(hive: Hive) -> None:
    with trio.fail_after(10):
        async with stream(hive.client) as events:
            await events.next()
            body = {**CHAT, "model": "no-such-model"}
            answer = await hive.client.post("/v1/chat/completions", json=body,
                                            headers={"X-Request-Id": "req-404"})
            assert answer.status_code == 404
            _, error = await events.until(lambda n, d: n == "error")
        async with stream(hive.client) as again:
            _, snapshot = await again.next()
    assert error["request_id"] == "req-404"
    assert error["model"] == "no-such-model" and error["status"] == 404
    assert "no-such-model" in error["message"]
    assert "hello there" not in json.dumps(error)
    assert [e["request_id"] for e in snapshot["errors"]] == ["req-404"]


async def test_a_busy_service_sends_at_most_one_event_per_flush(hive: Hive) -> None:
    requests = 40
    with trio.fail_after(20):
        async with stream(hive.client) as events:
            await events.next()
            started = trio.current_time()
            for _ in range(requests):
                assert (await hive.client.post("/v1/chat/completions", json=CHAT)).is_success
            elapsed = trio.current_time() - started
            seen = 0
            # Every request changed the service's counters; the last flush shows the last.
            while True:
                _, service = await events.until(
                    lambda n, d: n == "service" and d["service_id"] == "fake/chat"
                )
                seen += 1
                if service["measured"]["requests"] == requests:
                    break
    flush_s = hive.gateway.events.flush_s
    assert seen <= elapsed / flush_s + 2 < requests


# --- the hub on a turned clock ------------------------------------------------------------------


class Source:
    """A hub source of one service whose view the test changes."""

    def __init__(self) -> None:
        self.count = 0

    def version(self) -> int:
        return 1

    def dirty(self, token: object) -> tuple[object, set[str] | None]:
        return None, {"s1"}

    def hosts(self) -> dict[str, View]:
        return {}

    def services(self, ids: Any) -> dict[str, View]:
        return {"s1": {"service_id": "s1", "count": self.count}}

    def roles(self) -> dict[str, View]:
        return {}

    def queue(self) -> View:
        return {"waiting": 0}


def names(sub: Any) -> list[str]:
    out = []
    while True:
        try:
            out.append(sub.receive.receive_nowait().split(b"\n")[0].decode())
        except trio.WouldBlock:
            return out


async def test_changes_between_two_flushes_make_one_event(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    hub, source = EventHub(ErrorLog()), Source()
    await nursery.start(hub.run, source)
    sub = hub.subscribe()
    assert names(sub) == ["event: snapshot"]
    for _ in range(10):
        source.count += 1
    await trio.sleep(hub.flush_s * 1.5)
    assert names(sub) == ["event: service"]
    await trio.sleep(hub.flush_s * 3)
    assert names(sub) == []  # nothing changed: nothing sent
    hub.close()


async def test_a_subscriber_that_falls_behind_is_dropped(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    hub, source = EventHub(ErrorLog(), buffer=3), Source()
    await nursery.start(hub.run, source)
    cut: list[bool] = []
    slow = hub.subscribe(lambda: cut.append(True))
    keen = hub.subscribe()
    for _ in range(5):
        source.count += 1
        await trio.sleep(hub.flush_s)
        names(keen)
    assert slow.dropped and cut == [True]
    assert hub.subscribers == {keen} and hub.dropped == 1
    hub.close()


async def test_a_quiet_stream_sends_a_heartbeat(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    hub = EventHub(ErrorLog())
    await nursery.start(hub.run, Source())

    class Gateway:
        events = hub

        class auth:  # stands for the gateway's authenticator
            @staticmethod
            def authorize(headers: Any, scope: str) -> None:
                return None

    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    scope = {"type": "http", "headers": [], "path": "/v1/cluster/events"}
    with trio.move_on_after(HEARTBEAT_S + 1):
        await serve_events(Gateway(), scope, receive, send)  # type: ignore[arg-type]
    assert sent[1].startswith(b"event: snapshot")
    assert sent[2:] == [HEARTBEAT]


def test_the_error_ring_keeps_the_last_fifty_with_short_messages() -> None:
    errors = ErrorLog()
    for n in range(60):
        errors.add(request_id=f"r{n}", endpoint="chat", model="m", service_id=None,
                   status=502, message="x" * 1000)
    assert [e["request_id"] for e in errors.entries][:1] == ["r10"] and len(errors.entries) == 50
    assert [e["request_id"] for e in errors.since(58)] == ["r58", "r59"]
    assert all(len(e["message"]) < 400 for e in errors.entries)


async def test_the_console_page_loads_without_a_key_and_its_data_needs_one(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        h = await start_hive(nursery, tmp_path, extra=KEYS, environ=ENV)
        page = await h.client.get("/console")
        data = await h.client.get("/v1/cluster/services")
        await h.client.aclose()
        await h.running.stop()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "/v1/cluster/events" in page.text
    for fetched in ('src="http', 'href="http', "url(http", "@import"):  # nothing off-host
        assert fetched not in page.text
    assert data.status_code == 401
