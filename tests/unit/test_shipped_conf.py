"""Every file shipped in conf/ loads, and `geniehive check-config` reports problems with exit 2."""

from __future__ import annotations

import subprocess
import sys
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


def run_check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geniehive", "check-config", *map(str, files)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )


def test_check_config_exits_2_listing_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nbind = "nope"\ncolour = 1\n[[upstreams]]\nid = "x"\nadapter = "openai"\n'
        'base_url = "ftp://x"\n'
    )
    result = run_check(bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("server.colour" in line for line in lines)
    assert any("server.bind" in line for line in lines)
    assert any("upstreams[0].base_url" in line for line in lines)


def test_check_config_accepts_the_shipped_control_file() -> None:
    result = run_check(CONF / "geniehive.toml")
    assert result.returncode == 0, result.stderr
