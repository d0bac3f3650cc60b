"""Role catalogs: `[roles.<id>]` tables, merged across files, and the globs that name them.

Several catalogs merge into one set of roles: a role id may appear only once, and a fallback
role must exist and have the same operation (docs/configuration.md, "Role catalogs").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geniehive.config.checks import BOOL, STRING, TEXT, choice, integer, list_of
from geniehive.config.schema import Key, Section, Table, read_toml
from geniehive.config.sections import POLICY_KEYS, parse_policy
from geniehive.config.values import DEFAULT_CATALOG_GLOB
from geniehive.models import OPERATIONS, STRATEGIES, Role, RoutingPolicy, valid_id

_NAMES = list_of(TEXT)
_GATES = ("trust_tier", "device_class", "workload_classes")

ROUTING = Section("routing", "How the role picks among the services that could serve it.", (
    Key("strategy", choice(STRATEGIES), None, "overrides the control file's `routing.strategy`"),
    Key("preferred_families", _NAMES, (),
        "asset families in order of preference (an earlier family ranks higher)"),
    Key("min_context", integer(1), None,
        "only assets with at least this many tokens of context: the model's maximum where "
        "discovery knows it (Ollama's `/api/show`), else its current context; unknown passes"),
    Key("prefer_loaded", BOOL, True, "rank assets already in memory above the others"),
    Key("require_loaded", BOOL, False, "only assets already in memory"),
    *(
        key
        for label, plural in zip(_GATES, ("trust_tiers", "device_classes", "workload_classes"),
                                 strict=True)
        for key in (
            Key(f"allowed_{plural}", _NAMES, (),
                f"only hosts whose `{label}` label is one of these (a list label: any item); "
                "empty: any host"),
            Key(f"denied_{plural}", _NAMES, (),
                f"never hosts whose `{label}` label is one of these (a list label: any item)"),
        )
    ),
    Key("fallback_roles", _NAMES, (),
        "roles tried in order when this one has no routable service (same operation only)"),
))

ROLE = Section("<role id>", "A task profile that clients name as the model.", (
    Key("operation", choice(OPERATIONS), "chat", "the operation the role serves",
        required=True),
    Key("display_name", STRING, None, "name shown in listings"),
    Key("description", STRING, None, "one line on what the role is for"),
    *POLICY_KEYS,
    Key("benchmark_workloads", _NAMES, (),
        "benchmark workloads whose results feed the `scored` strategy for this role"),
), tables=(ROUTING,))

CATALOG_FILE = Section("", "A role catalog.", tables=(
    Section("roles", "The roles of the catalog, keyed by role id (1-128 letters, digits and "
            "`. _ : / -`).", tables=(ROLE,), keyed=True),
))

# The control file's `[roles]` table names the catalogs; it holds no roles itself.
CATALOGS = Section("roles", "The role catalog files.", (
    Key("catalogs", dataclasses.replace(list_of(TEXT), name="list of globs"),
        (DEFAULT_CATALOG_GLOB,),
        "catalog files, relative to the control file's folder; a glob given here must "
        "match a file, the default may match none"),
))


def _routing_policy(t: Table) -> RoutingPolicy:
    policy = RoutingPolicy(**{key.name: t.get(key.name) for key in t.section.keys})
    t.done()
    return policy


def _role(role_id: str, t: Table) -> Role:
    routing = t.table("routing")
    role = Role(
        role_id=role_id,
        operation=t.get("operation"),
        display_name=t.get("display_name"),
        description=t.get("description"),
        policy=parse_policy(t),
        routing=_routing_policy(routing),
        benchmark_workloads=t.get("benchmark_workloads"),
    )
    t.done()
    return role


def parse_catalog(data: dict[str, Any], base: Path, problems: list[str]) -> dict[str, Role]:
    """The roles of one catalog file (references to other roles are checked later)."""
    top = Table(data, "", problems, CATALOG_FILE, base)
    roles_table = top.table("roles")
    top.done()
    roles: dict[str, Role] = {}
    for role_id, t in roles_table.entries():
        if not valid_id(role_id):
            roles_table.report(role_id, "invalid role id (1-128 letters, digits and . _ : / -)")
            continue
        if not t.present:
            roles_table.report(role_id, "expected a table")
            continue
        roles[role_id] = _role(role_id, t)
    return roles


def merge_catalogs(
    catalogs: Sequence[tuple[str, str, Mapping[str, Role]]], problems: list[str]
) -> dict[str, Role]:
    """Merge (prefix, label, roles) catalogs; then check duplicates and fallback references."""
    merged: dict[str, Role] = {}
    origin: dict[str, tuple[str, str]] = {}
    for prefix, label, roles in catalogs:
        for role_id, role in roles.items():
            if role_id in merged:
                problems.append(
                    f"{prefix}roles.{role_id}: duplicate role id (also in {origin[role_id][1]})"
                )
                continue
            merged[role_id] = role
            origin[role_id] = (prefix, label)
    for role_id, role in merged.items():
        for index, target in enumerate(role.routing.fallback_roles):
            where = f"{origin[role_id][0]}roles.{role_id}.routing.fallback_roles[{index}]"
            other = merged.get(target)
            if other is None:
                problems.append(f"{where}: unknown role {target!r}")
            elif other.operation != role.operation:
                problems.append(
                    f"{where}: role {target!r} has operation {other.operation!r},"
                    f" not {role.operation!r}"
                )
    return merged


def _glob(base: Path, pattern: str) -> list[Path]:
    path = Path(pattern)
    root, relative = (Path(path.anchor), str(path.relative_to(path.anchor))) \
        if path.is_absolute() else (base, pattern)
    return sorted(p for p in root.glob(relative) if p.is_file())


def catalog_paths(t: Table) -> tuple[Path, ...]:
    """The files the control file's `[roles] catalogs` globs match, each once, in order."""
    explicit = t.has("catalogs")
    patterns = t.get("catalogs")
    t.done()
    found: list[Path] = []
    for index, pattern in enumerate(patterns):
        try:
            matches = _glob(t.base, pattern)
        except (ValueError, NotImplementedError) as exc:
            t.report("catalogs", f"bad glob {pattern!r}: {exc}", f"[{index}]")
            continue
        if not matches and explicit:
            t.report("catalogs", f"no file matches {pattern!r}", f"[{index}]")
        found.extend(m for m in matches if m not in found)
    return tuple(found)


def load_catalogs(paths: Sequence[Path], problems: list[str]) -> dict[str, Role]:
    """Read and merge the catalog files; each file's problems are prefixed with its name."""
    catalogs = []
    for path in paths:
        prefix = f"{path.name}: "
        file_problems: list[str] = []
        data = read_toml(path, file_problems)
        roles = parse_catalog(data, path.parent, file_problems) if data is not None else {}
        problems.extend(prefix + p for p in file_problems)
        catalogs.append((prefix, path.name, roles))
    return merge_catalogs(catalogs, problems)
