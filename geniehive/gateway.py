"""The gateway's shared state: config, registry snapshot, adapters, live counters, auth.

Rule: the request path reads `gateway.snapshot` (an immutable registry snapshot) and the live
counters; it never waits on SQLite. Adapters are built once per (service, base URL, kind)
and reused until the service changes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import trio

from geniehive import egress, routing
from geniehive.adapters import Adapter, AdapterSpec, ProbeResult, UpstreamContext
from geniehive.adapters.loader import build_adapter
from geniehive.affinity import Affinity
from geniehive.auth import Authenticator
from geniehive.capacity import Admission, KeyRates
from geniehive.config import ControlConfig, UpstreamConfig, parse_bind
from geniehive.demand import Demand
from geniehive.discovery import local_service_ids
from geniehive.events import ErrorLog, EventHub
from geniehive.exchange import Transport
from geniehive.gate import KeyGate
from geniehive.launcher import Launcher
from geniehive.live import LiveState, RuntimeView, in_use
from geniehive.metrics import GatewayMetrics
from geniehive.models import LOCAL_HOST_ID, Policy, Service, Snapshot
from geniehive.nodewire import LastServices
from geniehive.orders import NodeOrders
from geniehive.registry import Registry
from geniehive.registry_follow import Leadership
from geniehive.registry_responses import ResponseStore
from geniehive.reload import Reloader

if TYPE_CHECKING:
    from geniehive.traced import Tracing


def new_instance_id() -> str:
    """A random id for this gateway process, carried in the hop header (docs/architecture.md)."""
    return secrets.token_hex(8)


def static_authenticator(config: ControlConfig) -> Authenticator:
    """An authenticator with the config's static `[auth]` keys (named keys come from the
    registry: api_keys.load_named_keys)."""
    return Authenticator(
        ((k.name, k.key, k.scopes, k.models, k.hosts) for k in config.auth_keys),
        {k.name: k.limits for k in config.auth_keys},
    )


class Gateway:
    def __init__(
        self,
        config: ControlConfig,
        registry: Registry,
        specs: Mapping[str, AdapterSpec],
        client: httpx.AsyncClient,
        monotonic: Callable[[], float] = trio.current_time,
        instance_id: str | None = None,
        pool: Transport | None = None,
    ) -> None:
        self.config = config
        # The trace exporter (geniehive/tracing.py), set by the daemon; None: tracing is off.
        self.tracing: Tracing | None = None
        self.hops = egress.HopGuard(instance_id or new_instance_id())
        self.upstream_networks = egress.parse_networks(config.nodes.allowed_upstream_networks)
        # Where this gateway listens: the configured binds, then the bound ones as each server
        # starts (a port-0 bind is known only then).
        self.own_binds: list[egress.Bind] = [
            parse_bind(b) for b in (*config.server.bind, *config.nodes.bind)
        ]
        self.registry = registry
        # The Responses API's stored answers, in the registry's database, read by id.
        self.responses = ResponseStore(registry, config.responses.retention_s)
        self.specs = specs
        # The node wire's adapter names and their operations (fixed for the process), and
        # what each node host's last heartbeat sent as its services (geniehive/api_nodes.py).
        self.known_adapters = {kind: frozenset(spec.operations) for kind, spec in specs.items()}
        self.last_services: dict[str, LastServices] = {}
        self.client = client  # discovery, probes and adapters (httpx)
        # The proxy path's upstream connections (a pool.UpstreamPool when serving); the relay
        # sends through it. Closing it is the owner's (the daemon's) business.
        self.pool = pool
        self.live = LiveState(open_s=config.breaker.open_s, failures=config.breaker.failures)
        # Slots per service and the requests waiting for one (geniehive/capacity.py).
        capacity = config.capacity
        self.admission = Admission(
            max_queue=capacity.max_queue, queue_timeout_s=capacity.queue_timeout_s,
            aging_s=capacity.aging_s, clock=monotonic,
        )
        self.key_rates = KeyRates()
        # Which service served each session last (geniehive/affinity.py), on its own clock
        # (the monotonic one; a test may turn it).
        self.affinity = Affinity(
            config.routing.affinity_ttl_s, config.routing.affinity_max_sessions
        )
        self.affinity_clock: Callable[[], float] = monotonic
        self.auth = static_authenticator(config)
        self.gate = KeyGate(self.auth)  # verifies keys before bodies are read, on every port
        self.ready: bool = False
        # This process's index among `[server] workers` (geniehive/workers.py); None: the only one.
        self.worker: int | None = None
        self.active_requests: int = 0  # HTTP requests and websockets being served now
        self._drained: trio.Event | None = None
        self.started: set[str] = set()
        self.created: int = int(time.time())
        self.started_wall: float = time.time()  # when this process started serving
        # Whether this process does the hive's once-only work (registry_follow.py).
        self.leadership = Leadership()
        self.failure_counts: dict[tuple[str, str], int] = {}
        self.metrics = GatewayMetrics(self)
        self._adapters: dict[str, tuple[tuple[Any, ...], Adapter]] = {}
        self._monotonic = monotonic
        # The local managed upstreams (`launch`); `run_managed_upstreams` runs it. Its idle
        # reaper asks `upstream_busy`; its state changes put the services to sleep or wake them.
        self.launcher = Launcher(
            config.upstreams, self.probe_local_upstream,
            busy=self.upstream_busy, on_state=self._managed_state,
        )
        for upstream in config.upstreams:
            if self.launcher.asleep(upstream.id):  # on_demand: cold until asked for
                for service_id in local_service_ids(upstream):
                    self.live.get(service_id).set_asleep(True)
        # Loads and starts of cold candidates (geniehive/demand.py).
        self.demand = Demand(self)
        # Start/stop orders for the nodes' managed upstreams, taken by their long polls.
        self.node_orders = NodeOrders()
        # Re-reads the control file on SIGHUP or POST /v1/admin/reload (geniehive/reload.py).
        self.reloader = Reloader(self)
        # The last failed requests and the console's live events (geniehive/events.py).
        self.recent_errors = ErrorLog()
        self.events = EventHub(self.recent_errors)

    def upstream_busy(self, upstream_id: str) -> bool:
        """Whether a local upstream serves work now (`live.in_use` on one of its services)."""
        upstream = next((u for u in self.config.upstreams if u.id == upstream_id), None)
        admission = self.admission
        return upstream is not None and any(
            in_use(self.live.services.get(sid), admission.busy.get(sid, 0),
                   admission.queued.get(sid, 0))
            for sid in local_service_ids(upstream)
        )

    def _managed_state(self, upstream_id: str, state: str) -> None:
        """A local managed upstream changed state: its services sleep while an on_demand
        process is not running (placement sees them cold; the prober and discovery leave
        them alone) and wake when it runs."""
        asleep = self.launcher.asleep(upstream_id)
        for upstream in self.config.upstreams:
            if upstream.id == upstream_id:
                for service_id in local_service_ids(upstream):
                    self.live.get(service_id).set_asleep(asleep)

    def listening_on(self, urls: Iterable[str]) -> None:
        """Add the URLs a server of this gateway is bound to (so node URLs cannot point there)."""
        for url in urls:
            bind = egress.bind_of_url(url)
            if bind not in self.own_binds:
                self.own_binds.append(bind)

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        self.active_requests -= 1
        if self.active_requests == 0 and self._drained is not None:
            self._drained.set()

    async def wait_drained(self) -> None:
        """Wait until no HTTP request or websocket is being served."""
        while self.active_requests > 0:
            self._drained = trio.Event()
            await self._drained.wait()

    @property
    def snapshot(self) -> Snapshot:
        return self.registry.snapshot

    def count_failure(self, kind: str, subject: str) -> None:
        """Count a discovery or probe failure (exported by /metrics)."""
        key = (kind, subject)
        self.failure_counts[key] = self.failure_counts.get(key, 0) + 1

    # -- adapters -----------------------------------------------------------------------
    def probe_local_upstream(self, upstream: UpstreamConfig) -> Awaitable[ProbeResult]:
        """The probe of one of the control plane's own upstreams, through its adapter."""
        service = next(
            s for s in self.snapshot.services.values()
            if s.host_id == LOCAL_HOST_ID and s.upstream_id == upstream.id
        )
        return self.adapter_for(service).probe()

    def adapter_for(self, service: Service) -> Adapter:
        key = (service.adapter, service.base_url, service.api_key, service.timeout_s,
               service.keep_alive, service.dialect)
        cached = self._adapters.get(service.service_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        ctx = UpstreamContext(
            upstream_id=service.upstream_id or service.service_id,
            base_url=service.base_url,
            client=self.client,
            timeout_s=service.timeout_s,
            configured_assets=service.assets,
            api_key=service.api_key,
            keep_alive=service.keep_alive,
            dialect=service.dialect,
        )
        adapter = build_adapter(self.specs, service.adapter, ctx)
        self._adapters[service.service_id] = (key, adapter)
        return adapter

    # -- routing ------------------------------------------------------------------------
    def routing_context(self) -> routing.RoutingContext:
        return routing.RoutingContext(
            now=time.time(),
            stale_after_s=self.config.nodes.stale_after_s,
            default_strategy=self.config.routing.strategy,
            runtime=RuntimeView(self.live, self._monotonic()),
            rr_counters=self.live.rr_counters,
        )

    def resolve(
        self, name: str, operation: str, *, stream: bool = False,
        needs: frozenset[str] = frozenset(),
    ) -> routing.RouteDecision:
        """The route decision for `name` now; `needs` are the capabilities the request needs
        (tools, vision), the `capability` gate's input."""
        return routing.resolve(
            self.snapshot, name, operation, self.routing_context(), stream=stream, needs=needs
        )

    def decision_chain(
        self, decision: routing.RouteDecision, *, stream: bool
    ) -> Iterator[routing.RouteDecision]:
        """The decision, then each fallback role's, for failover at request time."""
        yield decision
        yield from routing.fallback_decisions(
            self.snapshot, decision, self.routing_context(), stream=stream
        )

    def role_policy(self, decision: routing.RouteDecision) -> Policy | None:
        if decision.role_id is None:
            return None
        role = self.snapshot.roles.get(decision.role_id)
        return role.policy if role else None
