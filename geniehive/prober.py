"""The health prober: an adapter-specific probe of every service, with hysteresis.

Rule: one probe per upstream server (services sharing a base URL and adapter share it), each
bounded by `prober.timeout_s`; probes never generate tokens. Verdicts live in the gateway's
live state; every transition is logged. On a registry shared by replicas only the leader
probes the control file's upstreams, and stores each verdict in the service's health for the
others (registry_follow.py); every replica probes the nodes' services itself. A service
whose on_demand managed process is asleep is not probed (its start waits for its readiness
itself).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from geniehive import health
from geniehive.models import LOCAL_HOST_ID
from geniehive.probing import bounded_probe
from geniehive.supervise import run_every

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.prober")


def _asleep(gateway: Gateway, service_id: str) -> bool:
    """A managed process not running on demand (a local one, or a node's as it reports it):
    nothing to probe. Its start waits for its readiness itself; a node's verdict is forgotten
    meanwhile, so that an old `down` does not outlive the process it was about."""
    live = gateway.live.services.get(service_id)
    service = gateway.snapshot.services.get(service_id)
    if service is not None and service.managed not in (None, "running"):
        if live is not None and live.probe.verdict != "unknown":
            live.probe = health.ProbeState()
        return True
    return live is not None and live.asleep


async def probe_service_group(gateway: Gateway, service_ids: list[str]) -> None:
    snapshot = gateway.snapshot
    service = snapshot.services.get(service_ids[0])
    if service is None or _asleep(gateway, service.service_id):
        return
    cfg = gateway.config.prober
    result = await bounded_probe(
        gateway.adapter_for(service).probe, cfg.timeout_s, service.service_id
    )
    if not result.ok:
        gateway.count_failure("probe", service.service_id)
    for service_id in service_ids:
        if _asleep(gateway, service_id):  # stopped while this probe ran
            continue
        live = gateway.live.get(service_id)
        before = live.probe
        live.probe = health.next_probe_state(
            before, result.ok, result.reason, time.time(),
            down_after=cfg.down_after, up_after=cfg.up_after,
        )
        if live.probe.verdict != before.verdict:
            log.info(
                "health service=%s %s -> %s (%s)",
                service_id, before.verdict, live.probe.verdict, result.reason,
            )
        await _share_verdict(gateway, service_id, live.probe.verdict)


async def _share_verdict(gateway: Gateway, service_id: str, verdict: str) -> None:
    """The leader's verdict on a control-file service, stored for the other replicas."""
    service = gateway.snapshot.services.get(service_id)
    if (gateway.registry.shared and service is not None and service.host_id == LOCAL_HOST_ID
            and verdict != "unknown" and service.state.health != verdict):
        await gateway.registry.set_service_health(service_id, verdict)


def probe_groups(snapshot: Any) -> list[list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for service_id, service in sorted(snapshot.services.items()):
        groups.setdefault((service.adapter, service.base_url), []).append(service_id)
    return list(groups.values())


async def probe_all(gateway: Gateway) -> None:
    snapshot = gateway.snapshot
    mine = gateway.leadership.held or not gateway.registry.shared
    async with trio.open_nursery() as nursery:
        for group in probe_groups(snapshot):
            if mine or snapshot.services[group[0]].host_id != LOCAL_HOST_ID:
                nursery.start_soon(probe_service_group, gateway, group)


async def run_prober(gateway: Gateway, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Prober task: started after its first pass."""
    await probe_all(gateway)
    gateway.started.add("prober")
    task_status.started()
    await run_every("prober", lambda: gateway.config.prober.interval_s,
                    lambda: probe_all(gateway))
