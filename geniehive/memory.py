"""What a host's memory holds: its GPUs' total and used bytes, and the models its services
have installed and loaded, as `/v1/cluster/hosts`, `geniehive status` and /metrics show it.

Rule: pure, and total over untrusted input. A node's GPUs come from its latest heartbeat's
`metrics.gpus` (read from nvidia-smi: total and used), else from its registration's
`resources.gpus` (total only); entries or numbers of another shape are skipped, never raised
on. A model is listed once per upstream (services on the same `base_url` with the same
adapter share their models), with the services that offer it: its `size_bytes` (installed,
from discovery), whether it is `loaded`, its `vram_bytes` and `expires_at` when it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from geniehive.models import Host, Service

__all__ = ["gpu_memory", "host_memory", "loaded_model_memory", "model_memory"]


def _bytes(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _gpu_list(source: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    gpus = source.get("gpus")
    if not isinstance(gpus, list | tuple):
        return []
    return [g for g in gpus if isinstance(g, Mapping)]


def gpu_memory(host: Host) -> list[dict[str, Any]]:
    """Per GPU of `host`: index, name, total_bytes, used_bytes (None where unknown)."""
    gpus = _gpu_list(host.metrics) or _gpu_list(host.resources)
    out = []
    for position, gpu in enumerate(gpus):
        index = _bytes(gpu.get("index"))
        name = gpu.get("name")
        out.append({
            "index": index if index is not None else position,
            "name": name if isinstance(name, str) else None,
            "total_bytes": _bytes(gpu.get("memory_total_bytes")),
            "used_bytes": _bytes(gpu.get("memory_used_bytes")),
        })
    return out


def model_memory(services: Iterable[Service]) -> list[dict[str, Any]]:
    """The models of `services` (one host's), once per upstream, in the services' order."""
    models: dict[tuple[str, str, str], dict[str, Any]] = {}
    for service in services:
        for asset in service.assets:
            key = (service.adapter, service.base_url, asset.asset_id)
            entry = models.get(key)
            if entry is None:
                entry = models[key] = {
                    "model": asset.asset_id, "services": [], "loaded": bool(asset.loaded),
                    "size_bytes": asset.size_bytes,
                    "vram_bytes": asset.vram_bytes if asset.loaded else None,
                    "expires_at": asset.expires_at if asset.loaded else None,
                }
            entry["services"].append(service.service_id)
    return list(models.values())


def host_memory(host: Host, services: Iterable[Service]) -> dict[str, Any]:
    """The `memory` of a host view: GPUs with totals, and models with loaded totals."""
    gpus = gpu_memory(host)
    models = model_memory(services)
    loaded = [m for m in models if m["loaded"]]
    return {
        "gpus": gpus,
        "gpu_total_bytes": _sum(g["total_bytes"] for g in gpus),
        "gpu_used_bytes": _sum(g["used_bytes"] for g in gpus),
        "models": models,
        "loaded_count": len(loaded),
        "loaded_vram_bytes": _sum(m["vram_bytes"] for m in loaded),
    }


def loaded_model_memory(services: Iterable[Service]) -> list[tuple[str, str, int]]:
    """(service id, model, VRAM bytes) of every loaded model whose VRAM is known."""
    return [
        (service.service_id, asset.asset_id, asset.vram_bytes)
        for service in services
        for asset in service.assets
        if asset.loaded and asset.vram_bytes is not None
    ]


def _sum(values: Iterable[int | None]) -> int | None:
    """The sum of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None
