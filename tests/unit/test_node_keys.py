"""Node keys speak for the hosts they are bound to: static `hosts = [...]`, named key host."""

from __future__ import annotations

import pytest

from geniehive import api_keys
from geniehive.api_nodes import check_speaks_for
from geniehive.auth import Authenticator, Principal, hash_secret
from geniehive.errors import InvalidRequest, PermissionDenied
from geniehive.registry import StoredKey

SALT = b"\x02" * 16


def named(name: str, scopes: tuple[str, ...], host: str | None = None) -> StoredKey:
    return StoredKey(f"id{name}", name, SALT.hex(), hash_secret(SALT, "s3cret").hex(), scopes,
                     host=host)


def principal_of(stored: StoredKey) -> Principal:
    authenticator = Authenticator()
    authenticator.set_named([api_keys.named_key(stored)])
    principal = authenticator.identify(f"gh_{stored.key_id}_s3cret")
    assert principal is not None
    return principal


def test_a_named_node_key_speaks_for_the_host_named_like_it_only() -> None:
    principal = principal_of(named("gpu-01", ("node",)))
    assert principal.may_speak_for("gpu-01")
    assert not principal.may_speak_for("gpu-02")


def test_a_named_node_key_with_a_host_speaks_for_that_host_not_its_name() -> None:
    principal = principal_of(named("rack-3-box", ("node",), host="gpu-07"))
    assert principal.may_speak_for("gpu-07")
    assert not principal.may_speak_for("rack-3-box")


def test_a_named_key_with_node_and_other_scopes_keeps_its_binding_for_node_traffic() -> None:
    principal = principal_of(named("gpu-01", ("node", "read")))
    assert principal.scopes == {"node", "read"}
    assert principal.hosts == {"gpu-01"}


def test_a_named_key_without_the_node_scope_is_bound_to_no_host() -> None:
    assert principal_of(named("app", ("inference",))).hosts is None


def test_static_node_keys_speak_for_their_listed_hosts_or_any_without_a_list() -> None:
    authenticator = Authenticator([
        ("shared", "shared-key", ["node"], [], []),
        ("pair", "pair-key", ["node"], [], ["gpu-01", "gpu-02"]),
    ])
    shared, pair = authenticator.identify("shared-key"), authenticator.identify("pair-key")
    assert shared is not None and pair is not None
    assert shared.may_speak_for("anything")
    assert pair.may_speak_for("gpu-02") and not pair.may_speak_for("gpu-03")


def test_speaking_for_another_host_is_403_naming_it() -> None:
    principal = principal_of(named("gpu-01", ("node",)))
    check_speaks_for(principal, "gpu-01")
    with pytest.raises(PermissionDenied, match="host 'gpu-02'") as caught:
        check_speaks_for(principal, "gpu-02")
    assert caught.value.http_status == 403 and caught.value.param == "host_id"


def test_key_requests_bind_node_keys_to_a_host() -> None:
    parse = api_keys.parse_key_request
    assert parse({"name": "gpu-01", "scopes": ["node"]})[3] == "gpu-01"
    assert parse({"name": "box", "scopes": ["node", "read"], "host": "gpu-07"})[3] == "gpu-07"
    assert parse({"name": "my app", "scopes": ["inference"]})[3] is None


@pytest.mark.parametrize("body", [
    {"name": "app", "scopes": ["inference"], "host": "gpu-01"},  # host without the node scope
    {"name": "gpu 01", "scopes": ["node"]},  # a name that cannot be a host id, and no host
    {"name": "box", "scopes": ["node"], "host": "bad host"},
    {"name": "box", "scopes": ["node"], "host": 7},
])
def test_bad_host_bindings_are_400_naming_host(body: dict) -> None:
    with pytest.raises(InvalidRequest) as caught:
        api_keys.parse_key_request(body)
    assert caught.value.param == "host"


def test_key_listing_shows_the_host_also_for_keys_stored_without_one() -> None:
    assert api_keys.key_view(named("gpu-01", ("node",)))["host"] == "gpu-01"
    assert api_keys.key_view(named("box", ("node",), host="gpu-07"))["host"] == "gpu-07"
    assert api_keys.key_view(named("app", ("read",)))["host"] is None
