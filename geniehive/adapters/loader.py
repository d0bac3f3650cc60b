"""Find, import and validate adapter plugins.

Sources, in order: the built-in plugins folder (shipped as the package
`geniehive._builtin_plugins`), each extra folder from `[plugins] paths`, then installed
distributions' `geniehive.adapters` entry points. In a folder a plugin is a `.py` file or a
package directory with an `__init__.py`; they load sorted by name and names starting with `_`
are skipped.

Rule: every problem is a `PluginError` whose message names the offending file or entry point,
so a broken plugin stops start-up with a message its author can act on. Nothing here talks to
an upstream; `build_adapter` only calls a validated factory. `check_upstream_adapters` is the
one start-up check, shared by `geniehive serve` and `geniehive node`, that the configured
upstreams name loaded adapters; its problems are a `ConfigError` naming the upstream.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from geniehive.adapters import API_VERSION, Adapter, AdapterSpec, UpstreamContext
from geniehive.config import ConfigError, UpstreamConfig
from geniehive.errors import StartupError
from geniehive.models import OPERATIONS

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "build_adapter",
    "builtin_folder",
    "check_upstream_adapters",
    "load_adapters",
]

ENTRY_POINT_GROUP = "geniehive.adapters"
KIND_RE = re.compile(r"[a-z][a-z0-9_]*")
_BUILTIN_PACKAGE = "geniehive._builtin_plugins"


class PluginError(StartupError):
    """A plugin could not be found, imported or validated; the message names its source."""

    in_config = True


def builtin_folder() -> Path:
    """The folder of the built-in plugins: the installed package, else `<repo>/plugins`."""
    try:
        spec = importlib.util.find_spec(_BUILTIN_PACKAGE)
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # A source checkout run without installing: plugins/ sits beside the geniehive package.
    return Path(__file__).resolve().parents[2] / "plugins"


def load_adapters(
    extra_paths: Sequence[Path] = (), entry_points: bool = True
) -> dict[str, AdapterSpec]:
    """Every adapter spec by kind, built-ins first. Raises PluginError naming the source."""
    specs: dict[str, AdapterSpec] = {}
    sources: dict[str, str] = {}
    seen_folders: set[Path] = set()
    for folder in (builtin_folder(), *extra_paths):
        resolved = Path(folder).resolve()
        if resolved in seen_folders:
            continue  # the same folder named twice would report every kind as a duplicate
        seen_folders.add(resolved)
        for source, spec in _folder_plugins(resolved):
            _add(specs, sources, source, spec)
    if entry_points:
        for source, spec in _entry_point_plugins():
            _add(specs, sources, source, spec)
    return specs


def check_upstream_adapters(
    upstreams: Sequence[UpstreamConfig], specs: Mapping[str, AdapterSpec]
) -> None:
    """Each upstream must name a loaded adapter that serves its operations.

    Raises ConfigError listing every problem with its dotted path (`upstreams[i].adapter`).
    """
    problems = []
    for index, upstream in enumerate(upstreams):
        spec = specs.get(upstream.adapter)
        if spec is None:
            known = ", ".join(sorted(specs))
            problems.append(
                f"upstreams[{index}].adapter: unknown adapter '{upstream.adapter}' "
                f"(known: {known})"
            )
            continue
        for op in upstream.operations:
            if spec.operations and op not in spec.operations:
                problems.append(
                    f"upstreams[{index}].operations: adapter '{upstream.adapter}' "
                    f"does not serve '{op}'"
                )
    if problems:
        raise ConfigError(problems)


def build_adapter(specs: Mapping[str, AdapterSpec], kind: str, ctx: UpstreamContext) -> Adapter:
    """The adapter of `kind` for one upstream. Raises PluginError on an unknown kind."""
    spec = specs.get(kind)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none"
        raise PluginError(f"unknown adapter kind {kind!r} (known: {known})")
    adapter = spec.factory(ctx)
    if not isinstance(adapter, Adapter):
        raise PluginError(
            f"adapter kind {kind!r}: factory returned {type(adapter).__name__}, not an Adapter"
        )
    return adapter


def _add(specs: dict[str, AdapterSpec], sources: dict[str, str], source: str, spec: Any) -> None:
    checked = _validate(source, spec)
    if checked.kind in specs:
        raise PluginError(
            f"{source}: adapter kind {checked.kind!r} is already defined by {sources[checked.kind]}"
        )
    specs[checked.kind] = checked
    sources[checked.kind] = source


def _validate(source: str, spec: Any) -> AdapterSpec:
    """The spec itself when it is usable; otherwise a PluginError naming `source`."""
    if not isinstance(spec, AdapterSpec):
        raise PluginError(f"{source}: ADAPTER is a {type(spec).__name__}, not an AdapterSpec")
    if spec.api_version != API_VERSION:
        raise PluginError(
            f"{source}: api_version {spec.api_version!r} is not supported "
            f"(this GenieHive speaks {API_VERSION})"
        )
    if not isinstance(spec.kind, str) or KIND_RE.fullmatch(spec.kind) is None:
        raise PluginError(
            f"{source}: kind {spec.kind!r} must be lowercase letters, digits and '_', "
            "starting with a letter"
        )
    # A bare string is iterable too, and would validate letter by letter.
    if isinstance(spec.operations, str | bytes):
        raise PluginError(f"{source}: operations must be a set of names, not a string")
    unknown = sorted(str(op) for op in spec.operations if op not in OPERATIONS)
    if unknown:
        raise PluginError(
            f"{source}: unknown operation(s) {', '.join(unknown)} (valid: {', '.join(OPERATIONS)})"
        )
    if not callable(spec.factory):
        raise PluginError(f"{source}: factory is not callable")
    return spec


def _folder_plugins(folder: Path) -> Iterator[tuple[str, Any]]:
    """(source, ADAPTER) for each plugin in `folder`, sorted by name."""
    if not folder.is_dir():
        raise PluginError(f"{folder}: plugins folder does not exist")
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("_"):
            continue
        if entry.is_file() and entry.suffix == ".py":
            path, package_dir = entry, None
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            path, package_dir = entry / "__init__.py", entry
        else:
            continue
        name = f"geniehive_plugin_{tag}_{_identifier(entry.stem)}"
        module = _import_file(name, path, package_dir)
        if not hasattr(module, "ADAPTER"):
            raise PluginError(f"{path}: defines no ADAPTER")
        yield str(path), module.ADAPTER


def _identifier(stem: str) -> str:
    return re.sub(r"\W", "_", stem)


def _import_file(name: str, path: Path, package_dir: Path | None) -> ModuleType:
    """Import one plugin file under `name`. Raises PluginError carrying the import failure."""
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so dataclasses and relative imports inside the plugin resolve.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(f"{path}: import failed: {type(exc).__name__}: {exc}") from exc
    return module


def _entry_point_plugins() -> Iterator[tuple[str, Any]]:
    """(source, spec) for each installed `geniehive.adapters` entry point, sorted by name."""
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        source = f"entry point {ep.name!r} ({ep.value})"
        try:
            loaded = ep.load()
        except Exception as exc:
            raise PluginError(f"{source}: load failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(loaded, AdapterSpec):
            yield source, loaded
        elif isinstance(loaded, ModuleType):
            if not hasattr(loaded, "ADAPTER"):
                raise PluginError(f"{source}: module {loaded.__name__} defines no ADAPTER")
            yield source, loaded.ADAPTER
        else:
            raise PluginError(
                f"{source}: loads a {type(loaded).__name__}, not a module or an AdapterSpec"
            )
