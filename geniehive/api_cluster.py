"""The operator API: route explanations, cluster listings, operator actions, benchmarks, keys.

    GET    /v1/cluster/hosts                      read     hosts, staleness, heartbeat age
    DELETE /v1/cluster/hosts/<id>                 operate  forget a node host (not the local one)
    GET    /v1/cluster/services                   read     health verdicts, breaker, load
    POST   /v1/cluster/services/<id>/drain        operate  availability "draining"
    POST   /v1/cluster/services/<id>/pause        operate  availability "paused"
    POST   /v1/cluster/services/<id>/resume       operate  availability "available"
    GET    /v1/cluster/roles                      read     policy, routing and current targets
    GET    /v1/cluster/health                     read     counts of what is up and down
    GET    /v1/cluster/routes/resolve             read     a route decision, explained
    POST   /v1/cluster/routes/match               read     advisory scores for a task
    GET    /v1/cluster/benchmarks                 read     samples, filtered
    POST   /v1/cluster/benchmarks                 operate  ingest a benchmark report
    GET    /v1/admin/keys                         admin    named keys, never secret or hash
    POST   /v1/admin/keys                         admin    create a named key, shown once
    POST   /v1/admin/keys/<id>/disable|enable     admin
    DELETE /v1/admin/keys/<id>                    admin
    POST   /v1/admin/nodes/<host_id>/orders       admin    queue a start/stop order for a node
    POST   /v1/admin/reload                       admin    re-read the control file, apply it

Rule: handlers read the snapshot and the live counters and never advance a round-robin
counter; writes go through the registry, whose snapshot is published before it returns.
The views are pure functions of their arguments; the benchmark report is parsed by
geniehive/benchreport.py, the admin key routes live in geniehive/api_keys.py and the order
route in geniehive/orders.py, the reload route in geniehive/reload.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from geniehive import catalog, health, matching, routing, wire
from geniehive.affinity import SESSION_FIELDS, explain_stick, session_of
from geniehive.api_keys import register_key_routes
from geniehive.asgi import read_json_body
from geniehive.benchreport import parse_report
from geniehive.capacity import ServiceLoad, slots_of
from geniehive.errors import InvalidRequest, NotFound, UnknownHostError
from geniehive.memory import host_memory
from geniehive.models import (
    CAPABILITIES,
    LOCAL_HOST_ID,
    OPERATIONS,
    BenchmarkSample,
    Host,
    Service,
    Snapshot,
)
from geniehive.orders import register_order_routes
from geniehive.registry import UnknownHost, UnknownService
from geniehive.reload import register_reload_route

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.cluster")


# --- views (pure) -----------------------------------------------------------------------------


def host_view(
    host: Host, now: float, stale_after_s: float, services: Sequence[Service]
) -> dict[str, Any]:
    """One host as `/v1/cluster/hosts` lists it; `services` are its own."""
    seen = host.last_seen
    stale = routing.is_stale(host, now, stale_after_s)
    return {
        **wire.encode_host(host),
        "state": "stale" if stale else "online",
        "last_heartbeat_age_s": None if seen is None else round(max(0.0, now - seen), 3),
        "service_count": len(services),
        "memory": host_memory(host, services),
    }


def measured_view(live: Any, runtime: routing.ServiceRuntime) -> dict[str, Any]:
    """The gateway's own measurements of one service (`live` is its ServiceLive or None)."""
    return {
        "in_flight": runtime.in_flight,
        "requests": live.requests if live is not None else 0,
        "failures": live.failures if live is not None else 0,
        "p50_latency_ms": _round(runtime.p50_latency_ms),
        "p95_latency_ms": _round(live.p95_latency_ms() if live is not None else None),
        "ttft_ms": _round(runtime.ttft_ms),
        "tokens_per_sec": _round(runtime.tokens_per_sec),
        "error_rate": round(runtime.error_rate, 4),
    }


def service_view(
    snapshot: Snapshot,
    service: Service,
    ctx: routing.RoutingContext,
    live: Any,
    load: ServiceLoad,
) -> dict[str, Any]:
    """One service as `/v1/cluster/services` lists it; `load` is its slots, the slots the
    gateway holds on it and the requests waiting that it could serve."""
    runtime = ctx.runtime_of(service.service_id)
    gate = routing.exclusion_gate(snapshot, service, ctx)
    probe = live.probe if live is not None else None
    encoded = wire.encode_service(service)
    return {
        "service_id": service.service_id,
        "host_id": service.host_id,
        "operation": service.operation,
        "adapter": service.adapter,
        "base_url": service.base_url,
        "keep_alive": service.keep_alive,
        "assets": encoded["assets"],
        "availability": service.state.availability,
        "accept_requests": service.state.accept_requests,
        "health": health.verdict(
            gate.gate if gate is not None else None, runtime.probe, service.state.health
        ),
        "health_reason": gate.detail
        if gate is not None
        else (probe.reason if probe is not None else "not probed yet"),
        "health_since": probe.since if probe is not None else None,
        "probe": runtime.probe,
        "node_health": service.state.health,
        "managed": service.managed,
        "breaker": runtime.breaker,
        "routable": gate is None,
        "gate": gate.gate if gate is not None else None,
        "slots_total": load.slots_total,
        "in_flight": load.in_flight,
        "queued": load.queued,
        "observed": encoded["observed"],
        "measured": measured_view(live, runtime),
    }


def role_view(snapshot: Snapshot, role_id: str, ctx: routing.RoutingContext) -> dict[str, Any]:
    """One role with its policy, routing and the services it resolves to now."""
    role = snapshot.roles[role_id]
    decision = routing.resolve(snapshot, routing.ROLE_PREFIX + role_id, role.operation, ctx)
    return {
        "role_id": role_id,
        "display_name": role.display_name,
        "description": role.description,
        "operation": role.operation,
        "policy": catalog.policy_dict(role.policy),
        "routing": {
            **wire.encode_routing_policy(role.routing),
            "strategy": role.routing.strategy or ctx.default_strategy,
        },
        "benchmark_workloads": list(role.benchmark_workloads),
        "targets": [c.service_id for c in decision.candidates],
        "chosen": decision.chosen.service_id if decision.chosen else None,
        "fallback_used": decision.fallback_role_id,
        "message": decision.message or None,
    }


def cluster_health(
    hosts: Iterable[dict[str, Any]],
    services: Iterable[dict[str, Any]],
    roles: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """The counts of `/v1/cluster/health` from the host, service and role views."""
    hosts, services, roles = list(hosts), list(services), list(roles)
    targetless = sorted(r["role_id"] for r in roles if not r["targets"])
    return {
        "hosts": {
            "total": len(hosts),
            "online": sum(1 for h in hosts if h["state"] == "online"),
            "stale": sum(1 for h in hosts if h["state"] == "stale"),
        },
        "services": {
            "total": len(services),
            "routable": sum(1 for s in services if s["routable"]),
            "down": sum(1 for s in services if s["health"] in ("down", "unhealthy", "stale")),
            "draining": sum(1 for s in services if s["availability"] != "available"),
        },
        "roles": {
            "total": len(roles),
            "without_target": len(targetless),
            "without_target_ids": targetless,
        },
    }


def sample_view(sample: BenchmarkSample) -> dict[str, Any]:
    return {**wire.encode_sample(sample), "quality": routing.benchmark_quality(sample.results)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- the routes -------------------------------------------------------------------------------


def host_views(gateway: Gateway) -> list[dict[str, Any]]:
    snapshot, now = gateway.snapshot, time.time()
    by_host: dict[str, list[Service]] = {}
    for _, service in sorted(snapshot.services.items()):
        by_host.setdefault(service.host_id, []).append(service)
    stale_after_s = gateway.config.nodes.stale_after_s
    return [
        host_view(snapshot.hosts[h], now, stale_after_s, by_host.get(h, []))
        for h in sorted(snapshot.hosts)
    ]


def service_views(gateway: Gateway, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The services as `/v1/cluster/services` lists them; only those of `ids` (the ones that
    exist) when given."""
    snapshot, ctx = gateway.snapshot, gateway.routing_context()
    wanted = sorted(snapshot.services) if ids is None else sorted(
        s for s in set(ids) if s in snapshot.services
    )
    return [
        service_view(
            snapshot, _with_local_managed(gateway, service), ctx, gateway.live.services.get(s),
            gateway.admission.load(s, slots_of(service)),
        )
        for s in wanted
        for service in (snapshot.services[s],)
    ]


def _with_local_managed(gateway: Gateway, service: Service) -> Service:
    """A local service with its launcher's state now (a node's comes with its heartbeat)."""
    if service.host_id != LOCAL_HOST_ID or service.upstream_id is None:
        return service
    return replace(service, managed=gateway.launcher.managed_state(service.upstream_id))


def role_views(gateway: Gateway) -> list[dict[str, Any]]:
    snapshot, ctx = gateway.snapshot, gateway.routing_context()
    return [role_view(snapshot, r, ctx) for r in sorted(snapshot.roles)]


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}


def explain_route(
    gateway: Gateway, args: Mapping[str, str], key: str = "open"
) -> dict[str, Any]:
    """`routes/resolve`: the decision for `model` and `kind` (and the capabilities a request
    would need, `needs=tools,vision`), explained. A `session` (as `X-Session-Id` names it,
    or `prompt_cache_key` / `user` as a body does) of the key `key` (the caller's own unless
    named) adds `affinity`: where that session is bound and whether it would go there.
    Raises InvalidRequest.

    Resolving reads the round-robin counters and never advances them.
    """
    model = args.get("model")
    if not model:
        raise InvalidRequest("model: required", param="model")
    kind = args.get("kind") or "chat"
    if kind not in OPERATIONS:
        raise InvalidRequest(f"kind: expected one of {', '.join(OPERATIONS)}", param="kind")
    stream = (args.get("stream") or "").lower() in ("1", "true", "yes")
    needs = frozenset(n.strip() for n in (args.get("needs") or "").split(",") if n.strip())
    if not needs <= set(CAPABILITIES):
        raise InvalidRequest(
            f"needs: expected names among {', '.join(CAPABILITIES)}", param="needs"
        )
    decision = gateway.resolve(model, kind, stream=stream, needs=needs)
    explained = routing.explain(decision)
    session = session_of(
        {"x-session-id": args.get("session") or ""},
        {f: args.get(f) for f in SESSION_FIELDS},
    )
    stick = gateway.affinity.stick(args.get("key") or key, model, session, gateway.affinity_clock())
    if stick is not None:
        explained["affinity"] = explain_stick(
            stick, decision.candidates, lambda sid: has_free_slot(gateway, sid)
        )
    return explained


def _arg(value: Any) -> str:
    """A JSON field as its query form: a list joined with commas (`needs`), true as `true`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return json.dumps(value)


def has_free_slot(gateway: Gateway, service_id: str) -> bool:
    """Whether a slot on `service_id` is free now (any is, without a slot count)."""
    service = gateway.snapshot.services.get(service_id)
    if service is None:
        return False
    total = slots_of(service)
    return total is None or gateway.admission.busy.get(service_id, 0) < total


def match_routes(gateway: Gateway, body: Any) -> dict[str, Any]:
    """`routes/match`. Raises InvalidRequest naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object")
    try:
        query = matching.parse_match_query(body)
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise InvalidRequest(str(exc), param=field) from None
    return matching.match(gateway.snapshot, query, gateway.routing_context())


def benchmarks(gateway: Gateway, args: Mapping[str, str]) -> list[dict[str, Any]]:
    """The stored samples, oldest first, filtered by service_id, workload and asset_id."""
    filters = {k: args.get(k) for k in ("service_id", "workload", "asset_id") if args.get(k)}
    return [
        sample_view(s)
        for s in gateway.snapshot.benchmarks
        if all(getattr(s, k) == v for k, v in filters.items())
    ]


async def set_availability(gateway: Gateway, service_id: str, availability: str) -> dict[str, Any]:
    """Drain, pause or resume a service. Raises NotFound."""
    try:
        await gateway.registry.set_availability(service_id, availability)
    except UnknownService:
        raise NotFound(f"no service with id '{service_id}'", param="service_id") from None
    log.info("service %s availability -> %s", service_id, availability)
    snapshot = gateway.snapshot
    service = snapshot.services[service_id]
    view = service_view(
        snapshot,
        service,
        gateway.routing_context(),
        gateway.live.services.get(service_id),
        gateway.admission.load(service_id, slots_of(service)),
    )
    return {"status": "ok", "service": view}


async def forget_host(gateway: Gateway, host_id: str) -> dict[str, Any]:
    """Forget a node host and its services. Raises InvalidRequest (local), UnknownHostError."""
    host = gateway.snapshot.hosts.get(host_id)
    if host is not None and host.is_local:
        raise InvalidRequest(
            f"host '{host_id}' is the control plane's own host and cannot be forgotten",
            param="host_id",
        )
    try:
        await gateway.registry.forget_host(host_id)
    except UnknownHost:
        raise UnknownHostError(f"no host with id '{host_id}'", param="host_id") from None
    log.info("host %s forgotten by an operator", host_id)
    return {"status": "ok", "host_id": host_id}


async def ingest_report(gateway: Gateway, body: Any) -> dict[str, Any]:
    samples = parse_report(body, time.time())
    await gateway.registry.upsert_samples(samples)
    return {
        "status": "ok",
        "ingested": len(samples),
        "benchmark_ids": [s.benchmark_id for s in samples],
    }


def register_cluster_routes(app: QuartTrio, gateway: Gateway) -> None:
    """Add the operator, benchmark and key routes to the Quart app (the daemon has loaded the
    named keys before anything serves)."""
    _register_reads(app, gateway)
    _register_explain(app, gateway)
    _register_writes(app, gateway)
    register_key_routes(app, gateway)
    register_order_routes(app, gateway)
    register_reload_route(app, gateway)


def _register_reads(app: QuartTrio, gateway: Gateway) -> None:
    from quart import jsonify, request

    def read() -> None:
        gateway.auth.authorize(request.headers, "read")

    @app.get("/v1/cluster/hosts")
    async def cluster_hosts() -> Any:
        read()
        return jsonify(_listing(host_views(gateway)))

    @app.get("/v1/cluster/services")
    async def cluster_services() -> Any:
        read()
        return jsonify(_listing(service_views(gateway)))

    @app.get("/v1/cluster/roles")
    async def cluster_roles() -> Any:
        read()
        return jsonify(_listing(role_views(gateway)))

    @app.get("/v1/cluster/capacity")
    async def cluster_capacity() -> Any:
        read()
        return jsonify({
            **gateway.admission.summary(),
            "rate_limited": gateway.key_rates.refused,
        })

    @app.get("/v1/cluster/health")
    async def cluster_health_counts() -> Any:
        read()
        return jsonify(
            cluster_health(host_views(gateway), service_views(gateway), role_views(gateway))
        )

    @app.get("/v1/cluster/benchmarks")
    async def cluster_benchmarks() -> Any:
        read()
        return jsonify(_listing(benchmarks(gateway, request.args)))


async def _json_body(request: Any, gateway: Gateway) -> dict[str, Any]:
    """The request body as a JSON object, counted and parsed by the edge toolkit's rules."""
    return await read_json_body(request.body, gateway.config.server.max_body_bytes)


def _register_explain(app: QuartTrio, gateway: Gateway) -> None:
    from quart import jsonify, request

    @app.get("/v1/cluster/routes/resolve")
    async def cluster_resolve() -> Any:
        principal = gateway.auth.authorize(request.headers, "read")
        return jsonify(explain_route(gateway, request.args, principal.name))

    @app.post("/v1/cluster/routes/resolve")
    async def cluster_resolve_body() -> Any:  # the same fields in a JSON object
        principal = gateway.auth.authorize(request.headers, "read")
        body = await _json_body(request, gateway)
        args = {k: _arg(v) for k, v in body.items()}
        return jsonify(explain_route(gateway, args, principal.name))

    @app.post("/v1/cluster/routes/match")
    async def cluster_match() -> Any:
        gateway.auth.authorize(request.headers, "read")
        return jsonify(match_routes(gateway, await _json_body(request, gateway)))


def _register_writes(app: QuartTrio, gateway: Gateway) -> None:
    from quart import jsonify, request

    def operate() -> None:
        gateway.auth.authorize(request.headers, "operate")

    @app.post("/v1/cluster/services/<path:service_id>/drain")
    async def cluster_drain(service_id: str) -> Any:
        operate()
        return jsonify(await set_availability(gateway, service_id, "draining"))

    @app.post("/v1/cluster/services/<path:service_id>/pause")
    async def cluster_pause(service_id: str) -> Any:
        operate()
        return jsonify(await set_availability(gateway, service_id, "paused"))

    @app.post("/v1/cluster/services/<path:service_id>/resume")
    async def cluster_resume(service_id: str) -> Any:
        operate()
        return jsonify(await set_availability(gateway, service_id, "available"))

    @app.delete("/v1/cluster/hosts/<path:host_id>")
    async def cluster_forget_host(host_id: str) -> Any:
        operate()
        return jsonify(await forget_host(gateway, host_id))

    @app.post("/v1/cluster/benchmarks")
    async def cluster_ingest() -> Any:
        operate()
        return jsonify(await ingest_report(gateway, await _json_body(request, gateway)))
