"""The node agent (`geniehive node`): measure the local upstreams, register,
heartbeat.

Each step discovers every upstream afresh through its adapter (discover + observe, and a
probe for `state.health`, each bounded by the upstream's `timeout_s`), reads the GPUs, then
registers (first time, or after the control plane answered 404 `unknown_host`) or
heartbeats; a heartbeat always carries the services, an empty list meaning none now. A
configured `max_in_flight` is reported as the services' slot count, whatever the upstream says,
and a configured `max_loaded_models` as their loaded-model limit.

Rule: the agent never stops for the control plane. While it is unreachable (or answers 5xx)
the agent backs off exponentially with jitter up to 60 s; a refused key (401/403) or a
rejected payload (400/409) is retried on the same slow backoff. Each of these is logged once
per change of state, never once per attempt. `run_node` reports started after the first
attempt, successful or not, so a node may start before its control plane.

With several control plane URLs (`[control] urls`) the agent uses one at a time, the first to
begin with (geniehive/node/failover.py). An exchange the one in use leaves unreachable is tried
at once on the next URL, round the list, each move logged once with both URLs; the control
plane there answers the first heartbeat 404 `unknown_host` if it does not know the host, and
the agent registers with it as above. Only when every URL failed in one step does the backoff
apply. The orders long poll moves the same way (without trying again at once).

Managed upstreams (`launch`) belong to the agent's `Launcher`: boot ones are up before the
first look, `on_demand` ones stay cold until an order (geniehive/node/orders.py) starts
them. Each managed service is reported with its `managed` state; one not running is not
asked anything: its configured assets are reported, not loaded. Every register or heartbeat
answer names the upstreams the control plane is using (`active_upstreams`); each managed one
listed counts as active for the idle reaper, so one serving requests is never reaped as long
as heartbeats come more often than its `launch.idle_ttl_s`.
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import httpx
import trio

from geniehive.adapters import Adapter, ProbeResult, UpstreamContext, UpstreamError
from geniehive.adapters.loader import (
    PluginError,
    build_adapter,
    check_upstream_adapters,
    load_adapters,
)
from geniehive.assets import (
    configured_models,
    configured_slots,
    fill_observed,
    forget_loaded,
    merge_assets,
)
from geniehive.config import ConfigError, ControlLink, NodeConfig, UpstreamConfig
from geniehive.launcher import RUNNING, STOPPING, Launcher
from geniehive.models import Asset, Host, Observed, Service
from geniehive.node import gpu, inventory
from geniehive.node.failover import ControlUrls
from geniehive.node.orders import run_orders
from geniehive.nodewire import parse_active_upstreams, render_heartbeat, render_register
from geniehive.probing import bounded_probe

log = logging.getLogger("geniehive.node")

MAX_DELAY_S = 60.0
FIRST_DELAY_S = 1.0
GPU_TIMEOUT_S = 5.0

# What one POST to the control plane came to.
OK, UNKNOWN_HOST, REFUSED, REJECTED, UNREACHABLE = (
    "ok", "unknown_host", "refused", "rejected", "unreachable",
)


def next_delay(attempt: int, rng: random.Random) -> float:
    """Seconds to wait after the `attempt`-th failure in a row (1, 2, ...): exponential from
    1 s, capped at 60 s, with jitter in the upper half so nodes spread out but never spin."""
    ceiling = min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** min(max(attempt, 1) - 1, 16))
    return ceiling / 2 + rng.random() * ceiling / 2


def not_running_health(managed: str) -> str:
    """The health reported for a managed upstream that is not running (never asked).

    Cold and starting are "unknown", which the routing gates let through: its assets say
    not loaded, so placement sees it cold, and the control plane may order it started for a
    request that picks it. Stopping is "unhealthy": it is going away.
    """
    return "unhealthy" if managed == STOPPING else "unknown"


@dataclass(frozen=True, slots=True)
class Inventory:
    """One fresh look at the node."""

    services: list[Service]
    metrics: dict[str, Any]
    gpus: list[dict[str, Any]] | None


def control_client(link: ControlLink, interval_s: float = 5.0) -> httpx.AsyncClient:
    """The client for the control plane, presenting our certificate when mTLS is set.

    It keeps its connection from one heartbeat to the next (`keepalive_expiry`): httpx's
    default of 5 s is the heartbeat interval, so every beat would open a connection (and,
    with mTLS, shake hands) anew. The control plane keeps an idle connection 75 s
    (geniehive/api_nodes.py); the agent lets go well before that."""
    verify: ssl.SSLContext | bool = True
    if link.tls is not None:
        cafile = str(link.tls.ca_certs) if link.tls.ca_certs is not None else None
        verify = ssl.create_default_context(cafile=cafile)
        verify.load_cert_chain(str(link.tls.certfile), str(link.tls.keyfile))
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0), verify=verify, trust_env=False,
        limits=httpx.Limits(keepalive_expiry=keepalive_expiry(interval_s)),
    )


def keepalive_expiry(interval_s: float) -> float:
    """How long the agent keeps an idle connection to the control plane: past two
    heartbeat intervals, and never as long as the control plane's 75 s."""
    return min(2 * interval_s + 5.0, 60.0)


# A kept connection the control plane (or a balancer in front) closed just as a request went
# out: sent once more on a new connection before the URL counts as unreachable. Heartbeats
# and registrations say the same thing twice without harm.
CLOSED_UNDER_US = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def upstream_client() -> httpx.AsyncClient:
    # Each adapter call passes the upstream's own timeout_s; this is only the fallback.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        trust_env=False,
    )


class NodeAgent:
    """The agent's state between steps: its adapters, last-known assets and link state."""

    def __init__(self, config: NodeConfig, specs: Any, upstreams: httpx.AsyncClient,
                 control: httpx.AsyncClient, rng: random.Random) -> None:
        self.config = config
        self.control = control
        self.rng = rng
        self.adapters: dict[str, Adapter] = {
            u.id: build_adapter(specs, u.adapter, UpstreamContext(
                upstream_id=u.id, base_url=u.base_url, client=upstreams, timeout_s=u.timeout_s,
                configured_assets=u.assets, api_key=u.api_key, keep_alive=u.keep_alive,
                dialect=u.dialect,
            ))
            for u in config.upstreams
        }
        self.last_assets: dict[str, tuple[Asset, ...]] = {}
        # The managed upstreams (`launch`); `run_node` runs it, orders start and stop them.
        self.launcher = Launcher(config.upstreams, self.probe_upstream)
        self.wake = trio.Event()  # set: send the next report now, not after the interval
        self.health: dict[str, str] = {}
        self.nvidia_smi = gpu.find_nvidia_smi()
        self.registered = False
        self.failures = 0
        self.reachable: bool | None = None
        self.problem: str | None = None  # the refusal or rejection last logged
        self.links = ControlUrls(config.control.urls)  # the control plane URL in use
        self.poll_scope: trio.CancelScope | None = None  # the orders poll in flight, if any

    # -- looking at the node -----------------------------------------------------------------

    async def discover(self, upstream: UpstreamConfig) -> list[Service]:
        """The services of one upstream now: assets, load, health and managed state.

        A managed upstream whose process is not running (cold, starting, stopping) is not
        asked: its configured (else last known) assets are reported not loaded, with the
        health `not_running_health` gives it (cold and starting stay routable, so a request
        may pick one and have it started).
        """
        managed = self.launcher.managed_state(upstream.id)
        if managed is not None and managed != RUNNING:
            assets = forget_loaded(self.last_assets.get(upstream.id, upstream.assets))
            services = inventory.upstream_services(
                self.config.node.host_id, self.config.node.address, upstream, assets,
                configured_slots(Observed(), upstream.max_in_flight),
                not_running_health(managed),
            )
            return [replace(s, managed=managed) for s in services]
        services = await self._discover_running(upstream)
        return services if managed is None else [replace(s, managed=managed) for s in services]

    async def _discover_running(self, upstream: UpstreamConfig) -> list[Service]:
        adapter = self.adapters[upstream.id]
        discovered: list[Asset] | None = None
        observed = None
        with trio.move_on_after(upstream.timeout_s):
            try:
                discovered = await adapter.discover()
                observed = await adapter.observe()
            except (httpx.HTTPError, UpstreamError) as exc:
                log.debug("discovery of %s failed: %s", upstream.id, exc or type(exc).__name__)
            except Exception:  # an adapter bug must not stop this host's heartbeats
                log.exception("discovery of %s failed unexpectedly", upstream.id)
        if discovered is not None:
            assets = merge_assets(upstream.assets, discovered)
            self.last_assets[upstream.id] = assets
        else:
            assets = forget_loaded(self.last_assets.get(upstream.id, upstream.assets))
        health = await self.probe(upstream)
        load = configured_slots(fill_observed(observed, discovered), upstream.max_in_flight)
        load = configured_models(load, upstream.max_loaded_models)
        return inventory.upstream_services(
            self.config.node.host_id, self.config.node.address, upstream, assets, load, health,
        )

    async def probe_upstream(self, upstream: UpstreamConfig) -> ProbeResult:
        return await self.adapters[upstream.id].probe()

    async def probe(self, upstream: UpstreamConfig) -> str:
        result = await bounded_probe(
            partial(self.probe_upstream, upstream), upstream.timeout_s, upstream.id
        )
        ok, reason = result.ok, result.reason
        health = "healthy" if ok else "unhealthy"
        if self.health.get(upstream.id) != health:
            log.info("upstream %s %s (%s)", upstream.id, health, reason)
            self.health[upstream.id] = health
        return health

    async def look(self) -> Inventory:
        """Discover every upstream and read the GPUs, all at once."""
        found: dict[str, list[Service]] = {}
        gpus: list[list[dict[str, Any]] | None] = [None]

        async def one(upstream: UpstreamConfig) -> None:
            found[upstream.id] = await self.discover(upstream)

        async def read_gpus() -> None:
            gpus[0] = await gpu.read_gpus(self.nvidia_smi, GPU_TIMEOUT_S)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_gpus)
            for upstream in self.config.upstreams:
                nursery.start_soon(one, upstream)
        services = [s for u in self.config.upstreams for s in found[u.id]]
        metrics: dict[str, Any] = {}
        if gpus[0] is not None:
            metrics = {**gpu.summarize(gpus[0]), "gpus": gpus[0]}
        return Inventory(services, metrics, gpus[0])

    async def host(self, look: Inventory) -> Host:
        node = self.config.node
        models = await trio.to_thread.run_sync(inventory.scan_models, self.config.model_roots)
        resources: dict[str, Any] = {}
        if look.gpus is not None:
            resources = {
                **{k: v for k, v in gpu.summarize(look.gpus).items() if k != "vram_used_bytes"
                   and k != "gpu_utilization_pct"},
                "gpus": [{k: g[k] for k in ("index", "name", "memory_total_bytes")}
                         for g in look.gpus],
            }
        capabilities = {
            "discovered_models": models,
            "adapters": sorted({u.adapter for u in self.config.upstreams}),
            "operations": sorted({s.operation for s in look.services}),
        }
        return Host(host_id=node.host_id, address=node.address, display_name=node.display_name,
                    labels=node.labels, capabilities=capabilities, resources=resources)

    # -- talking to the control plane --------------------------------------------------------

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[str, str]:
        """(outcome, detail) of one POST to the control plane."""
        headers = {}
        if self.config.control.node_key:
            headers["X-GenieHive-Node-Key"] = self.config.control.node_key
        url = self.links.current + path
        try:
            try:
                response = await self.control.post(url, json=payload, headers=headers)
            except CLOSED_UNDER_US:
                response = await self.control.post(url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            return UNREACHABLE, str(exc) or type(exc).__name__
        status = response.status_code
        if status == 200:
            self.keep_active(_json_or_none(response))
            return OK, ""
        error = _error_object(response)
        detail = f"HTTP {status}: {error.get('message') or response.reason_phrase}"
        if status == 404 and error.get("code") == "unknown_host":
            return UNKNOWN_HOST, detail
        if status in (401, 403):
            return REFUSED, detail
        if status >= 500 or status == 429:
            return UNREACHABLE, detail
        return REJECTED, detail

    def keep_active(self, answer: Any) -> None:
        """Count each managed upstream the control plane says it is using (`active_upstreams`
        of a register or heartbeat answer) as active now, so the idle reaper leaves it alone.
        Ids this agent does not manage are ignored; a missing or malformed field means none."""
        for upstream_id in parse_active_upstreams(answer):
            if self.launcher.is_managed(upstream_id):
                self.launcher.touch(upstream_id)

    async def register(self, look: Inventory) -> tuple[str, str]:
        host = await self.host(look)
        outcome = await self.post("/v1/nodes/register", render_register(host, look.services))
        if outcome[0] == OK:
            log.info("registered with %s as %s (%d services)", self.links.current,
                     host.host_id, len(look.services))
            self.registered = True
        return outcome

    async def heartbeat(self, look: Inventory) -> tuple[str, str]:
        payload = render_heartbeat(self.config.node.host_id, look.metrics, look.services)
        outcome = await self.post("/v1/nodes/heartbeat", payload)
        if outcome[0] == UNKNOWN_HOST:
            # The control plane forgot us (restart with a fresh registry, or an operator):
            # register at once, then resend the heartbeat.
            log.info("control plane does not know this host: registering again")
            self.registered = False
            outcome = await self.register(look)
            if outcome[0] == OK:
                outcome = await self.post("/v1/nodes/heartbeat", payload)
        return outcome

    async def step(self) -> float:
        """One look and one exchange; returns the seconds to wait before the next."""
        look = await self.look()
        for _ in self.links.urls:  # each URL at most once: a move retries at once
            url = self.links.current
            outcome, detail = await (
                self.heartbeat(look) if self.registered else self.register(look)
            )
            if outcome != UNREACHABLE or self.move_from(url, detail) is None:
                break
        return self.settle(outcome, detail)

    def move_from(self, failed: str, detail: str) -> str | None:
        """Move on from the control plane URL `failed` (unreachable: `detail`) to the next
        one; the new URL, or None when there is none or another task moved already.

        The move is logged as a warning, unless every URL was already unreachable at the last
        step (then the backoff's own warning has said so: debug only). An orders poll still
        waiting on the old URL is cancelled, so it asks the new one.
        """
        new = self.links.move_from(failed)
        if new is None:
            return None
        level = logging.DEBUG if self.reachable is False else logging.WARNING
        log.log(level, "control plane %s unreachable (%s); moving to %s", failed, detail, new)
        if self.poll_scope is not None:
            self.poll_scope.cancel()
        return new

    def settle(self, outcome: str, detail: str) -> float:
        """Note how the exchange went (logging changes only); the delay until the next."""
        reachable = outcome != UNREACHABLE
        if reachable != self.reachable:
            if reachable:
                log.info("control plane %s reachable", self.links.current)
            else:
                log.warning("control plane %s unreachable (%s); retrying with backoff",
                            ", ".join(self.links.urls), detail)
            self.reachable = reachable
        problem = detail if outcome in (REFUSED, REJECTED) else None
        if problem is not None and problem != self.problem:
            if outcome == REFUSED:
                log.error("control plane refused this node's key (%s): check "
                          "control.node_key_env and the key's 'node' scope", detail)
            else:
                log.error("control plane rejected this node's report (%s)", detail)
        self.problem = problem
        if outcome == OK:
            self.failures = 0
            return self.config.heartbeat_interval_s
        self.failures += 1
        return next_delay(self.failures, self.rng)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def load_specs(config: NodeConfig) -> Any:
    """The adapters (built-in plugins and entry points), checked against the upstreams.

    Raises ConfigError naming the upstream or the plugin.
    """
    try:
        specs = load_adapters()
    except PluginError as exc:
        raise ConfigError([f"plugins: {exc}"]) from None
    check_upstream_adapters(config.upstreams, specs)
    return specs


async def run_node(
    config: NodeConfig,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    rng: random.Random | None = None,
) -> None:
    """Run the node agent until cancelled; reports started after its first attempt.

    Managed upstreams (`launch`) are started first and stopped on cancellation.
    Raises ConfigError (unknown adapter, bad plugin) or LaunchError before starting.
    """
    specs = load_specs(config)
    control_link = control_client(config.control, config.heartbeat_interval_s)
    async with upstream_client() as upstreams, control_link as control, \
            trio.open_nursery() as nursery:
        agent = NodeAgent(config, specs, upstreams, control, rng or random.Random())
        # Boot managed upstreams are up before the first discovery; on_demand ones wait.
        await nursery.start(agent.launcher.run)
        delay = await _guarded_step(agent)
        if any(u.launch is not None for u in config.upstreams):
            nursery.start_soon(run_orders, agent)
        task_status.started()
        while True:
            with trio.move_on_after(delay):
                await agent.wake.wait()
            agent.wake = trio.Event()
            delay = await _guarded_step(agent)


async def _guarded_step(agent: NodeAgent) -> float:
    # A bug in one step must not stop the agent (one task raising would cancel its
    # siblings): log it and back off.
    try:
        return await agent.step()
    except Exception:
        agent.failures += 1
        delay = next_delay(agent.failures, agent.rng)
        log.exception("node step failed; retrying in %.0f s", delay)
        return delay
