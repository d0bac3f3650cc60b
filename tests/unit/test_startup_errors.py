"""Errors that stop `geniehive serve` or `geniehive node` share one root, `StartupError`:
the command prints each problem on a line of its own, without a traceback, and exits 2 when
the configuration is at fault, 1 otherwise."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from geniehive import cli
from geniehive.adapters.loader import PluginError, load_adapters
from geniehive.config import ConfigError
from geniehive.errors import StartupError
from geniehive.launcher import LaunchError
from geniehive.registry import RegistryError, UnknownHost
from tests.startup_files import CONTROL_HEAD, NODE_HEAD, upstream


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    # The commands install their own root log handler; the test keeps pytest's, and no
    # systemd socket is in play.
    monkeypatch.setattr(cli, "setup_logging", lambda *args: None)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def known_adapters() -> str:
    return ", ".join(sorted(load_adapters()))


@pytest.mark.parametrize(
    ("error", "problems", "status"),
    [
        (ConfigError(["a.b: bad", "c: missing"]), ["a.b: bad", "c: missing"], 2),
        (PluginError("plugins/x.py: import failed"), ["plugins/x.py: import failed"], 2),
        (LaunchError("upstreams[0] 'u': not ready"), ["upstreams[0] 'u': not ready"], 2),
        (RegistryError("cannot open registry r"), ["cannot open registry r"], 1),
    ],
)
def test_every_startup_error_lists_its_problems_and_knows_its_exit_status(
    error: StartupError, problems: list[str], status: int
) -> None:
    assert isinstance(error, StartupError)
    assert error.problems == problems
    assert str(error) == "\n".join(problems)
    assert error.exit_status == status


def test_configuration_problems_are_shown_first_and_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    errors = [RegistryError("storage failed"), ConfigError(["x: bad", "y: bad"])]
    assert cli.report_startup_errors(Path("conf/g.toml"), errors) == 2
    assert capsys.readouterr().err == "conf/g.toml: x: bad\nconf/g.toml: y: bad\n"
    assert cli.report_startup_errors(Path("conf/g.toml"), [RegistryError("storage failed")]) == 1
    assert capsys.readouterr().err == "geniehive: storage failed\n"


def test_node_with_an_unknown_adapter_exits_2_naming_the_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE_HEAD + upstream("nosuchkind"), encoding="utf-8")
    assert cli.main(["node", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}: upstreams[0].adapter: unknown adapter 'nosuchkind' "
        f"(known: {known_adapters()})\n"
    )


def test_serve_with_an_adapter_that_does_not_serve_the_operation_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "geniehive.toml"
    text = CONTROL_HEAD + upstream("whisper")
    path.write_text(text, encoding="utf-8")
    assert cli.main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}: upstreams[0].operations: adapter 'whisper' does not serve 'chat'\n"
    )


def test_serve_with_a_registry_from_a_newer_geniehive_exits_1_as_its_own_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "geniehive.toml"
    path.write_text(CONTROL_HEAD + upstream(), encoding="utf-8")
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.execute("PRAGMA user_version = 999")
    assert cli.main(["serve", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"geniehive: cannot open registry {tmp_path / 'state.sqlite3'}: ")
    assert "newer than this geniehive knows" in err
    assert err.count("\n") == 1


def test_a_control_file_with_problems_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "geniehive.toml"
    path.write_text(CONTROL_HEAD + "[server.extra]\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--config", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"{path}: server.extra")


def test_a_refused_registry_write_is_not_a_startup_error() -> None:
    # Answered by the request that asked for it (404, 409), never a reason to stop.
    assert not isinstance(UnknownHost("h"), StartupError)
