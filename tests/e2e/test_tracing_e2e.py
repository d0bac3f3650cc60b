"""Traces through a real `geniehive serve` with `[tracing] otlp_endpoint` set, exported over
OTLP/HTTP to a receiver in the test (tests/fakes/otlp.py) and flushed at shutdown.

A chat is one SERVER span with the GenAI attributes, a route child and a CLIENT child per
upstream attempt; a stream's first token is an event; a client's traceparent is continued
(same trace, its span the parent) and the upstream receives the attempt's; a failover shows
both attempts with their outcomes; a wait for a slot is a queue child of the request span;
no prompt, answer or API key is exported. Without tracing, the client's traceparent still
reaches the upstream as it came, and OpenTelemetry is never imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.otlp import OTLPReceiver, ReceivedSpan
from tests.fakes.upstream import FakeUpstream
from tests.harness import (
    REPO,
    gateway_in_process,
    spawn_gateway,
    stop,
    upstream_toml,
    wait_ready,
    write_config,
)
from tests.hive import calls

pytestmark = pytest.mark.e2e

SECRET = "zebra-quartz-prompt"  # prompt text the fake echoes back: never in a span
API_KEY = "sk-walrus-9c1e-tracing-key"  # the client's key: never in a span either
KEYS = """
[[auth.keys]]
name = "app"
key_env = "APP_KEY"
scopes = ["inference"]
"""
ENV = {"APP_KEY": API_KEY}
AUTH = {"authorization": f"Bearer {API_KEY}"}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def chat(stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "m1", "messages": [{"role": "user", "content": f"say {SECRET}"}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def by_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


async def test_requests_are_exported_as_genai_spans_through_a_real_gateway(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeUpstream(["m1"])
    receiver = OTLPReceiver()
    with trio.fail_after(60):
        port = await nursery.start(fake.serve)
        await nursery.start(receiver.serve)
        # Two services on one fake: a failover's second attempt is sure to succeed.
        upstreams = upstream_toml("a", port, ["chat"]) + upstream_toml("b", port, ["chat"])
        config = write_config(tmp_path, f"""
            [tracing]
            otlp_endpoint = "{receiver.url}"
            service_name = "hive-under-test"
            """ + KEYS + upstreams)
        gateway = await spawn_gateway(nursery, config, ENV)
        async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
            await wait_ready(client, gateway.url)
            streamed = await client.post(
                f"{gateway.url}/v1/chat/completions", json=chat(stream=True),
                headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
            )
            upstream_headers = fake.requests[-1]["headers"]
            fake.set_fault("status", times=1, path="/v1/chat/completions", status=503)
            failover = await client.post(f"{gateway.url}/v1/chat/completions",
                                         json=chat(stream=False))
            missing = await client.post(f"{gateway.url}/v1/chat/completions",
                                        json={**chat(stream=False), "model": "nope"})
        assert await stop(gateway) == 0  # the exporter is flushed on the way out
        spans = await receiver.wait_for_spans(1)

    assert streamed.status_code == 200 and SECRET in streamed.text
    assert failover.status_code == 200
    assert missing.status_code == 404
    assert set(receiver.content_types) == {"application/x-protobuf"}
    exported = b"".join(receiver.bodies)
    assert SECRET.encode() not in exported
    assert API_KEY.removeprefix("sk-").encode() not in exported  # nor any part of the key

    # The streamed chat: continued from the client's trace, its span the server span's parent.
    traced = by_trace(spans, CLIENT_TRACE)
    server = next(s for s in traced if s.kind == "SERVER")
    assert server.parent_span_id == CLIENT_SPAN
    assert server.name == "chat m1"
    assert server.service_name == "hive-under-test"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "m1"
    assert attrs["gen_ai.response.model"] == "m1"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["http.response.status_code"] == 200
    assert attrs["geniehive.route"] == "direct"
    assert attrs["geniehive.service_id"] in ("a/chat", "b/chat")
    assert "error.type" not in attrs
    first = [e for e in server.events if e.name == "gen_ai.first_token"]
    assert len(first) == 1
    assert server.start_ns <= first[0].time_ns <= server.end_ns
    assert first[0].attributes["gen_ai.server.time_to_first_token"] > 0
    kids = children(traced, server)
    assert sorted(s.name for s in kids) == ["chat m1", "geniehive.route"]
    attempt = next(s for s in kids if s.kind == "CLIENT")
    assert attempt.attributes["geniehive.attempt.outcome"] == "ok"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["server.port"] == port
    assert [e.name for e in attempt.events] == ["gen_ai.first_token"]
    # The upstream was asked in the attempt's context: same trace, the attempt as parent.
    assert upstream_headers["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"
    assert upstream_headers["tracestate"] == "vendor=1"

    # The failover: a trace of its own, with the refused try and the good one.
    servers = [s for s in spans if s.kind == "SERVER" and s.trace_id != CLIENT_TRACE]
    failed_over = next(s for s in servers if s.attributes.get("geniehive.attempts") == 2)
    assert failed_over.parent_span_id == ""
    assert failed_over.attributes["http.response.status_code"] == 200
    assert not [e for e in failed_over.events if e.name == "gen_ai.first_token"]
    attempts = sorted((s for s in children(spans, failed_over) if s.kind == "CLIENT"),
                      key=lambda s: s.start_ns)
    assert [a.attributes["geniehive.attempt.outcome"] for a in attempts] == ["failed", "ok"]
    assert attempts[0].attributes["http.response.status_code"] == 503
    assert attempts[0].attributes["geniehive.attempt.failure"] == "status"
    assert attempts[0].status == "ERROR"
    assert attempts[0].attributes["geniehive.service_id"] != (
        attempts[1].attributes["geniehive.service_id"])

    # An unknown model: a 404 with its error type, a route span saying why, no attempt.
    refused = next(s for s in servers if s.attributes["http.response.status_code"] == 404)
    assert refused.attributes["error.type"] == "404"
    assert refused.attributes["gen_ai.request.model"] == "nope"
    (route,) = children(spans, refused)
    assert route.name == "geniehive.route"
    assert route.attributes["error.type"] == "model_not_found"


async def test_a_request_that_waited_for_a_slot_has_a_queue_span_with_its_wait(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Two chats at once on an upstream of one slot, the first answer held: the second waits
    in the gateway's queue, and its trace shows that wait as a child of its request span."""
    fake = FakeUpstream(["m1"])
    receiver = OTLPReceiver()
    with trio.fail_after(30):
        port = await nursery.start(fake.serve)
        await nursery.start(receiver.serve)
        config = write_config(tmp_path, f"""
            [tracing]
            otlp_endpoint = "{receiver.url}"
            """ + upstream_toml("a", port, ["chat"], extra="max_in_flight = 1\n"))
        running = await gateway_in_process(nursery, config)
        admission = running.gateway.admission
        fake.set_fault("hold_stream", times=1, path="/v1/chat/completions", after_chunks=1)
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(timeout=10) as client:
            await wait_ready(client, running.url)

            async def post() -> None:
                answers.append(await client.post(f"{running.url}/v1/chat/completions",
                                                 json=chat(stream=False)))

            async with trio.open_nursery() as both:
                both.start_soon(post)
                both.start_soon(post)
                # The queue's counter and the fake's log are plain values: polled.
                while admission.waiting != 1 or not calls(fake):  # noqa: ASYNC110
                    await trio.sleep(0.005)
                await trio.sleep(0.05)  # the second chat waits at least this long
                fake.release()
        await running.stop()  # flushes the exporter
        spans = await receiver.wait_for_spans(1)

    assert [a.status_code for a in answers] == [200, 200]
    assert len(calls(fake)) == 2
    servers = {s.span_id: s for s in spans if s.kind == "SERVER"}
    assert len(servers) == 2
    (queue,) = [s for s in spans if s.name == "geniehive.queue"]  # only the one that waited
    waited = servers[queue.parent_span_id]
    assert queue.trace_id == waited.trace_id
    assert queue.kind == "INTERNAL"
    queued_ms = queue.attributes["geniehive.queued_ms"]
    assert 50 <= queued_ms <= (queue.end_ns - queue.start_ns) / 1e6 + 1
    assert queue.attributes["geniehive.service_id"] == "a/chat"
    assert queue.attributes["geniehive.queue.services"] == 1
    assert waited.attributes["geniehive.queued_ms"] == queued_ms
    assert waited.start_ns <= queue.start_ns <= queue.end_ns <= waited.end_ns
    # It waited before its attempt: the attempt starts once the queue span has ended.
    (attempt,) = [s for s in children(spans, waited) if s.kind == "CLIENT"]
    assert attempt.start_ns >= queue.end_ns
    (other,) = [s for s in servers.values() if s is not waited]
    assert "geniehive.queued_ms" not in other.attributes


async def test_without_tracing_a_clients_traceparent_reaches_the_upstream_unchanged(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeUpstream(["m1"])
    with trio.fail_after(30):
        port = await nursery.start(fake.serve)
        running = await gateway_in_process(
            nursery, write_config(tmp_path, upstream_toml("a", port, ["chat"]))
        )
        async with httpx.AsyncClient(timeout=10) as client:
            await wait_ready(client, running.url)
            answer = await client.post(
                f"{running.url}/v1/chat/completions", json=chat(stream=False),
                headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
            )
            plain = await client.post(f"{running.url}/v1/chat/completions",
                                      json=chat(stream=False))
        await running.stop()
    assert answer.status_code == 200 and plain.status_code == 200
    with_trace, without = (r["headers"] for r in fake.requests
                           if r["path"] == "/v1/chat/completions")
    assert with_trace["traceparent"] == TRACEPARENT
    assert with_trace["tracestate"] == "vendor=1"
    assert "traceparent" not in without


def test_without_tracing_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    """A gateway without `[tracing]` serves a request in a fresh interpreter, which then has
    no opentelemetry module loaded."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path

        import httpx
        import trio

        from tests.fakes.upstream import FakeUpstream
        from tests.harness import gateway_in_process, upstream_toml, write_config

        async def main():
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    fake = FakeUpstream(["m1"])
                    port = await nursery.start(fake.serve)
                    path = write_config(Path(sys.argv[1]), upstream_toml("a", port, ["chat"]))
                    running = await gateway_in_process(nursery, path)
                    async with httpx.AsyncClient() as client:
                        answer = await client.post(
                            f"{running.url}/v1/chat/completions",
                            json={"model": "m1", "messages": [{"role": "user", "content": "x"}]},
                            headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
                    await running.stop()
                    nursery.cancel_scope.cancel()
            loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
            print(answer.status_code, loaded)

        trio.run(main)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "200 []"
