"""`[server] workers = N`: N serving processes sharing the ports, under one supervising parent.

With N > 1, `geniehive serve` runs `supervise_workers`: a parent that imports no app and binds
nothing. It starts N copies of `python -m geniehive serve --config SAME` with `GENIEHIVE_WORKER`
set to the copy's index; such a worker serves as the single-process daemon does
(`serve_worker`), its sockets made with `SO_REUSEPORT` so the kernel spreads new connections
over all of them.

Rules:

- A port-0 bind cannot be shared (each process would get its own port): the parent picks one
  free port for it first and passes the concrete binds to every worker (`GENIEHIVE_WORKER_BINDS`),
  which also come back on them after a restart. The parent then prints the one
  `GenieHive listening on URL` line per client bind.
- Worker 0 starts alone (it opens and migrates a fresh registry file); the others start once
  it is ready. A worker that exits before it was first ready stops start-up: the parent stops
  the others and exits with that worker's status.
- After start-up, a worker that exits is started again, after 1 s, doubling up to 30 s while
  restarted workers keep dying within 30 s of their start.
- SIGTERM/SIGINT and SIGHUP are forwarded to every worker (SIGHUP only to ready ones: one still
  starting reads the file anyway, and would die of an early SIGHUP). The parent exits once all
  workers have, with status 0 after a requested stop.
- systemd: each worker's `NOTIFY_SOCKET` is a datagram socket of the parent's, one per worker.
  The parent says `READY=1` once every worker has, `STOPPING=1` once when told to stop, and
  for a reload `RELOADING=1`, then `READY=1` once every worker has reloaded. The parent feeds the
  watchdog; workers get no `WATCHDOG_USEC`.
- A worker whose parent is gone (killed with SIGKILL) shuts down by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from geniehive.config import ControlConfig
from geniehive.config.checks import parse_bind
from geniehive.sdnotify import notify, notify_reloading, notify_stopping, run_watchdog

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.workers")

WORKER_ENV = "GENIEHIVE_WORKER"
BINDS_ENV = "GENIEHIVE_WORKER_BINDS"
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_AFTER_S = 30.0  # a worker that lived this long resets the restart delay


# --- pure rules --------------------------------------------------------------------------------


def worker_index(environ: Mapping[str, str]) -> int | None:
    """The worker's index from `GENIEHIVE_WORKER`; None when this process is no worker."""
    value = environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None


def restart_delay(previous_s: float, lived_s: float) -> float:
    """Seconds to wait before starting a worker again: 1 s, doubled (up to 30 s) for each
    death in a row of a worker that lived under 30 s."""
    if previous_s <= 0 or lived_s >= STABLE_AFTER_S:
        return FIRST_DELAY_S
    return min(previous_s * 2, MAX_DELAY_S)


def describe_exit(returncode: int) -> str:
    """`status 2` or `signal SIGKILL`, from a Popen return code."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def worker_binds(environ: Mapping[str, str]) -> dict[str, list[str]] | None:
    """The concrete binds the parent chose (`{"server": [...], "nodes": [...]}`), or None."""
    value = environ.get(BINDS_ENV)
    return None if value is None else dict(json.loads(value))


def with_binds(config: ControlConfig, binds: Mapping[str, Sequence[str]] | None) -> ControlConfig:
    """`config` listening on the parent's concrete binds instead of its own (port 0)."""
    if binds is None:
        return config
    return replace(
        config,
        server=replace(config.server, bind=tuple(binds["server"])),
        nodes=replace(config.nodes, bind=tuple(binds["nodes"])),
    )


def worker_environ(environ: Mapping[str, str], index: int, binds: str,
                   notify_path: str) -> dict[str, str]:
    """A worker's environment: the parent's, marked as worker `index`, with the concrete
    binds, the parent's notify socket for it and no watchdog (the parent feeds it)."""
    env = {k: v for k, v in environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update({WORKER_ENV: str(index), BINDS_ENV: binds, "NOTIFY_SOCKET": notify_path})
    return env


def listening_urls(binds: Iterable[str], tls: bool) -> list[str]:
    scheme = "https" if tls else "http"
    return [f"{scheme}://{bind}" for bind in binds]


def parse_notification(datagram: bytes) -> dict[str, str]:
    """`KEY=value` lines of one sd_notify datagram."""
    pairs = (line.partition("=") for line in datagram.decode("utf-8", "replace").splitlines())
    return {key: value for key, sep, value in pairs if sep}


@dataclass
class NotifyRelay:
    """What the parent tells systemd, from what its workers tell it.

    `READY=1` goes up once every worker has said it; during a reload (`reload()`), once every
    worker has said it again. Anything else a worker says stays here.
    """

    workers: int
    ready: set[int] = field(default_factory=set)
    announced: bool = False
    reloading: set[int] | None = None

    def reload(self) -> None:
        self.reloading = set(self.ready)

    def exited(self, index: int) -> None:
        self.ready.discard(index)

    def on_message(self, index: int, datagram: bytes) -> list[str]:
        """The notifications to send up for worker `index`'s datagram."""
        if parse_notification(datagram).get("READY") != "1":
            return []
        self.ready.add(index)
        if not self.announced:
            if len(self.ready) < self.workers:
                return []
            self.announced = True
            return ["READY=1"]
        if self.reloading is not None:
            self.reloading.discard(index)
            if not self.reloading:
                self.reloading = None
                return ["READY=1"]
        return []


# --- the parent --------------------------------------------------------------------------------


def resolve_binds(binds: Sequence[str]) -> list[str]:
    """Each bind with port 0 given a concrete port that was free a moment ago: bound, and
    released once every bind has its own port (so no two get the same), before any worker
    starts; the parent holds no socket."""
    resolved = []
    with contextlib.ExitStack() as probes:
        for bind in binds:
            host, port = parse_bind(bind)
            if port == 0:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
                probe.bind((host, 0))
                port = probe.getsockname()[1]
                bind = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            resolved.append(bind)
    return resolved


class Supervisor:
    """Runs, restarts, signals and waits for the workers of one `geniehive serve`."""

    def __init__(self, config: ControlConfig, folder: Path,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.count = config.server.workers
        self.folder = folder
        self.environ = environ
        every = resolve_binds([*config.server.bind, *config.nodes.bind])
        split = len(config.server.bind)
        self.binds = {"server": every[:split], "nodes": every[split:]}
        self.relay = NotifyRelay(self.count)
        self.procs: dict[int, trio.Process] = {}
        self.stopping = trio.Event()
        self.status = 0
        self._changed = trio.Event()

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "geniehive", "serve", "--config", str(self.config.source)]

    def notify_path(self, index: int) -> str:
        return str(self.folder / f"worker-{index}.sock")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    async def run(self) -> int:
        """Start the workers, keep them running until told to stop; the exit status."""
        async with trio.open_nursery() as outer:
            await outer.start(run_watchdog)
            await outer.start(self._watch_signals)
            for index in range(self.count):
                await outer.start(self._read_notifications, index)
            try:
                async with trio.open_nursery() as nursery:
                    await self._start_all(nursery)
            finally:
                for proc in self.procs.values():  # only after a crash of our own
                    if proc.returncode is None:
                        proc.kill()
            outer.cancel_scope.cancel()
        return self.status

    async def _start_all(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._keep_running, 0)
        await self._until(lambda: 0 in self.relay.ready or self.stopping.is_set())
        for index in range(1, self.count):
            nursery.start_soon(self._keep_running, index)
        await self._until(lambda: self.relay.announced or self.stopping.is_set())
        if self.stopping.is_set():
            return
        for url in listening_urls(self.binds["nodes"], self.config.nodes.tls is not None):
            log.info("node endpoints listening on %s", url)
        for url in listening_urls(self.binds["server"], self.config.server.tls is not None):
            log.info("GenieHive listening on %s", url)
        log.info("%d workers ready", self.count)  # READY=1 went up with the last one's

    async def _keep_running(self, index: int) -> None:
        """Worker `index`, started again each time it exits until the parent stops."""
        delay = 0.0
        env = worker_environ(self.environ, index, json.dumps(self.binds), self.notify_path(index))
        while not self.stopping.is_set():
            began = trio.current_time()
            proc = await trio.lowlevel.open_process(
                self.argv(), env=env, process_group=0,  # a terminal's Ctrl-C reaches us alone
            )
            self.procs[index] = proc
            log.info("worker %d started (pid %d)", index, proc.pid)
            if self.stopping.is_set():
                proc.send_signal(signal.SIGTERM)
            returncode = await proc.wait()
            was_ready = index in self.relay.ready
            self.relay.exited(index)
            self._wake()
            if self.stopping.is_set():
                return
            if not self.relay.announced and not was_ready:
                log.error("worker %d (pid %d) exited with %s before it was ready: stopping",
                          index, proc.pid, describe_exit(returncode))
                self.status = returncode if returncode > 0 else 1
                await self._stop(signal.SIGTERM)
                return
            delay = restart_delay(delay, trio.current_time() - began)
            log.warning("worker %d (pid %d) exited with %s; restarting in %g s",
                        index, proc.pid, describe_exit(returncode), delay)
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _stop(self, signum: int) -> None:
        """Tell the workers to stop (a second call: to stop now)."""
        if not self.stopping.is_set():
            self.stopping.set()
            self._wake()
            await notify_stopping()
        self._send(signum, self.procs)

    def _send(self, signum: int, indexes: Iterable[int]) -> None:
        for index in indexes:
            proc = self.procs[index]
            if proc.returncode is None:
                proc.send_signal(signum)

    async def _watch_signals(self, *, task_status: Any) -> None:
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if self.stopping.is_set():
                        continue
                    log.info("received SIGHUP: reloading every worker")
                    if self.relay.announced:
                        self.relay.reload()
                        await notify_reloading()
                    self._send(signum, [i for i in self.procs if i in self.relay.ready])
                elif not self.stopping.is_set():
                    log.info("received %s: stopping the workers gracefully", name)
                    await self._stop(signum)
                else:
                    log.info("second %s: stopping the workers now", name)
                    await self._stop(signum)

    async def _read_notifications(self, index: int, *, task_status: Any) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(self.notify_path(index))
            task_status.started()
            while True:
                datagram = await sock.recv(4096)
                for message in self.relay.on_message(index, datagram):
                    await notify(message)
                self._wake()


async def supervise_workers(config: ControlConfig) -> int:
    """The parent of `config.server.workers` workers; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="geniehive-workers-") as folder:
        return await Supervisor(config, Path(folder)).run()


# --- a worker ----------------------------------------------------------------------------------


async def _watch_parent(parent: int, shutdown: trio.Event) -> None:
    """Set `shutdown` when the process `parent` exits (a pidfd turns readable then)."""
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # not Linux ≥ 5.3, or the parent is gone already
        pidfd = None
    if pidfd is not None:
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    log.warning("the supervising process %d is gone: shutting down", parent)
    shutdown.set()


async def serve_worker(config: ControlConfig, index: int,
                       environ: Mapping[str, str] = os.environ) -> None:
    """Serve as worker `index`: the daemon on the parent's binds, reloading the same way."""
    from geniehive.daemon import serve_control  # the app: only in a worker

    binds = worker_binds(environ)
    shutdown = trio.Event()

    def adopt(gateway: Gateway) -> None:
        gateway.worker = index
        load = gateway.reloader.load
        gateway.reloader.load = lambda current, env: with_binds(load(current, env), binds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_parent, os.getppid(), shutdown)
        await serve_control(with_binds(config, binds), shutdown=shutdown, on_gateway=adopt)
        nursery.cancel_scope.cancel()
