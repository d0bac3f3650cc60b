"""Managed upstream processes: start each, wait until ready, restart it, stop it.

Rule: a managed process never outlives the daemon. Two mechanisms make sure of it:
- every child runs in its own session (`start_new_session`), so stopping signals the whole
  process group: a server's own worker processes stop with it, and a Ctrl-C meant for the
  daemon does not reach the child before the daemon decides the order of shutdown;
- on Linux every child's parent-death signal is SIGKILL (`prctl(PR_SET_PDEATHSIG)` through
  ctypes in a `preexec_fn`), so even a daemon killed with SIGKILL takes its children along.
  The kernel sends it when the forking *thread* ends; children are forked from the Trio
  thread, which lives as long as the daemon. Grandchildren are not covered by this one.

Stopping (cancellation of `run_launcher`) is shielded: SIGTERM to the group, up to
`launch.stop_grace_s` for the process to exit, then SIGKILL. Children inherit our stdout and
stderr, so their logs land where ours do (the journal under systemd).

Exceptions: `LaunchError` — a managed upstream could not be started or was not ready within
`launch.ready_timeout_s`; raised by `run_launcher` before it reports started, after every
process it had started has been stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from geniehive.adapters import ProbeResult
from geniehive.config import UpstreamConfig
from geniehive.errors import StartupError
from geniehive.probing import bounded_probe
from geniehive.supervise import next_backoff

log = logging.getLogger("geniehive.launcher")

POLL_S = 0.5
# A process that ran at least this long before dying restarts after the initial backoff
# again; one that keeps dying sooner backs off exponentially.
STABLE_S = 60.0
PR_SET_PDEATHSIG = 1

ProbeFor = Callable[[UpstreamConfig], Awaitable[ProbeResult]]


class LaunchError(StartupError):
    """A managed upstream could not be started or did not become ready in time."""

    in_config = True


@dataclass
class ManagedProcess:
    """The live state of one managed upstream (what `run_launcher` reports when started)."""

    upstream_id: str
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None
    process: Child | None = field(default=None, repr=False)
    started_at: float = 0.0


def describe_exit(code: int) -> str:
    """'exited with code 3' or 'killed by SIGKILL' for a Popen-style return code."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGKILL when we die (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved before the fork: the child only calls an already-bound function.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        # We may have died between the fork and the prctl: nobody would signal the child then.
        if os.getppid() != parent:
            os.kill(os.getpid(), kill)

    return preexec


class Child:
    """A child process whose exit is awaited without a thread (a pidfd on Linux).

    Offers the part of `trio.Process` the launcher uses: `pid`, `returncode`, `wait()`.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(popen.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        while (code := self.popen.poll()) is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.sleep(0.1)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return code


def _signal_group(process: Child, signum: int) -> None:
    """Signal the child's process group (its session leader is the child itself)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(process.pid, signum)


def resolve_command(command: Sequence[str]) -> list[str]:
    """The argv to run: a leading `python` or `python3` means this very interpreter.

    So a shipped config can launch `python -m geniehive.launch.llamacpp` and get the
    virtual environment GenieHive runs in, whatever PATH says.
    """
    argv = list(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


async def _start(index: int, upstream: UpstreamConfig, state: ManagedProcess) -> None:
    """Spawn the upstream's command. Raises LaunchError when it cannot be executed."""
    launch = upstream.launch
    assert launch is not None
    try:
        # Forked from this (the event loop's) thread on purpose: the kernel's parent-death
        # signal fires when the forking *thread* exits, and trio's worker threads exit after
        # ten idle seconds, which would kill a healthy model server.
        process = Child(subprocess.Popen(  # noqa: ASYNC220 - a fork, milliseconds
            resolve_command(launch.command),
            env={**os.environ, **launch.env},
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        ))
    except OSError as exc:
        raise LaunchError(
            f"upstreams[{index}] {upstream.id!r}: cannot run {launch.command[0]!r}: {exc}"
        ) from exc
    state.process, state.pid, state.started_at = process, process.pid, trio.current_time()
    # Only the program: arguments and env may carry tokens.
    log.info("managed upstream %s: started %s (pid %d)", upstream.id, launch.command[0],
             process.pid)


async def _stop(upstream: UpstreamConfig, process: Child) -> None:
    """SIGTERM the process group, SIGKILL it after stop_grace_s; runs even when cancelled."""
    assert upstream.launch is not None
    grace_s = upstream.launch.stop_grace_s
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(grace_s):
                await process.wait()
            if process.returncode is None:
                log.warning("managed upstream %s: pid %d still running %g s after SIGTERM; "
                            "sending SIGKILL", upstream.id, process.pid, grace_s)
                _signal_group(process, signal.SIGKILL)
            code = await process.wait()
            log.info("managed upstream %s: stopped (%s)", upstream.id, describe_exit(code))
        else:
            await process.wait()  # it had exited already: reap it and close its pidfd
        _signal_group(process, signal.SIGKILL)  # whatever its group left behind


async def _probe_once(upstream: UpstreamConfig, probe_for: ProbeFor) -> ProbeResult:
    """One bounded probe; whatever the adapter raises counts as a failure."""
    return await bounded_probe(
        partial(probe_for, upstream), max(upstream.timeout_s, POLL_S), upstream.id
    )


async def _wait_ready(
    index: int, upstream: UpstreamConfig, process: Child, probe_for: ProbeFor
) -> None:
    """Poll the probe until it passes. Raises LaunchError on timeout or early exit."""
    assert upstream.launch is not None
    began = trio.current_time()
    reason = "not probed yet"
    with trio.move_on_after(upstream.launch.ready_timeout_s) as deadline:
        while process.returncode is None:
            result = await _probe_once(upstream, probe_for)
            # A pass while our process is dead came from someone else on that port.
            if result.ok and process.returncode is None:
                log.info("managed upstream %s: ready after %.1f s", upstream.id,
                         trio.current_time() - began)
                return
            reason = result.reason or "probe failed"
            await trio.sleep(POLL_S)
    if deadline.cancelled_caught:
        waited = f"{upstream.launch.ready_timeout_s:g}"
    else:
        waited = f"{trio.current_time() - began:.1f}"
    code = process.returncode
    fate = "process still running, stopped it" if code is None else f"process {describe_exit(code)}"
    raise LaunchError(
        f"upstreams[{index}] {upstream.id!r}: not ready after {waited} s: {reason}; {fate}"
    )


async def _supervise(index: int, upstream: UpstreamConfig, state: ManagedProcess) -> None:
    """Restart the process whenever it dies, with backoff; runs until cancelled."""
    backoff = 0.0
    while True:
        if state.process is not None:
            code = await state.process.wait()
            _signal_group(state.process, signal.SIGKILL)  # its stragglers would hold the port
            state.last_exit = describe_exit(code)
        ran_s = trio.current_time() - state.started_at
        backoff = next_backoff(0.0 if ran_s >= STABLE_S else backoff)
        log.warning("managed upstream %s: %s after %.1f s; restarting in %g s",
                    upstream.id, state.last_exit, ran_s, backoff)
        await trio.sleep(backoff)
        state.restarts += 1
        try:
            await _start(index, upstream, state)
        except LaunchError as exc:
            log.error("%s", exc)
            state.process, state.pid = None, None
            state.last_exit = "could not be started"
            state.started_at = trio.current_time()


async def _run_managed(
    index: int,
    upstream: UpstreamConfig,
    probe_for: ProbeFor,
    state: ManagedProcess,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start one upstream, report started once ready, then keep it running until cancelled."""
    try:
        await _start(index, upstream, state)
        assert state.process is not None
        await _wait_ready(index, upstream, state.process, probe_for)
        task_status.started()
        await _supervise(index, upstream, state)
    finally:
        if state.process is not None:
            await _stop(upstream, state.process)


async def run_launcher(
    upstreams: Sequence[UpstreamConfig],
    probe_for: ProbeFor,
    *,
    task_status: trio.TaskStatus[Mapping[str, ManagedProcess]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every upstream that has `launch`; started (with their states) once all are ready.

    Processes start concurrently. Runs until cancelled, then stops them all. Raises
    LaunchError (naming `upstreams[i]` and its id) if any cannot start or become ready; the
    others are stopped first.
    """
    managed = [(index, up) for index, up in enumerate(upstreams) if up.launch is not None]
    states = {up.id: ManagedProcess(up.id) for _, up in managed}
    failures: list[LaunchError] = []
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starting:
            for index, upstream in managed:
                starting.start_soon(
                    _start_one, nursery, starting.cancel_scope, failures,
                    index, upstream, probe_for, states[upstream.id],
                )
        if failures:
            nursery.cancel_scope.cancel()
        else:
            task_status.started(states)
            await trio.sleep_forever()
    if failures:
        raise failures[0]


async def _start_one(
    nursery: trio.Nursery,
    starting: trio.CancelScope,
    failures: list[LaunchError],
    index: int,
    upstream: UpstreamConfig,
    probe_for: ProbeFor,
    state: ManagedProcess,
) -> None:
    """Start one managed upstream in `nursery`; on failure record it and stop the others."""
    try:
        await nursery.start(_run_managed, index, upstream, probe_for, state)
    except LaunchError as exc:
        failures.append(exc)
        starting.cancel()
