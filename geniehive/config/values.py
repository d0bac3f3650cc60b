"""The values a configuration file becomes: frozen dataclasses, plus `ConfigError`.

Each dataclass's defaults are the defaults of its keys (docs/configuration.md lists them; a
test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geniehive.auth import NO_LIMITS, KeyLimits
from geniehive.errors import StartupError
from geniehive.models import EMPTY, Asset, Role

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEFAULT_BIND = "127.0.0.1:8800"
DEFAULT_CATALOG_GLOB = "roles/*.toml"


def _empty() -> Mapping[str, Any]:
    return EMPTY


class ConfigError(StartupError):
    """One or more configuration problems; `problems` lists each with its dotted path."""

    in_config = True


@dataclass(frozen=True, slots=True)
class TLSConfig:
    certfile: Path
    keyfile: Path
    ca_certs: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    bind: tuple[str, ...] = (DEFAULT_BIND,)
    shutdown_grace_s: float = 30.0
    max_body_bytes: int = 26214400
    tls: TLSConfig | None = None
    header_timeout_s: float = 10.0  # a request's head must arrive within this
    body_timeout_s: float = 30.0  # the longest gap between a request body's bytes
    write_timeout_s: float = 60.0  # the longest a client may accept no bytes of an answer
    max_connections: int = 4096  # open client connections per bind, beyond which none are accepted
    workers: int = 1  # serving processes sharing the ports (geniehive/workers.py)


@dataclass(frozen=True, slots=True)
class NodesConfig:
    bind: tuple[str, ...] = ()
    stale_after_s: float = 15.0
    forget_after_s: float = 86400.0
    tls: TLSConfig | None = None
    # Networks a node's upstream base URLs may point into, besides the node's own address.
    allowed_upstream_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    path: Path
    # A PostgreSQL URL (from `url` or the variable `url_env` names); None: the SQLite `path`.
    url: str | None = field(default=None, repr=False)
    url_env: str | None = None
    benchmark_retention_days: float = 30.0  # samples older than this are deleted

    @property
    def postgresql(self) -> bool:
        return self.url is not None


@dataclass(frozen=True, slots=True)
class AuthKeyConfig:
    name: str
    key: str = field(repr=False)
    key_env: str
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # node keys: the host ids it may speak for (empty: any)
    limits: KeyLimits = NO_LIMITS


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    strategy: str = "scored"
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 600.0
    first_token_timeout_s: float = 60.0
    idle_stream_timeout_s: float = 120.0
    affinity_ttl_s: float = 600.0  # how long a session stays with its service; 0: off
    affinity_max_sessions: int = 100_000  # sessions remembered at most (least recent first out)


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    max_queue: int = 1000  # requests waiting for a slot in all; 0: none ever waits
    queue_timeout_s: float = 60.0
    aging_s: float = 30.0  # a request waiting longer moves up one priority class
    load_timeout_s: float = 300.0  # a model load, or a node's start of an on_demand upstream


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 3
    open_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ProberConfig:
    interval_s: float = 10.0
    timeout_s: float = 5.0
    down_after: int = 2
    up_after: int = 1


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    interval_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ResponsesConfig:
    retention_s: float = 3600.0  # how long a stored response is kept; 0 stores none


@dataclass(frozen=True, slots=True)
class TracingConfig:
    otlp_endpoint: str | None = None  # the OTLP/HTTP collector's root; None: no tracing
    service_name: str = "geniehive"
    sample_ratio: float = 1.0  # the share of new traces recorded (a client's flag wins)


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    paths: tuple[Path, ...] = ()
    entry_points: bool = True


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=_empty, repr=False)  # may carry tokens
    ready_timeout_s: float = 60.0
    stop_grace_s: float = 10.0
    cwd: Path | None = None
    on_demand: bool = False  # started when first asked for, not at boot
    idle_ttl_s: float = 600.0  # an on_demand process idle this long is stopped


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    id: str
    adapter: str
    base_url: str
    operations: tuple[str, ...] = ("chat",)
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    timeout_s: float = 5.0
    launch: LaunchConfig | None = None
    assets: tuple[Asset, ...] = ()
    max_in_flight: int | None = None  # its slots, overriding what discovery reads
    max_loaded_models: int | None = None  # models it can hold in memory at once
    keep_alive: str | int | None = None  # how long `load` keeps a model; None: adapter default
    dialect: str = "native"  # how the Ollama adapter sends chat (DIALECTS)


@dataclass(frozen=True, slots=True)
class ControlConfig:
    server: ServerConfig
    nodes: NodesConfig
    registry: RegistryConfig
    auth_keys: tuple[AuthKeyConfig, ...]
    routing: RoutingConfig
    capacity: CapacityConfig
    breaker: BreakerConfig
    prober: ProberConfig
    discovery: DiscoveryConfig
    plugins: PluginsConfig
    roles: Mapping[str, Role]
    role_catalogs: tuple[Path, ...]
    local_labels: Mapping[str, str | tuple[str, ...]]
    upstreams: tuple[UpstreamConfig, ...]
    logging: LoggingConfig
    source: Path
    responses: ResponsesConfig = ResponsesConfig()
    tracing: TracingConfig = TracingConfig()


@dataclass(frozen=True, slots=True)
class NodeSection:
    host_id: str
    address: str
    display_name: str | None = None
    labels: Mapping[str, str | tuple[str, ...]] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class ControlLink:
    """Where a node reports: `urls` in order of preference (the first is used first); `url`
    is the first of them. Built with `url` alone, `urls` is that one URL."""

    url: str
    node_key: str | None = field(default=None, repr=False)
    node_key_env: str | None = None
    tls: TLSConfig | None = None
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSection
    control: ControlLink
    heartbeat_interval_s: float
    model_roots: tuple[Path, ...]
    upstreams: tuple[UpstreamConfig, ...]
    logging: LoggingConfig
    source: Path
