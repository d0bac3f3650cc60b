"""Every file shipped in conf/ loads and checks clean (the CLI is tried in tests/e2e/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geniehive.config import check_files, load_control, load_node

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
