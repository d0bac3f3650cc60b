"""Key limits through the real gateway: the admin key API stores and shows them, `geniehive
keys` sets and lists them, and a request's principal carries its key's limits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import trio

from geniehive.auth import NO_LIMITS, KeyLimits
from geniehive.commands import cmd_keys
from tests.hive import assert_openai_error
from tests.nodeapi import start

ADMIN_KEY = "admin-secret-123"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEYS = """
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["inference", "admin"]

[[auth.keys]]
name = "batch"
key_env = "BATCH_KEY"
scopes = ["inference"]
max_in_flight = 4
priority = "low"
weight = 3
"""
ENV = {"OPS_KEY": ADMIN_KEY, "BATCH_KEY": "batch-secret"}
LIMITED = {"max_in_flight": 2, "requests_per_minute": 60, "priority": "high", "weight": 2.5}
UNSET = {"max_in_flight": None, "requests_per_minute": None, "priority": None, "weight": 1.0}


def limits_of(view: dict[str, Any]) -> dict[str, Any]:
    return {field: view[field] for field in LIMITED}


async def test_named_key_limits_are_stored_shown_and_carried_by_its_principal(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(15):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            limited = await client.post("/v1/admin/keys", headers=ADMIN,
                                        json={"name": "app", "scopes": ["inference"], **LIMITED})
            plain = await client.post("/v1/admin/keys", headers=ADMIN,
                                      json={"name": "plain", "scopes": ["inference"]})
            listed = (await client.get("/v1/admin/keys", headers=ADMIN)).json()["data"]
            auth = running.gateway.auth
            app = await trio.to_thread.run_sync(
                auth.authorize, {"authorization": f"Bearer {limited.json()['key']}"}, "inference")
            other = await trio.to_thread.run_sync(
                auth.authorize, {"x-api-key": plain.json()["key"]}, "inference")
            batch = auth.authorize({"x-api-key": "batch-secret"}, "inference")
        await running.stop()
    assert limited.status_code == plain.status_code == 201
    assert limits_of(limited.json()) == LIMITED
    assert limits_of(plain.json()) == UNSET
    assert {k["name"]: limits_of(k) for k in listed} == {"app": LIMITED, "plain": UNSET}
    assert app.limits == KeyLimits(2, 60, "high", 2.5)
    assert other.limits == NO_LIMITS
    assert batch.limits == KeyLimits(max_in_flight=4, priority="low", weight=3.0)


COUNT = "expected an integer >= 1"
PRIORITY = "expected one of high, normal, low"
WEIGHT = "expected a number > 0 and <= 1000"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_in_flight", 0, COUNT), ("max_in_flight", True, COUNT), ("max_in_flight", 1.5, COUNT),
    ("requests_per_minute", -5, COUNT), ("requests_per_minute", "60", COUNT),
    ("priority", "urgent", PRIORITY), ("priority", 1, PRIORITY),
    ("weight", -1, WEIGHT), ("weight", 0, WEIGHT), ("weight", 1001, WEIGHT),
    ("weight", True, WEIGHT), ("weight", "2", WEIGHT),
    pytest.param("weight", 10**400, WEIGHT, id="weight-beyond-a-float"),
    ("max_in_flight", 2**63, "expected an integer <= 9223372036854775807"),
])
async def test_bad_key_limits_are_400_naming_the_field(
    nursery: trio.Nursery, tmp_path: Path, field: str, value: Any, message: str
) -> None:
    with trio.fail_after(15):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        async with client:
            answer = await client.post("/v1/admin/keys", headers=ADMIN,
                                       json={"name": "app", "scopes": ["inference"], field: value})
            listed = (await client.get("/v1/admin/keys", headers=ADMIN)).json()["data"]
        await running.stop()
    error = assert_openai_error(answer, 400, "invalid_request")
    assert (error["param"], error["message"]) == (field, f"{field}: {message}")
    assert listed == []


async def test_keys_command_sets_and_lists_limits(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def keys(action: str, **extra: object) -> int:
        return cmd_keys(argparse.Namespace(url=running.url, api_key=ADMIN_KEY,
                                           keys_action=action, **extra))

    with trio.fail_after(15):
        running, client = await start(nursery, tmp_path, KEYS, ENV)
        await client.aclose()
        created = await trio.to_thread.run_sync(lambda: keys(
            "create", name="app", scope=None, model=None, host=None, max_in_flight=2,
            requests_per_minute=60, priority="high", weight=2.0))
        created_out = capsys.readouterr().out
        plain = await trio.to_thread.run_sync(lambda: keys(
            "create", name="plain", scope=None, model=None, host=None, max_in_flight=None,
            requests_per_minute=None, priority=None, weight=None))
        capsys.readouterr()
        refused = await trio.to_thread.run_sync(lambda: keys(
            "create", name="bad", scope=None, model=None, host=None, max_in_flight=0,
            requests_per_minute=None, priority=None, weight=None))
        refused_err = capsys.readouterr().err
        listed = await trio.to_thread.run_sync(lambda: keys("list"))
        list_out = capsys.readouterr().out
        await running.stop()
    assert (created, plain, refused, listed) == (0, 0, 1, 0)
    assert "2 in flight, 60/min, high, weight 2)" in created_out.splitlines()[0]
    assert "LIMITS" in list_out.splitlines()[0]
    rows = {line.split()[1]: line for line in list_out.splitlines()[1:]}
    assert rows["app"].endswith("2 in flight, 60/min, high, weight 2")
    assert rows["plain"].endswith(" -")
    assert refused_err.strip() == "error: 400: max_in_flight: expected an integer >= 1"
