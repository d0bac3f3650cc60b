"""Which addresses count as this machine's own: the check binds real sockets to find out."""

from __future__ import annotations

import ipaddress

from geniehive.api_nodes import is_local_address


def test_local_addresses_are_loopback_and_those_a_socket_can_bind() -> None:
    assert is_local_address(ipaddress.ip_address("127.0.0.9"))
    assert is_local_address(ipaddress.ip_address("::1"))
    assert not is_local_address(ipaddress.ip_address("192.0.2.1"))  # TEST-NET-1, never ours
