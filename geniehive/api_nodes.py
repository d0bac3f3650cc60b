"""The node endpoints and the heartbeat listener (SPEC §8).

    POST /v1/nodes/register    upsert a host and replace its services
    POST /v1/nodes/heartbeat   record a heartbeat and replace the host's services
    POST /v1/nodes/orders      long poll for start/stop orders (geniehive/orders.py)

Rule: both answer 200 only after the registry call returns, and the registry publishes the
new snapshot before it returns, so the next request sees the write. A malformed payload is a
400 naming the field; nothing a node sends produces a 500. The handlers are plain functions
of (gateway, headers, body) so that the same code serves the routes on the client port (a
Quart app, when `nodes.bind` is empty) and on the node port (a small ASGI app served by its
own hypercorn, optionally with mTLS, when `nodes.bind` is set; then the client port does not
serve them).

Register and heartbeat answer `{"status": "ok", "host", "active_upstreams"}`: the host's
upstream ids the gateway is using now (`active_upstreams`), which the node's idle reaper
counts as active, so it never stops an upstream under a request.

The listener also expires hosts: each tick it forgets the hosts not heard from for
`nodes.forget_after_s` and logs each host going stale or coming back online once per
transition. Staleness itself is not stored: routing judges it at decision time.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from geniehive import egress, nodewire, routing
from geniehive.asgi import (
    BodyClock,
    ClientGone,
    Receive,
    Scope,
    Send,
    chunk_receive,
    parse_json,
    read_body,
    scope_headers,
    scope_request_id,
    send_error,
    send_json,
)
from geniehive.auth import HeaderLookup, Principal
from geniehive.capacity import Admission
from geniehive.config import ControlConfig, ServerConfig, TLSConfig
from geniehive.edge import EdgeConfig, serve_http
from geniehive.errors import (
    Conflict,
    GenieHiveError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    UnknownHostError,
)
from geniehive.live import ServiceLive, in_use
from geniehive.models import Host, Service, Snapshot, upstream_of
from geniehive.orders import ORDERS_PATH, handle_orders
from geniehive.registry import ServiceConflict, UnknownHost
from geniehive.supervise import run_every
from geniehive.wire import encode_host

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.nodes")

REGISTER_PATH = "/v1/nodes/register"
HEARTBEAT_PATH = "/v1/nodes/heartbeat"
# A node with hundreds of models sends tens of kilobytes; this leaves ample room.
NODE_MAX_BODY_BYTES = 4 * 1024 * 1024

Headers = HeaderLookup  # a dict on the node port, Quart's Headers on the client port
Handler = Callable[["Gateway", Headers, bytes], Awaitable[dict[str, Any]]]


# --- the handlers ---------------------------------------------------------------------------


def body_limit(gateway: Gateway) -> int:
    return min(gateway.config.server.max_body_bytes, NODE_MAX_BODY_BYTES)


def _conflict(exc: ServiceConflict) -> Conflict:
    return Conflict(
        f"service '{exc.service_id}' belongs to host '{exc.owner_host_id}'",
        param="services",
    )


def is_local_address(ip: egress.IPAddress) -> bool:
    """Whether `ip` is an address of this machine (a wildcard bind answers on it): loopback,
    or one a socket can bind to. Only asked for a base URL on the port of a wildcard bind."""
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


def check_speaks_for(principal: Principal, host_id: str) -> None:
    """A node key bound to hosts may register and heartbeat only those. Raises
    PermissionDenied naming the host."""
    if not principal.may_speak_for(host_id):
        raise PermissionDenied(
            f"this key may not register or heartbeat host '{host_id}'", param="host_id"
        )


def check_upstreams(gateway: Gateway, address: str, services: Sequence[Service]) -> None:
    """Each base URL must stay off the gateway's own listeners and at the node's address or
    in `nodes.allowed_upstream_networks`. Raises InvalidRequest naming the service."""
    for index, service in enumerate(services):
        problem = egress.upstream_problem(
            service.base_url, address, gateway.upstream_networks, gateway.own_binds,
            is_local_address,
        )
        if problem is not None:
            where = f"services[{index}].base_url"
            raise InvalidRequest(
                f"{where}: service '{service.service_id}' {problem}", param=where
            )


def active_upstreams(
    snapshot: Snapshot,
    host_id: str,
    live: Mapping[str, ServiceLive],
    admission: Admission,
) -> list[str]:
    """The sorted upstream ids of `host_id` the gateway is using now.

    Rule: an upstream is in use while one of its services is (`live.in_use`, the rule the
    control plane's own reaper follows). The node's idle reaper counts each listed upstream
    as active, so a managed upstream is never stopped under a request.
    """
    found: set[str] = set()
    for sid in snapshot.services_by_host.get(host_id, ()):
        service = snapshot.services[sid]
        if in_use(live.get(sid), admission.busy.get(sid, 0), admission.queued.get(sid, 0)):
            upstream = upstream_of(service)
            if upstream:
                found.add(upstream)
    return sorted(found)


def _answer(gateway: Gateway, host_id: str) -> dict[str, Any]:
    """The answer to a register or heartbeat: the host as stored, and `active_upstreams`."""
    snapshot = gateway.snapshot
    host = snapshot.hosts.get(host_id)
    return {
        "status": "ok",
        "host": encode_host(host) if host is not None else {"host_id": host_id},
        "active_upstreams": active_upstreams(
            snapshot, host_id, gateway.live.services, gateway.admission
        ),
    }


async def handle_register(gateway: Gateway, headers: Headers, body: bytes) -> dict[str, Any]:
    """Register a host. Raises the GenieHiveError to answer (401/403/400/409)."""
    principal = gateway.auth.authorize(headers, "node")
    host, services = nodewire.parse_register(parse_json(body), adapters=gateway.known_adapters)
    check_speaks_for(principal, host.host_id)
    check_upstreams(gateway, host.address, services)
    now = time.time()
    known = host.host_id in gateway.snapshot.hosts
    try:
        await gateway.registry.register_host(
            replace(host, last_heartbeat=now, registered_at=now), services
        )
    except ServiceConflict as exc:
        raise _conflict(exc) from None
    log.info("node %s %s at %s with %d services", host.host_id,
             "re-registered" if known else "registered", host.address, len(services))
    return _answer(gateway, host.host_id)


async def handle_heartbeat(gateway: Gateway, headers: Headers, body: bytes) -> dict[str, Any]:
    """Record a heartbeat. Raises the GenieHiveError to answer (401/403/400/404/409)."""
    principal = gateway.auth.authorize(headers, "node")
    payload = parse_json(body)
    claimed = payload.get("host_id") if isinstance(payload, dict) else None
    last = gateway.last_services.get(claimed) if isinstance(claimed, str) else None
    host_id, metrics, services = nodewire.parse_heartbeat(
        payload, adapters=gateway.known_adapters, last=last
    )
    check_speaks_for(principal, host_id)
    known = gateway.snapshot.hosts.get(host_id)
    if known is None:
        raise UnknownHostError(f"unknown host '{host_id}': register first", param="host_id")
    if last is None or last.services is not services:
        remember_services(gateway, nodewire.LastServices(
            host_id, payload["services"], services, gateway.known_adapters))
    check_upstreams(gateway, known.address, services)
    try:
        await gateway.registry.heartbeat(host_id, time.time(), metrics, services)
    except UnknownHost:
        raise UnknownHostError(
            f"unknown host '{host_id}': register first", param="host_id"
        ) from None
    except ServiceConflict as exc:
        raise _conflict(exc) from None
    return _answer(gateway, host_id)


def remember_services(gateway: Gateway, last: nodewire.LastServices) -> None:
    """Keep what a known host's heartbeat sent as its services, so its next heartbeat
    sending the same is not read again; entries of forgotten hosts go when there are more
    entries than hosts."""
    memory = gateway.last_services
    memory[last.host_id] = last
    hosts = gateway.snapshot.hosts
    if len(memory) > 2 * len(hosts) + 16:
        for host_id in [h for h in memory if h not in hosts]:
            del memory[host_id]


ROUTES: dict[str, Handler] = {
    REGISTER_PATH: handle_register, HEARTBEAT_PATH: handle_heartbeat, ORDERS_PATH: handle_orders,
}


# --- on the client port (Quart) -------------------------------------------------------------


def register_routes(app: QuartTrio, gateway: Gateway) -> None:
    """Add the node endpoints to the client app, unless `nodes.bind` gives them their own port."""
    if gateway.config.nodes.bind:
        return
    from quart import jsonify, request

    async def body() -> bytes:
        # Counted by the toolkit's reader: Quart's own limit misses chunked bodies.
        return await read_body(chunk_receive(request.body), body_limit(gateway))

    def view(handler: Handler) -> Callable[[], Awaitable[Any]]:
        async def node_endpoint() -> Any:
            return jsonify(await handler(gateway, request.headers, await body()))
        return node_endpoint

    for path, handler in ROUTES.items():
        app.add_url_rule(path, endpoint=f"nodes:{path}", view_func=view(handler),
                         methods=["POST"])


# --- on the node port (raw ASGI) ------------------------------------------------------------


class NodeApp:
    """The ASGI app of the node port: the node endpoints and `/healthz`, nothing else."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self.serve(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope_request_id(scope)
        if scope["path"] != "/healthz":
            refusal = await self.gateway.gate.admit(scope, node=True)
            if refusal is not None:
                await send_error(send, refusal, request_id, close=True)
                return
        receive = BodyClock(receive, self.gateway.config.server.body_timeout_s)
        try:
            payload = await self.respond(scope, receive)
        except ClientGone:
            return  # nobody is left to answer
        except GenieHiveError as exc:
            await send_error(send, exc, request_id)
        except Exception:
            log.exception("node endpoint %s %s failed", scope["method"], scope["path"])
            await send_error(send, GenieHiveError("internal error"), request_id)
        else:
            await send_json(send, 200, payload, request_id)

    async def respond(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The answer to one request; raises the GenieHiveError to answer instead."""
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        body = await read_body(receive, body_limit(self.gateway))
        if path == "/healthz" and method in ("GET", "HEAD"):
            return {"status": "ok"}
        handler = ROUTES.get(path)
        if handler is None:
            raise NotFound(f"no node endpoint at {path}")
        if method != "POST":
            raise MethodNotAllowed(f"{path} takes POST")
        return await handler(self.gateway, scope_headers(scope), body)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def base_hypercorn_config(
    binds: Sequence[str], tls: TLSConfig | None, graceful_timeout: float
) -> EdgeConfig:
    """Hypercorn settings both ports share: binds, keep-alive, logging, head size, TLS (with
    client certificates required when the TLS section says so)."""
    hc = EdgeConfig()
    hc.bind = list(binds)
    hc.graceful_timeout = graceful_timeout
    hc.keep_alive_timeout = 75
    hc.accesslog = None
    hc.errorlog = logging.getLogger("geniehive.http")
    hc.h11_max_incomplete_size = 64 * 1024
    if tls is not None:
        hc.certfile = str(tls.certfile)
        hc.keyfile = str(tls.keyfile)
        if tls.ca_certs is not None:
            hc.ca_certs = str(tls.ca_certs)
        if tls.require_client_cert:
            hc.verify_mode = ssl.CERT_REQUIRED
    return hc


def apply_edge_limits(hc: EdgeConfig, server: ServerConfig) -> EdgeConfig:
    """The `[server]` connection limits, which hold on every port (geniehive/edge.py)."""
    hc.header_timeout_s = server.header_timeout_s
    hc.max_connections = server.max_connections
    # More than one worker: hypercorn binds each socket with SO_REUSEPORT, so every worker
    # listens on the same ports (geniehive/workers.py); its own worker processes are unused.
    hc.workers = server.workers
    # The TLS handshake is part of the wait for the first request head.
    hc.ssl_handshake_timeout = server.header_timeout_s
    return hc


def node_hypercorn_config(config: ControlConfig) -> EdgeConfig:
    """Hypercorn settings for the node port: `nodes.bind`, with mTLS from `nodes.tls`."""
    hc = base_hypercorn_config(config.nodes.bind, config.nodes.tls, graceful_timeout=5)
    return apply_edge_limits(hc, config.server)


# --- the listener ---------------------------------------------------------------------------


def next_host_states(
    hosts: Mapping[str, Host], previous: Mapping[str, bool], now: float, stale_after_s: float
) -> tuple[dict[str, bool], list[tuple[str, bool]]]:
    """(host id -> stale, the hosts whose staleness changed). Local hosts are left out."""
    states = {
        host_id: routing.is_stale(host, now, stale_after_s)
        for host_id, host in hosts.items()
        if not host.is_local
    }
    changes = [(h, stale) for h, stale in sorted(states.items()) if previous.get(h) != stale]
    return states, changes


def _log_change(snapshot: Snapshot, host_id: str, stale: bool, now: float) -> None:
    if not stale:
        log.info("host %s online", host_id)
        return
    host = snapshot.hosts[host_id]
    seen = host.last_seen
    age = "ever" if seen is None else f"{now - seen:.0f} s"
    log.warning("host %s stale: no heartbeat for %s; its services leave routing", host_id, age)


async def expire_hosts(gateway: Gateway, states: dict[str, bool], now: float) -> None:
    """One tick: forget long-silent hosts, then log staleness transitions."""
    nodes = gateway.config.nodes
    hosts: Iterable[Host] = gateway.snapshot.hosts.values()
    # A host is forgotten only after this process itself went forget_after_s without hearing
    # from it: a control plane that was down for a weekend must not forget every node at
    # start (and their drains with them) before they had a chance to heartbeat.
    heard_since = getattr(gateway, "started_wall", 0.0)
    if now - heard_since < nodes.forget_after_s or not gateway.leadership.held:
        hosts = ()  # and only the leader forgets (registry_follow.py)
    # Checked on the snapshot first so a quiet tick never takes the registry's write lock.
    if any(not h.is_local and routing.is_stale(h, now, nodes.forget_after_s) for h in hosts):
        for host_id in await gateway.registry.forget_stale(now - nodes.forget_after_s):
            log.warning("host %s forgotten: no heartbeat for %g s", host_id, nodes.forget_after_s)
    snapshot = gateway.snapshot
    new, changes = next_host_states(snapshot.hosts, states, now, nodes.stale_after_s)
    for host_id, stale in changes:
        _log_change(snapshot, host_id, stale, now)
    states.clear()
    states.update(new)


async def serve_node_port(gateway: Gateway, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve only the node endpoints on `nodes.bind`; reports started with the bound URLs."""
    await serve_http(
        NodeApp(gateway), node_hypercorn_config(gateway.config), task_status=task_status
    )


async def run_heartbeat_listener(
    gateway: Gateway,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """The heartbeat listener task; reports started (with the node port's URLs, if any)
    once the node endpoints are served and the expiry loop runs."""
    nodes = gateway.config.nodes
    states: dict[str, bool] = {}
    await expire_hosts(gateway, states, wall_clock())
    async with trio.open_nursery() as nursery:
        urls: list[str] = []
        if nodes.bind:
            urls = await nursery.start(serve_node_port, gateway)
            gateway.listening_on(urls)
            for url in urls:
                log.info("node endpoints listening on %s", url)
        tick = min(nodes.stale_after_s / 3, 1.0)
        nursery.start_soon(
            run_every, "heartbeat expiry", tick, lambda: expire_hosts(gateway, states, wall_clock())
        )
        task_status.started(urls)
