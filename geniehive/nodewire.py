"""Node payloads: `parse_*` what a node sends, `render_*` what the agent sends (register and
heartbeat; docs/architecture.md, "Nodes and the control plane").

Rule: pure. `parse_register` and `parse_heartbeat` take decoded JSON from an untrusted node
and either return model values or raise `InvalidRequest` whose message starts with the
dotted path of the first bad field (`services[0].base_url: expected an http(s) URL`) and
whose `param` is that path. Whatever the payload holds, nothing else is raised.

Choices where the spec is silent:
- unknown fields are rejected (a misspelt field would otherwise be dropped without a word);
- `null` in an optional field means "not sent" and takes the default;
- an asset may also carry `expires_at` and `policy` (a configured request policy on the
  node), which the control plane keeps as it would from its own file;
- the host id `local` is reserved for the control plane's own upstreams;
- a service may carry its upstream's `keep_alive` (how long a load keeps a model) and its
  observed state a configured `max_loaded_models`, both from the node's file;
- an asset's `capabilities` must be a list of strings; names this control plane does not
  know (a newer node's) are dropped rather than rejected, so an older control plane still
  takes a newer node's payload; `null` means unknown, `[]` known to have none.
`render_*` produce exactly what `parse_*` accept (absent values left out).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from geniehive.errors import InvalidRequest
from geniehive.models import (
    AVAILABILITIES,
    CAPABILITIES,
    DIALECTS,
    HEALTHS,
    KEEP_ALIVE_EXPECTED,
    LOCAL_HOST_ID,
    MANAGED_STATES,
    OPERATIONS,
    SYSTEM_PROMPT_POSITIONS,
    Asset,
    Host,
    Observed,
    Policy,
    Service,
    ServiceState,
    valid_id,
    valid_keep_alive,
)
from geniehive.wire import encode_policy

MAX_JSON_DEPTH = 16
_ADAPTER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
_COUNT_FIELDS = ("queue_depth", "in_flight", "slots_total", "slots_busy", "vram_used_bytes",
                 "loaded_model_count")
_RATE_FIELDS = ("kv_cache_usage", "p50_latency_ms", "tokens_per_sec")
_LIMIT_FIELDS = ("max_loaded_models",)

Check = Callable[[Any, str], Any]
# adapter kind -> the operations it serves (empty: any)
KnownAdapters = Mapping[str, Collection[str]]


def _fail(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{where or 'body'}: {message}", param=where or None)


class _Object:
    """One JSON object being read: remembers the fields taken and rejects the others."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise _fail(where, "expected an object")
        self.data = data
        self.where = where
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def required(self, key: str, check: Check) -> Any:
        self._seen.add(key)
        if self.data.get(key) is None:
            raise _fail(self.path(key), "required field missing")
        return check(self.data[key], self.path(key))

    def optional(self, key: str, check: Check, default: Any = None) -> Any:
        self._seen.add(key)
        value = self.data.get(key)
        return default if value is None else check(value, self.path(key))

    def done(self) -> None:
        for key in self.data:
            if key not in self._seen:
                raise _fail(self.path(str(key)), "unknown field")


# --- checks: (value, dotted path) -> converted value, or raise InvalidRequest ---------------


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "expected a string")
    return value


def _text(value: Any, where: str) -> str:
    if not _string(value, where).strip():
        raise _fail(where, "expected a non-empty string")
    return value


def _identifier(value: Any, where: str) -> str:
    if not valid_id(value):
        _string(value, where)
        raise _fail(where, "expected an id of 1-128 letters, digits and . _ : / -")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "expected true or false")
    return value


def _count(value: Any, where: str) -> int:
    # bool is an int subclass; `true` where a number is expected is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, "expected an integer >= 0")
    return value


def _positive_int(value: Any, where: str) -> int:
    if _count(value, where) < 1:
        raise _fail(where, "expected an integer >= 1")
    return value


def _keep_alive(value: Any, where: str) -> str | int:
    if not valid_keep_alive(value):
        raise _fail(where, f"expected {KEEP_ALIVE_EXPECTED}")
    return value


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise _fail(where, "expected a finite number >= 0")
    return float(value)


def _choice(options: Sequence[str]) -> Check:
    def check(value: Any, where: str) -> str:
        if _string(value, where) not in options:
            raise _fail(where, f"expected one of {', '.join(options)}")
        return value

    return check


def _address(value: Any, where: str) -> str:
    if not _text(value, where) or len(value) > 255 \
            or any(c.isspace() or c in "/?#@" for c in value):
        raise _fail(where, "expected a host name or IP address")
    return value


def _url(value: Any, where: str) -> str:
    """An http(s) server root; a trailing slash is dropped so paths can be appended."""
    try:
        parts = urlsplit(_string(value, where))
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(where, "expected an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or any(c.isspace() for c in value):
        raise _fail(where, "expected an http(s) URL")
    return value.rstrip("/")


def _list(item: Check) -> Check:
    def check(value: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _fail(where, "expected a list")
        return tuple(item(element, f"{where}[{index}]") for index, element in enumerate(value))

    return check


def _json_value(value: Any, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _fail(where, f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(where, "expected string keys")
            _json_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_value(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, "expected a finite number")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise _fail(where, "expected a JSON value")


def _json_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "expected an object")
    _json_value(value, where, 1)
    return MappingProxyType(dict(value))


def _labels(value: Any, where: str) -> Mapping[str, str | tuple[str, ...]]:
    """Host labels: each a string or a list of strings (the routing gates read both)."""
    if not isinstance(value, dict):
        raise _fail(where, "expected an object")
    out: dict[str, str | tuple[str, ...]] = {}
    for key, item in value.items():
        path = f"{where}.{key}"
        if isinstance(item, list):
            out[key] = _list(_string)(item, path)
        elif isinstance(item, str):
            out[key] = item
        else:
            raise _fail(path, "expected a string or a list of strings")
    return MappingProxyType(out)


# --- the payload's parts --------------------------------------------------------------------


def _policy(value: Any, where: str) -> Policy:
    o = _Object(value, where)
    policy = Policy(
        system_prompt=o.optional("system_prompt", _string),
        system_prompt_position=o.optional(
            "system_prompt_position", _choice(SYSTEM_PROMPT_POSITIONS), "prepend"
        ),
        body_defaults=o.optional("body_defaults", _json_object, MappingProxyType({})),
        body_overrides=o.optional("body_overrides", _json_object, MappingProxyType({})),
        strip_reasoning=o.optional("strip_reasoning", _bool),
    )
    o.done()
    return policy


def _capabilities(value: Any, where: str) -> frozenset[str]:
    """A list of capability names: each a string, those outside CAPABILITIES dropped."""
    names = _list(_string)(value, where)
    return frozenset(name for name in names if name in CAPABILITIES)


def _asset(value: Any, where: str) -> Asset:
    o = _Object(value, where)
    asset = Asset(
        asset_id=o.required("asset_id", _text),
        loaded=o.optional("loaded", _bool),
        context_length=o.optional("context_length", _positive_int),
        family=o.optional("family", _text),
        aliases=o.optional("aliases", _list(_text), ()),
        size_bytes=o.optional("size_bytes", _count),
        vram_bytes=o.optional("vram_bytes", _count),
        expires_at=o.optional("expires_at", _string),
        policy=o.optional("policy", _policy),
        max_context=o.optional("max_context", _positive_int),
        capabilities=o.optional("capabilities", _capabilities),
    )
    o.done()
    return asset


def _assets(value: Any, where: str) -> tuple[Asset, ...]:
    assets = _list(_asset)(value, where)
    seen: set[str] = set()
    for index, asset in enumerate(assets):
        if asset.asset_id in seen:
            raise _fail(f"{where}[{index}].asset_id", f"duplicate asset id {asset.asset_id!r}")
        seen.add(asset.asset_id)
    return assets


def _state(value: Any, where: str) -> ServiceState:
    o = _Object(value, where)
    state = ServiceState(
        availability=o.optional("availability", _choice(AVAILABILITIES), "available"),
        accept_requests=o.optional("accept_requests", _bool, True),
        health=o.optional("health", _choice(HEALTHS), "unknown"),
    )
    o.done()
    return state


def _observed(value: Any, where: str) -> Observed:
    o = _Object(value, where)
    values = {name: o.optional(name, _count) for name in _COUNT_FIELDS}
    values.update({name: o.optional(name, _rate) for name in _RATE_FIELDS})
    values.update({name: o.optional(name, _positive_int) for name in _LIMIT_FIELDS})
    o.done()
    return Observed(**values)


def _service(value: Any, where: str, host_id: str, adapters: KnownAdapters | None) -> Service:
    o = _Object(value, where)
    service_id = o.required("service_id", _identifier)
    operation = o.required("operation", _choice(OPERATIONS))
    adapter = o.required("adapter", _adapter_kind)
    if adapters is not None:
        _check_adapter(adapters, adapter, operation, o.path("adapter"))
    service = Service(
        service_id=service_id,
        host_id=host_id,
        operation=operation,
        adapter=adapter,
        base_url=o.required("base_url", _url),
        assets=o.optional("assets", _assets, ()),
        state=o.optional("state", _state, ServiceState()),
        observed=o.optional("observed", _observed, Observed()),
        keep_alive=o.optional("keep_alive", _keep_alive),
        dialect=o.optional("dialect", _choice(DIALECTS), "native"),
        managed=o.optional("managed", _choice(MANAGED_STATES)),
    )
    o.done()
    return service


def _adapter_kind(value: Any, where: str) -> str:
    if not _ADAPTER_RE.match(_string(value, where)):
        raise _fail(where, "expected an adapter kind (a letter, then letters, digits, _ . -)")
    return value


def _check_adapter(adapters: KnownAdapters, kind: str, operation: str, where: str) -> None:
    if kind not in adapters:
        known = ", ".join(sorted(adapters)) or "none"
        raise _fail(where, f"unknown adapter {kind!r} (known: {known})")
    served = adapters[kind]
    if served and operation not in served:
        raise _fail(where, f"adapter {kind!r} does not serve {operation!r}")


def _services(
    o: _Object, host_id: str, adapters: KnownAdapters | None
) -> list[Service]:
    where = o.path("services")
    check = _list(lambda value, path: _service(value, path, host_id, adapters))
    services = list(o.required("services", check))
    seen: set[str] = set()
    for index, service in enumerate(services):
        if service.service_id in seen:
            raise _fail(f"{where}[{index}].service_id",
                        f"duplicate service id {service.service_id!r}")
        seen.add(service.service_id)
    return services


def _host_id(o: _Object) -> str:
    host_id = o.required("host_id", _identifier)
    if host_id == LOCAL_HOST_ID:
        raise _fail("host_id", f"{LOCAL_HOST_ID!r} is reserved for the control plane itself")
    return host_id


# --- entry points ---------------------------------------------------------------------------


def parse_register(
    payload: Any, *, adapters: KnownAdapters | None = None
) -> tuple[Host, list[Service]]:
    """The host and services of a register payload (no clock: timestamps are left unset).

    With `adapters`, each service's adapter must be a known kind serving its operation.
    Raises InvalidRequest naming the field.
    """
    o = _Object(payload, "")
    host_id = _host_id(o)
    host = Host(
        host_id=host_id,
        address=o.required("address", _address),
        display_name=o.optional("display_name", _string),
        labels=o.optional("labels", _labels, MappingProxyType({})),
        capabilities=o.optional("capabilities", _json_object, MappingProxyType({})),
        resources=o.optional("resources", _json_object, MappingProxyType({})),
    )
    services = _services(o, host_id, adapters)
    o.done()
    return host, services


def parse_heartbeat(
    payload: Any, *, adapters: KnownAdapters | None = None, last: LastServices | None = None
) -> tuple[str, Mapping[str, Any], list[Service]]:
    """(host id, metrics, services) of a heartbeat. Raises InvalidRequest naming the field.

    `last` is what this parse read from the same host's previous heartbeat: services sent
    exactly as then (equal as JSON values) are taken from it instead of checked again."""
    o = _Object(payload, "")
    host_id = _host_id(o)
    metrics = o.optional("metrics", _json_object, MappingProxyType({}))
    if last is not None and last.host_id == host_id and last.adapters is adapters and \
            isinstance(payload, dict) and payload.get("services") == last.sent:
        services = o.required("services", lambda value, path: last.services)
    else:
        services = _services(o, host_id, adapters)
    o.done()
    return host_id, metrics, services


class LastServices:
    """A host's services as its last heartbeat sent them (`sent`, the JSON value) and as
    they were read (`services`), against the adapters known then."""

    __slots__ = ("adapters", "host_id", "sent", "services")

    def __init__(self, host_id: str, sent: Any, services: list[Service],
                 adapters: KnownAdapters | None) -> None:
        self.host_id, self.sent, self.services, self.adapters = (
            host_id, sent, services, adapters)


def _plain(value: Any) -> Any:
    """JSON-ready data: tuples become lists, mappings dicts."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def render_asset(asset: Asset) -> dict[str, Any]:
    out: dict[str, Any] = {"asset_id": asset.asset_id}
    for name in ("loaded", "context_length", "max_context", "family", "size_bytes",
                 "vram_bytes", "expires_at"):
        value = getattr(asset, name)
        if value is not None:
            out[name] = value
    if asset.aliases:
        out["aliases"] = list(asset.aliases)
    if asset.capabilities is not None:
        out["capabilities"] = sorted(asset.capabilities)
    if asset.policy is not None:
        policy = encode_policy(asset.policy)
        out["policy"] = {k: v for k, v in policy.items() if v is not None}
    return out


def render_service(service: Service) -> dict[str, Any]:
    """A service as a node sends it (its host is implied by the payload); `managed` only for
    a managed upstream, so payloads of unmanaged ones read as before."""
    observed = {name: getattr(service.observed, name)
                for name in _COUNT_FIELDS + _RATE_FIELDS + _LIMIT_FIELDS}
    out: dict[str, Any] = {
        "service_id": service.service_id,
        "operation": service.operation,
        "adapter": service.adapter,
        "base_url": service.base_url,
        "assets": [render_asset(asset) for asset in service.assets],
        "state": {
            "availability": service.state.availability,
            "accept_requests": service.state.accept_requests,
            "health": service.state.health,
        },
        "observed": {k: v for k, v in observed.items() if v is not None},
    }
    if service.keep_alive is not None:
        out["keep_alive"] = service.keep_alive
    if service.dialect != "native":
        out["dialect"] = service.dialect
    if service.managed is not None:
        out["managed"] = service.managed
    return out


def render_register(host: Host, services: Sequence[Service]) -> dict[str, Any]:
    """The register payload for `host` and its `services`."""
    out: dict[str, Any] = {"host_id": host.host_id, "address": host.address}
    if host.display_name is not None:
        out["display_name"] = host.display_name
    out["labels"] = _plain(host.labels)
    out["capabilities"] = _plain(host.capabilities)
    out["resources"] = _plain(host.resources)
    out["services"] = [render_service(service) for service in services]
    return out


def render_heartbeat(
    host_id: str, metrics: Mapping[str, Any], services: Sequence[Service]
) -> dict[str, Any]:
    """The heartbeat payload; `services` is always sent (empty means none now)."""
    return {
        "host_id": host_id,
        "metrics": _plain(metrics),
        "services": [render_service(service) for service in services],
    }


# --- orders (the long poll of POST /v1/nodes/orders) ------------------------------------------

ORDER_ACTIONS = ("start", "stop")


def parse_orders_poll(payload: Any) -> str:
    """The host id of an orders poll (`{"host_id"}`). Raises InvalidRequest naming the field."""
    o = _Object(payload, "")
    host_id = _host_id(o)
    o.done()
    return host_id


def render_orders_poll(host_id: str) -> dict[str, Any]:
    return {"host_id": host_id}


def parse_orders(payload: Any) -> list[dict[str, str]]:
    """The orders of an answer (`{"orders": [{"id", "action", "upstream_id"}]}`), checked.

    Raises InvalidRequest naming the field (a node reads its control plane's answer with it).
    """
    o = _Object(payload, "")
    orders = o.required("orders", _list(_order))
    o.done()
    return list(orders)


def _order(value: Any, where: str) -> dict[str, str]:
    o = _Object(value, where)
    order = {
        "id": o.required("id", _identifier),
        "action": o.required("action", _choice(ORDER_ACTIONS)),
        "upstream_id": o.required("upstream_id", _identifier),
    }
    o.done()
    return order


# --- the register and heartbeat answer, as the node reads it ---------------------------------


def parse_active_upstreams(answer: Any) -> list[str]:
    """The `active_upstreams` of a register or heartbeat answer: the node's upstream ids the
    control plane is using now. Never raises: a missing or malformed field (not a list) means
    none, and items that are not ids are skipped."""
    if not isinstance(answer, Mapping):
        return []
    ids = answer.get("active_upstreams")
    if not isinstance(ids, list):
        return []
    return [uid for uid in ids if valid_id(uid)]
