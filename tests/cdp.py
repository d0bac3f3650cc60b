"""Headless Chromium over its DevTools protocol, for the browser tests (playground, console).

Driven with trio-websocket (a dependency already) rather than playwright: the system
Chromium is all a test needs, no browser download and no second event loop. `Runtime.evaluate`
fills fields and clicks, the test polls the page's state, `Page.captureScreenshot` saves PNGs
and `Emulation.setDeviceMetricsOverride` gives it a phone-sized screen.
"""

from __future__ import annotations

import base64
import json
import os
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

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--remote-debugging-port=0", "--hide-scrollbars", "--window-size=1280,900",
]
INSTALL = "tests/install-tools.sh (apt-get install -y chromium)"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_binary() -> str:
    """Chromium, or the test fails naming the command that installs it."""
    path = find_chromium()
    if path is None:
        pytest.fail(f"Chromium is not installed; install it with: {INSTALL}")
    return path


def require_chromium() -> str:
    """Chromium, or the test skips; with GENIEHIVE_REQUIRE_REALMODEL=1 (CI) it fails, so a
    missing browser cannot pass as a skip."""
    path = find_chromium()
    if path is not None:
        return path
    message = f"Chromium is missing: run {INSTALL}"
    if os.environ.get("GENIEHIVE_REQUIRE_REALMODEL") == "1":
        pytest.fail(message + " (GENIEHIVE_REQUIRE_REALMODEL=1)", pytrace=False)
    pytest.skip(message)


def artifacts_dir(tmp_path: Path, name: str) -> Path:
    """Where a test's screenshots go: `$GENIEHIVE_ARTIFACTS/<name>` if set, else under
    tmp_path. Printed, so a run says where to look."""
    root = os.environ.get("GENIEHIVE_ARTIFACTS")
    folder = (Path(root) / name) if root else tmp_path / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


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

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=mobile)

    async def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the whole page, or of the element `selector` matches."""
        if selector is None:
            box = await self.evaluate(
                "({x: 0, y: 0, width: document.documentElement.scrollWidth,"
                " height: document.documentElement.scrollHeight})"
            )
        else:
            box = await self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return {x: r.left + window.scrollX,"
                " y: r.top + window.scrollY, width: r.width, height: r.height}; })()"
            )
        shot = await self.call("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True, clip={**box, "scale": 1})
        await trio.Path(path).write_bytes(base64.b64decode(shot["data"]))
        return path


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
