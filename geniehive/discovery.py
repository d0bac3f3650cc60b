"""Upstream model discovery for the upstreams of the control file.

Rule: each pass asks every upstream's adapter what it serves, bounded by the upstream's
`timeout_s`, merges that with the configured assets and writes it to the registry, which
publishes a new snapshot only when something changed. An unreachable upstream keeps its last
known assets (shown not loaded) so that its names stay known. A pass that began before the
gateway loaded or unloaded a model there writes nothing: its reading is already out of date.
A configured `max_in_flight` is the services' slot count from their first registration on,
whatever the upstream reports; a configured `max_loaded_models` is carried onto their
observed state the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
import trio

from geniehive.adapters import UpstreamError
from geniehive.assets import (
    configured_models,
    configured_slots,
    fill_observed,
    forget_loaded,
    merge_assets,
)
from geniehive.config import UpstreamConfig
from geniehive.models import LOCAL_HOST_ID, Host, Observed, Service
from geniehive.supervise import run_every

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.discovery")


def local_host(labels: Any) -> Host:
    return Host(host_id=LOCAL_HOST_ID, address="127.0.0.1", display_name="control plane",
                labels=labels, is_local=True)


def configured_load(observed: Observed, upstream: UpstreamConfig) -> Observed:
    """`observed` with the upstream's configured slots and loaded-model limit, if any."""
    return configured_models(configured_slots(observed, upstream.max_in_flight),
                             upstream.max_loaded_models)


def local_service_ids(upstream: UpstreamConfig) -> list[str]:
    """The ids of the services `upstream` becomes: `<upstream id>/<operation>`."""
    return [f"{upstream.id}/{operation}" for operation in upstream.operations]


def local_services(upstreams: Sequence[UpstreamConfig]) -> list[Service]:
    """The control file's upstreams as services `<upstream id>/<operation>` of the local host."""
    return [
        Service(
            service_id=f"{u.id}/{operation}",
            host_id=LOCAL_HOST_ID,
            operation=operation,
            adapter=u.adapter,
            base_url=u.base_url,
            assets=tuple(u.assets),
            observed=configured_load(Observed(), u),
            upstream_id=u.id,
            timeout_s=u.timeout_s,
            keep_alive=u.keep_alive,
            dialect=u.dialect,
            api_key=u.api_key,
        )
        for u in upstreams
        for operation in u.operations
    ]


async def discover_upstream(gateway: Gateway, upstream: UpstreamConfig) -> None:
    """One upstream's discovery: its assets and load written to each of its services. An
    `on_demand` upstream not running now is left alone: its assets stay as last seen (the
    launcher's state says that none is loaded)."""
    if gateway.launcher.asleep(upstream.id):
        return
    services = [
        s for s in gateway.snapshot.services.values()
        if s.host_id == LOCAL_HOST_ID and s.upstream_id == upstream.id
    ]
    if not services:
        return
    adapter = gateway.adapter_for(services[0])
    began = trio.current_time()
    discovered = await _bounded(upstream, "discovery", adapter.discover)
    observed = None
    if discovered is None:
        gateway.count_failure("discovery", upstream.id)
    else:
        # Load figures are advisory: a slow or failed reading never discards the model list.
        observed = await _bounded(upstream, "observation", adapter.observe)
    # No reading means no load known now, as for a node's services: an old queue depth
    # must not keep steering routing.
    observed = configured_load(fill_observed(observed, discovered), upstream)
    if gateway.demand.marked_since(LOCAL_HOST_ID, upstream.base_url, began):
        return  # a load or unload since this read began: what it read is out of date
    for service in services:
        if discovered is None:
            assets = forget_loaded(service.assets)
        else:
            assets = merge_assets(upstream.assets, discovered)
        await gateway.registry.set_service_assets(service.service_id, assets, observed)


async def _bounded(upstream: UpstreamConfig, what: str, call: Any) -> Any:
    """`call()` within the upstream's timeout; None (logged) on timeout or failure."""
    with trio.move_on_after(upstream.timeout_s):
        try:
            return await call()
        except (httpx.HTTPError, UpstreamError) as exc:
            log.info("%s of %s failed: %s", what, upstream.id, exc or type(exc).__name__)
            return None
        except Exception:  # an adapter bug must not stop the other upstreams' discovery
            log.exception("%s of %s failed unexpectedly", what, upstream.id)
            return None
    log.info("%s of %s timed out after %.1f s", what, upstream.id, upstream.timeout_s)
    return None


async def discover_all(gateway: Gateway) -> None:
    """Discover every control-file upstream; only the leader does (registry_follow.py), the
    other processes read what it stored."""
    if not gateway.leadership.held:
        return
    async with trio.open_nursery() as nursery:
        for upstream in gateway.config.upstreams:
            nursery.start_soon(discover_upstream, gateway, upstream)


async def run_discovery(gateway: Gateway, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Discovery task: started after its first pass over every upstream."""
    await discover_all(gateway)
    gateway.started.add("discovery")
    task_status.started()
    await run_every("discovery", lambda: gateway.config.discovery.interval_s,
                    lambda: discover_all(gateway))
