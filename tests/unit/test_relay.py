"""The relay's forwarding rules, exactly, over an in-memory transport on trio's autojump clock.

The gateway here is the real one (routing, live counters, breakers, the openai adapter) over
a hand-built snapshot; only the upstream connections are fake (tests/fakes/pool.py). The same
rules are checked on the wire in tests/app/test_proxy_contract.py. The async tests run under
pytest-trio (`trio_mode` in pyproject.toml), each on the `autojump_clock`: a 30 s timeout
costs no real time, and the elapsed trio time is exact.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from geniehive.adapters.loader import load_adapters
from geniehive.config import ControlConfig, load_control
from geniehive.errors import UpstreamFailed, UpstreamStatus, UpstreamTimeout
from geniehive.exchange import Inbound, Outcome, Transport, Writer
from geniehive.gateway import Gateway
from geniehive.models import Asset, Host, Observed, Role, RoutingPolicy, Service, Snapshot
from geniehive.pool import UpstreamPool
from geniehive.relay import Relay
from tests.fakes.pool import FakeTransport, Refused, Reply, SlowHead, Stream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "hello"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
EVENTS = [b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n',
          b'data: {"choices":[{"delta":{"content":"llo"}}]}\n\n']
FIRST_BYTE_S = 30.0
IDLE_S = 20.0
SPECS = load_adapters()


def url(service_id: str) -> str:
    return f"http://{service_id.split('/')[0]}.test:8000"


def service(service_id: str, host_id: str = "local", *, queue_depth: int | None = None) -> Service:
    return Service(service_id=service_id, host_id=host_id, operation="chat", adapter="openai",
                   base_url=url(service_id), assets=(Asset("m", loaded=True),),
                   observed=Observed(queue_depth=queue_depth))


def host(host_id: str, device_class: str = "gpu") -> Host:
    return Host(host_id=host_id, address="10.0.0.1", labels={"device_class": device_class},
                is_local=True)  # never stale: the test's wall clock does not matter


def make_config(tmp_path: Path, *, max_attempts: int = 3) -> ControlConfig:
    path = tmp_path / "geniehive.toml"
    path.write_text(
        '[server]\nbind = ["127.0.0.1:8800"]\n'
        f"[routing]\nmax_attempts = {max_attempts}\nfirst_byte_timeout_s = {FIRST_BYTE_S}\n"
        f"idle_stream_timeout_s = {IDLE_S}\n"
    )
    return load_control(path, {})


def make_relay(
    tmp_path: Path, services: list[Service], transport: FakeTransport, *,
    hosts: Sequence[Host] = (), roles: Sequence[Role] = (), max_attempts: int = 3,
) -> tuple[Relay, Gateway]:
    snapshot = Snapshot(
        version=1,
        hosts={"local": Host(host_id="local", address="127.0.0.1", is_local=True),
               **{h.host_id: h for h in hosts}},
        services={s.service_id: s for s in services},
        roles={r.role_id: r for r in roles},
    )
    registry = SimpleNamespace(snapshot=snapshot)
    gateway = Gateway(make_config(tmp_path, max_attempts=max_attempts), registry,  # type: ignore[arg-type]
                      SPECS, None, instance_id="gw-test")  # type: ignore[arg-type]
    return Relay(gateway, transport), gateway


class Client:
    """What the client received, through a Writer as the proxy builds one."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.parts: list[tuple[bytes, bool]] = []
        self.writer = Writer(self._start, self._body)

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.status is None, "a second response head"
        self.writer.started = True
        self.status, self.headers = status, dict(headers)

    async def _body(self, chunk: bytes, more: bool) -> None:
        assert self.status is not None, "a body before the head"
        assert not self.parts or self.parts[-1][1], "a body part after the last one"
        self.parts.append((chunk, more))

    @property
    def body(self) -> bytes:
        return b"".join(chunk for chunk, _ in self.parts)

    @property
    def ended(self) -> bool:
        return bool(self.parts) and not self.parts[-1][1]


async def forward(relay: Relay, outcome: Outcome, *, model: str = "m",
                  stream: bool = False) -> Client:
    body: dict[str, Any] = {**CHAT, "model": model, "stream": stream}
    inbound = Inbound("chat", "chat", model, stream=stream, body=body,
                      raw=json.dumps(body).encode(), request_id="req-1")
    client = Client()
    await relay.run(inbound, client.writer, outcome)
    return client


def breaker_failures(gateway: Gateway, service_id: str) -> int:
    return gateway.live.get(service_id).breaker.failures


# -- candidate order and max_attempts ------------------------------------------------------


async def test_candidates_are_tried_in_the_decisions_order_then_the_fallback_roles(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    # Scored: the least loaded first, so the order is not the ids' order.
    services = [service("g1/chat", "gpu", queue_depth=40), service("g2/chat", "gpu"),
                service("c1/chat", "cpu")]
    for s in services:
        transport.script(s.base_url, Reply.error(503, f"{s.service_id} busy"))
    roles = [
        Role("primary", "chat", routing=RoutingPolicy(allowed_device_classes=("gpu",),
                                                      fallback_roles=("backup",))),
        Role("backup", "chat", routing=RoutingPolicy(allowed_device_classes=("cpu",))),
    ]
    relay, gateway = make_relay(tmp_path, services, transport, roles=roles,
                                hosts=[host("gpu"), host("cpu", "cpu")])
    decision = gateway.resolve("primary", "chat")
    assert [c.service_id for c in decision.candidates] == ["g2/chat", "g1/chat"]
    outcome = Outcome()
    with pytest.raises(UpstreamFailed) as caught:
        await forward(relay, outcome, model="primary")
    assert transport.urls() == [url(s) + "/v1/chat/completions"
                                for s in ("g2/chat", "g1/chat", "c1/chat")]
    assert outcome.attempts == 3
    assert outcome.route == "role:primary;fallback:backup"
    assert str(caught.value) == (
        "every upstream failed: g2/chat: HTTP 503: g2/chat busy; "
        "g1/chat: HTTP 503: g1/chat busy; c1/chat: HTTP 503: c1/chat busy"
    )
    assert caught.value.http_status == 502


async def test_the_first_answer_ends_the_walk_and_says_who_answered(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.error(503, "busy"))
    transport.script(url("b/chat"), Reply.json(ANSWER))
    transport.script(url("c/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(
        tmp_path, [service("a/chat"), service("b/chat", queue_depth=1),
                   service("c/chat", queue_depth=2)], transport)
    outcome = Outcome()
    client = await forward(relay, outcome)
    assert transport.urls() == [url("a/chat") + "/v1/chat/completions",
                                url("b/chat") + "/v1/chat/completions"]
    assert client.status == 200 and client.ended
    assert json.loads(client.body) == ANSWER
    assert client.headers[b"x-geniehive-service"] == b"b/chat"
    assert client.headers[b"x-geniehive-attempts"] == b"2"
    assert client.headers[b"x-request-id"] == b"req-1"
    assert outcome.failures == [("a/chat", "HTTP 503: busy")]
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (3, 2)
    # The unchanged body goes upstream as the client sent it, with the hop header.
    sent = transport.sent[1]
    assert sent.json == {**CHAT, "stream": False}
    assert sent.headers[b"x-geniehive-hops"] == b"gw-test"
    assert breaker_failures(gateway, "a/chat") == 1
    assert breaker_failures(gateway, "b/chat") == 0


async def test_max_attempts_caps_the_tries_and_the_summary_names_each_one(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    for name in ("a", "b", "c"):
        transport.script(url(f"{name}/chat"), Reply.error(500, f"{name} broke"))
    relay, _ = make_relay(
        tmp_path, [service("a/chat"), service("b/chat", queue_depth=1),
                   service("c/chat", queue_depth=2)], transport, max_attempts=2)
    outcome = Outcome()
    with pytest.raises(UpstreamFailed) as caught:
        await forward(relay, outcome)
    assert len(transport.sent) == 2
    assert outcome.attempts == 2
    assert str(caught.value) == "every upstream failed: a/chat: HTTP 500: a broke; " \
                                "b/chat: HTTP 500: b broke"


# -- the 429 rule ---------------------------------------------------------------------------


async def test_a_429_fails_over_when_another_candidate_exists(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.error(429, "slow down"))
    transport.script(url("b/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(tmp_path, [service("a/chat"), service("b/chat", queue_depth=1)],
                                transport)
    outcome = Outcome()
    client = await forward(relay, outcome)
    assert client.status == 200
    assert client.headers[b"x-geniehive-service"] == b"b/chat"
    assert outcome.failures == [("a/chat", "slow down")]
    # A 429 that was tried elsewhere is a failed attempt of its service, like a 503.
    assert breaker_failures(gateway, "a/chat") == 1


async def test_a_429_with_no_other_candidate_reaches_the_client_and_spares_the_breaker(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    relay, gateway = make_relay(tmp_path, [service("a/chat")], transport)
    times = gateway.config.breaker.failures + 1
    transport.script(url("a/chat"), *[Reply.error(429, "slow down")] * times, Reply.json(ANSWER))
    for _ in range(times):
        outcome = Outcome()
        with pytest.raises(UpstreamStatus) as caught:
            await forward(relay, outcome)
        assert caught.value.http_status == 429
        assert caught.value.error_object()["code"] == "upstream_429"
        assert str(caught.value) == "slow down"
        assert (outcome.attempts, outcome.service_id) == (1, "a/chat")
    assert gateway.live.get("a/chat").breaker.state == "closed"
    assert breaker_failures(gateway, "a/chat") == 0
    client = await forward(relay, Outcome())
    assert client.status == 200
    assert len(transport.sent) == times + 1


async def test_a_429_on_the_last_try_allowed_reaches_the_client(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.error(503, "busy"))
    transport.script(url("b/chat"), Reply.error(429, "slow down"))
    transport.script(url("c/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(
        tmp_path, [service("a/chat"), service("b/chat", queue_depth=1),
                   service("c/chat", queue_depth=2)], transport, max_attempts=2)
    with pytest.raises(UpstreamStatus) as caught:
        await forward(relay, Outcome())
    assert caught.value.http_status == 429
    assert len(transport.sent) == 2  # c, a third try, is over max_attempts
    assert breaker_failures(gateway, "b/chat") == 0


async def test_llamacpps_context_overflow_reaches_the_client_as_context_length_exceeded(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    overflow = {"error": {"code": 400, "type": "exceed_context_size_error", "n_ctx": 2048,
                          "message": "request (2300 tokens) exceeds the available context "
                                     "size (2048 tokens), try increasing it"}}
    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.json(overflow, 400))
    transport.script(url("b/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(tmp_path, [service("a/chat"), service("b/chat", queue_depth=1)],
                                transport)
    with pytest.raises(UpstreamStatus) as caught:
        await forward(relay, Outcome())
    assert caught.value.http_status == 400
    assert caught.value.error_object()["code"] == "context_length_exceeded"
    assert len(transport.sent) == 1  # a client error: not tried elsewhere
    assert breaker_failures(gateway, "a/chat") == 0


# -- 504 and 502 summaries -----------------------------------------------------------------


async def test_every_try_timing_out_is_504_naming_each_attempt(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), SlowHead(FIRST_BYTE_S * 10, Reply.json(ANSWER)))
    transport.script(url("b/chat"), Refused(timeout=True))
    relay, _ = make_relay(tmp_path, [service("a/chat"), service("b/chat", queue_depth=1)],
                          transport)
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout) as caught:
        await forward(relay, Outcome())
    assert trio.current_time() - started == pytest.approx(FIRST_BYTE_S)
    assert caught.value.http_status == 504
    assert str(caught.value) == ("every upstream timed out: a/chat: no response headers in "
                                 "time; b/chat: connect timed out")
    assert transport.open_responses() == []


async def test_mixed_failures_are_502_naming_each_attempt(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), Refused())
    transport.script(url("b/chat"), SlowHead(FIRST_BYTE_S * 10, Reply.json(ANSWER)))
    transport.script(url("c/chat"), Reply(200, b'{"choices": ['))
    relay, _ = make_relay(
        tmp_path, [service("a/chat"), service("b/chat", queue_depth=1),
                   service("c/chat", queue_depth=2)], transport)
    with pytest.raises(UpstreamFailed) as caught:
        await forward(relay, Outcome())
    assert caught.value.http_status == 502
    assert str(caught.value) == (
        "every upstream failed: a/chat: connection failed (cannot connect to "
        "http://a.test:8000/v1/chat/completions: [Errno 111] Connection refused); "
        "b/chat: no response headers in time; "
        "c/chat: the upstream answered a body that is not JSON"
    )
    assert transport.open_responses() == []


# -- after the first byte ------------------------------------------------------------------


@pytest.mark.parametrize(("end", "code", "status"), [("fail", "upstream_error", 502),
                                                     ("stall", "upstream_timeout", 504)])
async def test_a_stream_cut_mid_way_ends_with_one_error_event_and_no_retry(
    autojump_clock: trio.abc.Clock, tmp_path: Path, end: str, code: str, status: int
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), Stream(EVENTS, end=end, gap_s=1.0))
    transport.script(url("b/chat"), Stream([*EVENTS, b"data: [DONE]\n\n"]))
    relay, gateway = make_relay(tmp_path, [service("a/chat"), service("b/chat", queue_depth=1)],
                                transport)
    outcome = Outcome()
    started = trio.current_time()
    client = await forward(relay, outcome, stream=True)
    assert len(transport.sent) == 1  # nothing is retried once the client has bytes
    assert client.status == 200
    assert client.headers[b"content-type"] == b"text/event-stream"
    assert client.ended and client.writer.sse
    events = client.body.split(b"\n\n")
    assert events[-1] == b""
    assert [e + b"\n\n" for e in events[:2]] == EVENTS
    assert len(events) == 4  # the two events, one error event, nothing after it
    assert events[2].startswith(b"data: ")
    error = json.loads(events[2][len(b"data: "):])["error"]
    assert error["code"] == code and error["type"] == "server_error"
    assert b"[DONE]" not in client.body
    assert outcome.status == status
    assert breaker_failures(gateway, "a/chat") == 1
    assert transport.open_responses() == []
    if end == "stall":
        assert trio.current_time() - started == pytest.approx(2.0 + IDLE_S)


async def test_a_whole_stream_is_relayed_with_its_done_and_ttft(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), SlowHead(2.0, Stream([*EVENTS, b"data: [DONE]\n\n"],
                                                         gap_s=0.5)))
    relay, gateway = make_relay(tmp_path, [service("a/chat")], transport)
    outcome = Outcome()
    client = await forward(relay, outcome, stream=True)
    assert client.body == b"".join(EVENTS) + b"data: [DONE]\n\n"
    assert outcome.status == 200
    # TTFT counts from sending the request: the headers' wait is part of it.
    assert outcome.ttft_ms == pytest.approx(2500.0)
    assert gateway.live.get("a/chat").ttft_ms() == pytest.approx(2500.0)
    assert transport.open_responses() == []


# -- the seam -------------------------------------------------------------------------------


async def test_the_relay_sends_through_the_gateway_pool_when_given_no_transport(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.json(ANSWER))
    _, gateway = make_relay(tmp_path, [service("a/chat")], FakeTransport())
    with pytest.raises(ValueError, match="needs a transport"):
        Relay(gateway)
    pooled = Gateway(gateway.config, gateway.registry, SPECS, None,  # type: ignore[arg-type]
                     instance_id="gw-test", pool=transport)
    client = await forward(Relay(pooled), Outcome())
    assert client.status == 200
    assert len(transport.sent) == 1


def test_the_pool_and_the_fake_take_the_transport_signature() -> None:
    def parameters(function: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default)
                for p in inspect.signature(function).parameters.values()]

    assert parameters(UpstreamPool.request) == parameters(Transport.request)
    assert parameters(FakeTransport.request) == parameters(Transport.request)


def test_outcome_takes_only_integer_token_counts() -> None:
    outcome = Outcome(status=200)
    outcome.take_usage({"prompt_tokens": 4, "completion_tokens": "5"})
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (4, None)
    outcome.take_usage(None)
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (4, None)


# -- slots and the admission queue ---------------------------------------------------------


def slotted(service_id: str, slots: int) -> Service:
    return Service(service_id=service_id, host_id="local", operation="chat", adapter="openai",
                   base_url=url(service_id), assets=(Asset("m", loaded=True),),
                   observed=Observed(slots_total=slots))


async def test_waiting_for_a_slot_spends_no_attempt_and_is_reported(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    from geniehive.capacity import Ticket

    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(tmp_path, [slotted("a/chat", 1)], transport, max_attempts=1)
    holder = Ticket("someone")
    assert gateway.admission.take(holder, ["a/chat"], [1]) == "a/chat"
    outcome = Outcome()
    async with trio.open_nursery() as nursery:
        done: list[Client] = []

        async def request() -> None:
            done.append(await forward(relay, outcome))

        nursery.start_soon(request)
        await trio.sleep(7)
        assert transport.urls() == []  # the only slot is taken: nothing was sent
        assert gateway.admission.load("a/chat", 1).queued == 1
        gateway.admission.release("a/chat")
    assert done[0].status == 200
    assert outcome.attempts == 1  # max_attempts = 1, and the wait did not use it up
    assert outcome.queued_ms == pytest.approx(7000, abs=50)
    assert done[0].headers[b"x-geniehive-queued-ms"] == str(round(outcome.queued_ms)).encode()
    assert gateway.admission.load("a/chat", 1).in_flight == 0  # the slot was given back


async def test_a_failover_that_needs_a_slot_waits_for_it(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    from geniehive.capacity import Ticket

    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.error(503, "busy"))
    transport.script(url("b/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(
        tmp_path, [slotted("a/chat", 1), slotted("b/chat", 1)], transport, max_attempts=2
    )
    holder = Ticket("someone")
    assert gateway.admission.take(holder, ["b/chat"], [1]) == "b/chat"
    outcome = Outcome()
    async with trio.open_nursery() as nursery:
        done: list[Client] = []

        async def request() -> None:
            done.append(await forward(relay, outcome))

        nursery.start_soon(request)
        await trio.sleep(3)
        assert transport.urls() == [url("a/chat") + "/v1/chat/completions"]  # a failed
        gateway.admission.release("b/chat")
    assert done[0].status == 200
    assert transport.urls()[-1] == url("b/chat") + "/v1/chat/completions"
    assert outcome.attempts == 2
    assert outcome.queued_ms == pytest.approx(3000, abs=50)


async def test_a_request_that_finds_no_slot_in_time_is_queue_timeout(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    from geniehive.capacity import Ticket
    from geniehive.errors import QueueTimeout

    transport = FakeTransport()
    transport.script(url("a/chat"), Reply.json(ANSWER))
    relay, gateway = make_relay(tmp_path, [slotted("a/chat", 1)], transport)
    assert gateway.admission.take(Ticket("someone"), ["a/chat"], [1]) == "a/chat"
    started = trio.current_time()
    with pytest.raises(QueueTimeout):
        await forward(relay, Outcome())
    assert trio.current_time() - started == pytest.approx(gateway.admission.queue_timeout_s)
    assert transport.urls() == []
