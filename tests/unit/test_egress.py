"""Where the gateway's own requests may go: the node base-URL rule and the hop header."""

from __future__ import annotations

import ipaddress

import pytest

from geniehive import egress
from geniehive.egress import HopGuard, parse_networks, upstream_problem
from geniehive.errors import InvalidRequest, LoopDetected

BINDS = [("127.0.0.1", 8800)]


def problem(url: str, address: str = "10.0.0.11", networks: tuple[str, ...] = (),
            binds: list[egress.Bind] | None = None, local: tuple[str, ...] = ()) -> str | None:
    local_ips = {ipaddress.ip_address(a) for a in local}
    return upstream_problem(url, address, parse_networks(networks),
                            BINDS if binds is None else binds,
                            lambda ip: ip.is_loopback or ip in local_ips)


# --- the node's own address and the allowed networks ----------------------------------------


@pytest.mark.parametrize("url", [
    "http://10.0.0.11:8000", "https://10.0.0.11", "http://10.0.0.11:8000/v1",
])
def test_a_url_at_the_nodes_own_address_is_allowed(url: str) -> None:
    assert problem(url) is None


def test_the_demo_node_on_loopback_may_register_its_loopback_upstream() -> None:
    assert problem("http://127.0.0.1:18190", address="127.0.0.1") is None


def test_another_address_is_refused_by_default_naming_host_and_setting() -> None:
    assert problem("http://10.0.0.12:8000") == (
        "host '10.0.0.12' is not the node's address '10.0.0.11' and not in "
        "nodes.allowed_upstream_networks"
    )


def test_another_loopback_address_is_refused_unless_its_network_is_allowed() -> None:
    assert problem("http://127.0.0.2:9000", address="127.0.0.1") is not None
    assert problem("http://127.0.0.2:9000", address="127.0.0.1", networks=("127.0.0.0/8",)) is None


def test_an_address_inside_an_allowed_network_is_allowed_and_outside_refused() -> None:
    networks = ("10.0.1.0/24", "fd00::/8")
    assert problem("http://10.0.1.7:8000", networks=networks) is None
    assert problem("http://[fd00::5]:8000", networks=networks) is None
    assert problem("http://10.0.2.7:8000", networks=networks) is not None
    assert problem("http://169.254.169.254/latest", networks=networks) is not None


def test_ip_literals_compare_as_addresses() -> None:
    assert problem("http://[::ffff:10.0.0.11]:8000") is None  # IPv4-mapped is the same host
    assert problem("http://[fd00:0::1]:8000", address="fd00::1") is None
    assert problem("http://[fd00::1]:8000", address="[fd00::1]") is None


def test_host_names_compare_as_strings_never_resolved() -> None:
    assert problem("http://GPU-01.hive.lan:8000", address="gpu-01.hive.lan.") is None
    assert problem("http://gpu-02.hive.lan:8000", address="gpu-01.hive.lan") is not None
    # A name is never inside a network, and never equal to an IP address.
    assert problem("http://gpu-01.hive.lan:8000", networks=("0.0.0.0/0",)) is not None
    assert problem("http://gpu-01.hive.lan:8000", address="10.0.0.11") is not None


# --- the gateway's own listeners ------------------------------------------------------------


def test_the_gateways_own_bind_is_refused_even_at_the_nodes_address() -> None:
    assert problem("http://127.0.0.1:8800", address="127.0.0.1") == (
        "points at this gateway's own listener 127.0.0.1:8800"
    )


@pytest.mark.parametrize("url", [
    "http://localhost:8800", "http://LOCALHOST.:8800", "http://api.localhost:8800",
    "http://127.0.0.5:8800", "http://[::1]:8800", "http://[::ffff:127.0.0.1]:8800",
])
def test_loopback_equivalents_of_a_loopback_bind_are_refused(url: str) -> None:
    assert problem(url, address="127.0.0.1", networks=("0.0.0.0/0", "::/0")) is not None


def test_another_port_on_the_same_host_is_not_the_gateway() -> None:
    assert problem("http://127.0.0.1:8801", address="127.0.0.1") is None


def test_default_ports_count_as_the_port() -> None:
    binds = [("10.0.0.2", 80), ("10.0.0.2", 443)]
    assert problem("http://10.0.0.2", address="10.0.0.2", binds=binds) is not None
    assert problem("https://10.0.0.2/", address="10.0.0.2", binds=binds) is not None


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_bind_covers_every_local_address_on_its_port(wildcard: str) -> None:
    binds = [(wildcard, 8800)]
    local = ("10.0.0.2",)
    everywhere = ("0.0.0.0/0",)
    assert problem("http://10.0.0.2:8800", address="10.0.0.2", binds=binds, local=local)
    assert problem("http://127.0.0.1:8800", address="127.0.0.1", binds=binds)
    assert problem("http://localhost:8800", address="localhost", binds=binds)
    # Another machine on the same port (a chained gateway) is not us.
    assert problem("http://10.0.0.9:8800", networks=everywhere, binds=binds, local=local) is None


def test_a_port_zero_bind_matches_nothing_until_its_port_is_known() -> None:
    assert problem("http://127.0.0.1:0", address="127.0.0.1", binds=[("127.0.0.1", 0)]) is None


def test_a_name_bind_matches_the_same_name() -> None:
    binds = [("control.hive.lan", 8801)]
    assert problem("https://Control.Hive.Lan:8801", address="control.hive.lan", binds=binds)


def test_bound_urls_become_binds() -> None:
    assert egress.bind_of_url("http://127.0.0.1:54321") == ("127.0.0.1", 54321)
    assert egress.bind_of_url("https://[::]:8801") == ("::", 8801)


# --- the hop header -------------------------------------------------------------------------


def test_a_direct_request_sends_our_id_alone() -> None:
    guard = HopGuard("aaaa")
    assert guard.next_hops(None) == b"aaaa"
    assert guard.next_hops("") == b"aaaa"
    guard.check(None)


def test_another_gateways_ids_are_kept_and_ours_appended() -> None:
    assert HopGuard("cccc").next_hops("aaaa, bbbb") == b"aaaa,bbbb,cccc"


@pytest.mark.parametrize("value", ["aaaa", "bbbb,aaaa", "aaaa,bbbb", " aaaa "])
def test_a_request_that_names_us_is_a_loop(value: str) -> None:
    with pytest.raises(LoopDetected, match="already passed through this gateway") as caught:
        HopGuard("aaaa").next_hops(value)
    assert caught.value.http_status == 508
    assert caught.value.error_object()["code"] == "loop_detected"
    with pytest.raises(LoopDetected):
        HopGuard("aaaa").check(value)


def test_a_chain_of_max_hops_distinct_gateways_is_refused() -> None:
    chain = ",".join(f"g{i}" for i in range(egress.MAX_HOPS - 1))
    assert HopGuard("last").next_hops(chain).count(b",") == egress.MAX_HOPS - 1
    with pytest.raises(LoopDetected, match=f"at most {egress.MAX_HOPS}"):
        HopGuard("last").next_hops(chain + ",one-more")


def test_an_oversized_hop_header_is_400_and_never_forwarded() -> None:
    with pytest.raises(InvalidRequest) as caught:
        HopGuard("aaaa").next_hops("x" * (egress.MAX_HOP_HEADER_CHARS + 1))
    assert caught.value.param == "x-geniehive-hops"
