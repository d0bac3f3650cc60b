"""The shipped systemd units pass `systemd-analyze verify` silently and keep their contract.

`systemd-analyze verify` exits 0 on mistakes such as an unknown key, so a unit passes only
with exit 0 and no output at all. It also insists that ExecStart names an existing
executable, so each unit is rendered with this machine's `geniehive` in place of
the installed path before verifying.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import trio

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BINARY = "/opt/geniehive/venv/bin/geniehive"
UNIT_NAMES = ["geniehive.service", "geniehive-node.service"]


def local_command() -> str:
    """This machine's way to run `geniehive`, as an absolute ExecStart prefix."""
    script = Path(sys.executable).parent / "geniehive"
    if script.is_file():
        return str(script)
    return f"{sys.executable} -m geniehive"


def render(text: str) -> str:
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(starts) == 1, "expected exactly one ExecStart="
    line = lines[starts[0]]
    assert line.startswith(f"ExecStart={INSTALLED_BINARY} "), line
    lines[starts[0]] = line.replace(INSTALLED_BINARY, local_command(), 1)
    return "".join(lines)


def settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given, in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("name", UNIT_NAMES)
async def test_unit_passes_systemd_analyze_verify_with_no_output(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is required to verify the shipped units"
    unit = tmp_path / name
    unit.write_text(render((UNITS / name).read_text()))
    with trio.fail_after(60):
        result = await trio.run_process(
            [analyze, "verify", str(unit)], capture_stdout=True, capture_stderr=True, check=False
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert (result.returncode, output) == (0, "")


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_unit_is_a_hardened_notify_service_with_watchdog_and_state(name: str) -> None:
    service = settings((UNITS / name).read_text())["Service"]
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30"],
        "EnvironmentFile": ["-/etc/geniehive/keys.env"],
        "Restart": ["on-failure"],
        "LimitNOFILE": ["65536"],
        "User": ["geniehive"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["true"],
        "CapabilityBoundingSet": [""],
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service["StateDirectory"][0].startswith("geniehive")


def test_control_unit_serves_from_etc_with_its_registry_in_the_state_directory() -> None:
    service = settings((UNITS / "geniehive.service").read_text())["Service"]
    command = f"{INSTALLED_BINARY} serve --config /etc/geniehive/geniehive.toml"
    assert service["ExecStart"] == [command]
    assert service["StateDirectory"] == ["geniehive"]
    assert service["PrivateDevices"] == ["true"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # geniehive/reload.py


def test_node_unit_keeps_the_gpus_visible() -> None:
    service = settings((UNITS / "geniehive-node.service").read_text())["Service"]
    command = f"{INSTALLED_BINARY} node --config /etc/geniehive/node.toml"
    assert service["ExecStart"] == [command]
    # Each of these makes the device policy an allow-list that hides /dev/nvidia*.
    for key in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock"):
        assert key not in service, key
