"""The browser playground in headless Chromium against real gateway and upstream processes.

Chromium is driven over its DevTools protocol with trio-websocket (tests/cdp.py):
`Runtime.evaluate` fills the prompt and clicks, then the test polls the page's text.
Chromium is required: CI installs it, and a machine without it fails with the command that
installs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.cdp import chromium_binary, open_browser
from tests.harness import Proc, spawn_fake, spawn_gateway, stop, upstream_toml, write_config

pytestmark = pytest.mark.e2e

async def start(nursery: trio.Nursery, tmp_path: Path) -> tuple[Proc, Proc]:
    fake = await spawn_fake(nursery, "m1")
    config = write_config(tmp_path, upstream_toml("fake", fake.port, ["chat"]))
    return fake, await spawn_gateway(nursery, config)


PAGE_READY = (
    "document.readyState === 'complete' && "
    "!!document.querySelector('#model option[value=\"m1\"]')"
)


def submit(prompt: str) -> str:
    return (
        "(() => { document.getElementById('model').value = 'm1';"
        f" document.getElementById('prompt').value = {json.dumps(prompt)};"
        " document.getElementById('send').click(); return true; })()"
    )


async def test_a_prompt_sent_from_the_playground_streams_the_answer_into_the_page(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    browser = chromium_binary()  # before any process starts, so a failure leaves none behind
    with trio.fail_after(60):
        fake, gateway = await start(nursery, tmp_path)
        async with open_browser(browser, f"{gateway.url}/playground", tmp_path / "profile") as page:
            await page.wait_for(PAGE_READY)
            await page.evaluate(submit("hello from chromium"))
            await page.wait_for("document.getElementById('status').textContent === 'done'")
            output = await page.evaluate("document.getElementById('output').textContent")
            assert "hello from chromium" in output
            assert "echo: hello from chromium" in output
        assert await stop(gateway) == 0
        await stop(fake)


async def test_stop_in_the_playground_cancels_the_upstream_generation(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    browser = chromium_binary()
    with trio.fail_after(60):
        fake, gateway = await start(nursery, tmp_path)
        async with httpx.AsyncClient(base_url=fake.url) as control:
            fault = {"mode": "hold_stream", "after_chunks": 1}
            assert (await control.post("/_fake/fault", json=fault)).status_code == 200
            playground = f"{gateway.url}/playground"
            async with open_browser(browser, playground, tmp_path / "profile") as page:
                await page.wait_for(PAGE_READY)
                await page.evaluate(submit("never finish"))
                await page.wait_for(
                    "document.getElementById('status').textContent === 'streaming'"
                )
                await page.evaluate("document.getElementById('stop').click()")
                await page.wait_for("document.getElementById('status').textContent === 'stopped'")
            while True:
                recorded = (await control.get("/_fake/requests")).json()
                chats = [r for r in recorded if r["path"] == "/v1/chat/completions"]
                if chats and chats[-1]["cancelled"]:
                    break
                await trio.sleep(0.05)
        assert await stop(gateway) == 0
        await stop(fake)
