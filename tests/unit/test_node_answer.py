"""What a register or heartbeat answer tells the node: the upstreams the gateway uses now."""

from __future__ import annotations

import trio
import trio.testing

from geniehive.api_nodes import active_upstreams
from geniehive.capacity import Admission, Ticket
from geniehive.live import LiveState
from geniehive.models import Host, Service, Snapshot, upstream_of


def service(service_id: str, host_id: str = "gpu-01") -> Service:
    return Service(service_id, host_id, "chat", "openai", "http://10.0.0.5:8000")


def snapshot(*services: Service) -> Snapshot:
    hosts = {s.host_id: Host(s.host_id, "10.0.0.5") for s in services}
    return Snapshot(1, hosts, {s.service_id: s for s in services}, {})


def test_an_upstream_is_named_by_its_id_else_by_its_service_id() -> None:
    assert upstream_of(service("gpu-01-vllm/chat")) == "gpu-01-vllm"
    assert upstream_of(service("a/b/embeddings")) == "a/b"
    named = Service("x", "local", "chat", "openai", "http://127.0.0.1:1", upstream_id="up")
    assert upstream_of(named) == "up"
    assert upstream_of(service("plain")) == ""


async def test_only_this_hosts_upstreams_in_use_are_listed() -> None:
    snap = snapshot(
        service("busy/chat"), service("busy/embeddings"), service("idle/chat"),
        service("loading/chat"), service("queued/chat"), service("slot/chat"),
        service("done/chat"), service("theirs/chat", host_id="gpu-02"),
    )
    live = LiveState()
    admission = Admission()
    live.attempt_started("busy/chat", 1.0)
    live.attempt_started("theirs/chat", 1.0)  # another host's: never this host's business
    live.get("loading/chat").loading("big-model", True)
    live.attempt_started("done/chat", 1.0)
    live.attempt_succeeded("done/chat", 2.0, latency_ms=5.0)  # finished: idle again
    live.get("idle/chat")
    assert admission.take(Ticket("k"), ["slot/chat"], [4]) == "slot/chat"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            # A request waiting for a slot on a service that has none free.
            nursery.start_soon(admission.wait, Ticket("k"), ["queued/chat"], 60.0, "model 'm'")
            await trio.testing.wait_all_tasks_blocked()
            assert active_upstreams(snap, "gpu-01", live.services, admission) == [
                "busy", "loading", "queued", "slot"]
            assert active_upstreams(snap, "gpu-02", live.services, admission) == ["theirs"]
            assert active_upstreams(snap, "gpu-03", live.services, admission) == []
            nursery.cancel_scope.cancel()
    # The waiter left, the load ended: those are idle now.
    live.get("loading/chat").loading("big-model", False, 1000.0)
    assert active_upstreams(snap, "gpu-01", live.services, admission) == ["busy", "slot"]
