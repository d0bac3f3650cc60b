"""The live demo of docs/demo.md, run as written: its shipped configs, its client script.

A control plane with no upstreams of its own (docs/demo/control.toml), a node agent that
launches and registers a SmolLM2 llama.cpp server (docs/demo/node.toml), and
docs/demo/client.py, which lists the models, picks `general_assistant` by its offload hint
and gets a real answer through it. Only the ports (and the role catalog's path, relative to
docs/demo/) are rewritten, so that the test runs beside anything else on this machine.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import trio

from tests.harness import REPO, Proc, free_port, spawn_gateway, spawn_node
from tests.realmodel.support import (
    stop_all,
    wait_routable,
)

pytestmark = pytest.mark.realmodel

DEMO = REPO / "docs" / "demo"
# A managed server must outlive the thread that forked it (trio's idle worker threads exit
# after 10 s); the demo is only as good as its second answer after that.
OUTLIVE_S = 12


def rewrite(text: str, old: str, new: str) -> str:
    """Replace a string the shipped file must contain, so doc and test cannot drift apart."""
    assert old in text, f"{old!r} is no longer in the demo config"
    return text.replace(old, new)


def control_config(tmp_path: Path) -> Path:
    control = (DEMO / "control.toml").read_text()
    control = rewrite(control, '"127.0.0.1:8810"', '"127.0.0.1:0"')
    control = rewrite(control, '"../../conf/roles/*.toml"',
                      f'"{REPO / "conf" / "roles" / "*.toml"}"')
    path = tmp_path / "control.toml"
    path.write_text(control)
    return path


def node_config(tmp_path: Path, control_url: str, llama_port: int) -> Path:
    node = (DEMO / "node.toml").read_text()
    node = rewrite(node, '"http://127.0.0.1:8810"', f'"{control_url}"')
    node = rewrite(node, "18190", str(llama_port))
    # The suite shares two cores with other processes: two llama.cpp threads spin-wait on each
    # other, and one descheduled thread stalls every token (30 s per answer seen under load).
    node = rewrite(node, '"--threads", "2"', '"--threads", "1"')
    path = tmp_path / "node.toml"
    path.write_text(node)
    return path


async def run_client(url: str, prompt: str) -> str:
    done = await trio.run_process(
        [sys.executable, str(DEMO / "client.py"), "--base-url", f"{url}/v1",
         "--prompt", prompt, "--max-tokens", "24"],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    output = done.stdout.decode()
    assert done.returncode == 0, output + done.stderr.decode()
    return output


async def test_shipped_demo_configs_pass_check_config() -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "geniehive", "check-config",
             str(DEMO / "control.toml"), str(DEMO / "node.toml")],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"2 file(s) valid" in done.stdout


async def test_demo_node_serves_smollm2_to_a_client_that_picks_by_offload_hint(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, reap: list[Proc]
) -> None:
    with trio.fail_after(90):
        control = await spawn_gateway(nursery, control_config(tmp_path))
        reap.append(control)
        started = trio.current_time()
        node = await spawn_node(nursery, node_config(tmp_path, control.url, free_port()))
        reap.append(node)
        await wait_routable(control.url, "general_assistant")
        first = await run_client(control.url, "Name one colour of the rainbow.")
        await trio.sleep_until(started + OUTLIVE_S)
        second = await run_client(control.url, "Say hello in French.")
        await stop_all(control, node)  # the agent stops the server it launched

    for output in (first, second):
        assert re.search(r"general_assistant\s+role\s+chat\s+"
                         r"(good_for_low_complexity|usable_for_background_tasks)", output)
        assert re.search(r"smollm2\s+asset\s+chat,completion", output)
        assert "picked: general_assistant (" in output
        answer = re.search(r"^< (.*)$", output, re.MULTILINE)
        assert answer and answer.group(1).strip(), output
        assert ("served by demo-smollm2/chat (model smollm2, route role:general_assistant, "
                "attempts 1)") in output
    # One server the whole time: launched once, never killed and restarted.
    assert node.text().count("managed upstream demo-smollm2: started") == 1, node.text()
