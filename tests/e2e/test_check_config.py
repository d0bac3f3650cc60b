"""`geniehive check-config`, run as a process, reports problems with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"


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
