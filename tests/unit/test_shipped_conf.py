"""Every file shipped in conf/ loads and checks clean (the CLI is tried in tests/e2e/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geniehive.config import check_files, load_control, load_node
from geniehive.launch import llamacpp

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
ENV = {"GENIEHIVE_NODE_KEY": "node-key-for-tests"}
SHIPPED = sorted(p for p in CONF.rglob("*.toml") if "state" not in p.parts)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONF)))
def test_every_shipped_file_is_valid(path: Path) -> None:
    catalogs = set((CONF / "roles").glob("*.toml"))
    assert check_files(sorted({path} | catalogs), ENV) == []


def test_default_control_file_loads_its_role_catalogs() -> None:
    config = load_control(CONF / "geniehive.toml", ENV)
    assert {"general_assistant", "scientific_translator", "embedder", "transcriber",
            "white_hat", "blue_hat"} <= set(config.roles)
    assert config.registry.path == CONF / "state" / "geniehive.sqlite3"
    assert config.auth_keys == ()


def test_node_example_loads() -> None:
    node_file = CONF / "node.toml"
    if not node_file.exists():
        pytest.fail("conf/node.toml must ship as a working example")
    config = load_node(node_file, ENV)
    assert config.node.host_id


def test_default_chat_upstream_gives_each_slot_8192_tokens() -> None:
    """llama.cpp splits `--ctx` evenly over `--slots`; an agent's first turn needs > 2,048."""
    config = load_control(CONF / "geniehive.toml", ENV)
    chat = [(u.id, u.launch) for u in config.upstreams if "chat" in u.operations and u.launch]
    assert chat, "the default must launch a chat upstream"
    for upstream_id, launch in chat:
        command = list(launch.command)
        module = command.index("geniehive.launch.llamacpp")
        args = llamacpp.parse_args(command[module + 1:])
        assert args.ctx // args.slots >= 8192, (upstream_id, args.ctx, args.slots)
