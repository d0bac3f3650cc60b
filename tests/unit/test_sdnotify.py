"""systemd notifications reach a real unix datagram socket; nothing happens outside systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from geniehive import sdnotify

Listener = trio.socket.SocketType


@pytest.fixture
async def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Listener]:
    """A datagram socket standing in for systemd, named by NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield sock


async def receive(sock: Listener) -> str:
    return (await sock.recv(4096)).decode()


async def test_notify_delivers_each_state_as_one_datagram(listener: Listener) -> None:
    with trio.fail_after(5):
        assert await sdnotify.notify_ready() is True
        assert await sdnotify.notify_status("serving\n3 upstreams") is True
        assert await sdnotify.notify_stopping() is True
        assert await receive(listener) == "READY=1"
        assert await receive(listener) == "STATUS=serving 3 upstreams"
        assert await receive(listener) == "STOPPING=1"


async def test_notify_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with trio.fail_after(5):
        assert await sdnotify.notify("READY=1") is False


async def test_notify_reports_false_when_nobody_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    with trio.fail_after(5):
        assert await sdnotify.notify("READY=1") is False


def test_notify_address_maps_at_sign_to_the_abstract_namespace() -> None:
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "@/org/sd/notify"}) == "\0/org/sd/notify"
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "/run/sd/notify"}) == "/run/sd/notify"
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "relative/notify"}) is None
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "@"}) is None
    assert sdnotify.notify_address({}) is None


def test_watchdog_interval_is_half_the_usec_and_only_for_the_named_pid() -> None:
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    mine = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42"}
    assert sdnotify.watchdog_interval_s(mine, 42) == 0.2
    assert sdnotify.watchdog_interval_s(mine, 7) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "0"}, 42) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}, 42) is None
    assert sdnotify.watchdog_interval_s({}, 42) is None


async def test_watchdog_pings_at_once_then_every_half_usec(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    arrivals: list[float] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            assert await nursery.start(sdnotify.run_watchdog) == 1.0
            while len(arrivals) < 4:
                assert await receive(listener) == "WATCHDOG=1"
                arrivals.append(trio.current_time() - start)
            nursery.cancel_scope.cancel()
    assert arrivals == pytest.approx([0.0, 1.0, 2.0, 3.0])


async def test_watchdog_returns_at_once_when_not_configured(
    listener: Listener, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(sdnotify.run_watchdog) is None
        # The nursery closed by itself: nothing is left pinging. Prove no ping was queued.
        with trio.move_on_after(10):
            await receive(listener)
            pytest.fail("a watchdog ping was sent without WATCHDOG_USEC")


async def test_watchdog_stays_silent_for_another_processes_pid(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(sdnotify.run_watchdog) is None
        with trio.move_on_after(10):
            await receive(listener)
            pytest.fail("a watchdog ping was sent for another process's watchdog")
