"""`geniehive serve` under a systemd notify socket: READY=1, watchdog pings, RELOADING=1 and
READY=1 around a SIGHUP reload, STOPPING=1.

The test plays systemd's part: it binds the datagram socket named by NOTIFY_SOCKET, sets
WATCHDOG_USEC, starts the real daemon and reads what it reports.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import Proc, spawn_gateway, write_config

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s


class NotifyLog:
    """Every state the daemon sent, in order; one datagram may carry several lines."""

    def __init__(self, sock: trio.socket.SocketType, gateway: Proc) -> None:
        self.sock = sock
        self.gateway = gateway
        self.states: list[str] = []

    async def until(self, state: str, timeout_s: float) -> list[str]:
        """Receive until `state` arrives; return the states received before it."""
        start = len(self.states)
        with trio.move_on_after(timeout_s):
            while True:
                datagram = (await self.sock.recv(4096)).decode()
                self.states.extend(datagram.splitlines())
                if state in self.states[start:]:
                    return self.states[start : self.states.index(state, start)]
        pytest.fail(
            f"no {state} within {timeout_s} s; states so far: {self.states}\n"
            f"daemon output:\n{self.gateway.text()}"
        )


@pytest.mark.e2e
async def test_serve_reports_ready_pings_the_watchdog_and_reports_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd names the main PID; a stray WATCHDOG_PID in our own environment would silence
    # the daemon's watchdog.
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = write_config(tmp_path, "")
    address = tmp_path / "notify"
    env = {"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with trio.fail_after(30):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(str(address))
            async with trio.open_nursery() as nursery:
                gateway = await spawn_gateway(nursery, config, env)
                try:
                    await _check_lifecycle(NotifyLog(sock, gateway), gateway)
                finally:
                    if gateway.process.returncode is None:
                        gateway.process.kill()
                    with trio.CancelScope(shield=True):
                        await gateway.process.wait()


async def _check_lifecycle(log: NotifyLog, gateway: Proc) -> None:
    before_ready = await log.until("READY=1", timeout_s=20)
    assert "STOPPING=1" not in before_ready
    async with httpx.AsyncClient(timeout=5) as client:
        readyz = await client.get(f"{gateway.url}/readyz")
    assert readyz.status_code == 200, "READY=1 was sent before /readyz answered 200"

    # Pings continue once serving, not only during start-up.
    await log.until("WATCHDOG=1", timeout_s=5)

    # A reload (SIGHUP) is framed by RELOADING=1, with its monotonic time, and READY=1.
    gateway.process.send_signal(signal.SIGHUP)
    await log.until("RELOADING=1", timeout_s=5)
    assert any(s.startswith("MONOTONIC_USEC=") and s[15:].isdigit() for s in log.states)
    await log.until("READY=1", timeout_s=5)

    gateway.process.send_signal(signal.SIGTERM)
    await log.until("STOPPING=1", timeout_s=5)
    with trio.move_on_after(10):
        await gateway.process.wait()
    assert gateway.process.returncode == 0, gateway.text()
    assert log.states.count("READY=1") == 2, log.states  # started, then reloaded
