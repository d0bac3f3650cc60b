"""Value types shared by every layer: hosts, services, assets, roles, samples, snapshots, and
the live numbers the gateway keeps per service.

Rule: everything here is immutable and pure. A `Snapshot` is built once per registry write
and then only read; its indexes are computed at construction so the request path never scans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from types import MappingProxyType
from typing import Any

OPERATIONS = ("chat", "completion", "embeddings", "transcription", "speech", "image")
AVAILABILITIES = ("available", "draining", "paused", "offline", "quarantined")
HEALTHS = ("unknown", "healthy", "unhealthy", "down")
# The process state of a managed upstream (`launch`), as its launcher reports it.
MANAGED_STATES = ("cold", "starting", "running", "stopping")
SYSTEM_PROMPT_POSITIONS = ("prepend", "append", "replace")
STRATEGIES = ("scored", "round_robin", "least_loaded")
# How an adapter of a server with two chat APIs sends chat (the upstream's `dialect`).
DIALECTS = ("native", "openai")
# What a model can do beyond plain text, as `Asset.capabilities` names it (Ollama's names).
CAPABILITIES = ("completion", "tools", "vision", "thinking", "embedding")
LOCAL_HOST_ID = "local"

ID_RE = re.compile(r"^[A-Za-z0-9._:/\-]{1,128}$")
# A duration as Ollama's `keep_alive` takes it: "5m", "1h30m", "90s", "1.5h", "500ms".
KEEP_ALIVE_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|ms|m|s))+$")
KEEP_ALIVE_EXPECTED = ('a duration such as "30m" or "1h30m", a whole number of seconds >= 1, '
                       "or -1 (forever)")

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


def valid_id(value: object) -> bool:
    """True for a host or service id: 1-128 letters, digits and `. _ : / -`."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def valid_keep_alive(value: object) -> bool:
    """True for how long a loaded model stays in memory: a positive duration string ("30m",
    "1h30m", "90s"), a whole number of seconds >= 1, or -1 for forever. Zero is refused: it
    would unload the model as soon as it is loaded."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == -1 or value >= 1
    if not isinstance(value, str) or KEEP_ALIVE_RE.match(value) is None:
        return False
    return any(c in "123456789" for c in value)  # "0m" or "0.0s" is zero


@dataclass(frozen=True, slots=True)
class Policy:
    """A request policy. `None` fields inherit from the lower precedence level."""

    system_prompt: str | None = None
    system_prompt_position: str = "prepend"
    body_defaults: Mapping[str, Any] = field(default_factory=_empty)
    body_overrides: Mapping[str, Any] = field(default_factory=_empty)
    strip_reasoning: bool | None = None


@dataclass(frozen=True, slots=True)
class Asset:
    """A model a service can serve, as the upstream names it.

    `context_length` is the context a request gets now (Ollama: what the loaded model was
    allocated; llama.cpp: the served `n_ctx`); `max_context` the most the model could take
    (Ollama's `/api/show`), None when unknown. `capabilities` are names from CAPABILITIES,
    None when unknown (an unknown capability never excludes the asset).
    """

    asset_id: str
    loaded: bool | None = None
    context_length: int | None = None
    family: str | None = None
    aliases: tuple[str, ...] = ()
    size_bytes: int | None = None
    vram_bytes: int | None = None
    expires_at: str | None = None
    policy: Policy | None = None
    max_context: int | None = None
    capabilities: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """Load a node or an adapter reported for a service (all optional)."""

    queue_depth: int | None = None
    in_flight: int | None = None
    slots_total: int | None = None
    slots_busy: int | None = None
    kv_cache_usage: float | None = None
    p50_latency_ms: float | None = None
    tokens_per_sec: float | None = None
    vram_used_bytes: int | None = None
    loaded_model_count: int | None = None
    max_loaded_models: int | None = None  # models it may hold in memory at once (configured)


@dataclass(frozen=True, slots=True)
class ServiceState:
    availability: str = "available"
    accept_requests: bool = True
    health: str = "unknown"


@dataclass(frozen=True, slots=True)
class Service:
    """One callable server on a host for one operation."""

    service_id: str
    host_id: str
    operation: str
    adapter: str
    base_url: str
    assets: tuple[Asset, ...] = ()
    state: ServiceState = ServiceState()
    observed: Observed = Observed()
    upstream_id: str | None = None
    timeout_s: float = 5.0
    keep_alive: str | int | None = None  # how long `load` keeps a model; None: adapter's default
    dialect: str = "native"  # the upstream's chat dialect (DIALECTS), read by its adapter
    api_key: str | None = field(default=None, repr=False)
    # The process state when a launcher manages the upstream (MANAGED_STATES), else None.
    managed: str | None = None

    def asset(self, asset_id: str) -> Asset | None:
        for asset in self.assets:
            if asset.asset_id == asset_id:
                return asset
        return None


@dataclass(frozen=True, slots=True)
class Host:
    host_id: str
    address: str
    display_name: str | None = None
    labels: Mapping[str, Any] = field(default_factory=_empty)
    capabilities: Mapping[str, Any] = field(default_factory=_empty)
    resources: Mapping[str, Any] = field(default_factory=_empty)
    metrics: Mapping[str, Any] = field(default_factory=_empty)
    last_heartbeat: float | None = None  # wall-clock seconds
    registered_at: float | None = None
    is_local: bool = False

    @property
    def last_seen(self) -> float | None:
        """When the host was last heard from: its last heartbeat, else its registration."""
        return self.last_heartbeat if self.last_heartbeat is not None else self.registered_at


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    strategy: str | None = None
    preferred_families: tuple[str, ...] = ()
    min_context: int | None = None
    prefer_loaded: bool = True
    require_loaded: bool = False
    allowed_trust_tiers: tuple[str, ...] = ()
    denied_trust_tiers: tuple[str, ...] = ()
    allowed_device_classes: tuple[str, ...] = ()
    denied_device_classes: tuple[str, ...] = ()
    allowed_workload_classes: tuple[str, ...] = ()
    denied_workload_classes: tuple[str, ...] = ()
    fallback_roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Role:
    role_id: str
    operation: str
    display_name: str | None = None
    description: str | None = None
    policy: Policy = Policy()
    routing: RoutingPolicy = RoutingPolicy()
    benchmark_workloads: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelsLive:
    """What the gateway knows of a service's models beyond its snapshot.

    `loading` are being loaded now; `busy` have requests in flight; `last_used` (model ->
    monotonic seconds) orders eviction; `load_ms` is each model's last measured load time;
    `asleep`: the service's managed process is not running (an `on_demand` upstream not
    started, or being started or stopped), so none of its models is loaded.
    """

    loading: frozenset[str] = frozenset()
    busy: frozenset[str] = frozenset()
    last_used: Mapping[str, float] = field(default_factory=_empty)
    load_ms: Mapping[str, float] = field(default_factory=_empty)
    asleep: bool = False


NO_MODELS = ModelsLive()


@dataclass(frozen=True, slots=True)
class ServiceRuntime:
    """Live numbers the gateway keeps per service, as routing reads them at one moment."""

    probe: str = "unknown"  # prober verdict: unknown | healthy | down
    breaker: str = "closed"  # closed | open | half_open, already evaluated at `now`
    trial_taken: bool = False  # a half-open trial is already in flight
    in_flight: int = 0
    samples: int = 0  # measured requests
    p50_latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_sec: float | None = None
    error_rate: float = 0.0
    models: ModelsLive = NO_MODELS  # its models' state (read by geniehive/routing/placement.py)


NO_RUNTIME = ServiceRuntime()  # a service the gateway has no numbers for yet


@dataclass(frozen=True, slots=True)
class BenchmarkSample:
    benchmark_id: str
    service_id: str
    asset_id: str | None
    workload: str
    observed_at: str
    results: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the registry, with the lookup indexes built once."""

    version: int
    hosts: Mapping[str, Host]
    services: Mapping[str, Service]
    roles: Mapping[str, Role]
    benchmarks: tuple[BenchmarkSample, ...] = ()
    # name -> service ids, per operation: service ids, asset ids and aliases.
    by_name: Mapping[tuple[str, str], tuple[str, ...]] = field(init=False, repr=False)
    by_operation: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)
    known_names: frozenset[str] = field(init=False, repr=False)
    samples_by_service: Mapping[str, tuple[BenchmarkSample, ...]] = field(
        init=False, repr=False
    )
    services_by_host: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)

    # Building only: a snapshot whose indexes may be taken over (registry.py says when).
    indexes_from: InitVar[Snapshot | None] = None
    names_unchanged: InitVar[bool] = False

    def __post_init__(self, indexes_from: Snapshot | None, names_unchanged: bool) -> None:
        if indexes_from is not None and names_unchanged:
            for name in ("by_name", "by_operation", "known_names", "services_by_host"):
                object.__setattr__(self, name, getattr(indexes_from, name))
            if indexes_from.benchmarks is self.benchmarks:
                object.__setattr__(self, "samples_by_service", indexes_from.samples_by_service)
            else:
                object.__setattr__(self, "samples_by_service", _by_service(self.benchmarks))
            return
        by_name: dict[tuple[str, str], list[str]] = {}
        by_operation: dict[str, list[str]] = {}
        by_host: dict[str, list[str]] = {}
        names: set[str] = set(self.roles)
        for service_id in sorted(self.services):
            service = self.services[service_id]
            by_operation.setdefault(service.operation, []).append(service_id)
            by_host.setdefault(service.host_id, []).append(service_id)
            keys = [service_id]
            for asset in service.assets:
                keys.append(asset.asset_id)
                keys.extend(asset.aliases)
            for key in dict.fromkeys(keys):
                by_name.setdefault((service.operation, key), []).append(service_id)
                names.add(key)
        object.__setattr__(self, "by_name", {k: tuple(v) for k, v in by_name.items()})
        object.__setattr__(self, "by_operation", {k: tuple(v) for k, v in by_operation.items()})
        object.__setattr__(self, "known_names", frozenset(names))
        object.__setattr__(self, "services_by_host", {k: tuple(v) for k, v in by_host.items()})
        object.__setattr__(self, "samples_by_service", _by_service(self.benchmarks))


def _by_service(benchmarks: tuple[BenchmarkSample, ...]
                ) -> Mapping[str, tuple[BenchmarkSample, ...]]:
    samples: dict[str, list[BenchmarkSample]] = {}
    for sample in benchmarks:
        samples.setdefault(sample.service_id, []).append(sample)
    return {k: tuple(v) for k, v in samples.items()}


def upstream_of(service: Service) -> str:
    """The upstream a service belongs to: its `upstream_id`, else the part of its id before
    the last `/` (a node names its services `<upstream id>/<operation>`); "" when neither."""
    return service.upstream_id or service.service_id.rpartition("/")[0]
