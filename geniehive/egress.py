"""Where the gateway's own requests may go: node upstream URLs and the hop header.

Rule: pure. Two guards keep a node (or a misconfiguration) from turning the gateway against
itself or its network (docs/deployment.md, "Node keys and upstream addresses"):

- `upstream_problem` judges a base URL a node registers: never one of the gateway's own
  listeners, and only at the node's own address or inside `nodes.allowed_upstream_networks`.
  Host names are compared as strings (case-insensitively), never resolved; IP literals are
  compared as addresses and against the networks.
- `HopGuard` stops request loops: every request the gateway sends upstream carries
  `X-GenieHive-Hops`, the comma-separated instance ids of the gateways it passed through.
  A request whose header already holds our own id, or `MAX_HOPS` ids, is refused with 508
  (`LoopDetected`); chained distinct gateways append their ids and pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from geniehive.errors import InvalidRequest, LoopDetected

HOP_HEADER = "x-geniehive-hops"
HOP_HEADER_BYTES = HOP_HEADER.encode("ascii")
MAX_HOPS = 8
# Ids are 16 hex characters; a longer header is not from a chain of gateways, and is not
# forwarded (it would be copied onto every upstream request).
MAX_HOP_HEADER_CHARS = 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Bind = tuple[str, int]  # (host as bound, port); port 0 means not bound yet


# --- hosts ----------------------------------------------------------------------------------


def as_ip(host: str) -> IPAddress | None:
    """The address of an IP literal (an IPv4-mapped IPv6 address as IPv4), else None."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _name(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def is_loopback_host(host: str) -> bool:
    """localhost (and names under it, RFC 6761) or a loopback IP literal."""
    ip = as_ip(host)
    if ip is not None:
        return ip.is_loopback
    name = _name(host)
    return name == "localhost" or name.endswith(".localhost")


def same_host(a: str, b: str) -> bool:
    """Two hosts as written: IP literals equal as addresses, names equal as strings."""
    ip_a, ip_b = as_ip(a), as_ip(b)
    if ip_a is not None or ip_b is not None:
        return ip_a == ip_b
    return _name(a) == _name(b)


def parse_networks(networks: Iterable[str]) -> tuple[Network, ...]:
    """The networks of `nodes.allowed_upstream_networks` (already checked by the config)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def bind_of_url(url: str) -> Bind:
    """(host, port) of a listening URL as hypercorn reports it (`http://[::]:8800`)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


# --- the base URL rule ----------------------------------------------------------------------


def _reaches_bind(host: str, port: int, bind: Bind, is_local: Callable[[IPAddress], bool]) -> bool:
    bind_host, bind_port = bind
    if bind_port == 0 or port != bind_port:
        return False
    if bind_host in WILDCARD_HOSTS:
        # A wildcard listener answers on every local address of the machine.
        if is_loopback_host(host):
            return True
        ip = as_ip(host)
        return ip is not None and is_local(ip)
    if is_loopback_host(bind_host):
        return is_loopback_host(host)
    return same_host(host, bind_host)


def upstream_problem(
    base_url: str,
    node_address: str,
    networks: Sequence[Network],
    own_binds: Iterable[Bind],
    is_local: Callable[[IPAddress], bool] = lambda ip: ip.is_loopback,
) -> str | None:
    """Why a node may not register `base_url`, or None when it may.

    Refused: a URL that reaches one of `own_binds` (a wildcard bind matches any address for
    which `is_local` holds), and a host that is neither `node_address` nor an IP literal in
    `networks`. `base_url` has been checked to be an http(s) URL with a host.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    for bind in own_binds:
        if _reaches_bind(host, port, bind, is_local):
            where = f"[{bind[0]}]" if ":" in bind[0] else bind[0]
            return f"points at this gateway's own listener {where}:{bind[1]}"
    if same_host(host, node_address):
        return None
    ip = as_ip(host)
    if ip is not None and any(ip in network for network in networks):
        return None
    return (
        f"host {host!r} is not the node's address {node_address!r} and not in "
        "nodes.allowed_upstream_networks"
    )


# --- the hop header -------------------------------------------------------------------------


class HopGuard:
    """This gateway's place in a chain of gateways: checks and extends `X-GenieHive-Hops`."""

    __slots__ = ("instance_id", "own")

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.own = instance_id.encode("ascii")  # the header of a request that came direct

    def check(self, value: str | None) -> None:
        """Raises LoopDetected when `value` names this gateway or is MAX_HOPS long, and
        InvalidRequest when it is longer than MAX_HOP_HEADER_CHARS."""
        if value:
            self._ids(value)

    def next_hops(self, value: str | None) -> bytes:
        """The header to send upstream for a request that arrived with `value`.

        Raises LoopDetected or InvalidRequest (see `check`).
        """
        if not value:
            return self.own
        ids = self._ids(value)
        return ",".join([*ids, self.instance_id]).encode("latin-1")

    def _ids(self, value: str) -> list[str]:
        if len(value) > MAX_HOP_HEADER_CHARS:
            raise InvalidRequest(
                f"{HOP_HEADER}: longer than {MAX_HOP_HEADER_CHARS} characters", param=HOP_HEADER
            )
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if self.instance_id in ids:
            raise LoopDetected(
                f"request loop: this request already passed through this gateway "
                f"({len(ids)} hop(s)); a service's base_url points back at the gateway"
            )
        if len(ids) >= MAX_HOPS:
            raise LoopDetected(f"request passed through {len(ids)} gateways (at most {MAX_HOPS})")
        return ids
