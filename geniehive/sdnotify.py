"""systemd service notifications (`sd_notify`) over `$NOTIFY_SOCKET`, with trio sockets.

The protocol is one datagram per message on an AF_UNIX SOCK_DGRAM socket whose path is in
`$NOTIFY_SOCKET` (a leading `@` names the Linux abstract namespace); each message is
newline-separated `KEY=value` assignments such as `READY=1`. Outside systemd the variable is
unset and every call here is a no-op returning False, so the daemon calls these
unconditionally.

Notification is best effort, like `sd_notify(3)`: an OSError while sending is logged and
reported as False, never raised, because a missing notify socket must not take the gateway
down. The watchdog is the exception that proves the rule: if its pings stop arriving systemd
restarts the service, which is the point.

`run_watchdog` pings from a task on the event loop rather than from a thread, so a stalled
loop stops the pings and systemd notices.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)


def notify_address(environ: Mapping[str, str]) -> str | None:
    """Return the socket address named by `NOTIFY_SOCKET`, or None when there is none.

    `@name` becomes the abstract address `\\0name`. Like `sd_notify(3)`, only absolute paths
    and abstract names are accepted; anything else counts as unset.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Return the ping interval (half of `WATCHDOG_USEC`), or None when no watchdog applies.

    A watchdog applies when `WATCHDOG_USEC` is a positive integer and `WATCHDOG_PID`, if
    set, is `pid`: systemd sets both for the main process only, and a child that inherited
    them must not ping on its parent's behalf.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


async def notify(state: str) -> bool:
    """Send `state` (e.g. `"READY=1"`) to systemd; True when it was sent.

    Returns False without doing anything when `NOTIFY_SOCKET` is unset. Never raises OSError:
    a failed send is logged and returns False.
    """
    address = notify_address(os.environ)
    if address is None:
        return False
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        try:
            await sock.connect(address)
            await sock.send(state.encode())
        except OSError as exc:
            log.warning("systemd notification %r failed: %s", state, exc)
            return False
    return True


async def notify_ready() -> bool:
    """Tell systemd start-up is complete (`READY=1`)."""
    return await notify("READY=1")


async def notify_reloading() -> bool:
    """Tell systemd a reload has begun (`RELOADING=1`, with the `MONOTONIC_USEC` that
    `Type=notify-reload` asks for); `notify_ready` tells it the reload is over."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return await notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


async def notify_stopping() -> bool:
    """Tell systemd a graceful shutdown has begun (`STOPPING=1`)."""
    return await notify("STOPPING=1")


async def notify_status(text: str) -> bool:
    """Set the free-form status line shown by `systemctl status` (`STATUS=...`).

    A newline would start a new assignment in the protocol, so newlines become spaces.
    """
    return await notify("STATUS=" + " ".join(text.splitlines()))


async def run_watchdog(
    *, task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Ping `WATCHDOG=1` every half `WATCHDOG_USEC`, starting now; runs until cancelled.

    Reports started at once with the interval in seconds. When no watchdog is configured (or
    there is no notify socket) it reports None and returns immediately.
    """
    interval = watchdog_interval_s(os.environ, os.getpid())
    if interval is None or notify_address(os.environ) is None:
        task_status.started(None)
        return
    log.info("systemd watchdog: pinging every %.3g s", interval)
    task_status.started(interval)
    while True:
        await notify("WATCHDOG=1")
        await trio.sleep(interval)
