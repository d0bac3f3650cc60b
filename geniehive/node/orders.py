"""The node's side of orders: a long poll to the control plane, each order run by the launcher.

Beside its heartbeats the agent keeps one `POST /v1/nodes/orders` open (the control plane
answers when it has an order for this host, or after about 25 s with none), so the control
plane reaches the node without the node opening a port. A `start` order is
`launcher.ensure_running`, a `stop` order `launcher.stop`; each runs in its own task, so a
slow start never holds up the next poll, and once it finished or failed the agent sends its
report at once (`agent.wake`), which carries the upstream's new `managed` state.

Rule: like the heartbeats, the poll never gives up: while the control plane is unreachable,
refuses the key or does not know the host yet, it backs off exponentially (with jitter, up to
60 s) and tries again; an order naming no managed upstream of this node is logged and
skipped. With several control plane URLs, a poll the one in use leaves unreachable (connect
error, timeout, 5xx or 429) moves the agent to the next (`NodeAgent.move_from`); the next poll,
after the same backoff, goes there. A move made by the heartbeats cancels a poll in flight.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx
import trio

from geniehive.errors import InvalidRequest
from geniehive.launcher import LaunchError
from geniehive.nodewire import parse_orders, render_orders_poll

if TYPE_CHECKING:
    from geniehive.node.agent import NodeAgent

log = logging.getLogger("geniehive.node")

ORDERS_PATH = "/v1/nodes/orders"
# The control plane answers within about 25 s; this leaves room for a slow network.
POLL_TIMEOUT_S = 40.0
MAX_DELAY_S = 60.0


def poll_delay(failures: int, jitter: float) -> float:
    """Seconds before the next poll after `failures` failed ones in a row (0: at once);
    `jitter` in [0, 1) spreads nodes over the upper half of the exponential step."""
    if failures <= 0:
        return 0.0
    ceiling = min(MAX_DELAY_S, 2.0 ** min(failures - 1, 16))
    return ceiling / 2 + jitter * ceiling / 2


async def poll_once(agent: NodeAgent) -> list[dict[str, str]] | None:
    """The orders of one long poll, or None when it failed (logged at debug level)."""
    headers = {}
    if agent.config.control.node_key:
        headers["X-GenieHive-Node-Key"] = agent.config.control.node_key
    url = agent.links.current
    try:
        response = await agent.control.post(
            url + ORDERS_PATH,
            json=render_orders_poll(agent.config.node.host_id), headers=headers,
            timeout=httpx.Timeout(POLL_TIMEOUT_S, connect=5.0),
        )
    except httpx.HTTPError as exc:
        log.debug("orders poll failed: %s", exc or type(exc).__name__)
        agent.move_from(url, f"orders poll: {exc or type(exc).__name__}")
        return None
    if response.status_code != 200:
        log.debug("orders poll answered HTTP %d", response.status_code)
        if response.status_code >= 500 or response.status_code == 429:
            agent.move_from(url, f"orders poll: HTTP {response.status_code}")
        return None
    try:
        return parse_orders(response.json())
    except (ValueError, InvalidRequest) as exc:
        log.warning("control plane sent unreadable orders: %s", exc)
        return None


async def carry_out(agent: NodeAgent, order: dict[str, str]) -> None:
    """Run one order through the launcher, then have the agent report at once."""
    action, upstream_id = order["action"], order["upstream_id"]
    if not agent.launcher.is_managed(upstream_id):
        log.warning("order %s: %s %r: no managed upstream of that id here; skipped",
                    order["id"], action, upstream_id)
        return
    log.info("order %s: %s %s", order["id"], action, upstream_id)
    try:
        if action == "start":
            waited = await agent.launcher.ensure_running(upstream_id)
            log.info("order %s: %s running (waited %.1f s)", order["id"], upstream_id, waited)
        else:
            await agent.launcher.stop(upstream_id)
            log.info("order %s: %s stopped", order["id"], upstream_id)
    except LaunchError as exc:
        log.error("order %s: %s", order["id"], exc)
    except Exception:  # a bug here must not stop the agent
        log.exception("order %s failed unexpectedly", order["id"])
    finally:
        agent.wake.set()


async def run_orders(agent: NodeAgent) -> None:
    """Poll for orders until cancelled, running each in its own task."""
    failures = 0
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(poll_delay(failures, agent.rng.random()))
            orders = None
            with trio.CancelScope() as agent.poll_scope:  # a move cancels it
                orders = await poll_once(agent)
            agent.poll_scope = None
            if orders is None:
                failures += 1
                continue
            failures = 0
            for order in orders:
                nursery.start_soon(carry_out, agent, order)
