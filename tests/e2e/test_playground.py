"""The browser playground in headless Chromium against real gateway and upstream processes.

Chromium is driven over its DevTools protocol with trio-websocket: `Runtime.evaluate` fills
the prompt and clicks, then the test polls the page's text. Chromium is required: CI
installs it, and a machine without it fails with the command that installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.harness import Proc, spawn_fake, spawn_gateway, stop, upstream_toml, write_config

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed; install it with: apt-get install -y chromium")


class Page:
    """One page target over the DevTools protocol: calls by id, events ignored."""

    def __init__(self, sock: WebSocketConnection) -> None:
        self.sock = sock
        self.last_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        call_id = self.last_id
        await self.sock.send_message(json.dumps({"id": call_id, "method": method,
                                                 "params": params}))
        while True:
            message = json.loads(await self.sock.get_message())
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, interval_s: float = 0.05) -> Any:
        """Poll until `expression` is truthy in the page (the caller holds the deadline)."""
        while not (value := await self.evaluate(expression)):  # noqa: ASYNC110 - page state
            await trio.sleep(interval_s)
        return value


async def wait_devtools_port(profile: Path, process: trio.Process) -> int:
    """Chromium writes its chosen port to DevToolsActivePort in the profile once listening."""
    marker = profile / "DevToolsActivePort"
    while True:
        if process.returncode is not None:
            pytest.fail(f"Chromium exited with status {process.returncode} before listening")
        lines = marker.read_text().splitlines() if marker.exists() else []
        if len(lines) >= 2 and lines[0].isdigit():
            return int(lines[0])
        await trio.sleep(0.05)


@asynccontextmanager
async def open_browser(binary: str, url: str, profile: Path) -> AsyncIterator[Page]:
    """Headless Chromium showing `url`; yields its page, stops the browser on the way out."""
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url]
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        port = await wait_devtools_port(profile, process)
        async with httpx.AsyncClient() as client:
            while True:
                targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                pages = [t for t in targets if t["type"] == "page" and t["url"].startswith(url)]
                if pages:
                    break
                await trio.sleep(0.05)
        async with open_websocket_url(pages[0]["webSocketDebuggerUrl"]) as sock:
            yield Page(sock)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            process.terminate()
            await process.wait()


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
