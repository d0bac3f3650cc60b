"""SIGTERM on a real `geniehive serve` with a stream that outlives the shutdown grace."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import spawn_fake, spawn_gateway, stop, upstream_toml, write_config

pytestmark = pytest.mark.e2e


async def test_sigterm_past_the_grace_ends_a_stream_with_one_shutting_down_event(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        fake = await spawn_fake(nursery, "m1")
        config = write_config(tmp_path, upstream_toml("fake", fake.port, ["chat"]))
        text = config.read_text().replace("shutdown_grace_s = 5", "shutdown_grace_s = 0.5")
        config.write_text(text)
        gateway = await spawn_gateway(nursery, config)
        async with httpx.AsyncClient(base_url=fake.url) as control:
            # The upstream sends one chunk, then holds the rest for good.
            fault = {"mode": "hold_stream", "after_chunks": 1, "times": 1,
                     "path": "/v1/chat/completions"}
            await control.post("/_fake/fault", json=fault)
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            chunks = response.aiter_raw()
            raw = await chunks.__anext__()
            gateway.process.send_signal(signal.SIGTERM)
            raw += b"".join([chunk async for chunk in chunks])
        events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
        assert json.loads(events[0])["object"] == "chat.completion.chunk"
        assert b"[DONE]" not in raw
        assert [json.loads(e)["error"]["code"] for e in events if b'"error"' in e] == [
            "shutting_down"
        ]
        assert "error" in json.loads(events[-1])
        assert await gateway.process.wait() == 0
        await stop(fake)
