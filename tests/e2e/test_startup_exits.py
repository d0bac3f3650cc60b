"""A managed upstream that cannot be started stops `geniehive serve` and `geniehive node` with
exit status 2 and one line naming it (the start is tried: a child process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geniehive import cli
from tests.startup_files import CONTROL_HEAD, NODE_HEAD, upstream


def test_node_whose_managed_upstream_cannot_run_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.toml"
    launch = 'launch = { command = ["/nonexistent/geniehive-test-binary"] }'
    path.write_text(NODE_HEAD + upstream(extra=launch), encoding="utf-8")
    assert cli.main(["node", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"{path}: upstreams[0] 'llm': cannot run '/nonexistent/geniehive-test-binary': "
    )
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_serve_whose_managed_upstream_cannot_run_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "geniehive.toml"
    launch = 'launch = { command = ["/nonexistent/geniehive-test-binary"] }'
    path.write_text(CONTROL_HEAD + upstream(extra=launch), encoding="utf-8")
    assert cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"{path}: upstreams[0] 'llm': cannot run '/nonexistent/geniehive-test-binary': "
    )
    assert err.count("\n") == 1
