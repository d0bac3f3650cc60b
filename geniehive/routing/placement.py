"""Placement: where a model is warm, where it can be loaded, and what would have to go.

Rule: pure. Each candidate gets one class, best first:

  warm_free     the model is loaded (or loading: the request joins that load) and the
                service has a free slot;
  warm_busy     loaded, every slot taken: the request would wait in the admission queue;
  cold_fits     not loaded, and loading it needs nothing unloaded: the service is under its
                `max_loaded_models` and the model fits in the host's free GPU memory (either
                unknown counts as room);
  cold_evicts   not loaded, and it fits once models of the service are unloaded: the least
                recently used idle ones first (`evict` names them, in order). When only
                unloading a model in use (requests in flight, or loading) would make room,
                `waits` is set: the load waits until those models are idle, because a model
                in use is never unloaded; such a candidate comes after every other;
  does_not_fit  it cannot fit even on an empty server: larger than the host's GPU memory,
                or `max_loaded_models` is 0. Never routed to.

A service whose managed process is asleep (`ModelsLive.asleep`) has nothing loaded: each of
its candidates is cold, unless the model is loading (the request joins that start).
A model whose loaded state is unknown (`Asset.loaded` None: an engine that does not say, or
a direct name without an asset) is warm: the gateway cannot load it, only send to it.
Memory: the host's `vram_total_bytes` / `vram_used_bytes` (node agents report them from
nvidia-smi); a model's need is its `size_bytes` (the file), a loaded model frees its
`vram_bytes` (else its `size_bytes`) when unloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from geniehive.models import Asset, Host, Service, ServiceRuntime

__all__ = [
    "COLD_EVICTS",
    "COLD_FITS",
    "DOES_NOT_FIT",
    "RANKS",
    "WARM_BUSY",
    "WARM_FREE",
    "Placement",
    "arrange",
    "place",
]

WARM_FREE, WARM_BUSY, COLD_FITS, COLD_EVICTS, DOES_NOT_FIT = (
    "warm_free", "warm_busy", "cold_fits", "cold_evicts", "does_not_fit",
)
RANKS = {WARM_FREE: 0, WARM_BUSY: 1, COLD_FITS: 2, COLD_EVICTS: 3, DOES_NOT_FIT: 4}


@dataclass(frozen=True, slots=True)
class Placement:
    klass: str
    evict: tuple[str, ...] = ()  # cold_evicts: the models to unload first, in order
    waits: bool = False  # cold_evicts: some of `evict` are in use; the load waits for them
    detail: str = ""  # does_not_fit: why
    wait_ms: float | None = None  # warm_busy: the expected wait for a slot, when known
    load_ms: float | None = None  # cold: the model's last measured load time here

    @property
    def cold(self) -> bool:
        return self.klass in (COLD_FITS, COLD_EVICTS)


class Placed(Protocol):
    @property
    def placement(self) -> Placement: ...

    @property
    def upstream_model(self) -> str: ...


P = TypeVar("P", bound=Placed)


def arrange(candidates: list[P]) -> None:
    """Sort candidates (already in the strategy's order) by placement, in place and stably:
    the classes in order, a load that must wait for models in use last among them. A
    `warm_busy` candidate whose expected wait is no shorter than the measured load time of
    the same model on a `cold_fits` candidate goes after that one: loading is quicker."""
    if all(c.placement is WARM_FREE_PLACEMENT for c in candidates):
        return
    loads: dict[str, float] = {}
    for c in candidates:
        p = c.placement
        if p.klass == COLD_FITS and p.load_ms is not None:
            best = loads.get(c.upstream_model)
            loads[c.upstream_model] = p.load_ms if best is None else min(best, p.load_ms)

    def key(c: P) -> tuple[int, bool, int]:
        p = c.placement
        rank = RANKS[p.klass]
        if p.klass == WARM_BUSY and p.wait_ms is not None:
            load = loads.get(c.upstream_model)
            if load is not None and p.wait_ms >= load:
                return RANKS[COLD_FITS], False, 1
        return rank, p.waits, 0

    candidates.sort(key=key)


WARM_FREE_PLACEMENT = Placement(WARM_FREE)
WARM_BUSY_PLACEMENT = Placement(WARM_BUSY)
COLD_FITS_PLACEMENT = Placement(COLD_FITS)


def place(
    service: Service,
    asset: Asset | None,
    runtime: ServiceRuntime,
    host: Host | None,
    full: bool,
    latency_ms: float | None = None,
) -> Placement:
    """The placement class of sending `asset` to `service` now; `full`: every slot taken;
    `latency_ms`: the service's typical request time (for a full one's expected wait)."""
    models = runtime.models
    if asset is not None and asset.asset_id in models.loading:
        warm = True  # the request joins that load (or start)
    elif models.asleep:  # nothing is loaded; a start loads what it serves, evicting nothing
        load_ms = None if asset is None else models.load_ms.get(asset.asset_id)
        return COLD_FITS_PLACEMENT if load_ms is None else Placement(COLD_FITS, load_ms=load_ms)
    else:
        warm = asset is None or asset.loaded is not False
    if warm:
        if not full:
            return WARM_FREE_PLACEMENT
        slots = service.observed.slots_total
        if latency_ms is None or not slots:
            return WARM_BUSY_PLACEMENT
        ahead = runtime.in_flight - slots + 1  # this request's turn once every slot frees
        return Placement(WARM_BUSY, wait_ms=round(latency_ms * max(1, ahead) / slots, 3))
    assert asset is not None
    load_ms = models.load_ms.get(asset.asset_id)
    loaded = [a for a in service.assets if a.loaded is True and a.asset_id != asset.asset_id]
    limit = service.observed.max_loaded_models
    free = _free_memory(host)
    need = asset.size_bytes
    if _fits(len(loaded), limit, free, need):
        return COLD_FITS_PLACEMENT if load_ms is None else Placement(COLD_FITS, load_ms=load_ms)
    # Idle before in use, each least recently used first (never used through this gateway:
    # first of all).
    victims = sorted(
        loaded,
        key=lambda a: (
            a.asset_id in models.busy or a.asset_id in models.loading,
            models.last_used.get(a.asset_id, 0.0),
            a.asset_id,
        ),
    )
    count = len(loaded)
    evict: list[str] = []
    waits = False
    for victim in victims:
        evict.append(victim.asset_id)
        waits = waits or victim.asset_id in models.busy or victim.asset_id in models.loading
        count -= 1
        if free is not None:
            free += victim.vram_bytes or victim.size_bytes or 0
        if _fits(count, limit, free, need):
            return Placement(COLD_EVICTS, tuple(evict), waits, load_ms=load_ms)
    return Placement(DOES_NOT_FIT, detail=_why_not(asset, host, limit))


def _fits(count: int, limit: int | None, free: int | None, need: int | None) -> bool:
    if limit is not None and count >= limit:
        return False
    return free is None or need is None or need <= free


def _free_memory(host: Host | None) -> int | None:
    if host is None:
        return None
    metrics: Any = host.metrics
    total, used = metrics.get("vram_total_bytes"), metrics.get("vram_used_bytes")
    if not isinstance(total, int) or not isinstance(used, int):
        return None
    return max(0, total - used)


def _why_not(asset: Asset, host: Host | None, limit: int | None) -> str:
    if limit is not None and limit < 1:
        return "max_loaded_models is 0"
    total = host.metrics.get("vram_total_bytes") if host is not None else None
    need = asset.size_bytes or 0
    if isinstance(total, int):
        return (f"'{asset.asset_id}' needs {_gib(need)} GiB, the host has {_gib(total)} GiB "
                "of GPU memory")
    return f"'{asset.asset_id}' does not fit on this server"


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f}"
