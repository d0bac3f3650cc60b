"""API keys and scopes (docs/deployment.md, "Keys" and "Threat model").

Rule: keys are compared in constant time and never logged or echoed. With no key configured
at all the gateway runs in open mode: every request is allowed and presented keys are
ignored (the daemon only allows that when every bind is loopback).

Every principal carries its key's `KeyLimits` (in flight, per minute, priority class and
weight), which the admission queue applies; the open principal has none.

Named keys (`gh_<key id>_<secret>`) are looked up by key id and checked against a salted hash.
That check is slow on purpose: `lookup` answers what it can at once and hands the rest back
as a `PendingCheck` to run off the event loop (geniehive/gate.py); `FailureBuckets` throttles
the client addresses that keep presenting invalid keys.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from geniehive.errors import AuthenticationFailed, PermissionDenied

SCOPES = ("inference", "read", "operate", "admin", "node")
PRIORITIES = ("high", "normal", "low")  # the admission queue's classes, first served first
MAX_WEIGHT = 1000.0  # the largest share a key may have against the others of its class


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What the admission queue allows one key (None: no limit; docs/deployment.md, "Keys")."""

    max_in_flight: int | None = None  # requests served at once; more wait for a slot
    requests_per_minute: int | None = None  # more are answered 429 `rate_limited`
    priority: str | None = None  # one of PRIORITIES: the key's default and highest class
    weight: float = 1.0  # its share against the other keys of its class


NO_LIMITS = KeyLimits()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: the key's name (never the key), its scopes and model globs."""

    name: str
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    # Node traffic only: the host ids this key may register and heartbeat (None: any).
    hosts: frozenset[str] | None = None
    limits: KeyLimits = NO_LIMITS

    def may_use_model(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, g) for g in self.models)

    def may_speak_for(self, host_id: str) -> bool:
        return self.hosts is None or host_id in self.hosts


OPEN = Principal("open", frozenset(SCOPES))


@dataclass(frozen=True, slots=True)
class StaticKey:
    name: str
    digest: bytes
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    hosts: frozenset[str] | None = None  # node traffic: the host ids it may speak for
    limits: KeyLimits = NO_LIMITS


def bound_hosts(scopes: frozenset[str], hosts: Iterable[str]) -> frozenset[str] | None:
    """The hosts a node key may speak for: None (any) for a key without a list or the scope."""
    bound = frozenset(hosts)
    return bound if bound and "node" in scopes else None


@dataclass(frozen=True, slots=True)
class NamedKey:
    key_id: str
    name: str
    salt: bytes
    hash: bytes
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    disabled: bool = False
    host: str | None = None  # the one host id a key with the node scope speaks for
    limits: KeyLimits = NO_LIMITS


def named_key_host(name: str, scopes: Iterable[str], host: str | None) -> str | None:
    """The host a named key is bound to: its own `host`, else its name when it has the node
    scope (a named node key always speaks for exactly one host)."""
    if "node" not in scopes:
        return None
    return host or name


@dataclass(frozen=True, slots=True)
class PendingCheck:
    """A named key whose secret is still to be checked against its salted hash."""

    named: NamedKey
    secret: str = field(repr=False)
    digest: bytes = field(repr=False)

    def matches(self) -> bool:
        """Run the salted hash (milliseconds: meant for a worker thread)."""
        return hmac.compare_digest(hash_secret(self.named.salt, self.secret), self.named.hash)


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 10_000)


def new_named_key() -> tuple[str, str, bytes, bytes]:
    """A fresh named key: (key id, full key shown once, salt, hash)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24).replace("_", "x")
    salt = secrets.token_bytes(16)
    return key_id, f"gh_{key_id}_{secret}", salt, hash_secret(salt, secret)



class HeaderLookup(Protocol):
    """Request headers looked up by lower-case name: a dict, or Quart's case-blind Headers."""

    def get(self, key: str, /) -> str | None: ...


def presented_key(headers: HeaderLookup, *, node: bool = False) -> str | None:
    """The key a request carries: `Authorization: Bearer`, `X-Api-Key` (or the node header)."""
    if node:
        value = headers.get("x-geniehive-node-key")
        if value:
            return value
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key") or None


class Authenticator:
    def __init__(self, static: Iterable[tuple[str, str, Iterable[str], Iterable[str],
                                              Iterable[str]]] = (),
                 limits: Mapping[str, KeyLimits] | None = None):
        """`static`: (name, key, scopes, model globs, host ids) of each configured key;
        `limits`: the limits of the static keys that have any, by key name."""
        limits = limits or {}
        self.static = tuple(
            StaticKey(name, hashlib.sha256(key.encode()).digest(), frozenset(scopes), tuple(m),
                      bound_hosts(frozenset(scopes), hosts), limits.get(name, NO_LIMITS))
            for name, key, scopes, m, hosts in static
        )
        self.named: dict[str, NamedKey] = {}
        # Verified named keys by the SHA-256 of the whole key: the salted hash is slow on
        # purpose, and a named key is checked on every request it makes.
        self._verified: dict[bytes, Principal] = {}

    @property
    def open_mode(self) -> bool:
        return not self.static and not self.named

    def set_named(self, keys: Iterable[NamedKey]) -> None:
        self.named = {k.key_id: k for k in keys}
        self._verified.clear()  # a disabled or deleted key must stop working at once

    def identify(self, key: str | None) -> Principal | None:
        """The principal of a key, or None when it is unknown or disabled."""
        if key is None:
            return None
        found = self.lookup(key)
        if isinstance(found, PendingCheck):
            return self.finish(found, found.matches())
        return found

    def lookup(self, key: str) -> Principal | PendingCheck | None:
        """What can be told of a key without the salted hash: its principal (a static key or
        an already verified named key), None (unknown or disabled) or the check still due."""
        digest = hashlib.sha256(key.encode()).digest()
        if key.startswith("gh_") and key.count("_") >= 2:
            known = self._verified.get(digest)
            if known is not None:
                return known
            _, key_id, secret = key.split("_", 2)
            named = self.named.get(key_id)
            if named is not None:
                return None if named.disabled else PendingCheck(named, secret, digest)
        found = None
        for static in self.static:  # no early exit: the time spent does not depend on the key
            if hmac.compare_digest(digest, static.digest):
                found = static
        if found is None:
            return None
        return Principal(found.name, found.scopes, found.models, found.hosts, found.limits)

    def finish(self, check: PendingCheck, matched: bool) -> Principal | None:
        """The principal of a checked named key (cached), or None. A key disabled, deleted or
        replaced while its hash ran does not count."""
        current = self.named.get(check.named.key_id)
        if not matched or current is None or current.disabled or current.hash != check.named.hash:
            return None
        host = named_key_host(current.name, current.scopes, current.host)
        principal = Principal(current.name, current.scopes, current.models,
                              None if host is None else frozenset({host}), current.limits)
        self._verified[check.digest] = principal
        return principal

    def authorize(self, headers: HeaderLookup, scope: str) -> Principal:
        """The principal allowed `scope`; raises AuthenticationFailed or PermissionDenied."""
        if self.open_mode:
            return OPEN
        key = presented_key(headers, node=scope == "node")
        if key is None:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'"
            )
        principal = self.identify(key)
        if principal is None:
            raise AuthenticationFailed("invalid API key")
        if scope not in principal.scopes:
            raise PermissionDenied(f"this key lacks the '{scope}' scope")
        return principal


class FailureBuckets:
    """A token bucket of invalid-key attempts per client address; time comes in as `now`.

    An address may fail `burst` times in a row, then once per `1 / refill_per_s` seconds.
    At most `max_addresses` are remembered (the one that failed longest ago is dropped first),
    so a flood of addresses costs bounded memory.
    """

    def __init__(
        self, *, burst: int = 10, refill_per_s: float = 1.0, max_addresses: int = 4096
    ) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, address: str, now: float) -> float:
        entry = self._buckets.get(address)
        if entry is None:
            return float(self.burst)
        tokens, at = entry
        return min(float(self.burst), tokens + (now - at) * self.refill_per_s)

    def retry_after(self, address: str, now: float) -> float:
        """0 when `address` may present a key now, else the seconds until it may."""
        if address not in self._buckets:
            return 0.0
        tokens = self._tokens(address, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.refill_per_s

    def record_failure(self, address: str, now: float) -> None:
        tokens = self._tokens(address, now)
        self._buckets[address] = (max(tokens - 1, 0.0), now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
