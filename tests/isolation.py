"""The unit tier's isolation: no IP socket and no child process while a unit test runs.

Unit tests are pure and take milliseconds; a test that needs a server on port 0 belongs in
tests/app/, one that starts a process in tests/e2e/. The check is a `sys.audit` hook, so it
sees every way in (the stdlib, trio, httpx, subprocess, os.fork) and not only the names a
patch would replace. Audit hooks cannot be removed, so the hook is installed once and only
refuses while `forbid()` is active. Unix-domain sockets stay allowed: trio's run loop opens a
socket pair to wake itself.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_IP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
_PROCESS_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
    "os.exec", "pty.spawn",
})
_state = threading.local()
_active: list[str] = []  # the test id while forbidden (a list so threads see it too)
_installed = False


class IsolationError(RuntimeError):
    """A unit test tried to open an IP socket or start a process."""


def _refuse(what: str) -> None:
    # Re-entrancy: building the message must not trip the hook again.
    if getattr(_state, "refusing", False):
        return
    _state.refusing = True
    try:
        raise IsolationError(
            f"{_active[-1]}: unit tests use no {what}; a test that needs a real server "
            "belongs in tests/app/, one that starts a process in tests/e2e/"
        )
    finally:
        _state.refusing = False


def _hook(event: str, args: tuple[object, ...]) -> None:
    if not _active:
        return
    if event == "socket.__new__":
        if args[1] in _IP_FAMILIES:
            _refuse("IP socket")
    elif event in _PROCESS_EVENTS:
        _refuse(f"child process ({event})")


@contextmanager
def forbid(test_id: str) -> Iterator[None]:
    """Make IP socket creation and process spawning raise `IsolationError` inside the block."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _active.append(test_id)
    try:
        yield
    finally:
        _active.pop()
