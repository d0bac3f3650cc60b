"""`geniehive status`, `geniehive route` and `geniehive keys`: reads and key changes over HTTP."""

from __future__ import annotations

import argparse
import json
import sys

from geniehive.commands.client import call, open_client, run
from geniehive.commands.tables import key_limits, render_explanation, render_keys, render_status

# `keys create` options sent as the key's limits when given.
LIMIT_OPTIONS = ("max_in_flight", "requests_per_minute", "priority", "weight")


def cmd_status(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        with open_client(args) as client:
            hosts = call(client, "GET", "/v1/cluster/hosts")["data"]
            services = call(client, "GET", "/v1/cluster/services")["data"]
            roles = call(client, "GET", "/v1/cluster/roles")["data"]
            capacity = call(client, "GET", "/v1/cluster/capacity")
        if getattr(args, "json", False):
            print(json.dumps(
                {"hosts": hosts, "services": services, "roles": roles, "capacity": capacity},
                indent=2,
            ))
        else:
            print(render_status(hosts, services, roles, capacity))
        return 0

    return run(body, args)


def cmd_route(args: argparse.Namespace) -> int:
    """Explain a name; exit 1 when it has no routable candidate now."""

    def body(args: argparse.Namespace) -> int:
        params = {"model": args.model, "kind": args.kind}
        with open_client(args) as client:
            expl = call(client, "GET", "/v1/cluster/routes/resolve", params=params)
        if getattr(args, "json", False):
            print(json.dumps(expl, indent=2))
        else:
            print(render_explanation(expl))
        return 1 if expl.get("error") else 0

    return run(body, args)


def cmd_keys(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        action = args.keys_action
        with open_client(args) as client:
            if action == "create":
                payload = {
                    "name": args.name,
                    "scopes": args.scope or ["inference"],
                    "models": args.model or [],
                }
                if getattr(args, "host", None):
                    payload["host"] = args.host
                for field in LIMIT_OPTIONS:
                    if getattr(args, field, None) is not None:
                        payload[field] = getattr(args, field)
                created = call(client, "POST", "/v1/admin/keys", json=payload)
                host = f", host {created['host']}" if created.get("host") else ""
                limits = key_limits(created)
                print(
                    f"created key {created['key_id']} ({created['name']}, "
                    f"scopes {','.join(created['scopes'])}{host}"
                    f"{', ' + limits if limits else ''})"
                )
                print(f"key: {created['key']}")
                print("store it now: it is not shown again", file=sys.stderr)
            elif action == "list":
                print(render_keys(call(client, "GET", "/v1/admin/keys")["data"]))
            else:
                method, path = ("DELETE", "") if action == "delete" else ("POST", f"/{action}")
                call(client, method, f"/v1/admin/keys/{args.key_id}{path}")
                print(f"key {args.key_id}: {action}d")
        return 0

    return run(body, args)
