"""The task tree of `geniehive serve`.

    serve_control(config)
      registry      opened, migrated, snapshot built           (started: snapshot ready)
      plugins       loaded and validated; a bad one aborts start-up naming its file
      launcher      managed upstream processes (§11), ready when their probe passes
      heartbeats    expires hosts whose heartbeats stopped; forgets them later
      discovery     started after its first pass over every upstream
      prober        started after its first pass
      proxy         hypercorn serving the ASGI app on every bind
      reloader      SIGHUP and POST /v1/admin/reload re-read the control file (reload.py)

Rule: every long-lived task is started with `nursery.start` and reports started only once it
is ready; `/readyz` answers 200 after the last one. The first SIGTERM/SIGINT stops accepting
and lets in-flight requests and streams finish for `server.shutdown_grace_s`; a second stops
at once.
"""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HyperConfig

from geniehive import egress, ws
from geniehive.adapters.loader import PluginError, check_upstream_adapters, load_adapters
from geniehive.api_keys import load_named_keys
from geniehive.api_nodes import apply_edge_limits, base_hypercorn_config, run_heartbeat_listener
from geniehive.app import create_asgi
from geniehive.config import ConfigError, ControlConfig, is_loopback_bind
from geniehive.discovery import local_host, local_services, run_discovery
from geniehive.edge import serve_http
from geniehive.events import run_events
from geniehive.gateway import Gateway, new_instance_id
from geniehive.pool import UpstreamPool
from geniehive.prober import run_prober
from geniehive.registry import open_registry
from geniehive.registry_follow import run_follower
from geniehive.sdnotify import notify_ready, notify_stopping, run_watchdog
from geniehive.tracing import start_tracing, stop_tracing

log = logging.getLogger("geniehive.daemon")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft


async def run_managed_upstreams(gateway: Gateway, *, task_status: Any) -> None:
    """Managed upstream processes: the boot ones started before discovery, ready once
    probed; on_demand ones started when `gateway.launcher.ensure_running` asks."""
    # A LaunchError stops start-up like a ConfigError: both are configuration StartupErrors.
    await gateway.launcher.run(task_status=task_status)


def refuse_open_mode_off_loopback(gateway: Gateway) -> None:
    """Open mode (no key at all, static or named) is only allowed when every bind is loopback.

    Raises ConfigError naming the exposed binds.
    """
    config = gateway.config
    if not gateway.auth.open_mode:
        return
    exposed = [b for b in (*config.server.bind, *config.nodes.bind) if not is_loopback_bind(b)]
    if exposed:
        raise ConfigError([
            f"refusing to start in open mode (no API key configured) on a non-loopback "
            f"address: {', '.join(exposed)}. Configure at least one key, or bind to 127.0.0.1."
        ])


def make_client(config: ControlConfig, instance_id: str) -> httpx.AsyncClient:
    """The upstream client: long reads allowed (timeouts are ours), a pool sized for streams.

    Every request it sends (adapters, probes, discovery) carries the hop header with this
    gateway's `instance_id`, so one that reaches the gateway itself is refused.
    """
    routing = config.routing
    return httpx.AsyncClient(
        headers={egress.HOP_HEADER: instance_id},
        timeout=httpx.Timeout(
            connect=routing.connect_timeout_s, read=None, write=60.0,
            pool=routing.first_byte_timeout_s,
        ),
        limits=httpx.Limits(max_connections=4096, max_keepalive_connections=512,
                            keepalive_expiry=30.0),
        follow_redirects=False,
        trust_env=False,
    )


def hypercorn_config(binds: Sequence[str], config: ControlConfig) -> HyperConfig:
    """Hypercorn settings for the client port: the shared ones plus websockets."""
    hc = base_hypercorn_config(binds, config.server.tls, config.server.shutdown_grace_s)
    hc.websocket_max_message_size = ws.HYPERCORN_MAX_MESSAGE_BYTES
    hc.websocket_ping_interval = ws.PING_INTERVAL_S
    hc.backlog = 1024
    return apply_edge_limits(hc, config.server)


async def serve_proxy(
    asgi: Any, hc: HyperConfig, shutdown: trio.Event, *, task_status: Any
) -> None:
    await serve_http(asgi, hc, shutdown_trigger=shutdown.wait, task_status=task_status)


async def watch_signals(
    shutdown: trio.Event, cancel: trio.CancelScope, *, task_status: Any
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            if not shutdown.is_set():
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                shutdown.set()
            else:
                log.info("second signal: stopping now")
                cancel.cancel()
                return


async def serve_control(
    config: ControlConfig,
    *,
    shutdown: trio.Event | None = None,
    handle_signals: bool = True,
    on_gateway: Callable[[Gateway], None] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the control daemon until shut down; reports started with the bound URLs.

    `on_gateway`, when given, is called with the gateway once it exists (for tests and
    embedding). Raises ConfigError for an unknown adapter or a broken plugin, LaunchError for a
    managed upstream not ready in time, RegistryError for a registry it cannot open.
    """
    shutdown = trio.Event() if shutdown is None else shutdown
    raise_open_files_limit()
    instance_id = new_instance_id()
    async with open_registry(config.registry, origin=instance_id) as registry:
        try:
            specs = load_adapters(config.plugins.paths, config.plugins.entry_points)
        except PluginError as exc:
            raise ConfigError([f"plugins: {exc}"]) from None
        for kind, spec in specs.items():
            log.info("plugin loaded kind=%s operations=%s", kind, ",".join(sorted(spec.operations)))
        check_upstream_adapters(config.upstreams, specs)
        await registry.sync_local(local_host(config.local_labels),
                                  local_services(config.upstreams))
        await registry.replace_roles(config.roles)
        async with make_client(config, instance_id) as client:
            pool = UpstreamPool(connect_timeout_s=config.routing.connect_timeout_s)
            gateway = Gateway(config, registry, specs, client, instance_id=instance_id,
                              pool=pool)
            # Named keys count as keys from the first request on, on every port.
            load_named_keys(gateway)
            # and a key made or disabled through another replica from the moment it arrives.
            registry.on_keys_refreshed = lambda: load_named_keys(gateway)
            gateway.tracing = start_tracing(config.tracing)
            refuse_open_mode_off_loopback(gateway)
            gateway.started.update({"registry", "plugins"})
            if on_gateway is not None:
                on_gateway(gateway)
            try:
                await _run_tree(gateway, shutdown, handle_signals, task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()
                    await stop_tracing(gateway.tracing)  # after the drain: every span ended


async def _run_tree(
    gateway: Gateway, shutdown: trio.Event, handle_signals: bool, task_status: Any
) -> None:
    config = gateway.config
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog)
        # Before anything once-per-hive starts: whether this process leads.
        await nursery.start(run_follower, gateway.registry, gateway.leadership)
        if handle_signals:
            await nursery.start(watch_signals, shutdown, nursery.cancel_scope)
        await nursery.start(run_managed_upstreams, gateway)
        await nursery.start(run_heartbeat_listener, gateway)
        gateway.started.update({"launcher", "heartbeats"})
        await nursery.start(run_discovery, gateway)
        await nursery.start(run_prober, gateway)
        await nursery.start(run_events, gateway)
        asgi = create_asgi(gateway)
        binds = await nursery.start(
            serve_proxy, asgi, hypercorn_config(config.server.bind, config), shutdown
        )
        gateway.listening_on(binds)
        gateway.started.add("proxy")
        gateway.ready = True
        await nursery.start(gateway.reloader.run, handle_signals)  # SIGHUP, admin/reload
        # With several workers the supervising parent says it, once (geniehive/workers.py).
        who = "GenieHive" if gateway.worker is None else f"worker {gateway.worker}"
        for url in binds:
            log.info("%s listening on %s", who, url)
        task_status.started(binds)
        await notify_ready()
        await shutdown.wait()
        gateway.ready = False
        gateway.node_orders.close()  # the nodes' long polls must not hold up the drain
        gateway.events.close()  # nor the consoles' event streams
        await notify_stopping()
        # hypercorn drains in-flight requests for shutdown_grace_s, then returns; the
        # other tasks are cancelled once it has.
        await _wait_proxy_drained(nursery, gateway)


async def _wait_proxy_drained(nursery: trio.Nursery, gateway: Gateway) -> None:
    """Let in-flight requests and streams finish (up to the grace), then stop everything.

    Idle keep-alive connections are not waited for: hypercorn would otherwise hold some of
    them open for the whole grace period.
    """
    with trio.move_on_after(gateway.config.server.shutdown_grace_s):
        await gateway.wait_drained()
    if gateway.active_requests > 0:
        log.info("grace period over: cutting %d request(s) still running (streams end "
                 "with a shutting_down event)", gateway.active_requests)
    nursery.cancel_scope.cancel()

