"""Managed upstream processes: start each, wait until ready, restart or reap it, stop it.

`Launcher` owns them all. A boot upstream (`launch` without `on_demand`) is started with the
launcher and restarted with backoff whenever it dies. An `on_demand` one stays "cold" until
`Launcher.ensure_running` asks for it (concurrent callers share one start), goes back to
"cold" when it dies, and is stopped by the idle reaper after `launch.idle_ttl_s` without
activity (never while the owner's `busy` says it serves a request). States: "cold",
"starting", "running", "stopping".

Rule: a managed process never outlives the daemon. Two mechanisms make sure of it:
- every child runs in its own session (`start_new_session`), so stopping signals the whole
  process group: a server's own worker processes stop with it, and a Ctrl-C meant for the
  daemon does not reach the child before the daemon decides the order of shutdown;
- on Linux every child's parent-death signal is SIGKILL (`prctl(PR_SET_PDEATHSIG)` through
  ctypes in a `preexec_fn`), so even a daemon killed with SIGKILL takes its children along.
  The kernel sends it when the forking *thread* ends; children are forked from the Trio
  thread, which lives as long as the daemon. Grandchildren are not covered by this one.

Stopping (`Launcher.stop`, the reaper, or cancellation of `Launcher.run`) is shielded:
SIGTERM to the group, up to `launch.stop_grace_s` for the process to exit, then SIGKILL.
Children inherit our stdout and stderr, so their logs land where ours do (the journal under
systemd).

Exceptions: `LaunchError` — a managed upstream could not be started or was not ready within
`launch.ready_timeout_s`; raised by `Launcher.run` (and `run_launcher`) for a boot upstream
before it reports started, after every process it had started has been stopped, and by
`Launcher.ensure_running` to every caller waiting for a failed start.
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
from geniehive.models import MANAGED_STATES
from geniehive.probing import bounded_probe
from geniehive.supervise import next_backoff

log = logging.getLogger("geniehive.launcher")

POLL_S = 0.5
FIRST_POLL_S = 0.05  # a starting process is probed this soon, then ever less often, to POLL_S
# A process that ran at least this long before dying restarts after the initial backoff
# again; one that keeps dying sooner backs off exponentially.
STABLE_S = 60.0
PR_SET_PDEATHSIG = 1
# The idle reaper looks at most this often (more often for shorter idle_ttl_s).
REAP_POLL_S = 1.0

COLD, STARTING, RUNNING, STOPPING = MANAGED_STATES

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
    poll_s = FIRST_POLL_S  # a request may be waiting for it: see it ready soon after it is
    with trio.move_on_after(upstream.launch.ready_timeout_s) as deadline:
        while process.returncode is None:
            result = await _probe_once(upstream, probe_for)
            # A pass while our process is dead came from someone else on that port.
            if result.ok and process.returncode is None:
                log.info("managed upstream %s: ready after %.1f s", upstream.id,
                         trio.current_time() - began)
                return
            reason = result.reason or "probe failed"
            await trio.sleep(poll_s)
            poll_s = min(POLL_S, poll_s * 1.5)
    if deadline.cancelled_caught:
        waited = f"{upstream.launch.ready_timeout_s:g}"
    else:
        waited = f"{trio.current_time() - began:.1f}"
    code = process.returncode
    fate = "process still running, stopped it" if code is None else f"process {describe_exit(code)}"
    raise LaunchError(
        f"upstreams[{index}] {upstream.id!r}: not ready after {waited} s: {reason}; {fate}"
    )


class _Attempt:
    """One start of one upstream, shared by every caller waiting for it (collation)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = None

    def finish(self, error: str | None = None) -> None:
        """Settle the attempt once; later calls change nothing."""
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass(eq=False)
class _Slot:
    """What the launcher knows of one managed upstream."""

    index: int
    upstream: UpstreamConfig
    process: ManagedProcess
    notify: Callable[[str, str], None]  # the launcher's on_state
    _state: str = COLD
    last_active: float = 0.0
    attempt: _Attempt | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def on_demand(self) -> bool:
        return self.upstream.launch is not None and self.upstream.launch.on_demand

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.notify(self.upstream.id, state)


def never_busy(upstream_id: str) -> bool:
    """The `busy` of a launcher whose owner tracks no requests: never busy."""
    return False


def unheard(upstream_id: str, state: str) -> None:
    """The `on_state` of a launcher whose owner does not follow its states."""


class Launcher:
    """Owns every managed upstream (`launch`): starts, supervises, reaps and stops them.

    Rules:
    - `run` starts the boot upstreams (no `on_demand`) concurrently and reports started, with
      the `ManagedProcess` of every managed upstream, once all of them answer their probe; a
      boot upstream that dies is restarted with backoff;
    - an `on_demand` upstream stays "cold" until `ensure_running` asks for it; concurrent
      callers share one start; one that dies goes back to "cold" and stays there until asked
      again;
    - the idle reaper stops an `on_demand` upstream that has not been touched (nor ensured)
      for `launch.idle_ttl_s` while `busy(upstream_id)` was False; while `busy` says True it
      counts as active. `busy` is given by the owner: on the control plane, whoever tracks
      the requests in flight per upstream; by default nothing is ever busy;
    - `on_state(upstream_id, state)` hears every change of state, as it happens;
    - cancelling `run` stops every process it started.
    """

    def __init__(
        self,
        upstreams: Sequence[UpstreamConfig],
        probe_for: ProbeFor,
        *,
        busy: Callable[[str], bool] = never_busy,
        on_state: Callable[[str, str], None] = unheard,
    ) -> None:
        self.probe_for = probe_for
        self.busy = busy
        self._slots = {
            up.id: _Slot(index, up, ManagedProcess(up.id), on_state)
            for index, up in enumerate(upstreams) if up.launch is not None
        }
        self._nursery: trio.Nursery | None = None
        self._reaping = False
        self._on_state = on_state

    @property
    def states(self) -> Mapping[str, ManagedProcess]:
        """The `ManagedProcess` of every managed upstream, by id."""
        return {uid: slot.process for uid, slot in self._slots.items()}

    # -- what callers ask ------------------------------------------------------------------

    def is_managed(self, upstream_id: str) -> bool:
        return upstream_id in self._slots

    def state(self, upstream_id: str) -> str:
        """"cold", "starting", "running" or "stopping". KeyError for an unmanaged upstream."""
        return self._slot(upstream_id).state

    def managed_state(self, upstream_id: str) -> str | None:
        """The state of a managed upstream, None for one run by someone else."""
        slot = self._slots.get(upstream_id)
        return None if slot is None else slot.state

    def asleep(self, upstream_id: str) -> bool:
        """Whether an `on_demand` upstream is not running now (cold, starting or stopping);
        False for every other upstream."""
        slot = self._slots.get(upstream_id)
        return slot is not None and slot.on_demand and slot.state != RUNNING

    def touch(self, upstream_id: str) -> None:
        """Note activity on the upstream now (it postpones the idle reaper)."""
        self._slot(upstream_id).last_active = trio.current_time()

    async def ensure_running(self, upstream_id: str) -> float:
        """Start the upstream if cold and wait until its probe passes.

        Returns the seconds this call waited (0.0 when it was running). Concurrent callers
        share one start; a caller cancelled while waiting leaves the start to the others.
        Raises LaunchError naming the upstream when the start fails (the process is stopped
        and the upstream is cold again), KeyError for an unmanaged upstream.
        """
        slot = self._slot(upstream_id)
        began = trio.current_time()
        waited = False
        while True:
            if slot.state == RUNNING:
                slot.last_active = now = trio.current_time()
                return now - began if waited else 0.0
            waited = True
            if slot.state == STOPPING:
                await slot.stopped.wait()
                continue
            attempt = slot.attempt if slot.state == STARTING else None
            if attempt is None:
                attempt = self._begin(slot)
            await attempt.done.wait()
            if attempt.error is not None:
                raise LaunchError(attempt.error)

    async def stop(self, upstream_id: str) -> None:
        """Stop the upstream (SIGTERM to its group, SIGKILL after stop_grace_s): cold after.

        A start in progress is abandoned (its waiters get LaunchError). Shielded: the process
        is stopped even when the caller is cancelled.
        """
        slot = self._slot(upstream_id)
        if slot.state == COLD:
            return
        slot.state = STOPPING
        assert slot.scope is not None
        slot.scope.cancel()
        with trio.CancelScope(shield=True):
            await slot.stopped.wait()

    # -- a reloaded configuration (geniehive/reload.py) ----------------------------------------

    def renumber(self, upstreams: Sequence[UpstreamConfig]) -> None:
        """Give the kept upstreams their place in a reloaded list (named in LaunchErrors)."""
        for index, upstream in enumerate(upstreams):
            slot = self._slots.get(upstream.id)
            if slot is not None:
                slot.index = index

    def add(self, index: int, upstream: UpstreamConfig) -> None:
        """Manage a new upstream (`launch`) while running: a boot one is started at once (not
        waited for: `ensure_running` waits), an on_demand one stays cold until asked for."""
        assert upstream.launch is not None
        slot = _Slot(index, upstream, ManagedProcess(upstream.id), self._on_state)
        self._slots[upstream.id] = slot
        if self._nursery is not None:
            if not slot.on_demand:
                self._begin(slot)
            elif not self._reaping:
                self._nursery.start_soon(self._reap)

    async def remove(self, upstream_id: str) -> None:
        """Stop a managed upstream (as `stop`) and forget it."""
        await self.stop(upstream_id)
        self._slots.pop(upstream_id, None)

    # -- the task --------------------------------------------------------------------------

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[Mapping[str, ManagedProcess]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the boot upstreams, then supervise and reap until cancelled; stops them all.

        Raises LaunchError (naming `upstreams[i]` and its id) if a boot upstream cannot start
        or become ready; every process started is stopped first.
        """
        failures: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                boot = [self._begin(s) for s in self._slots.values() if not s.on_demand]
                async with trio.open_nursery() as waiting:
                    for attempt in boot:
                        waiting.start_soon(_settle_boot, attempt, failures, waiting.cancel_scope)
                if failures:
                    nursery.cancel_scope.cancel()
                else:
                    nursery.start_soon(self._reap)
                    task_status.started(self.states)
                    await trio.sleep_forever()
        finally:
            self._nursery = None
        if failures:
            raise LaunchError(failures[0])

    def _slot(self, upstream_id: str) -> _Slot:
        try:
            return self._slots[upstream_id]
        except KeyError:
            raise KeyError(f"{upstream_id!r} is not a managed upstream") from None

    def _begin(self, slot: _Slot) -> _Attempt:
        """Start the upstream's process task in the launcher's nursery; its attempt."""
        if self._nursery is None:
            raise LaunchError(f"upstreams[{slot.index}] {slot.upstream.id!r}: the launcher "
                              "is not running")
        attempt = _Attempt()
        slot.state, slot.attempt, slot.scope = STARTING, attempt, trio.CancelScope()
        slot.stopped = trio.Event()
        self._nursery.start_soon(self._run_process, slot, attempt, slot.scope)
        return attempt

    async def _run_process(self, slot: _Slot, attempt: _Attempt, scope: trio.CancelScope) -> None:
        """Start, wait until ready, then watch the process until it dies or is stopped."""
        upstream, state = slot.upstream, slot.process
        failure = f"upstreams[{slot.index}] {upstream.id!r}: stopped before it was ready"
        try:
            with scope:
                try:
                    await _start(slot.index, upstream, state)
                    assert state.process is not None
                    await _wait_ready(slot.index, upstream, state.process, self.probe_for)
                except LaunchError as exc:
                    failure = str(exc)
                    return
                slot.state, slot.last_active = RUNNING, trio.current_time()
                attempt.finish()
                if slot.on_demand:
                    code = await state.process.wait()
                    state.last_exit = describe_exit(code)
                    log.warning("managed upstream %s: %s; cold until asked for again",
                                upstream.id, state.last_exit)
                else:
                    await self._supervise(slot)
        finally:
            if state.process is not None:
                await _stop(upstream, state.process)
            state.process, state.pid = None, None
            # Cold before the waiters hear of a failure (a success was told them already).
            slot.state, slot.attempt, slot.scope = COLD, None, None
            attempt.finish(failure)
            slot.stopped.set()

    async def _supervise(self, slot: _Slot) -> None:
        """Restart a boot upstream whenever it dies, with backoff; runs until cancelled."""
        upstream, state = slot.upstream, slot.process
        backoff = 0.0
        while True:
            if state.process is not None:
                code = await state.process.wait()
                _signal_group(state.process, signal.SIGKILL)  # stragglers would hold the port
                state.last_exit = describe_exit(code)
                state.process, state.pid = None, None
            ran_s = trio.current_time() - state.started_at
            backoff = next_backoff(0.0 if ran_s >= STABLE_S else backoff)
            log.warning("managed upstream %s: %s after %.1f s; restarting in %g s",
                        upstream.id, state.last_exit, ran_s, backoff)
            # Callers of ensure_running meanwhile wait for this restart.
            restart = slot.attempt = _Attempt()
            slot.state = STARTING
            try:
                await trio.sleep(backoff)
                state.restarts += 1
                await _start(slot.index, upstream, state)
            except LaunchError as exc:
                log.error("%s", exc)
                restart.finish(str(exc))
                state.last_exit = "could not be started"
                state.started_at = trio.current_time()
            else:
                # Not waited for: the prober reports when it answers again.
                slot.state = RUNNING
                restart.finish()

    async def _reap(self) -> None:
        """Stop the on_demand upstreams idle for their idle_ttl_s; runs until cancelled, or
        until no on_demand upstream is left (`add` starts it again)."""
        self._reaping = True
        try:
            await self._reap_while_any()
        finally:
            self._reaping = False

    async def _reap_while_any(self) -> None:
        while True:
            ttls = [s.upstream.launch.idle_ttl_s for s in self._slots.values()
                    if s.on_demand and s.upstream.launch is not None]
            if not ttls:
                return
            await trio.sleep(min(REAP_POLL_S, min(ttls) / 2))
            now = trio.current_time()
            for uid, slot in list(self._slots.items()):
                if not slot.on_demand or slot.state != RUNNING:
                    continue
                if self.busy(uid):
                    slot.last_active = now
                    continue
                assert slot.upstream.launch is not None
                if now - slot.last_active >= slot.upstream.launch.idle_ttl_s:
                    log.info("managed upstream %s: idle for %g s; stopping it", uid,
                             now - slot.last_active)
                    assert self._nursery is not None
                    self._nursery.start_soon(self.stop, uid)


async def _settle_boot(attempt: _Attempt, failures: list[str], waiting: trio.CancelScope) -> None:
    """Wait for one boot start; on failure record it and stop waiting for the others."""
    await attempt.done.wait()
    if attempt.error is not None:
        failures.append(attempt.error)
        waiting.cancel()


async def run_launcher(
    upstreams: Sequence[UpstreamConfig],
    probe_for: ProbeFor,
    *,
    task_status: trio.TaskStatus[Mapping[str, ManagedProcess]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a `Launcher` over `upstreams` (see `Launcher.run`)."""
    await Launcher(upstreams, probe_for).run(task_status=task_status)
