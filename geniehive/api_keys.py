"""The admin key API: named keys listed, created (the secret shown once), disabled, enabled
and deleted.

    GET    /v1/admin/keys                         admin    named keys, never secret or hash
    POST   /v1/admin/keys                         admin    create a named key, shown once
    POST   /v1/admin/keys/<id>/disable|enable     admin
    DELETE /v1/admin/keys/<id>                    admin

After every key change the authenticator's named keys are reloaded from the registry. A key's
limits (`max_in_flight`, `requests_per_minute`, `priority`, `weight`; docs/deployment.md,
"Keys") are set when it is created and shown with it, null when unset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from geniehive import auth
from geniehive.asgi import read_json_body
from geniehive.errors import InvalidRequest, NotFound
from geniehive.models import valid_id
from geniehive.registry import StoredKey, UnknownKey

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.cluster")

MAX_NAME = 128


def named_key(stored: StoredKey) -> auth.NamedKey:
    """The authenticator's form of a stored key (hex salt and hash back to bytes)."""
    return auth.NamedKey(
        key_id=stored.key_id, name=stored.name, salt=bytes.fromhex(stored.salt),
        hash=bytes.fromhex(stored.hash), scopes=frozenset(stored.scopes),
        models=tuple(stored.models), disabled=stored.disabled, host=stored.host,
        limits=auth.KeyLimits(stored.max_in_flight, stored.requests_per_minute,
                              stored.priority, stored.weight),
    )  # fmt: skip


def load_named_keys(gateway: Gateway) -> None:
    """Give the authenticator the registry's named keys (at start and after each change)."""
    gateway.auth.set_named(named_key(k) for k in gateway.registry.api_keys.values())


def key_view(stored: StoredKey) -> dict[str, Any]:
    """A key as listed: never its secret, salt or hash."""
    return {
        "key_id": stored.key_id,
        "name": stored.name,
        "scopes": list(stored.scopes),
        "models": list(stored.models),
        "host": auth.named_key_host(stored.name, stored.scopes, stored.host),
        "disabled": stored.disabled,
        "created_at": stored.created_at,
        "max_in_flight": stored.max_in_flight,
        "requests_per_minute": stored.requests_per_minute,
        "priority": stored.priority,
        "weight": stored.weight,
    }


KeyRequest = tuple[str, tuple[str, ...], tuple[str, ...], str | None, auth.KeyLimits]
LIMIT_FIELDS = ("max_in_flight", "requests_per_minute", "priority", "weight")
MAX_COUNT = 2**63 - 1  # the largest integer SQLite stores


def parse_key_request(body: Any) -> KeyRequest:
    """(name, scopes, model globs, host, limits) of a key creation body. Raises InvalidRequest.

    A key with the `node` scope speaks for one host id: `host`, else its name, which must
    then be a valid host id.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("body: expected a JSON object")
    unknown = sorted(set(body) - {"name", "scopes", "models", "host", *LIMIT_FIELDS})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown field", param=unknown[0])
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidRequest("name: expected a non-empty string", param="name")
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(s in auth.SCOPES for s in scopes):
        raise InvalidRequest(
            f"scopes: expected a non-empty list of {', '.join(auth.SCOPES)}", param="scopes"
        )
    models = body.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequest("models: expected a list of model globs", param="models")
    return (name, tuple(dict.fromkeys(scopes)), tuple(dict.fromkeys(models)),
            _key_host(body, scopes), _key_limits(body))


def _key_limits(body: Mapping[str, Any]) -> auth.KeyLimits:
    """The limits of a key creation body (null or absent: unset). Raises InvalidRequest."""
    for field in ("max_in_flight", "requests_per_minute"):
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"{field}: expected an integer >= 1", param=field)
        if value > MAX_COUNT:
            raise InvalidRequest(f"{field}: expected an integer <= {MAX_COUNT}", param=field)
    priority = body.get("priority")
    if priority is not None and priority not in auth.PRIORITIES:
        raise InvalidRequest(f"priority: expected one of {', '.join(auth.PRIORITIES)}",
                             param="priority")
    weight = body.get("weight", 1.0)
    if weight is None:
        weight = 1.0
    # Compared before any conversion: an integer too large for a float must not raise.
    if isinstance(weight, bool) or not isinstance(weight, int | float) \
            or not 0 < weight <= auth.MAX_WEIGHT:
        raise InvalidRequest(f"weight: expected a number > 0 and <= {auth.MAX_WEIGHT:g}",
                             param="weight")
    return auth.KeyLimits(body.get("max_in_flight"), body.get("requests_per_minute"), priority,
                          float(weight))


def _key_host(body: Mapping[str, Any], scopes: list[str]) -> str | None:
    host = body.get("host")
    if host is not None and "node" not in scopes:
        raise InvalidRequest("host: only a key with the 'node' scope speaks for a host",
                             param="host")
    if "node" not in scopes:
        return None
    if host is not None and not valid_id(host):
        raise InvalidRequest("host: expected a host id of 1-128 letters, digits and . _ : / -",
                             param="host")
    if host is None and not valid_id(body["name"]):
        raise InvalidRequest(
            "host: a node key speaks for the host named like it, and this name is not a host "
            "id; give the host id", param="host",
        )
    return host or body["name"]


async def create_key(gateway: Gateway, body: Any) -> dict[str, Any]:
    name, scopes, models, host, limits = parse_key_request(body)
    key_id, full_key, salt, digest = auth.new_named_key()
    stored = StoredKey(key_id, name, salt.hex(), digest.hex(), scopes, models, False, time.time(),
                       host, max_in_flight=limits.max_in_flight,
                       requests_per_minute=limits.requests_per_minute,
                       priority=limits.priority, weight=limits.weight)
    await gateway.registry.put_api_key(stored)
    load_named_keys(gateway)
    log.info("created API key id=%s name=%s scopes=%s host=%s", key_id, name, ",".join(scopes),
             host or "-")
    return {**key_view(stored), "key": full_key}


async def change_key(gateway: Gateway, key_id: str, action: str) -> dict[str, Any]:
    """Disable, enable or delete a named key. Raises NotFound."""
    try:
        if action == "delete":
            await gateway.registry.delete_api_key(key_id)
        else:
            await gateway.registry.set_api_key_disabled(key_id, action == "disable")
    except UnknownKey:
        raise NotFound(f"no API key with id '{key_id}'", param="key_id") from None
    load_named_keys(gateway)
    log.info("API key id=%s %sd", key_id, action)
    stored = gateway.registry.api_keys.get(key_id)
    return {"status": "ok", "key": key_view(stored) if stored is not None else None}


def register_key_routes(app: QuartTrio, gateway: Gateway) -> None:
    from quart import jsonify, request

    def admin() -> None:
        gateway.auth.authorize(request.headers, "admin")

    @app.get("/v1/admin/keys")
    async def admin_list_keys() -> Any:
        admin()
        keys = await gateway.registry.list_api_keys()
        return jsonify({"object": "list", "data": [key_view(k) for k in keys]})

    @app.post("/v1/admin/keys")
    async def admin_create_key() -> Any:
        admin()
        created = await create_key(
            gateway, await read_json_body(request.body, gateway.config.server.max_body_bytes)
        )
        return jsonify(created), 201

    @app.post("/v1/admin/keys/<key_id>/disable")
    async def admin_disable_key(key_id: str) -> Any:
        admin()
        return jsonify(await change_key(gateway, key_id, "disable"))

    @app.post("/v1/admin/keys/<key_id>/enable")
    async def admin_enable_key(key_id: str) -> Any:
        admin()
        return jsonify(await change_key(gateway, key_id, "enable"))

    @app.delete("/v1/admin/keys/<key_id>")
    async def admin_delete_key(key_id: str) -> Any:
        admin()
        return jsonify(await change_key(gateway, key_id, "delete"))
