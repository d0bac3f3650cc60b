"""The operator console in headless Chromium against a real `geniehive serve` with a real
`geniehive node`: every view rendered, live updates after a drain and after a heartbeat loss,
the key kept for the tab, and screenshots of each view at desktop and phone width.

Screenshots go to `$GENIEHIVE_ARTIFACTS/console` (else the test's tmp_path); the path is
printed. Chromium missing skips, or fails with GENIEHIVE_REQUIRE_REALMODEL=1 (tests/cdp.py).
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from tests.cdp import Page, artifacts_dir, open_browser, require_chromium
from tests.harness import node_file, spawn_fake, spawn_gateway, spawn_node, stop, upstream_toml
from tests.harness import write_config as control_file

pytestmark = pytest.mark.e2e

OPS_KEY = "ops-console-key-123"
ENV = {"OPS_KEY": OPS_KEY, "NODE_KEY": "node-console-key-456"}
STALE_AFTER_S = 1.5
CONTROL = textwrap.dedent(f"""
    [nodes]
    stale_after_s = {STALE_AFTER_S}

    [[auth.keys]]
    name = "ops"
    key_env = "OPS_KEY"
    scopes = ["inference", "read", "operate", "admin"]

    [[auth.keys]]
    name = "node"
    key_env = "NODE_KEY"
    scopes = ["node"]
    """)
SERVICE = "gpu-t-fake/chat"
# What nvidia-smi prints for one GPU, as the node agent asks (geniehive/node/gpu.py).
NVIDIA_SMI = "#!/bin/sh\necho '0, NVIDIA RTX 4090, 24564, 9830, 37'\n"
VIEWS = ("hosts", "services", "roles", "queue", "errors", "explain", "keys")


def js(value: object) -> str:
    return json.dumps(value)


def row(kind: str, ident: str) -> str:
    return f"document.querySelector('tr[data-{kind}=' + {js(js(ident))} + ']')"


async def shoot(page: Page, folder: Path, width: str) -> None:
    await page.screenshot(folder / f"console-{width}.png")
    for view in VIEWS:
        await page.screenshot(folder / f"{view}-{width}.png", f"#{view}")


async def test_the_console_shows_the_hive_live_and_fits_a_phone(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    browser = require_chromium()  # before any process starts
    folder = artifacts_dir(tmp_path, "console")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(NVIDIA_SMI)
    (tools / "nvidia-smi").chmod(0o755)
    with trio.fail_after(90):
        fake = await spawn_fake(nursery, "m1")
        gateway = await spawn_gateway(nursery, control_file(tmp_path, CONTROL), ENV)
        upstream = upstream_toml("gpu-t-fake", fake.port, ["chat"])
        path = f"{tools}:{os.environ.get('PATH', '')}"
        node = await spawn_node(nursery, node_file(tmp_path, gateway.url, upstream),
                                {**ENV, "PATH": path})
        auth = {"Authorization": f"Bearer {OPS_KEY}"}
        async with httpx.AsyncClient(base_url=gateway.url, headers=auth, timeout=10) as api:
            while SERVICE not in {s["service_id"] for s in  # noqa: ASYNC110 - a process
                                  (await api.get("/v1/cluster/services")).json()["data"]}:
                await trio.sleep(0.05)
            chat = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
            assert (await api.post("/v1/chat/completions", json=chat)).status_code == 200
            lost = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
            assert (await api.post("/v1/chat/completions", json=lost)).status_code == 404

            async with open_browser(browser, f"{gateway.url}/console", tmp_path / "p") as page:
                await page.wait_for("document.readyState === 'complete' &&"
                                    " !!document.getElementById('status')")
                # Without a key the page loads but its data is refused.
                await page.wait_for("document.getElementById('status').textContent"
                                    ".includes('API key')")
                await page.evaluate(
                    f"document.getElementById('key').value = {js(OPS_KEY)};"
                    " document.getElementById('savekey').click(); true"
                )
                await page.wait_for("document.getElementById('conn').textContent === 'live'")
                await page.wait_for(f"!!{row('host', 'gpu-t')} && !!{row('service', SERVICE)}")
                for _ in range(4):  # latency samples, live, for the sparkline
                    assert (await api.post("/v1/chat/completions", json=chat)).status_code == 200
                    await trio.sleep(0.4)  # one flush apart
                host = await page.evaluate(f"{row('host', 'gpu-t')}.innerText")
                assert "online" in host and "RTX 4090" in host
                assert await page.evaluate(
                    "document.querySelector('tr[data-host=\"gpu-t\"] [role=meter]')"
                    ".getAttribute('aria-valuenow')") == "40"
                service = await page.evaluate(f"{row('service', SERVICE)}.innerText")
                assert "healthy" in service and "available" in service
                await page.wait_for(
                    f"{row('service', SERVICE)}.querySelector('polyline') !== null")
                await page.wait_for("document.getElementById('roles-body').rows.length > 0")
                errors = await page.evaluate("document.getElementById('errors-body').innerText")
                assert "no-such-model" in errors and "404" in errors
                assert "waiting" in (await page.evaluate(
                    "document.getElementById('queue-body').innerText")).lower()
                # The key stays in the tab, never on the page.
                assert await page.evaluate(
                    "sessionStorage.getItem('geniehive.console.key')") == OPS_KEY
                assert OPS_KEY not in await page.evaluate("document.body.innerText")

                await page.evaluate(
                    "document.getElementById('explain-model').value = 'm1';"
                    " document.querySelector('#explain-form button').click(); true")
                await page.wait_for("document.getElementById('explain-out').innerText"
                                    f".includes('Routes to {SERVICE}')")

                await page.wait_for("!document.getElementById('keys-table').hidden")
                await page.evaluate(
                    "document.getElementById('newkey-name').value = 'viewer';"
                    " document.querySelector('#key-create button').click(); true")
                secret = await page.wait_for(
                    "document.getElementById('newkey-secret')?.textContent")
                await page.wait_for("document.getElementById('keys-body').innerText"
                                    ".includes('viewer')")
                listed = (await api.get("/v1/admin/keys")).json()["data"]
                assert "viewer" in {k["name"] for k in listed}
                assert secret not in json.dumps(listed)

                # The secret was for this once: the screenshots leave it out.
                await page.evaluate("document.getElementById('newkey').replaceChildren(); true")
                await shoot(page, folder, "desktop")

                # A drain by someone else arrives without a reload.
                drained = await api.post(f"/v1/cluster/services/{SERVICE}/drain")
                assert drained.status_code == 200
                await page.wait_for(f"{row('service', SERVICE)}.innerText.includes('draining')")
                assert await page.evaluate(
                    f"{row('service', SERVICE)}.querySelector('button').textContent") == "Resume"
                # ... and so does the resume its button sends.
                await page.evaluate(f"{row('service', SERVICE)}.querySelector('button').click()")
                await page.wait_for(f"{row('service', SERVICE)}.innerText.includes('available')")

                await page.viewport(390, 844, mobile=True)
                await page.wait_for(f"{row('service', SERVICE)}.offsetWidth <= 390")
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"the page scrolls sideways at 390 px ({width} px)"
                await shoot(page, folder, "phone")
                await page.viewport(1280, 900)

                # The node's heartbeats stop: the host turns stale within the expiry interval.
                node.process.send_signal(signal.SIGKILL)
                with trio.fail_after(STALE_AFTER_S + 5):
                    await page.wait_for(f"{row('host', 'gpu-t')}.innerText.includes('stale')")
                await page.screenshot(folder / "hosts-stale-desktop.png", "#hosts")
        await stop(node)
        assert await stop(gateway) == 0
        await stop(fake)
    assert (folder / "console-desktop.png").stat().st_size > 10_000
