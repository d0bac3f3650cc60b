"""A key's limits travel with its principal: static keys from the control file, named keys
from the registry; the open principal has none."""

from __future__ import annotations

from pathlib import Path

from geniehive import api_keys
from geniehive.auth import NO_LIMITS, OPEN, Authenticator, KeyLimits, hash_secret
from geniehive.config import load_control
from geniehive.registry import StoredKey

BATCH = KeyLimits(max_in_flight=2, requests_per_minute=60, priority="low", weight=0.5)


def test_a_request_with_a_limited_static_key_carries_its_limits(tmp_path: Path) -> None:
    path = tmp_path / "geniehive.toml"
    path.write_text("""
[[auth.keys]]
name = "batch"
key_env = "BATCH_KEY"
scopes = ["inference"]
max_in_flight = 2
requests_per_minute = 60
priority = "low"
weight = 0.5

[[auth.keys]]
name = "apps"
key_env = "APPS_KEY"
scopes = ["inference"]
""")
    config = load_control(path, {"BATCH_KEY": "sk-batch", "APPS_KEY": "sk-apps"})
    # Built as the gateway builds it.
    authenticator = Authenticator(
        ((k.name, k.key, k.scopes, k.models, k.hosts) for k in config.auth_keys),
        {k.name: k.limits for k in config.auth_keys},
    )
    batch = authenticator.authorize({"authorization": "Bearer sk-batch"}, "inference")
    apps = authenticator.authorize({"x-api-key": "sk-apps"}, "inference")
    assert (batch.name, batch.limits) == ("batch", BATCH)
    assert (apps.name, apps.limits) == ("apps", NO_LIMITS)


def test_the_open_principal_has_no_limits() -> None:
    assert Authenticator().authorize({}, "inference") is OPEN
    assert OPEN.limits == NO_LIMITS == KeyLimits(None, None, None, 1.0)


def test_a_request_with_a_limited_named_key_carries_its_limits() -> None:
    salt = b"\x03" * 16
    digest = hash_secret(salt, "s3cret").hex()
    limited = StoredKey("k1", "batch", salt.hex(), digest, ("inference",), max_in_flight=2,
                        requests_per_minute=60, priority="low", weight=0.5)
    plain = StoredKey("k2", "apps", salt.hex(), digest, ("inference",))
    authenticator = Authenticator()
    authenticator.set_named(api_keys.named_key(k) for k in (limited, plain))
    for _ in range(2):  # checked, then from the cache of verified keys
        batch = authenticator.authorize({"authorization": "Bearer gh_k1_s3cret"}, "inference")
        apps = authenticator.authorize({"x-api-key": "gh_k2_s3cret"}, "inference")
        assert (batch.name, batch.limits) == ("batch", BATCH)
        assert (apps.name, apps.limits) == ("apps", NO_LIMITS)
