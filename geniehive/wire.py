"""JSON forms of the value types: `encode_*` to plain dicts and lists, `decode_*` back.

Rule: pure (no I/O, no clock). `decode_*` rebuilds values from what `encode_*` produced, which
is trusted input such as the registry's own rows: it ignores unknown keys and fills missing
ones with the model defaults, so a row written by an older or newer schema still decodes. It
does not validate; untrusted node payloads go through their own `parse_*` functions first.

Decoded mappings are read-only views and JSON arrays become tuples, so a decoded value is as
immutable as one built in code. `Service.api_key` is a secret and is never encoded. An
asset's `capabilities` (a frozenset) is encoded as a sorted list and decoded back to a
frozenset; a row without the key (written before it existed) decodes as None, unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from geniehive.models import (
    Asset,
    BenchmarkSample,
    Host,
    Observed,
    Policy,
    Role,
    RoutingPolicy,
    Service,
    ServiceState,
)

Json = dict[str, Any]


def _plain(value: Any) -> Any:
    """A field value as JSON-ready data: tuples become lists, sets sorted lists, mappings
    dicts."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _frozen(value: Any) -> Any:
    """A top-level JSON value as the models hold it: lists become tuples, dicts views."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return MappingProxyType(value)
    return value


def _flat(value: Any) -> Json:
    return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}


def _pick(cls: type, data: Mapping[str, Any], **nested: Any) -> Any:
    """Build `cls` from the keys of `data` it knows; `nested` overrides decoded sub-values."""
    names = {f.name for f in fields(cls)}
    kwargs = {key: _frozen(value) for key, value in data.items() if key in names}
    kwargs.update(nested)
    return cls(**kwargs)


def encode_policy(policy: Policy) -> Json:
    return _flat(policy)


def decode_policy(data: Mapping[str, Any]) -> Policy:
    return _pick(Policy, data)


def encode_asset(asset: Asset) -> Json:
    encoded = _flat(asset)
    encoded["policy"] = None if asset.policy is None else encode_policy(asset.policy)
    return encoded


def decode_asset(data: Mapping[str, Any]) -> Asset:
    policy = data.get("policy")
    capabilities = data.get("capabilities")
    return _pick(
        Asset,
        data,
        policy=None if policy is None else decode_policy(policy),
        capabilities=None if capabilities is None else frozenset(capabilities),
    )


def encode_service_state(state: ServiceState) -> Json:
    return _flat(state)


def decode_service_state(data: Mapping[str, Any]) -> ServiceState:
    return _pick(ServiceState, data)


def encode_observed(observed: Observed) -> Json:
    return _flat(observed)


def decode_observed(data: Mapping[str, Any]) -> Observed:
    return _pick(Observed, data)


def encode_routing_policy(routing: RoutingPolicy) -> Json:
    return _flat(routing)


def decode_routing_policy(data: Mapping[str, Any]) -> RoutingPolicy:
    return _pick(RoutingPolicy, data)


def encode_role(role: Role) -> Json:
    encoded = _flat(role)
    encoded["policy"] = encode_policy(role.policy)
    encoded["routing"] = encode_routing_policy(role.routing)
    return encoded


def decode_role(data: Mapping[str, Any]) -> Role:
    return _pick(
        Role,
        data,
        policy=decode_policy(data.get("policy") or {}),
        routing=decode_routing_policy(data.get("routing") or {}),
    )


def encode_service(service: Service) -> Json:
    """The service without its `api_key`, which never leaves the process."""
    encoded = _flat(service)
    del encoded["api_key"]
    encoded["assets"] = [encode_asset(asset) for asset in service.assets]
    encoded["state"] = encode_service_state(service.state)
    encoded["observed"] = encode_observed(service.observed)
    return encoded


def decode_service(data: Mapping[str, Any]) -> Service:
    fields_in = {key: value for key, value in data.items() if key != "api_key"}
    return _pick(
        Service,
        fields_in,
        assets=tuple(decode_asset(asset) for asset in data.get("assets") or ()),
        state=decode_service_state(data.get("state") or {}),
        observed=decode_observed(data.get("observed") or {}),
    )


def encode_host(host: Host) -> Json:
    return _flat(host)


def decode_host(data: Mapping[str, Any]) -> Host:
    return _pick(Host, data)


def encode_sample(sample: BenchmarkSample) -> Json:
    return _flat(sample)


def decode_sample(data: Mapping[str, Any]) -> BenchmarkSample:
    return _pick(BenchmarkSample, data)
