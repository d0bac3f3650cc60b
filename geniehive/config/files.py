"""Reading configuration files: the loaders, and `check_files` behind `geniehive check-config`.

A loader collects every problem of a file (and of the role catalogs a control file names)
and raises them together as one `ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geniehive.config.control import parse_control
from geniehive.config.node import parse_node
from geniehive.config.roles import merge_catalogs, parse_catalog
from geniehive.config.schema import read_toml
from geniehive.config.values import ConfigError, ControlConfig, NodeConfig
from geniehive.models import Role


def _load(path: Path, parse: Callable[[dict[str, Any], list[str]], Any]) -> Any:
    problems: list[str] = []
    data = read_toml(path, problems)
    result = parse(data, problems) if data is not None else None
    if problems:
        raise ConfigError(problems)
    return result


def load_control(path: Path, environ: Mapping[str, str]) -> ControlConfig:
    """Load the control file and the role catalogs it names; raises ConfigError."""
    return _load(path, lambda data, problems: parse_control(data, path, environ, problems))


def load_node(path: Path, environ: Mapping[str, str]) -> NodeConfig:
    """Load a node file; raises ConfigError."""
    return _load(path, lambda data, problems: parse_node(data, path, environ, problems))


def load_role_catalog(path: Path) -> dict[str, Role]:
    """Load one role catalog, without cross-file checks; raises ConfigError.

    Problems are prefixed with the file name, as when the control file loads it.
    """
    try:
        return _load(path, lambda data, problems: parse_catalog(data, path.parent, problems))
    except ConfigError as exc:
        raise ConfigError([f"{path.name}: {p}" for p in exc.problems]) from None


def file_kind(data: Mapping[str, Any]) -> str:
    """`node`, `catalog` or `control`, from a parsed file's top-level keys."""
    if "node" in data:
        return "node"
    roles = data.get("roles")
    if set(data) == {"roles"} and isinstance(roles, dict) and "catalogs" not in roles:
        return "catalog"
    return "control"


def check_files(paths: Sequence[Path], environ: Mapping[str, str]) -> list[str]:
    """Every problem of any mix of control, node and catalog files, each prefixed `file: `.

    The role catalogs given in one call are checked together: they are merged, so a fallback
    may name a role of another catalog in the call, and a role id may appear only once.
    """
    problems: list[str] = []
    catalogs: list[tuple[str, str, Mapping[str, Role]]] = []
    for path in paths:
        prefix = f"{path}: "
        file_problems: list[str] = []
        data = read_toml(path, file_problems)
        if data is not None:
            kind = file_kind(data)
            if kind == "node":
                parse_node(data, path, environ, file_problems)
            elif kind == "catalog":
                catalogs.append((prefix, str(path),
                                 parse_catalog(data, path.parent, file_problems)))
            else:
                parse_control(data, path, environ, file_problems)
        problems.extend(prefix + p for p in file_problems)
    merge_catalogs(catalogs, problems)
    return problems
