"""Orders for a node's launcher: start or stop one of its managed upstreams.

    POST /v1/nodes/orders                         node     long poll: {"host_id"} -> orders
    POST /v1/admin/nodes/<host_id>/orders         admin    queue {"action", "upstream_id"}

A node opens no port of its own: its agent keeps one long poll open beside its heartbeats.
The poll is answered as soon as an order for its host is queued (all queued orders at once),
or after `ORDERS_WAIT_S` with an empty list, or at once with an empty list when the gateway
shuts down. An order is `{"id", "action": "start"|"stop", "upstream_id"}`; the node runs it
through its launcher and reports the outcome in the heartbeat it sends right after.

Rule: the poll takes the same key as heartbeats (scope `node`, and a key bound to hosts
polls only those), for a host the control plane knows (else 404 `unknown_host`). Orders are
kept in memory only: a control plane that restarts forgets the ones not yet taken, and an
order taken by a poll whose answer was lost is gone too (the caller orders again).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from geniehive import nodewire
from geniehive.asgi import parse_json, read_json_body
from geniehive.auth import HeaderLookup
from geniehive.errors import InvalidRequest, NotFound, PermissionDenied, UnknownHostError
from geniehive.models import LOCAL_HOST_ID, Snapshot

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.nodes")

ORDERS_PATH = "/v1/nodes/orders"
ORDERS_WAIT_S = 25.0
MAX_REMEMBERED = 4096  # orders whose taking time is kept


@dataclass(frozen=True, slots=True)
class NodeOrder:
    order_id: str
    action: str
    upstream_id: str

    def render(self) -> dict[str, str]:
        return {"id": self.order_id, "action": self.action, "upstream_id": self.upstream_id}


class NodeOrders:
    """The orders waiting for each host, and the polls waiting for orders."""

    def __init__(self) -> None:
        self._queues: dict[str, list[NodeOrder]] = {}
        self._wakers: dict[str, trio.Event] = {}
        self._closed = False
        # When each order was handed to its node (wall clock, as heartbeats are stamped);
        # bounded: the oldest are forgotten.
        self._taken: dict[str, float] = {}

    def taken_at(self, order_id: str) -> float | None:
        """When the node took the order (`time.time()`), None while it waits."""
        return self._taken.get(order_id)

    def order(self, host_id: str, action: str, upstream_id: str) -> NodeOrder:
        """Queue an order for `host_id` and wake its poll. ValueError for an unknown action."""
        if action not in nodewire.ORDER_ACTIONS:
            raise ValueError(f"unknown order action {action!r}")
        queued = NodeOrder(secrets.token_hex(8), action, upstream_id)
        self._queues.setdefault(host_id, []).append(queued)
        waker = self._wakers.pop(host_id, None)
        if waker is not None:
            waker.set()
        log.info("order %s queued for host %s: %s %s", queued.order_id, host_id, action,
                 upstream_id)
        return queued

    def pending(self, host_id: str) -> list[NodeOrder]:
        """The orders queued for `host_id` and not yet taken."""
        return list(self._queues.get(host_id, ()))

    async def take(self, host_id: str, wait_s: float) -> list[NodeOrder]:
        """The orders queued for `host_id`, waiting up to `wait_s` for one; [] if none came
        (or the gateway is shutting down)."""
        with trio.move_on_after(wait_s):
            while not self._closed:
                queued = self._queues.pop(host_id, [])
                if queued:
                    now = time.time()
                    for taken in queued:
                        self._taken[taken.order_id] = now
                    while len(self._taken) > MAX_REMEMBERED:
                        del self._taken[next(iter(self._taken))]
                    return queued
                waker = self._wakers.setdefault(host_id, trio.Event())
                await waker.wait()
        return []

    def close(self) -> None:
        """Answer every waiting poll now, with no orders, and every later one at once."""
        self._closed = True
        for waker in self._wakers.values():
            waker.set()
        self._wakers.clear()


async def handle_orders(gateway: Gateway, headers: HeaderLookup, body: bytes) -> dict[str, Any]:
    """The long poll of a node. Raises the GenieHiveError to answer (401/403/400/404)."""
    principal = gateway.auth.authorize(headers, "node")
    host_id = nodewire.parse_orders_poll(parse_json(body))
    if not principal.may_speak_for(host_id):
        raise PermissionDenied(f"this key may not take orders for host '{host_id}'",
                               param="host_id")
    if host_id not in gateway.snapshot.hosts:
        raise UnknownHostError(f"unknown host '{host_id}': register first", param="host_id")
    taken = await gateway.node_orders.take(host_id, ORDERS_WAIT_S)
    return {"orders": [order.render() for order in taken]}


def check_order(snapshot: Snapshot, host_id: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """(action, upstream_id) of an admin order for a node host that reports that upstream as
    managed. Raises InvalidRequest (400) or NotFound (404) naming the field."""
    action, upstream_id = body.get("action"), body.get("upstream_id")
    unknown = sorted(set(body) - {"action", "upstream_id"})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown field", param=unknown[0])
    if action not in nodewire.ORDER_ACTIONS:
        raise InvalidRequest("action: expected one of start, stop", param="action")
    if not isinstance(upstream_id, str) or not upstream_id:
        raise InvalidRequest("upstream_id: expected an upstream id", param="upstream_id")
    host = snapshot.hosts.get(host_id)
    if host is None or host_id == LOCAL_HOST_ID or host.is_local:
        raise UnknownHostError(f"unknown node host '{host_id}'", param="host_id")
    managed = any(
        s.host_id == host_id and s.managed is not None
        and s.service_id.startswith(f"{upstream_id}/")
        for s in snapshot.services.values()
    )
    if not managed:
        raise NotFound(f"upstream_id: host '{host_id}' reports no managed upstream "
                       f"'{upstream_id}'", param="upstream_id")
    return action, upstream_id


def register_order_routes(app: QuartTrio, gateway: Gateway) -> None:
    """The admin route that queues an order (the node poll is among the node routes)."""
    from quart import jsonify, request

    @app.post("/v1/admin/nodes/<host_id>/orders")
    async def admin_order(host_id: str) -> Any:
        gateway.auth.authorize(request.headers, "admin")
        body = await read_json_body(request.body, gateway.config.server.max_body_bytes)
        action, upstream_id = check_order(gateway.snapshot, host_id, body)
        queued = gateway.node_orders.order(host_id, action, upstream_id)
        return jsonify({**queued.render(), "host_id": host_id}), 202
