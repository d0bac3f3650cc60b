"""The control file (`geniehive serve`): its declared tables and the parser that reads them.

Besides each key's own check, some rules span keys: node TLS needs its own node bind, a host
is forgotten no sooner than it goes stale, the node port may not reuse a client bind, and key
names and key values are unique (docs/configuration.md lists them with the keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from geniehive.auth import MAX_WEIGHT, PRIORITIES, SCOPES, KeyLimits
from geniehive.config.checks import (
    BIND,
    BOOL,
    FOLDER,
    IDENTIFIER,
    LABELS,
    NETWORK,
    NON_NEGATIVE,
    PATH,
    POSITIVE,
    POSTGRESQL_URL,
    TEXT,
    URL,
    choice,
    integer,
    list_of,
    parse_bind,
    positive_up_to,
    postgresql_url_problem,
)
from geniehive.config.roles import CATALOGS, catalog_paths, load_catalogs
from geniehive.config.schema import InFolder, Key, Section, Table, secret
from geniehive.config.sections import (
    ENV_KEY_MEANING,
    LOGGING,
    SERVER_TLS,
    UPSTREAMS,
    parse_logging,
    parse_tls,
    parse_upstreams,
)
from geniehive.config.values import (
    DEFAULT_BIND,
    AuthKeyConfig,
    BreakerConfig,
    CapacityConfig,
    ControlConfig,
    DiscoveryConfig,
    NodesConfig,
    PluginsConfig,
    ProberConfig,
    RegistryConfig,
    ResponsesConfig,
    RoutingConfig,
    ServerConfig,
    TracingConfig,
    UpstreamConfig,
)
from geniehive.models import EMPTY, STRATEGIES

SERVER = Section("server", "The client API listener.", (
    Key("bind", list_of(BIND, non_empty=True), (DEFAULT_BIND,),
        "addresses the client API listens on; port 0 takes a free port"),
    Key("shutdown_grace_s", NON_NEGATIVE, 30.0,
        "seconds requests and streams in flight may finish after a stop signal"),
    Key("max_body_bytes", integer(1), 26214400,
        "largest request body or upload in bytes (25 MiB); a larger one gets 413"),
    Key("header_timeout_s", POSITIVE, 10.0,
        "seconds a request head has to arrive in full (408 after part of one)"),
    Key("body_timeout_s", POSITIVE, 30.0,
        "longest gap in seconds between two pieces of a request body (408)"),
    Key("write_timeout_s", POSITIVE, 60.0,
        "seconds a client may accept no bytes of an answer before it is cut off"),
    Key("max_connections", integer(1), 4096,
        "open connections per bind (client and node ports); more wait in the backlog"),
    Key("workers", integer(1), 1,
        "serving processes sharing the client and node ports under one supervising parent "
        "(restart to change)"),
), tables=(SERVER_TLS,))

NODES = Section("nodes", "Where node agents register and heartbeat, and how long hosts last.", (
    Key("bind", list_of(BIND), (),
        "addresses of a separate node port; empty: node routes are served on the client port"),
    Key("stale_after_s", POSITIVE, 15.0,
        "seconds without a heartbeat after which a host's services leave routing"),
    Key("forget_after_s", POSITIVE, 86400.0,
        "seconds without a heartbeat after which a host is removed (≥ `stale_after_s`)"),
    Key("allowed_upstream_networks", list_of(NETWORK), (),
        "networks node upstreams may be in besides the node's own address"),
), tables=(Section(
    "tls", "TLS (with `require_client_cert`: mutual TLS) on the node port; needs `nodes.bind`.",
    SERVER_TLS.keys),))

REGISTRY = Section("registry", "The state the gateway keeps between runs.", (
    Key("path", PATH, InFolder("state/geniehive.sqlite3"),
        "the SQLite file (its folder is created when missing); not with `url` or `url_env`"),
    Key("url", POSTGRESQL_URL, None,
        "a PostgreSQL database instead of SQLite, shared by several control replicas "
        "(no password here)"),
    Key("url_env", TEXT, None, ENV_KEY_MEANING + "the PostgreSQL URL (it may hold a password)"),
    Key("benchmark_retention_days", POSITIVE, 30.0,
        "days benchmark samples are kept; older ones are deleted"),
))

# A key's limits, applied by the admission queue (docs/deployment.md, "Keys").
KEY_LIMITS = (
    Key("max_in_flight", integer(1), None,
        "requests of this key served at once; more wait in the admission queue; "
        "absent: no limit"),
    Key("requests_per_minute", integer(1), None,
        "requests a minute; more are answered 429 `rate_limited`; absent: no limit"),
    Key("priority", choice(PRIORITIES), None,
        "its default and highest priority class; a request may ask for a lower one"),
    Key("weight", positive_up_to(MAX_WEIGHT), 1.0,
        "its share of the slots against the other keys of its priority class"),
)

AUTH = Section("auth", "Who may call the gateway. No key at all: open mode, allowed only when "
               "every bind is loopback.", tables=(Section(
                   "keys", "A static key.", (
                       Key("name", IDENTIFIER, "", "the key's name in logs and metrics",
                           required=True),
                       Key("key_env", TEXT, None, ENV_KEY_MEANING + "the key itself",
                           required=True),
                       Key("scopes", list_of(choice(SCOPES), non_empty=True), (),
                           "what it may do", required=True),
                       Key("models", list_of(TEXT), (),
                           "the models and roles it may use; empty: all"),
                       Key("hosts", list_of(IDENTIFIER), (),
                           "a `node` key: the host ids it may speak for; empty: any"),
                       *KEY_LIMITS,
                   ), array=True),))

ROUTING = Section("routing", "How requests pick a service and how long they wait for it.", (
    Key("strategy", choice(STRATEGIES), "scored",
        "how candidates are ordered; a role may override it"),
    Key("max_attempts", integer(1), 3,
        "upstream tries per request before its first byte, fallback roles included"),
    Key("connect_timeout_s", POSITIVE, 5.0, "seconds to connect to an upstream"),
    Key("first_byte_timeout_s", POSITIVE, 600.0,
        "seconds from sending a request until the upstream's response headers"),
    Key("first_token_timeout_s", POSITIVE, 60.0,
        "seconds from sending a chat or completion until its first content (streamed) or its "
        "response headers (not streamed); past it the next candidate is tried"),
    Key("idle_stream_timeout_s", POSITIVE, 120.0,
        "longest gap in seconds between two chunks of an upstream answer"),
    Key("affinity_ttl_s", NON_NEGATIVE, 600.0,
        "seconds a session (`X-Session-Id` and the like, see docs/deployment.md) keeps going to "
        "the service that served it last, after its last request; 0 turns affinity off"),
    Key("affinity_max_sessions", integer(0), 100_000,
        "sessions remembered at most; the least recently used is forgotten first"),
))

CAPACITY = Section("capacity", "The admission queue: a request waits in the gateway while "
                   "every service that could serve it has all its slots busy.", (
    Key("max_queue", integer(0), 1000,
        "requests waiting for a slot at once, over all services; 0: a request never waits"),
    Key("queue_timeout_s", POSITIVE, 60.0, "the longest a request waits for a slot, in seconds"),
    Key("aging_s", POSITIVE, 30.0,
        "seconds of waiting after which a request moves up one priority class"),
    Key("load_timeout_s", POSITIVE, 300.0,
        "the longest a request waits for a model to be loaded, or for a node to start the "
        "on_demand upstream that serves it, in seconds (a local one: its "
        "launch.ready_timeout_s)"),
))

BREAKER = Section("breaker", "The per-service circuit breaker fed by real traffic.", (
    Key("failures", integer(1), 3, "consecutive failed tries that open the breaker"),
    Key("open_s", POSITIVE, 30.0, "seconds it stays open; then one trial request decides"),
))

PROBER = Section("prober", "The health probes of every upstream server.", (
    Key("interval_s", POSITIVE, 10.0, "seconds between two probes of a server"),
    Key("timeout_s", POSITIVE, 5.0, "seconds a probe may take"),
    Key("down_after", integer(1), 2, "consecutive failed probes that take a service down"),
    Key("up_after", integer(1), 1, "consecutive good probes that bring it back"),
))

DISCOVERY = Section("discovery", "Asking the control plane's own upstreams what they serve.", (
    Key("interval_s", POSITIVE, 30.0, "seconds between two discoveries of an upstream"),
))

RESPONSES = Section("responses", "The stored answers of the Responses API (`store: true`).", (
    Key("retention_s", NON_NEGATIVE, 3600.0,
        "seconds a stored response can be fetched or continued (`previous_response_id`); "
        "0 stores none"),
))

TRACING = Section("tracing", "OpenTelemetry traces of the client requests, exported over "
                  "OTLP/HTTP (docs/deployment.md, \"Tracing\"); needs `geniehive[tracing]`.", (
    Key("otlp_endpoint", URL, None,
        "the OTLP/HTTP receiver's root (`http://127.0.0.1:4318`; spans go to its "
        "`/v1/traces`); absent: no tracing, and none of its cost"),
    Key("service_name", TEXT, "geniehive", "the `service.name` the spans are exported under"),
    Key("sample_ratio", positive_up_to(1.0), 1.0,
        "the share of new traces recorded; a client's `traceparent` decides for its own"),
))

PLUGINS = Section("plugins", "Where adapter plugins come from (see docs/plugins.md).", (
    Key("paths", list_of(FOLDER), (),
        "extra plugin folders; the built-in plugins are always loaded"),
    Key("entry_points", BOOL, True,
        "also load installed packages' `geniehive.adapters` entry points"),
))

LOCAL = Section("local", "The control host itself, as the routing gates see it.", (
    Key("labels", LABELS, EMPTY,
        "labels of the host that runs the control file's own upstreams"),
))

CONTROL_FILE = Section("", "The control file.", tables=(
    SERVER, NODES, REGISTRY, AUTH, ROUTING, CAPACITY, BREAKER, PROBER, DISCOVERY, RESPONSES,
    TRACING, PLUGINS, CATALOGS, LOCAL, LOGGING, UPSTREAMS,
))


def _server(t: Table) -> ServerConfig:
    config = ServerConfig(
        bind=t.get("bind"),
        shutdown_grace_s=t.get("shutdown_grace_s"),
        max_body_bytes=t.get("max_body_bytes"),
        tls=parse_tls(t.table("tls")),
        header_timeout_s=t.get("header_timeout_s"),
        body_timeout_s=t.get("body_timeout_s"),
        write_timeout_s=t.get("write_timeout_s"),
        max_connections=t.get("max_connections"),
        workers=t.get("workers"),
    )
    t.done()
    return config


def _nodes(t: Table, server: ServerConfig) -> NodesConfig:
    config = NodesConfig(
        bind=t.get("bind"),
        stale_after_s=t.get("stale_after_s"),
        forget_after_s=t.get("forget_after_s"),
        tls=parse_tls(t.table("tls")),
        allowed_upstream_networks=t.get("allowed_upstream_networks"),
    )
    t.done()
    if config.tls is not None and not config.bind:
        t.report("tls", "requires nodes.bind (node traffic on its own port)")
    if config.forget_after_s < config.stale_after_s:
        t.report("forget_after_s", "must not be less than nodes.stale_after_s")
    # Port 0 picks a free port each time, so only fixed ports can collide.
    client = {_bind_key(b) for b in server.bind} - {None}
    for index, bind in enumerate(config.bind):
        if _bind_key(bind) in client:
            t.report("bind", "already used by server.bind", f"[{index}]")
    return config


def _workers_problems(server: ServerConfig, upstreams: Sequence[UpstreamConfig]) -> list[str]:
    """Rule: a managed upstream is started by the one process that serves, so more than one
    worker would start it once per worker."""
    if server.workers <= 1:
        return []
    return [f"server.workers: more than one worker cannot run managed upstreams "
            f"(upstreams[{i}].launch); run the upstream as its own service instead"
            for i, up in enumerate(upstreams) if up.launch is not None]


def _bind_key(bind: str) -> tuple[str, int] | None:
    try:
        host, port = parse_bind(bind)
    except ValueError:
        return None
    return (host, port) if port else None


def _auth_keys(t: Table, environ: Mapping[str, str]) -> tuple[AuthKeyConfig, ...]:
    keys: list[AuthKeyConfig] = []
    for index, k in enumerate(t.tables("keys")):
        name = k.get("name")
        key_env, key = secret(k, "key_env", environ)
        scopes = k.get("scopes")
        models = k.get("models")
        hosts = k.get("hosts")
        limits = KeyLimits(k.get("max_in_flight"), k.get("requests_per_minute"),
                           k.get("priority"), k.get("weight"))
        k.done()
        if hosts and "node" not in scopes:
            t.report("keys", "hosts applies only to keys with the 'node' scope",
                     f"[{index}].hosts")
        if name and any(other.name == name for other in keys):
            t.report("keys", f"duplicate key name {name!r}", f"[{index}].name")
        if key and any(other.key == key for other in keys):
            t.report("keys", "the same key as another entry", f"[{index}].key_env")
        keys.append(AuthKeyConfig(name, key or "", key_env or "", frozenset(scopes), models,
                                  hosts, limits))
    t.done()
    return tuple(keys)


def _registry(t: Table, environ: Mapping[str, str]) -> RegistryConfig:
    """SQLite at `path` (the default), or PostgreSQL from `url` or `url_env`: one of them."""
    path = t.get("path")
    url = t.get("url")
    url_env, from_env = secret(t, "url_env", environ)
    retention = t.get("benchmark_retention_days")
    t.done()
    given = [name for name in ("path", "url", "url_env") if t.has(name)]
    if len(given) > 1:
        t.report(given[1], f"give one of `path`, `url` and `url_env`, not {' and '.join(given)}")
    if from_env is not None:
        if postgresql_url_problem(from_env) is None:
            url = from_env
        else:
            t.report("url_env", f"variable {url_env!r}: {postgresql_url_problem(from_env)}")
    return RegistryConfig(path, url=url, url_env=url_env, benchmark_retention_days=retention)


def _flat(top: Table, name: str, kind: Any) -> Any:
    """A section whose keys map one to one onto the fields of `kind`."""
    t = top.table(name)
    values = {key.name: t.get(key.name) for key in t.section.keys}
    t.done()
    return kind(**values)


def parse_control(data: dict[str, Any], path: Path, environ: Mapping[str, str],
                  problems: list[str]) -> ControlConfig:
    top = Table(data, "", problems, CONTROL_FILE, path.parent)
    server = _server(top.table("server"))
    nodes = _nodes(top.table("nodes"), server)
    registry = _registry(top.table("registry"), environ)
    routing = _flat(top, "routing", RoutingConfig)
    capacity = _flat(top, "capacity", CapacityConfig)
    breaker = _flat(top, "breaker", BreakerConfig)
    prober = _flat(top, "prober", ProberConfig)
    discovery = _flat(top, "discovery", DiscoveryConfig)
    plugins = _flat(top, "plugins", PluginsConfig)
    responses = _flat(top, "responses", ResponsesConfig)
    tracing = _flat(top, "tracing", TracingConfig)
    auth_keys = _auth_keys(top.table("auth"), environ)
    catalogs = catalog_paths(top.table("roles"))
    local = top.table("local")
    local_labels = local.get("labels")
    local.done()
    upstreams = parse_upstreams(top, environ)
    logging = parse_logging(top.table("logging"))
    top.done()
    problems.extend(_workers_problems(server, upstreams))
    roles = load_catalogs(catalogs, problems)
    return ControlConfig(
        server=server, nodes=nodes, registry=registry, auth_keys=auth_keys, routing=routing,
        capacity=capacity, breaker=breaker, prober=prober, discovery=discovery, plugins=plugins,
        roles=MappingProxyType(roles), role_catalogs=catalogs, local_labels=local_labels,
        upstreams=upstreams, logging=logging, source=path, responses=responses,
        tracing=tracing,
    )
