"""API keys and scopes (SPEC §13).

Rule: keys are compared in constant time and never logged or echoed. With no key configured
at all the gateway runs in open mode: every request is allowed and presented keys are
ignored (the daemon only allows that when every bind is loopback).

Named keys (`gh_<key id>_<secret>`) are looked up by key id and checked against a salted hash.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geniehive.errors import AuthenticationFailed, PermissionDenied

SCOPES = ("inference", "read", "operate", "admin", "node")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: the key's name (never the key), its scopes and model globs."""

    name: str
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    # Node traffic only: the host ids this key may register and heartbeat (None: any).
    hosts: frozenset[str] | None = None

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


def named_key_host(name: str, scopes: Iterable[str], host: str | None) -> str | None:
    """The host a named key is bound to: its own `host`, else its name when it has the node
    scope (a named node key always speaks for exactly one host)."""
    if "node" not in scopes:
        return None
    return host or name


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 10_000)


def new_named_key() -> tuple[str, str, bytes, bytes]:
    """A fresh named key: (key id, full key shown once, salt, hash)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24).replace("_", "x")
    salt = secrets.token_bytes(16)
    return key_id, f"gh_{key_id}_{secret}", salt, hash_secret(salt, secret)


def presented_key(headers: Mapping[str, str], *, node: bool = False) -> str | None:
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
                                              Iterable[str]]] = ()):
        """`static`: (name, key, scopes, model globs, host ids) of each configured key."""
        self.static = tuple(
            StaticKey(name, hashlib.sha256(key.encode()).digest(), frozenset(scopes), tuple(m),
                      bound_hosts(frozenset(scopes), hosts))
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
        digest = hashlib.sha256(key.encode()).digest()
        if key.startswith("gh_") and key.count("_") >= 2:
            known = self._verified.get(digest)
            if known is not None:
                return known
            _, key_id, secret = key.split("_", 2)
            named = self.named.get(key_id)
            if named is not None and not named.disabled:
                if hmac.compare_digest(hash_secret(named.salt, secret), named.hash):
                    host = named_key_host(named.name, named.scopes, named.host)
                    principal = Principal(named.name, named.scopes, named.models,
                                          None if host is None else frozenset({host}))
                    self._verified[digest] = principal
                    return principal
                return None
        found = None
        for static in self.static:  # no early exit: the time spent does not depend on the key
            if hmac.compare_digest(digest, static.digest):
                found = static
        if found is None:
            return None
        return Principal(found.name, found.scopes, found.models, found.hosts)

    def authorize(self, headers: Mapping[str, str], scope: str) -> Principal:
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
