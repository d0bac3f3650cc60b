"""Models on demand: a cold candidate is started, or its model loaded, before it is sent to.

Rules (docs/deployment.md, "Models on demand"):
- the relay calls `Demand.warm(service, model)` once a slot on the chosen service is taken,
  when the candidate's placement is cold or the service is asleep or loading; it returns the
  milliseconds this request waited for a start or a load (None when nothing had to happen),
  or raises LoadFailed naming the upstream and why (the relay then fails over);
- a local `on_demand` managed upstream is started by the launcher (`ensure_running`, bounded
  by its `launch.ready_timeout_s`), then discovered once, so its slots and models are known
  before the request goes out;
- a node's managed upstream that is not running is ordered started (`gateway.node_orders`,
  taken by the node's long poll), then waited for until the node reports it running, within
  `capacity.load_timeout_s`; a report still cold well after the node took the order means
  its start failed;
- a model of an engine that loads on request (`Adapter.loads_models`: Ollama) is loaded
  through its adapter once the models placement names (`Placement.evict`, the least recently
  used idle ones first) are unloaded. A model with a request in flight or loading is never
  unloaded: the load waits until it is idle, within `capacity.load_timeout_s`. The services of
  that server then show the new state at once (a node's next report confirms it);
- collation: one start or load per server and model at a time; concurrent requests for it
  wait for that one; a request for a model already warm never waits here. A waiter whose
  leader was cancelled (its client went away) takes the work over;
- while it runs, the model counts as loading on every service of that server (placement
  ranks joining it `warm_free`; `/v1/models` says `loading`) and its duration becomes the
  model's load time there (`ModelsLive.load_ms`: placement and `Retry-After` read it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import httpx
import trio

from geniehive.adapters import UpstreamError
from geniehive.discovery import discover_upstream
from geniehive.launcher import LaunchError
from geniehive.live import ServiceLive
from geniehive.models import LOCAL_HOST_ID, MANAGED_STATES, Asset, Host, Service, upstream_of
from geniehive.routing.placement import COLD_EVICTS, DOES_NOT_FIT, place

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.demand")

COLD, RUNNING = MANAGED_STATES[0], MANAGED_STATES[2]
START_REPORT_MARGIN_S = 0.5


class LoadFailed(Exception):
    """A start or load that did not happen; `message` names the upstream and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(eq=False)
class _Work:
    """One start or load in progress, which later requests for it wait for."""

    services: frozenset[str]  # the services it makes warm
    began: float
    expected_ms: float | None  # the last measured load time of what it loads, if any
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    abandoned: bool = False  # its leader was cancelled: a waiter takes over


class Demand:
    """The gateway's starts and loads of cold candidates (see the module's rules)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._work: dict[tuple[str, str, str], _Work] = {}
        self._moved: trio.Event | None = None  # set when a request for a loadable model ends
        gateway.admission.loading_s = self.loading_s
        # When loads last changed what a server holds, by (host id, base URL): a discovery
        # read before then must not overwrite it (geniehive/discovery.py).
        self._marked: dict[tuple[str, str], float] = {}

    def marked_since(self, host_id: str, base_url: str, since: float) -> bool:
        """Whether a load or unload changed the models of that server after `since`."""
        return self._marked.get((host_id, base_url), -1.0) >= since

    def loading_s(self, service_id: str) -> float:
        """Seconds until the starts and loads in progress on `service_id` should end, from
        the last measured load time of each (0 when none runs, or none was measured)."""
        now = trio.current_time()
        left = 0.0
        for work in self._work.values():
            if service_id in work.services and work.expected_ms is not None:
                left = max(left, work.expected_ms / 1000 - (now - work.began))
        return left

    def model_finished(self) -> None:
        """A request for a model the gateway may unload ended: loads waiting for a model to
        be idle look again."""
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def _models_moved(self) -> None:
        if self._moved is None:
            self._moved = trio.Event()
        await self._moved.wait()

    def may_need(self, service: Service, model: str) -> bool:
        """Whether `warm` may have something to do for `model` on `service` even though its
        placement said warm: the service fell asleep, or the model is loading, since."""
        live = self.gw.live.services.get(service.service_id)
        return live is not None and (live.asleep or live.is_loading(model))

    async def warm(self, service: Service, model: str) -> float | None:
        """Start or load what `model` on `service` needs; the ms waited, None if nothing."""
        gw = self.gw
        uid = service.upstream_id
        if service.host_id == LOCAL_HOST_ID and uid and gw.launcher.is_managed(uid):
            if not gw.launcher.asleep(uid):
                return await self._joined(("local", uid, ""))
            return await self._collated(
                ("local", uid, ""), self._siblings(service), None,
                lambda: self._start_local(uid),
            )
        if service.managed is not None:  # a node's managed upstream
            node_uid = upstream_of(service)
            if service.managed == RUNNING:
                return await self._joined((service.host_id, node_uid, ""))
            return await self._collated(
                (service.host_id, node_uid, ""), self._siblings(service), None,
                lambda: self._start_on_node(service.host_id, node_uid),
            )
        asset = service.asset(model)
        adapter = gw.adapter_for(service)
        key = (service.host_id, service.base_url, model)
        if asset is None or asset.loaded is not False or not adapter.loads_models:
            return await self._joined(key)
        return await self._collated(
            key, self._siblings(service), model, lambda: self._load(service, asset)
        )

    # -- collation ---------------------------------------------------------------------------

    async def _joined(self, key: tuple[str, str, str]) -> float | None:
        """Wait for a start or load of `key` in progress, if there is one."""
        work = self._work.get(key)
        if work is None:
            return None
        began = trio.current_time()
        await work.done.wait()
        if work.error is not None:
            raise LoadFailed(work.error)
        return (trio.current_time() - began) * 1000

    async def _collated(
        self,
        key: tuple[str, str, str],
        services: list[Service],
        model: str | None,
        run: Callable[[], Awaitable[None]],
    ) -> float:
        """Run `run` as the one start or load of `key`, or wait for the one in progress."""
        began = trio.current_time()
        while True:
            work = self._work.get(key)
            if work is None:
                await self._lead(key, services, model, run)
                return (trio.current_time() - began) * 1000
            await work.done.wait()
            if work.abandoned:
                continue  # its leader went away before it ended: this request takes over
            if work.error is not None:
                raise LoadFailed(work.error)
            return (trio.current_time() - began) * 1000

    async def _lead(
        self,
        key: tuple[str, str, str],
        services: list[Service],
        model: str | None,
        run: Callable[[], Awaitable[None]],
    ) -> None:
        marks = _loading_marks(self.gw, services, model)
        measured = [t for live, name in marks if (t := live.models().load_ms.get(name))]
        began = trio.current_time()
        work = self._work[key] = _Work(
            frozenset(s.service_id for s in services), began,
            max(measured) if measured else None,
        )
        for live, name in marks:
            live.loading(name, True)
        took: float | None = None
        try:
            await run()
            took = (trio.current_time() - began) * 1000
        except LoadFailed as exc:
            work.error = exc.message
            log.warning("%s", exc.message)
            raise
        except BaseException:
            work.abandoned = True
            raise
        finally:
            for live, name in marks:
                live.loading(name, False, took)
            del self._work[key]
            work.done.set()
            self.model_finished()  # a load waiting for this one's model to be idle
        log.info("%s ready in %.0f ms", "/".join(k for k in key[1:] if k), took)

    def _siblings(self, service: Service) -> list[Service]:
        """The services of the same server as `service` (itself included)."""
        return [
            s for s in self.gw.snapshot.services.values()
            if s.host_id == service.host_id and s.base_url == service.base_url
        ]

    # -- the work ----------------------------------------------------------------------------

    async def _start_local(self, upstream_id: str) -> None:
        gw = self.gw
        try:
            await gw.launcher.ensure_running(upstream_id)
        except LaunchError as exc:
            raise LoadFailed(f"{upstream_id}: could not be started on demand: {exc}") from None
        upstream = next(u for u in gw.config.upstreams if u.id == upstream_id)
        await discover_upstream(gw, upstream)  # its slots and models, before it is sent to

    async def _start_on_node(self, host_id: str, upstream_id: str) -> None:
        gw = self.gw
        timeout_s = gw.config.capacity.load_timeout_s
        order = gw.node_orders.order(host_id, "start", upstream_id)
        with trio.move_on_after(timeout_s):
            while True:
                snapshot = gw.snapshot
                services = [
                    s for s in snapshot.services.values()
                    if s.host_id == host_id and upstream_of(s) == upstream_id
                ]
                if not services:
                    raise LoadFailed(f"{upstream_id} on host {host_id}: the host no longer "
                                     "reports it")
                if all(s.managed == RUNNING for s in services):
                    return
                if _start_failed(snapshot.hosts.get(host_id), services,
                                 gw.node_orders.taken_at(order.order_id)):
                    raise LoadFailed(f"{upstream_id} on host {host_id}: the node could not "
                                     "start it (its log says why)")
                await gw.registry.published.wait()
        raise LoadFailed(f"{upstream_id} on host {host_id}: the node did not report it "
                         f"running within {timeout_s:g} s (capacity.load_timeout_s)")

    async def _load(self, service: Service, asset: Asset) -> None:
        gw = self.gw
        timeout_s = gw.config.capacity.load_timeout_s
        adapter = gw.adapter_for(service)
        name = service.upstream_id or service.service_id
        with trio.move_on_after(timeout_s):
            evict = await self._room_for(service, asset)
            try:
                for victim in evict:
                    log.info("%s: unloading idle model %s to make room for %s", name, victim,
                             asset.asset_id)
                    await adapter.unload(victim)
                await adapter.load(asset.asset_id)
            except (httpx.HTTPError, UpstreamError) as exc:
                raise LoadFailed(f"{name}: loading '{asset.asset_id}' failed: "
                                 f"{exc or type(exc).__name__}") from None
            await self._mark_loaded(service, asset.asset_id, evict)
            return
        raise LoadFailed(f"{name}: '{asset.asset_id}' was not loaded within {timeout_s:g} s "
                         "(capacity.load_timeout_s)")

    async def _room_for(self, service: Service, asset: Asset) -> tuple[str, ...]:
        """The models to unload so that `asset` fits, once none of them is in use (waiting
        for that as long as it takes; the caller bounds it)."""
        gw = self.gw
        while True:
            now_service = gw.snapshot.services.get(service.service_id, service)
            host = gw.snapshot.hosts.get(service.host_id)
            runtime = gw.live.runtime(service.service_id, trio.current_time())
            models = runtime.models  # without this load's own mark, which reads as warm
            runtime = replace(runtime, models=replace(
                models, loading=models.loading - {asset.asset_id}
            ))
            placement = place(now_service, asset, runtime, host, full=False)
            if placement.klass == DOES_NOT_FIT:
                raise LoadFailed(f"{service.upstream_id or service.service_id}: "
                                 f"{placement.detail}")
            if placement.klass != COLD_EVICTS:
                return ()
            in_use = [m for m in placement.evict if _in_use(gw, service, m)]
            if not in_use:
                return placement.evict
            log.info("%s: '%s' waits for %s to be idle before unloading it",
                     service.service_id, asset.asset_id, ", ".join(in_use))
            await self._models_moved()

    async def _mark_loaded(self, service: Service, model: str, unloaded: tuple[str, ...]) -> None:
        """Show `model` loaded and `unloaded` not, on every service of that server."""
        self._marked[(service.host_id, service.base_url)] = trio.current_time()
        gone = set(unloaded)
        for sibling in self._siblings(service):
            assets = tuple(
                _with_loaded(a, True) if a.asset_id == model
                else _with_loaded(a, False) if a.asset_id in gone else a
                for a in sibling.assets
            )
            if assets != sibling.assets:
                await self.gw.registry.set_service_assets(sibling.service_id, assets)


def _start_failed(host: Host | None, services: list[Service], taken: float | None) -> bool:
    """Whether a node's report says its start failed: still cold in a report sent well
    after it took the order (a node reports at once when an order ends; the margin keeps a
    report built just as the order arrived from counting)."""
    return (
        taken is not None and host is not None and host.last_heartbeat is not None
        and host.last_heartbeat > taken + START_REPORT_MARGIN_S
        and any(s.managed == COLD for s in services)
    )


def _with_loaded(asset: Asset, loaded: bool) -> Asset:
    return replace(asset, loaded=loaded)


def _in_use(gw: Gateway, service: Service, model: str) -> bool:
    """Whether `model` has a request in flight or is loading on a service of that server."""
    for sibling in gw.snapshot.services.values():
        if sibling.host_id != service.host_id or sibling.base_url != service.base_url:
            continue
        live = gw.live.services.get(sibling.service_id)
        if live is not None:
            models = live.models()
            if model in models.busy or model in models.loading:
                return True
    return False


def _loading_marks(
    gw: Gateway, services: list[Service], model: str | None
) -> list[tuple[ServiceLive, str]]:
    """(live counters, model) pairs to show loading: `model` on each service, or (a process
    start) every asset of each."""
    marks: list[tuple[ServiceLive, str]] = []
    for service in services:
        live = gw.live.get(service.service_id)
        names = [model] if model is not None else [a.asset_id for a in service.assets]
        marks.extend((live, name) for name in names)
    return marks
