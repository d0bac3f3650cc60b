"""Configuration files: TOML in, frozen dataclasses out (SPEC §3).

Three kinds of file: the control file (`geniehive serve`), the node file (`geniehive node`) and
role catalogs (named by the control file's `[roles] catalogs` globs).

Rule: validation is strict and complete. Unknown keys, wrong types, bad values and bad
references are all collected, each naming its dotted path (`upstreams[1].base_url: expected an
http(s) URL`), and raised together as one `ConfigError`. Nothing is read from the process
environment: secrets named by `*_env` keys are looked up in the mapping the caller passes.
Relative paths are resolved against the folder of the file that names them. Besides reading
the files, globs are expanded and named TLS files and folders are checked to exist (a missing
certificate is a problem `check-config` should catch); nothing else touches the system.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from geniehive.auth import SCOPES
from geniehive.errors import StartupError
from geniehive.models import (
    EMPTY,
    OPERATIONS,
    STRATEGIES,
    SYSTEM_PROMPT_POSITIONS,
    Asset,
    Policy,
    Role,
    RoutingPolicy,
    valid_id,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEFAULT_BIND = "127.0.0.1:8800"
DEFAULT_CATALOG_GLOB = "roles/*.toml"

_ADAPTER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
_BIND_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})$")
_LIST_LABELS = ("workload_classes", "allowed_model_families")
_STRING_LABELS = ("trust_tier", "device_class")


def _empty() -> Mapping[str, Any]:
    return EMPTY


class ConfigError(StartupError):
    """One or more configuration problems; `problems` lists each with its dotted path."""

    in_config = True


# ---------------------------------------------------------------------------------------------
# The values


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


@dataclass(frozen=True, slots=True)
class AuthKeyConfig:
    name: str
    key: str = field(repr=False)
    key_env: str
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # node keys: the host ids it may speak for (empty: any)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    strategy: str = "scored"
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 600.0
    idle_stream_timeout_s: float = 120.0


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


@dataclass(frozen=True, slots=True)
class ControlConfig:
    server: ServerConfig
    nodes: NodesConfig
    registry: RegistryConfig
    auth_keys: tuple[AuthKeyConfig, ...]
    routing: RoutingConfig
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


@dataclass(frozen=True, slots=True)
class NodeSection:
    host_id: str
    address: str
    display_name: str | None = None
    labels: Mapping[str, str | tuple[str, ...]] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class ControlLink:
    url: str
    node_key: str | None = field(default=None, repr=False)
    node_key_env: str | None = None
    tls: TLSConfig | None = None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSection
    control: ControlLink
    heartbeat_interval_s: float
    model_roots: tuple[Path, ...]
    upstreams: tuple[UpstreamConfig, ...]
    logging: LoggingConfig
    source: Path


# ---------------------------------------------------------------------------------------------
# Binds


def parse_bind(bind: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port` into (host, port); raises ValueError when malformed."""
    match = _BIND_RE.match(bind) if isinstance(bind, str) else None
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"bad bind address {bind!r}")
    host = match["v6"] if match["v6"] is not None else match["host"]
    if match["v6"] is not None:
        ipaddress.IPv6Address(host)  # raises ValueError (AddressValueError) when not IPv6
    return host, int(match["port"])


def is_loopback_bind(bind: str) -> bool:
    """True when the address only accepts local connections (127.0.0.0/8, ::1, localhost)."""
    try:
        host, _ = parse_bind(bind)
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Checking one table: problems are collected, never raised, so that every one is reported.


class _Invalid(Exception):
    """A value failed a check: (path suffix, message) pairs, the suffix as `[2]` or `.x`."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _bad(message: str, suffix: str = "") -> _Invalid:
    return _Invalid((suffix, message))


class _Table:
    """One TOML table being read: remembers the keys taken and reports the others."""

    def __init__(self, data: Any, where: str, problems: list[str]) -> None:
        self.present = isinstance(data, dict)
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.where = where
        self.problems = problems
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def report(self, key: str, message: str, suffix: str = "") -> None:
        self.problems.append(f"{self.path(key)}{suffix}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, check: Callable[[Any], Any], default: Any = None,
            *, required: bool = False) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if required:
                self.report(key, "required key missing")
            return default
        try:
            return check(self.data[key])
        except _Invalid as exc:
            for suffix, message in exc.problems:
                self.report(key, message, suffix)
            return default

    def table(self, key: str) -> _Table:
        """The sub-table `key` (empty when absent; `.present` tells which)."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            self.report(key, "expected a table")
        return _Table(value, self.path(key), self.problems)

    def tables(self, key: str) -> list[_Table]:
        """The array of tables `key`, each addressed as `key[i]`."""
        self._seen.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            self.report(key, "expected a list of tables")
            return []
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.report(key, "expected a table", f"[{index}]")
                continue
            out.append(_Table(item, f"{self.path(key)}[{index}]", self.problems))
        return out

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every key and value, all counted as known (for tables keyed by id)."""
        self._seen.update(self.data)
        return iter(list(self.data.items()))

    def done(self) -> None:
        for key in self.data:
            if key not in self._seen:
                self.report(key, "unknown key")


# Checks: take a raw TOML value, return the converted value or raise _Invalid.


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _bad("expected a string")
    return value


def _text(value: Any) -> str:
    if not _string(value).strip():
        raise _bad("expected a non-empty string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad("expected true or false")
    return value


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad("expected an integer")
        if value < minimum:
            raise _bad(f"expected an integer >= {minimum}, got {value}")
        return value

    return check


def _number(value: Any) -> float:
    # bool is an int subclass; `true` where a number is expected is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad("expected a number")
    if not math.isfinite(value):
        raise _bad("expected a finite number")
    return float(value)


def _positive(value: Any) -> float:
    if _number(value) <= 0:
        raise _bad(f"expected a positive number, got {value}")
    return float(value)


def _non_negative(value: Any) -> float:
    if _number(value) < 0:
        raise _bad(f"expected a number >= 0, got {value}")
    return float(value)


def _choice(options: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if _string(value) not in options:
            raise _bad(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return check


def _identifier(value: Any) -> str:
    if not valid_id(value):
        if not isinstance(value, str):
            raise _bad("expected a string")
        raise _bad(f"invalid id {value!r} (1-128 letters, digits and . _ : / -)")
    return value


def _adapter_kind(value: Any) -> str:
    if not _ADAPTER_RE.match(_string(value)):
        raise _bad(f"invalid adapter kind {value!r} (a letter, then letters, digits, _ . -)")
    return value


def _url(value: Any) -> str:
    """An http(s) server root; a trailing slash is dropped so paths can be appended."""
    try:
        parts = urlsplit(_string(value))
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _bad("expected an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise _bad("expected an http(s) URL")
    return value.rstrip("/")


def _bind(value: Any) -> str:
    try:
        parse_bind(_string(value))
    except ValueError:
        raise _bad(f'expected "host:port" or "[v6]:port" with a port 0-65535, got {value!r}') \
            from None
    return value


def _address(value: Any) -> str:
    if not _text(value) or any(c.isspace() or c == "/" for c in value):
        raise _bad(f"expected a host name or IP address, got {value!r}")
    return value


def _network(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(_string(value), strict=False))
    except ValueError:
        raise _bad(f'expected a network in CIDR form such as "10.0.0.0/24", got {value!r}') \
            from None


def _list(item: Callable[[Any], Any], *, non_empty: bool = False,
          unique: bool = False) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _bad("expected a list")
        if non_empty and not value:
            raise _bad("expected at least one item")
        out, problems = [], []
        for index, element in enumerate(value):
            try:
                converted = item(element)
            except _Invalid as exc:
                problems.extend((f"[{index}]{s}", m) for s, m in exc.problems)
                continue
            if unique and converted in out:
                problems.append((f"[{index}]", f"duplicate {converted!r}"))
            out.append(converted)
        if problems:
            raise _Invalid(*problems)
        return tuple(out)

    return check


def _json_value(value: Any, suffix: str, problems: list[tuple[str, str]]) -> None:
    # TOML dates and times have no JSON form; they would fail later, at request time.
    if isinstance(value, datetime | date | time):
        problems.append((suffix, "expected a JSON value (string, number, boolean, list, table)"))
    elif isinstance(value, dict):
        for key, item in value.items():
            _json_value(item, f"{suffix}.{key}", problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_value(item, f"{suffix}[{index}]", problems)


def _json_table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad("expected a table")
    problems: list[tuple[str, str]] = []
    _json_value(value, "", problems)
    if problems:
        raise _Invalid(*problems)
    return MappingProxyType(value)


def _string_table(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise _bad("expected a table")
    bad = [(f".{k}", "expected a string") for k, v in value.items() if not isinstance(v, str)]
    if bad:
        raise _Invalid(*bad)
    return MappingProxyType(dict(value))


def _labels(value: Any) -> Mapping[str, str | tuple[str, ...]]:
    """Host labels: a string or a list of strings each; the gates' labels have fixed shapes."""
    if not isinstance(value, dict):
        raise _bad("expected a table")
    out: dict[str, str | tuple[str, ...]] = {}
    problems: list[tuple[str, str]] = []
    for key, item in value.items():
        try:
            if key in _LIST_LABELS or (key not in _STRING_LABELS and isinstance(item, list)):
                out[key] = _list(_string)(item)
            elif key in _STRING_LABELS:
                out[key] = _string(item)
            else:
                out[key] = _label_string(item)
        except _Invalid as exc:
            problems.extend((f".{key}{s}", m) for s, m in exc.problems)
    if problems:
        raise _Invalid(*problems)
    return MappingProxyType(out)


def _label_string(value: Any) -> str:
    if not isinstance(value, str):
        raise _bad("expected a string or a list of strings")
    return value


def _path_in(base: Path) -> Callable[[Any], Path]:
    def check(value: Any) -> Path:
        return base / _text(value)  # an absolute value replaces base

    return check


def _file_in(base: Path) -> Callable[[Any], Path]:
    def check(value: Any) -> Path:
        path = base / _text(value)
        if not path.is_file():
            raise _bad(f"file not found: {path}")
        return path

    return check


def _folder_in(base: Path) -> Callable[[Any], Path]:
    def check(value: Any) -> Path:
        path = base / _text(value)
        if not path.is_dir():
            raise _bad(f"folder not found: {path}")
        return path

    return check


def _secret(t: _Table, key: str, environ: Mapping[str, str],
            *, required: bool = False) -> tuple[str | None, str | None]:
    """(variable name, its value) for a `*_env` key; an unset variable is a problem."""
    name = t.get(key, _text, None, required=required)
    if name is None:
        return None, None
    value = environ.get(name)
    if value is None:
        t.report(key, f"environment variable {name!r} is not set")
    elif not value:
        t.report(key, f"environment variable {name!r} is empty")
    return name, value or None


# ---------------------------------------------------------------------------------------------
# Shared sections


def _tls(t: _Table, base: Path, *, server_side: bool) -> TLSConfig | None:
    if not t.present:
        return None
    certfile = t.get("certfile", _file_in(base), base, required=True)
    keyfile = t.get("keyfile", _file_in(base), base, required=True)
    ca_certs = t.get("ca_certs", _file_in(base), None)
    require = t.get("require_client_cert", _bool, False) if server_side else False
    if require and ca_certs is None and not t.has("ca_certs"):
        t.report("ca_certs", "required when require_client_cert is true")
    t.done()
    return TLSConfig(certfile, keyfile, ca_certs, require)


def _logging(t: _Table) -> LoggingConfig:
    config = LoggingConfig(
        level=t.get("level", _choice(LOG_LEVELS), "info"),
        format=t.get("format", _choice(LOG_FORMATS), "text"),
    )
    t.done()
    return config


def _policy(t: _Table) -> Policy:
    """A request policy from the keys of `t` (a role, or an asset's `policy` table)."""
    return Policy(
        system_prompt=t.get("system_prompt", _string, None),
        system_prompt_position=t.get(
            "system_prompt_position", _choice(SYSTEM_PROMPT_POSITIONS), "prepend"
        ),
        body_defaults=t.get("body_defaults", _json_table, EMPTY),
        body_overrides=t.get("body_overrides", _json_table, EMPTY),
        strip_reasoning=t.get("strip_reasoning", _bool, None),
    )


def _optional_policy(t: _Table) -> Policy | None:
    policy = _policy(t) if t.present else None
    t.done()
    return policy


def _asset(t: _Table) -> Asset:
    asset = Asset(
        asset_id=t.get("asset_id", _text, "", required=True),
        aliases=t.get("aliases", _list(_text, unique=True), ()),
        family=t.get("family", _text, None),
        context_length=t.get("context_length", _integer(1), None),
        loaded=t.get("loaded", _bool, None),
        policy=_optional_policy(t.table("policy")),
    )
    t.done()
    return asset


def _launch(t: _Table, base: Path) -> LaunchConfig | None:
    if not t.present:
        return None
    config = LaunchConfig(
        command=t.get("command", _list(_text, non_empty=True), (), required=True),
        env=t.get("env", _string_table, EMPTY),
        ready_timeout_s=t.get("ready_timeout_s", _positive, 60.0),
        stop_grace_s=t.get("stop_grace_s", _non_negative, 10.0),
        cwd=t.get("cwd", _folder_in(base), None),
    )
    t.done()
    return config


def _upstream(t: _Table, base: Path, environ: Mapping[str, str]) -> UpstreamConfig:
    upstream_id = t.get("id", _identifier, "", required=True)
    adapter = t.get("adapter", _adapter_kind, "", required=True)
    base_url = t.get("base_url", _url, "", required=True)
    operations = t.get(
        "operations", _list(_choice(OPERATIONS), non_empty=True, unique=True), ("chat",)
    )
    api_key_env, api_key = _secret(t, "api_key_env", environ)
    assets = tuple(_asset(a) for a in t.tables("assets"))
    seen: set[str] = set()
    for index, asset in enumerate(assets):
        if asset.asset_id and asset.asset_id in seen:
            t.report("assets", f"duplicate asset_id {asset.asset_id!r}", f"[{index}].asset_id")
        seen.add(asset.asset_id)
    config = UpstreamConfig(
        id=upstream_id,
        adapter=adapter,
        base_url=base_url,
        operations=operations,
        api_key=api_key,
        api_key_env=api_key_env,
        timeout_s=t.get("timeout_s", _positive, 5.0),
        launch=_launch(t.table("launch"), base),
        assets=assets,
    )
    t.done()
    return config


def _upstreams(top: _Table, base: Path, environ: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    upstreams = []
    seen: set[str] = set()
    for index, t in enumerate(top.tables("upstreams")):
        upstream = _upstream(t, base, environ)
        if upstream.id and upstream.id in seen:
            top.report("upstreams", f"duplicate upstream id {upstream.id!r}", f"[{index}].id")
        seen.add(upstream.id)
        upstreams.append(upstream)
    return tuple(upstreams)


# ---------------------------------------------------------------------------------------------
# Role catalogs


def _routing_policy(t: _Table) -> RoutingPolicy:
    names = _list(_text)
    policy = RoutingPolicy(
        strategy=t.get("strategy", _choice(STRATEGIES), None),
        preferred_families=t.get("preferred_families", names, ()),
        min_context=t.get("min_context", _integer(1), None),
        prefer_loaded=t.get("prefer_loaded", _bool, True),
        require_loaded=t.get("require_loaded", _bool, False),
        **{
            f"{way}_{label}": t.get(f"{way}_{label}", names, ())
            for label in ("trust_tiers", "device_classes", "workload_classes")
            for way in ("allowed", "denied")
        },
        fallback_roles=t.get("fallback_roles", _list(_text), ()),
    )
    t.done()
    return policy


def _role(role_id: str, t: _Table) -> Role:
    routing = t.table("routing")
    role = Role(
        role_id=role_id,
        operation=t.get("operation", _choice(OPERATIONS), "chat", required=True),
        display_name=t.get("display_name", _string, None),
        description=t.get("description", _string, None),
        policy=_policy(t),
        routing=_routing_policy(routing),
        benchmark_workloads=t.get("benchmark_workloads", _list(_text), ()),
    )
    t.done()
    return role


def _parse_catalog(data: dict[str, Any], problems: list[str]) -> dict[str, Role]:
    """The roles of one catalog file (references to other roles are checked later)."""
    top = _Table(data, "", problems)
    roles_table = top.table("roles")
    top.done()
    roles: dict[str, Role] = {}
    for role_id, value in roles_table.items():
        if not valid_id(role_id):
            roles_table.report(role_id, "invalid role id (1-128 letters, digits and . _ : / -)")
            continue
        t = _Table(value, roles_table.path(role_id), problems)
        if not t.present:
            roles_table.report(role_id, "expected a table")
            continue
        roles[role_id] = _role(role_id, t)
    return roles


def _merge_catalogs(
    catalogs: Sequence[tuple[str, str, Mapping[str, Role]]], problems: list[str]
) -> dict[str, Role]:
    """Merge (prefix, label, roles) catalogs; then check duplicates and fallback references."""
    merged: dict[str, Role] = {}
    origin: dict[str, tuple[str, str]] = {}
    for prefix, label, roles in catalogs:
        for role_id, role in roles.items():
            if role_id in merged:
                problems.append(
                    f"{prefix}roles.{role_id}: duplicate role id (also in {origin[role_id][1]})"
                )
                continue
            merged[role_id] = role
            origin[role_id] = (prefix, label)
    for role_id, role in merged.items():
        for index, target in enumerate(role.routing.fallback_roles):
            where = f"{origin[role_id][0]}roles.{role_id}.routing.fallback_roles[{index}]"
            other = merged.get(target)
            if other is None:
                problems.append(f"{where}: unknown role {target!r}")
            elif other.operation != role.operation:
                problems.append(
                    f"{where}: role {target!r} has operation {other.operation!r},"
                    f" not {role.operation!r}"
                )
    return merged


def _glob(base: Path, pattern: str) -> list[Path]:
    path = Path(pattern)
    root, relative = (Path(path.anchor), str(path.relative_to(path.anchor))) \
        if path.is_absolute() else (base, pattern)
    return sorted(p for p in root.glob(relative) if p.is_file())


def _catalog_paths(t: _Table, base: Path) -> tuple[Path, ...]:
    explicit = t.has("catalogs")
    patterns = t.get("catalogs", _list(_text), (DEFAULT_CATALOG_GLOB,))
    t.done()
    found: list[Path] = []
    for index, pattern in enumerate(patterns):
        try:
            matches = _glob(base, pattern)
        except (ValueError, NotImplementedError) as exc:
            t.report("catalogs", f"bad glob {pattern!r}: {exc}", f"[{index}]")
            continue
        if not matches and explicit:
            t.report("catalogs", f"no file matches {pattern!r}", f"[{index}]")
        found.extend(m for m in matches if m not in found)
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# Control and node files


def _server(t: _Table, base: Path) -> ServerConfig:
    config = ServerConfig(
        bind=t.get("bind", _list(_bind, non_empty=True), (DEFAULT_BIND,)),
        shutdown_grace_s=t.get("shutdown_grace_s", _non_negative, 30.0),
        max_body_bytes=t.get("max_body_bytes", _integer(1), 26214400),
        tls=_tls(t.table("tls"), base, server_side=True),
        header_timeout_s=t.get("header_timeout_s", _positive, 10.0),
        body_timeout_s=t.get("body_timeout_s", _positive, 30.0),
        write_timeout_s=t.get("write_timeout_s", _positive, 60.0),
        max_connections=t.get("max_connections", _integer(1), 4096),
    )
    t.done()
    return config


def _nodes(t: _Table, base: Path, server: ServerConfig) -> NodesConfig:
    config = NodesConfig(
        bind=t.get("bind", _list(_bind), ()),
        stale_after_s=t.get("stale_after_s", _positive, 15.0),
        forget_after_s=t.get("forget_after_s", _positive, 86400.0),
        tls=_tls(t.table("tls"), base, server_side=True),
        allowed_upstream_networks=t.get("allowed_upstream_networks", _list(_network), ()),
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


def _bind_key(bind: str) -> tuple[str, int] | None:
    try:
        host, port = parse_bind(bind)
    except ValueError:
        return None
    return (host, port) if port else None


def _auth_keys(t: _Table, environ: Mapping[str, str]) -> tuple[AuthKeyConfig, ...]:
    keys: list[AuthKeyConfig] = []
    for index, k in enumerate(t.tables("keys")):
        name = k.get("name", _identifier, "", required=True)
        key_env, key = _secret(k, "key_env", environ, required=True)
        scopes = k.get("scopes", _list(_choice(SCOPES), non_empty=True), (), required=True)
        models = k.get("models", _list(_text), ())
        hosts = k.get("hosts", _list(_identifier), ())
        k.done()
        if hosts and "node" not in scopes:
            t.report("keys", "hosts applies only to keys with the 'node' scope",
                     f"[{index}].hosts")
        if name and any(other.name == name for other in keys):
            t.report("keys", f"duplicate key name {name!r}", f"[{index}].name")
        if key and any(other.key == key for other in keys):
            t.report("keys", "the same key as another entry", f"[{index}].key_env")
        keys.append(AuthKeyConfig(name, key or "", key_env or "", frozenset(scopes), models,
                                  hosts))
    t.done()
    return tuple(keys)


def _labels_section(t: _Table) -> Mapping[str, str | tuple[str, ...]]:
    labels = t.get("labels", _labels, EMPTY)
    t.done()
    return labels


def _parse_control(data: dict[str, Any], path: Path, environ: Mapping[str, str],
                   problems: list[str]) -> ControlConfig:
    top = _Table(data, "", problems)
    base = path.parent
    server = _server(top.table("server"), base)
    nodes = _nodes(top.table("nodes"), base, server)
    registry_table = top.table("registry")
    registry = RegistryConfig(
        registry_table.get("path", _path_in(base), base / "state/geniehive.sqlite3")
    )
    registry_table.done()
    routing = _section(top, "routing", RoutingConfig, {
        "strategy": _choice(STRATEGIES), "max_attempts": _integer(1),
        "connect_timeout_s": _positive, "first_byte_timeout_s": _positive,
        "idle_stream_timeout_s": _positive,
    })
    breaker = _section(top, "breaker", BreakerConfig,
                       {"failures": _integer(1), "open_s": _positive})
    prober = _section(top, "prober", ProberConfig, {
        "interval_s": _positive, "timeout_s": _positive,
        "down_after": _integer(1), "up_after": _integer(1),
    })
    discovery = _section(top, "discovery", DiscoveryConfig, {"interval_s": _positive})
    plugins = _section(top, "plugins", PluginsConfig,
                       {"paths": _list(_folder_in(base)), "entry_points": _bool})
    auth_keys = _auth_keys(top.table("auth"), environ)
    catalogs = _catalog_paths(top.table("roles"), base)
    local_labels = _labels_section(top.table("local"))
    upstreams = _upstreams(top, base, environ)
    logging = _logging(top.table("logging"))
    top.done()
    roles = _load_catalogs(catalogs, problems)
    return ControlConfig(
        server=server, nodes=nodes, registry=registry, auth_keys=auth_keys, routing=routing,
        breaker=breaker, prober=prober, discovery=discovery, plugins=plugins,
        roles=MappingProxyType(roles), role_catalogs=catalogs, local_labels=local_labels,
        upstreams=upstreams, logging=logging, source=path,
    )


def _section(top: _Table, key: str, kind: Callable[..., Any],
             checks: Mapping[str, Callable[[Any], Any]]) -> Any:
    """A flat section whose keys map one to one onto the fields of `kind`."""
    t = top.table(key)
    defaults = kind()
    values = {
        name: t.get(name, check, getattr(defaults, name)) for name, check in checks.items()
    }
    t.done()
    return kind(**values)


def _load_catalogs(paths: Sequence[Path], problems: list[str]) -> dict[str, Role]:
    catalogs = []
    for path in paths:
        prefix = f"{path.name}: "
        file_problems: list[str] = []
        data = _read_toml(path, file_problems)
        roles = _parse_catalog(data, file_problems) if data is not None else {}
        problems.extend(prefix + p for p in file_problems)
        catalogs.append((prefix, path.name, roles))
    return _merge_catalogs(catalogs, problems)


def _parse_node(data: dict[str, Any], path: Path, environ: Mapping[str, str],
                problems: list[str]) -> NodeConfig:
    top = _Table(data, "", problems)
    base = path.parent
    n = top.table("node")
    node = NodeSection(
        host_id=n.get("host_id", _identifier, "", required=True),
        address=n.get("address", _address, "", required=True),
        display_name=n.get("display_name", _string, None),
        labels=n.get("labels", _labels, EMPTY),
    )
    n.done()
    c = top.table("control")
    node_key_env, node_key = _secret(c, "node_key_env", environ)
    control = ControlLink(
        url=c.get("url", _url, "", required=True),
        node_key=node_key,
        node_key_env=node_key_env,
        tls=_tls(c.table("tls"), base, server_side=False),
    )
    c.done()
    heartbeat = top.table("heartbeat")
    interval_s = heartbeat.get("interval_s", _positive, 5.0)
    heartbeat.done()
    inventory = top.table("inventory")
    model_roots = inventory.get("model_roots", _list(_path_in(base)), ())
    inventory.done()
    config = NodeConfig(
        node=node, control=control, heartbeat_interval_s=interval_s, model_roots=model_roots,
        upstreams=_upstreams(top, base, environ), logging=_logging(top.table("logging")),
        source=path,
    )
    top.done()
    return config


# ---------------------------------------------------------------------------------------------
# Entry points


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"cannot read file: {exc.strerror or exc}")
    except UnicodeDecodeError:
        problems.append("cannot read file: not UTF-8 text")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"invalid TOML: {exc}")  # the message names line and column
    return None


def _load(path: Path, parse: Callable[[dict[str, Any], list[str]], Any]) -> Any:
    problems: list[str] = []
    data = _read_toml(path, problems)
    result = parse(data, problems) if data is not None else None
    if problems:
        raise ConfigError(problems)
    return result


def load_control(path: Path, environ: Mapping[str, str]) -> ControlConfig:
    """Load the control file and the role catalogs it names; raises ConfigError."""
    return _load(path, lambda data, problems: _parse_control(data, path, environ, problems))


def load_node(path: Path, environ: Mapping[str, str]) -> NodeConfig:
    """Load a node file; raises ConfigError."""
    return _load(path, lambda data, problems: _parse_node(data, path, environ, problems))


def load_role_catalog(path: Path) -> dict[str, Role]:
    """Load one role catalog, without cross-file checks; raises ConfigError.

    Problems are prefixed with the file name, as when the control file loads it.
    """
    try:
        return _load(path, _parse_catalog)
    except ConfigError as exc:
        raise ConfigError([f"{path.name}: {p}" for p in exc.problems]) from None


def file_kind(data: Mapping[str, Any]) -> str:
    """`node`, `catalog` or `control`, from a parsed file's top-level keys."""
    if "node" in data:
        return "node"
    roles = data.get("roles")
    if set(data) == {"roles"} and isinstance(roles, dict) and "catalogs" not in roles:
        return "catalog"
    return "control"


def check_files(paths: Sequence[Path], environ: Mapping[str, str]) -> list[str]:
    """Every problem of any mix of control, node and catalog files, each prefixed `file: `.

    The role catalogs given in one call are checked together: they are merged, so a fallback
    may name a role of another catalog in the call, and a role id may appear only once.
    """
    problems: list[str] = []
    catalogs: list[tuple[str, str, Mapping[str, Role]]] = []
    for path in paths:
        prefix = f"{path}: "
        file_problems: list[str] = []
        data = _read_toml(path, file_problems)
        if data is not None:
            kind = file_kind(data)
            if kind == "node":
                _parse_node(data, path, environ, file_problems)
            elif kind == "catalog":
                catalogs.append((prefix, str(path), _parse_catalog(data, file_problems)))
            else:
                _parse_control(data, path, environ, file_problems)
        problems.extend(prefix + p for p in file_problems)
    _merge_catalogs(catalogs, problems)
    return problems
