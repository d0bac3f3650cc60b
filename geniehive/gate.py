"""The ASGI front of both ports: the key gate (SPEC §13).

Rule: with any key configured, an HTTP request carries a valid key or is answered 401 with
`Connection: close` before a byte of its body is read, whatever its path or method. Only the
probes (`/healthz`, `/readyz`), the root, the playground and the console pages (GET or HEAD
`/`, `/playground` and `/console`, which hold no data) answer without a key; websockets
authenticate in-band (geniehive/ws.py). Scope and model checks stay with the routes, which
then find the key already verified.

The salted hash of a named key runs on a worker thread (at most HASH_THREADS at once, so the
event loop keeps serving everyone else), and an address that keeps presenting invalid keys is
answered 429 `too_many_auth_failures` with `Retry-After` until its bucket refills
(auth.FailureBuckets; behind a reverse proxy on loopback, the address is its `X-Real-IP`).
A verified key is cached, so right keys never wait behind wrong ones.

A refusal is answered by the edge toolkit's error writer (geniehive/asgi.py) with
`Connection: close`, the body left unread; the toolkit also holds the body-gap timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from geniehive.asgi import Scope
from geniehive.auth import Authenticator, FailureBuckets, PendingCheck, Principal
from geniehive.errors import AuthenticationFailed, GenieHiveError, TooManyAuthFailures

PROBES = frozenset({"/healthz", "/readyz"})
PAGES = frozenset({"/", "/playground", "/console"})
PAGE_METHODS = frozenset({"GET", "HEAD"})
# The routes that take the node key header (geniehive/api_nodes.py).
NODE_PATHS = frozenset({"/v1/nodes/register", "/v1/nodes/heartbeat", "/v1/nodes/orders"})
HASH_THREADS = 2
MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'"


class KeyGate:
    """Verifies keys for both ports; one per gateway (the bucket table is shared)."""

    def __init__(
        self,
        auth: Authenticator,
        *,
        buckets: FailureBuckets | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.auth = auth
        self.buckets = buckets if buckets is not None else FailureBuckets()
        self.clock = clock
        self.hashing = trio.CapacityLimiter(HASH_THREADS)

    async def identify(self, key: str, address: str) -> Principal:
        """The principal of `key` presented from `address`.

        Raises AuthenticationFailed (invalid key) or TooManyAuthFailures (this address has
        presented too many invalid keys lately).
        """
        found = self.auth.lookup(key)
        if isinstance(found, Principal):
            return found
        wait = self.buckets.retry_after(address, self.clock())
        if wait > 0:
            raise TooManyAuthFailures(
                "too many invalid API keys from this address; retry later",
                retry_after_s=math.ceil(wait),
            )
        if isinstance(found, PendingCheck):
            matched = await trio.to_thread.run_sync(found.matches, limiter=self.hashing)
            principal = self.auth.finish(found, matched)
            if principal is not None:
                return principal
        self.buckets.record_failure(address, self.clock())
        raise AuthenticationFailed("invalid API key")

    async def admit(self, scope: Scope, *, node: bool = False) -> GenieHiveError | None:
        """Why an HTTP request must be refused before its body is read, or None to go on.

        `node` marks the node port, where every route takes the node key header.
        """
        if self.auth.open_mode or _is_public(scope):
            return None
        key = scope_key(scope["headers"], node=node or scope["path"] in NODE_PATHS)
        if key is None:
            return AuthenticationFailed(MISSING_KEY)
        try:
            await self.identify(key, client_address(scope))
        except GenieHiveError as exc:
            return exc
        return None


def client_address(scope: Scope) -> str:
    """The address whose failures are counted: the peer's, or, when the peer is a reverse
    proxy on loopback (docs/deployment.md, nginx), the `X-Real-IP` it sets."""
    client = scope.get("client")
    address = client[0] if client else "-"
    if address.startswith("127.") or address == "::1":
        for name, value in scope["headers"]:
            if name == b"x-real-ip":
                return value.decode("latin-1").strip() or address
    return address


def _is_public(scope: Scope) -> bool:
    path = scope["path"]
    return path in PROBES or (path in PAGES and scope["method"] in PAGE_METHODS)


def scope_key(headers: Any, *, node: bool = False) -> str | None:
    """The key in raw ASGI headers, chosen as auth.presented_key chooses it."""
    bearer = api_key = node_key = None
    for name, value in headers:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                bearer = value[7:].strip().decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
        elif node and name == b"x-geniehive-node-key":
            node_key = value.decode("latin-1")
    return node_key or bearer or api_key or None
