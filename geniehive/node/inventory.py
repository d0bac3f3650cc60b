"""What a node offers: its upstreams as services, its model files, the URLs it advertises.

Rule: no I/O except `scan_models`, which walks the configured folders (the agent runs it off
the event loop). Service ids are `<upstream id>/<operation>`, as the control plane names its
own upstreams' services.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from geniehive.config import UpstreamConfig
from geniehive.models import Asset, Observed, Service, ServiceState

MAX_MODEL_FILES = 1000


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def advertised_url(base_url: str, address: str) -> str:
    """`base_url` as the control plane must call it: a loopback host becomes `address`.

    A loopback URL only means something on this host; the scheme, port and path are kept.
    """
    parts = urlsplit(base_url)
    if not is_loopback_host(parts.hostname) or is_loopback_host(address):
        return base_url
    host = f"[{address}]" if ":" in address else address
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scan_models(roots: Iterable[Path], limit: int = MAX_MODEL_FILES) -> list[dict[str, Any]]:
    """The `*.gguf` files under `roots` as [{path, size_bytes}], sorted by path.

    Missing or unreadable folders are skipped (a fresh host may not have them yet);
    symlinked folders are not followed, so a link loop cannot trap the walk.
    """
    found: dict[str, int] = {}
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if not name.lower().endswith(".gguf"):
                    continue
                path = os.path.join(folder, name)
                try:
                    found[os.path.abspath(path)] = os.stat(path).st_size
                except OSError:
                    continue
                if len(found) >= limit:
                    return _listed(found)
    return _listed(found)


def _listed(found: dict[str, int]) -> list[dict[str, Any]]:
    return [{"path": path, "size_bytes": size} for path, size in sorted(found.items())]


def upstream_services(
    host_id: str,
    address: str,
    upstream: UpstreamConfig,
    assets: Sequence[Asset],
    observed: Observed,
    health: str,
) -> list[Service]:
    """One service per operation of `upstream`, as the control plane will see them."""
    base_url = advertised_url(upstream.base_url, address)
    return [
        Service(
            service_id=f"{upstream.id}/{operation}",
            host_id=host_id,
            operation=operation,
            adapter=upstream.adapter,
            base_url=base_url,
            assets=tuple(assets),
            state=ServiceState(health=health),
            observed=observed,
            upstream_id=upstream.id,
            timeout_s=upstream.timeout_s,
            keep_alive=upstream.keep_alive,
            dialect=upstream.dialect,
        )
        for operation in upstream.operations
    ]
