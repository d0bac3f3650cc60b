"""The supervising parent's rules (geniehive/workers.py): restart delays, what goes up to
systemd, and what a worker is told."""

from __future__ import annotations

from pathlib import Path

from geniehive.config import load_control
from geniehive.workers import (
    NotifyRelay,
    describe_exit,
    restart_delay,
    with_binds,
    worker_environ,
    worker_index,
)


def test_restart_delay_doubles_for_quick_deaths_and_resets_after_a_stable_run() -> None:
    delays = [0.0]
    for _ in range(7):
        delays.append(restart_delay(delays[-1], lived_s=2))
    assert delays[1:] == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(30, lived_s=60) == 1


def test_ready_goes_up_once_every_worker_is_ready_and_again_after_a_reload() -> None:
    relay = NotifyRelay(3)
    assert relay.on_message(0, b"READY=1") == []
    assert relay.on_message(0, b"READY=1") == []  # the same worker twice is not two
    assert relay.on_message(1, b"STATUS=x\nREADY=1") == []
    assert relay.on_message(2, b"READY=1") == ["READY=1"]
    assert relay.on_message(1, b"READY=1") == []  # a restarted worker: nothing to say
    relay.reload()
    assert relay.on_message(0, b"RELOADING=1\nMONOTONIC_USEC=5") == []
    assert relay.on_message(0, b"READY=1") == []
    assert relay.on_message(2, b"READY=1") == []
    assert relay.on_message(1, b"READY=1") == ["READY=1"]
    assert relay.on_message(1, b"WATCHDOG=1") == []
    assert relay.on_message(1, b"STOPPING=1") == []  # the parent says it, once


def test_a_worker_gets_the_concrete_binds_and_no_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[server]\nbind = ["127.0.0.1:0"]\nworkers = 2\n')
    config = load_control(path, {})
    env = worker_environ({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "9", "HOME": "/h"}, 1,
                         '{"server": ["127.0.0.1:4000"], "nodes": []}', "/run/w1.sock")
    assert env == {"HOME": "/h", "GENIEHIVE_WORKER": "1", "NOTIFY_SOCKET": "/run/w1.sock",
                   "GENIEHIVE_WORKER_BINDS": '{"server": ["127.0.0.1:4000"], "nodes": []}'}
    assert worker_index(env) == 1 and worker_index({}) is None
    moved = with_binds(config, {"server": ["127.0.0.1:4000"], "nodes": []})
    assert moved.server.bind == ("127.0.0.1:4000",) and moved.server.workers == 2
    assert with_binds(config, None) is config


def test_an_exit_is_described_by_status_or_signal() -> None:
    assert describe_exit(2) == "status 2"
    assert describe_exit(-9) == "signal SIGKILL"

