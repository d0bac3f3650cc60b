"""The unit tier refuses IP sockets and child processes, and says where such a test belongs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import trio

from tests.isolation import IsolationError


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_an_ip_socket_is_refused_naming_the_tier_it_belongs_in(family: int) -> None:
    with pytest.raises(IsolationError, match=r"no IP socket.*tests/app/"):
        socket.socket(family, socket.SOCK_STREAM)


async def test_a_trio_connection_is_refused() -> None:
    # trio's happy-eyeballs nursery wraps the error in an exception group.
    with pytest.RaisesGroup(IsolationError, flatten_subgroups=True, allow_unwrapped=True):
        await trio.open_tcp_stream("127.0.0.1", 9)


def test_a_child_process_is_refused_naming_the_tier_it_belongs_in() -> None:
    with pytest.raises(IsolationError, match=r"no child process.*tests/e2e/"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(IsolationError):
        os.system("true")


async def test_trio_still_runs_on_its_unix_socket_pair() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.send(b"x")
        assert b.recv(1) == b"x"
    await trio.lowlevel.checkpoint()
