"""Hot reload of the control file: SIGHUP to `geniehive serve`, or `POST /v1/admin/reload`.

    POST   /v1/admin/reload                       admin    re-read the control file, apply it

Rules (docs/deployment.md, "Reloading the configuration"):
- a reload re-reads the file the daemon was started with and the role catalogs it names, and
  checks all of it first: a file with any problem changes nothing; every problem is logged
  with its dotted path and the endpoint answers 400 `invalid_config` listing them;
- it applies the roles, the static `[auth]` keys (a new authenticator, swapped in; named keys
  stay), `[routing]`, `[breaker]`, `[prober]`, `[capacity]`, `[discovery]`, `[responses]`,
  `[nodes]` times and networks, `[local]` labels, `logging.level` and the `[[upstreams]]`:
  an added one is discovered (a managed one started) before it routes, a removed one stops
  being routed to at once, and its managed process is stopped once its requests in flight
  have finished (at most `server.shutdown_grace_s` later); a changed managed one is
  restarted the same way;
- what is read only at start (RESTART_NEEDED: binds, TLS, the registry path, plugins,
  `[tracing]`, ...)
  is not applied: the answer and the log name each such key that changed;
- reloads run one at a time; no request in flight is dropped (it keeps the service and the
  adapter it started with). Under systemd a reload is framed by RELOADING=1 and READY=1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import trio

from geniehive.adapters.loader import check_upstream_adapters
from geniehive.config import ConfigError, ControlConfig, UpstreamConfig, is_loopback_bind
from geniehive.config import load_control as _load_control
from geniehive.discovery import discover_upstream, local_host, local_service_ids, local_services
from geniehive.egress import parse_networks
from geniehive.errors import InvalidRequest
from geniehive.launcher import LaunchError
from geniehive.live import in_use
from geniehive.models import LOCAL_HOST_ID, Service, Snapshot
from geniehive.sdnotify import notify_ready, notify_reloading

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.reload")

# Read once at start: a change is reported, and kept as it was until a restart.
RESTART_NEEDED = (
    "server.bind", "server.tls", "server.max_body_bytes", "server.header_timeout_s",
    "server.body_timeout_s", "server.write_timeout_s", "server.max_connections",
    "server.shutdown_grace_s", "server.workers", "nodes.bind", "nodes.tls", "registry.path",
    "registry.url", "registry.url_env", "registry.benchmark_retention_days",
    "plugins.paths", "plugins.entry_points", "routing.connect_timeout_s", "logging.format",
    "tracing.otlp_endpoint", "tracing.service_name", "tracing.sample_ratio",
)
# How a changed ControlConfig field is named in the answer (else by its own name).
PART_NAMES = {"auth_keys": "auth.keys", "local_labels": "local.labels",
              "role_catalogs": "roles.catalogs"}
DRAIN_POLL_S = 0.1

Loader = Callable[[ControlConfig, Mapping[str, str]], ControlConfig]


class ReloadRejected(InvalidRequest):
    """The reloaded file has problems; nothing was changed. `problems` lists them."""

    code = "invalid_config"

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("the configuration was not reloaded (nothing changed): "
                         + "; ".join(problems))
        self.problems = tuple(problems)

    def error_object(self) -> dict[str, Any]:
        return {**super().error_object(), "problems": list(self.problems)}


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload applied (`changed`) and what changed but waits for a restart."""

    changed: tuple[str, ...]
    restart_needed: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        return {"status": "reloaded", "changed": list(self.changed),
                "restart_needed": list(self.restart_needed)}


# -- what changed (pure) ------------------------------------------------------------------------

def with_value(config: Any, path: str, value: Any) -> Any:
    """`config` with the dotted `path` set to `value` (frozen dataclasses, rebuilt)."""
    head, _, rest = path.partition(".")
    inner = value if not rest else with_value(getattr(config, head), rest, value)
    return replace(config, **{head: inner})


def restart_needed(old: ControlConfig, new: ControlConfig) -> list[str]:
    """The RESTART_NEEDED keys whose value differs between `old` and `new`."""
    return [path for path in RESTART_NEEDED if attrgetter(path)(old) != attrgetter(path)(new)]


def keep_restart_keys(old: ControlConfig, new: ControlConfig) -> ControlConfig:
    """`new` with every RESTART_NEEDED key as in `old`: the config a reload applies."""
    for path in restart_needed(old, new):
        new = with_value(new, path, attrgetter(path)(old))
    return new


def changed_parts(old: ControlConfig, new: ControlConfig) -> list[str]:
    """The parts of the config that differ (`roles`, `auth.keys`, `routing`, `upstreams`...)."""
    return [PART_NAMES.get(f.name, f.name) for f in fields(old)
            if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]


@dataclass(frozen=True, slots=True)
class UpstreamChanges:
    added: tuple[UpstreamConfig, ...]
    removed: tuple[UpstreamConfig, ...]
    changed: tuple[tuple[UpstreamConfig, UpstreamConfig], ...]  # (old, new)


def upstream_changes(old: Sequence[UpstreamConfig],
                     new: Sequence[UpstreamConfig]) -> UpstreamChanges:
    """The upstreams added, removed and changed (same id, another value) by a reload."""
    before = {u.id: u for u in old}
    after = {u.id: u for u in new}
    return UpstreamChanges(
        added=tuple(u for u in new if u.id not in before),
        removed=tuple(u for u in old if u.id not in after),
        changed=tuple((before[u.id], u) for u in new if u.id in before and before[u.id] != u),
    )


def kept_local_services(snapshot: Snapshot, upstreams: Sequence[UpstreamConfig],
                        fresh: set[str]) -> list[Service]:
    """The local services of `upstreams`: a fresh one for each upstream in `fresh` (added or
    changed), the registered one (with what discovery found) for every other."""
    services = []
    for service in local_services(upstreams):
        known = snapshot.services.get(service.service_id)
        keep = service.upstream_id not in fresh and known is not None \
            and known.host_id == LOCAL_HOST_ID
        services.append(known if keep and known is not None else service)
    return services


def service_conflicts(snapshot: Snapshot, upstreams: Sequence[UpstreamConfig]) -> list[str]:
    """Problems: a local service id some node's host already serves."""
    problems = []
    for index, upstream in enumerate(upstreams):
        for service_id in local_service_ids(upstream):
            owner = snapshot.services.get(service_id)
            if owner is not None and owner.host_id != LOCAL_HOST_ID:
                problems.append(f"upstreams[{index}].id: service {service_id!r} is served by "
                                f"host {owner.host_id!r}")
    return problems


def open_mode_problem(config: ControlConfig, named_keys: int) -> list[str]:
    """The refusal of open mode (no key at all) when a bind is not loopback."""
    if config.auth_keys or named_keys:
        return []
    exposed = [b for b in (*config.server.bind, *config.nodes.bind) if not is_loopback_bind(b)]
    if not exposed:
        return []
    return [f"auth.keys: no API key left, and open mode is refused on a non-loopback address: "
            f"{', '.join(exposed)}"]


# -- the reloader -------------------------------------------------------------------------------

def load_control(current: ControlConfig, environ: Mapping[str, str]) -> ControlConfig:
    """The control file the daemon started with, read again; raises ConfigError."""
    return _load_control(current.source, environ)


class Reloader:
    """Re-reads and applies the control file; one per gateway, reloads one at a time.

    `environ` holds the secrets `*_env` keys name (the process environment by default);
    `load` reads the file (a test may replace it).
    """

    def __init__(self, gateway: Gateway, environ: Mapping[str, str] | None = None,
                 load: Loader = load_control) -> None:
        self.gw = gateway
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.load = load
        self.lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def run(self, handle_signals: bool = True, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The reloader's task: reloads on SIGHUP (with `handle_signals`), and runs what a
        reload leaves to finish later (stopping removed upstreams once drained)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                if not handle_signals:
                    task_status.started()
                    await trio.sleep_forever()
                with trio.open_signal_receiver(signal.SIGHUP) as signals:
                    task_status.started()
                    async for _ in signals:
                        log.info("received SIGHUP: reloading %s", self.gw.config.source)
                        with contextlib.suppress(ReloadRejected):  # logged; nothing changed
                            await self.reload()
            finally:
                self._nursery = None

    async def reload(self) -> ReloadResult:
        """Read the file again and apply it. Raises ReloadRejected (nothing changed)."""
        async with self.lock:
            await notify_reloading()
            try:
                return await self._reload()
            finally:
                await notify_ready()

    async def _reload(self) -> ReloadResult:
        gw = self.gw
        old = gw.config
        try:
            new = await trio.to_thread.run_sync(self.load, old, self.environ)
        except ConfigError as exc:
            raise self._rejected(exc.problems) from None
        restart = restart_needed(old, new)
        config = keep_restart_keys(old, new)
        self._check(config)
        changed = changed_parts(old, config)
        await self._apply(old, config)
        for path in restart:
            log.warning("reload: %s changed but is read only at start: restart to apply it "
                        "(not applied)", path)
        log.info("reloaded %s: changed %s", config.source, ", ".join(changed) or "nothing")
        return ReloadResult(tuple(changed), tuple(restart))

    def _rejected(self, problems: Sequence[str]) -> ReloadRejected:
        for problem in problems:
            log.error("reload refused, nothing changed: %s: %s", self.gw.config.source, problem)
        return ReloadRejected(problems)

    def _check(self, config: ControlConfig) -> None:
        """What the file cannot say of itself: known adapters, free service ids, keys."""
        gw = self.gw
        problems: list[str] = []
        try:
            check_upstream_adapters(config.upstreams, gw.specs)
        except ConfigError as exc:
            problems.extend(exc.problems)
        problems += service_conflicts(gw.snapshot, config.upstreams)
        problems += open_mode_problem(config, len(gw.auth.named))
        if problems:
            raise self._rejected(problems)

    async def _apply(self, old: ControlConfig, config: ControlConfig) -> None:
        from geniehive.gateway import static_authenticator

        gw = self.gw
        ups = upstream_changes(old.upstreams, config.upstreams)
        if config.roles != old.roles:
            await gw.registry.replace_roles(config.roles)
        fresh = {u.id for u in ups.added} | {new.id for _, new in ups.changed}
        if ups.added or ups.removed or ups.changed or config.local_labels != old.local_labels:
            await gw.registry.sync_local(
                local_host(config.local_labels),
                kept_local_services(gw.snapshot, config.upstreams, fresh))
        if config.auth_keys != old.auth_keys:
            auth = static_authenticator(config)
            auth.set_named(gw.auth.named.values())
            gw.auth = gw.gate.auth = auth
        apply_settings(gw, config)
        gw.config = config
        later: list[Callable[[], Awaitable[None]]] = []
        later += self._managed(config, ups)
        now = [u for u in ups.added if u.launch is None]
        now += [new for _, new in ups.changed if new.launch is None]
        async with trio.open_nursery() as nursery:  # routable once this answers
            for upstream in now:
                nursery.start_soon(discover_upstream, gw, upstream)
        for task in later:
            if self._nursery is not None:
                self._nursery.start_soon(task)
            else:
                await task()

    def _managed(self, config: ControlConfig,
                 ups: UpstreamChanges) -> list[Callable[[], Awaitable[None]]]:
        """The launcher's share: new managed upstreams added now; removed and changed ones
        stopped (and changed ones started again) once their requests have finished."""
        gw = self.gw
        launcher = gw.launcher
        index = {u.id: i for i, u in enumerate(config.upstreams)}
        later: list[Callable[[], Awaitable[None]]] = []
        for upstream in ups.removed:
            if launcher.is_managed(upstream.id):
                later.append(partial(self._retire, upstream, None))
        for before, after in ups.changed:
            if launcher.is_managed(before.id):
                later.append(partial(self._retire, before, (index[after.id], after)))
            elif after.launch is not None:
                self._adopt(index[after.id], after)
                later.append(partial(self._discover_when_running, after))
        launcher.renumber(config.upstreams)
        for upstream in ups.added:
            if upstream.launch is not None:
                self._adopt(index[upstream.id], upstream)
                later.append(partial(self._discover_when_running, upstream))
        return later

    def _adopt(self, index: int, upstream: UpstreamConfig) -> None:
        """Hand a managed upstream to the launcher; an on_demand one sleeps until asked."""
        self.gw.launcher.add(index, upstream)
        asleep = self.gw.launcher.asleep(upstream.id)
        for service_id in local_service_ids(upstream):
            self.gw.live.get(service_id).set_asleep(asleep)

    async def _retire(self, upstream: UpstreamConfig,
                      successor: tuple[int, UpstreamConfig] | None) -> None:
        """Stop a removed or changed managed upstream once its requests have finished (at
        most `server.shutdown_grace_s`), then start its successor, if any."""
        await wait_idle(self.gw, upstream, self.gw.config.server.shutdown_grace_s)
        log.info("managed upstream %s: %s by a reload", upstream.id,
                 "restarted" if successor else "stopped")
        await self.gw.launcher.remove(upstream.id)
        if successor is not None:
            self._adopt(*successor)
            await self._discover_when_running(successor[1])

    async def _discover_when_running(self, upstream: UpstreamConfig) -> None:
        """Discover a managed boot upstream once it is ready (on_demand ones when asked)."""
        launcher = self.gw.launcher
        if launcher.asleep(upstream.id) or not launcher.is_managed(upstream.id):
            return
        try:
            await launcher.ensure_running(upstream.id)
        except LaunchError as exc:
            log.error("%s", exc)
            return
        await discover_upstream(self.gw, upstream)


def apply_settings(gw: Gateway, config: ControlConfig) -> None:
    """Hand the reloaded settings to the owners that copied them at construction."""
    gw.live.open_s, gw.live.failures = config.breaker.open_s, config.breaker.failures
    capacity, admission = config.capacity, gw.admission
    admission.max_queue = capacity.max_queue
    admission.queue_timeout_s = capacity.queue_timeout_s
    admission.aging_s = capacity.aging_s
    gw.affinity.resize(config.routing.affinity_ttl_s, config.routing.affinity_max_sessions)
    gw.responses.retention_s = config.responses.retention_s
    gw.upstream_networks = parse_networks(config.nodes.allowed_upstream_networks)
    logging.getLogger().setLevel(config.logging.level.upper())


async def wait_idle(gw: Gateway, upstream: UpstreamConfig, limit_s: float) -> None:
    """Wait (at most `limit_s`) until no request uses a service of `upstream`."""
    def busy() -> bool:
        admission = gw.admission
        return any(in_use(gw.live.services.get(sid), admission.busy.get(sid, 0),
                          admission.queued.get(sid, 0)) for sid in local_service_ids(upstream))

    with trio.move_on_after(limit_s):
        while True:  # polled: the counters have no event to wait on
            if not busy():
                return
            await trio.sleep(DRAIN_POLL_S)


def register_reload_route(app: QuartTrio, gateway: Gateway) -> None:
    from quart import jsonify, request

    @app.post("/v1/admin/reload")
    async def admin_reload() -> Any:
        gateway.auth.authorize(request.headers, "admin")
        result = await gateway.reloader.reload()
        return jsonify(result.body())
