"""The layout's rules, read from the source with `ast`: purity, the plugin boundary, `__all__`.

A pure module imports no I/O (no event loop, network, database, clock, randomness, threads or
processes), so it can be tested with exact values and reasoned about without a running
gateway; time comes in as `now`. Everything a pure module imports from geniehive must be pure
as well, or the rule could be passed around. An entry of the table is a module file or a
package folder (then all its modules). Plugins see only the public plugin API.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "geniehive"
PLUGINS = REPO / "plugins"

IO = frozenset({
    "trio", "httpx", "quart", "quart_trio", "hypercorn", "sqlite3", "socket", "time", "random",
    "threading", "subprocess",
})


@dataclass(frozen=True)
class Rule:
    """What a pure module may import: not `IO | also_forbidden`, or (when set) only `only`."""

    also_forbidden: frozenset[str] = frozenset()
    only: frozenset[str] | None = None


PURE: dict[str, Rule] = {
    "geniehive": Rule(),  # the package's own __init__, which every absolute import runs
    "geniehive.adapters.prometheus": Rule(),
    "geniehive.auth": Rule(),
    "geniehive.benchreport": Rule(),
    "geniehive.catalog": Rule(),
    "geniehive.commands.tables": Rule(),
    "geniehive.commands.workloads": Rule(),
    # Paths come in, dataclasses go out; reading the environment is the caller's business.
    "geniehive.config": Rule(also_forbidden=frozenset({"os"})),
    # A hop id is drawn by the caller; the module compares addresses and never resolves one.
    "geniehive.egress": Rule(also_forbidden=frozenset({"secrets"})),
    "geniehive.errors": Rule(),
    # The values the relay, the proxy and the websocket share, and the transport seam (its
    # geniehive imports are for type checking only).
    "geniehive.exchange": Rule(only=frozenset({"__future__", "collections", "dataclasses",
                                               "typing", "geniehive"})),
    "geniehive.assets": Rule(),
    "geniehive.fields": Rule(only=frozenset({"__future__", "re", "collections", "typing",
                                             "geniehive"})),
    "geniehive.health": Rule(),
    "geniehive.live": Rule(),
    "geniehive.matching": Rule(),
    "geniehive.memory": Rule(),
    "geniehive.models": Rule(),
    "geniehive.nodewire": Rule(),
    "geniehive.policy": Rule(),
    "geniehive.routing": Rule(),
    "geniehive.sse": Rule(),
    "geniehive.strictjson": Rule(only=frozenset({"__future__", "json", "math", "re", "typing"})),
    "geniehive.wire": Rule(),
}


@dataclass(frozen=True)
class Source:
    name: str  # dotted module name
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def module_path(name: str) -> Path | None:
    """The file of a dotted module name under the repository, or None when there is none."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def load(name: str) -> Source:
    path = module_path(name)
    assert path is not None, f"{name}: no module file or package folder"
    return Source(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))


def modules_of(name: str) -> Iterator[Source]:
    """The module, or for a package entry (not the root package) every module in its folder."""
    source = load(name)
    yield source
    if source.is_package and name != "geniehive":
        for path in sorted(source.path.parent.rglob("*.py")):
            if path != source.path:
                parts = path.relative_to(REPO).with_suffix("").parts
                yield load(".".join(p for p in parts if p != "__init__"))


def pure_rule(name: str) -> Rule | None:
    """The rule covering a module: its own entry or the entry of a package holding it.

    The root package's entry covers its `__init__` only.
    """
    if name in PURE:
        return PURE[name]
    while "." in name:
        name = name.rpartition(".")[0]
        if name in PURE and name != "geniehive":
            return PURE[name]
    return None


def under_type_checking(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports(source: Source) -> Iterator[tuple[str, ast.Import | ast.ImportFrom]]:
    """Every imported module as an absolute dotted name, anywhere in the module."""
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in imports_of(source, node):
                yield name, node


def imports_of(source: Source, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules one import statement imports, as absolute dotted names (the base first)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = source.name if source.is_package else source.name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    # `from package import submodule` imports the submodule too
    return [base, *(f"{base}.{a.name}" for a in node.names
                    if module_path(f"{base}.{a.name}") is not None)]


def impurities(source: Source, rule: Rule) -> list[str]:
    type_only = under_type_checking(source.tree)
    found = []
    for name, node in imports(source):
        top = name.split(".")[0]
        where = f"{source.path.relative_to(REPO)}:{node.lineno}"
        if rule.only is not None and top not in rule.only:
            found.append(f"{where} imports {name}, outside {sorted(rule.only)}")
        elif top in IO | rule.also_forbidden:
            found.append(f"{where} imports {name}")
        elif top == "geniehive" and id(node) not in type_only and pure_rule(name) is None:
            found.append(f"{where} imports {name}, which is not in the table of pure modules")
    return found


@pytest.mark.parametrize("entry", sorted(PURE))
def test_pure_modules_import_no_io_and_only_pure_geniehive_modules(entry: str) -> None:
    problems = [p for source in modules_of(entry) for p in impurities(source, PURE[entry])]
    assert problems == []


def test_the_purity_check_resolves_relative_aliased_and_type_only_imports() -> None:
    """The check itself, on a module of a routing package (whether or not one exists)."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import time as clock\n"
        "from ..models import Host\n"
        "from . import gates\n"
        "from ..relay import attempt\n"
        "if TYPE_CHECKING:\n"
        "    from ..gateway import Gateway\n"
    )
    source = Source("geniehive.routing.scores", PACKAGE / "routing" / "scores.py", tree)
    found = [p.split(" imports ", 1)[1] for p in impurities(source, Rule())]
    assert found == ["time", "geniehive.relay, which is not in the table of pure modules"]


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGINS.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: p.name)
def test_plugins_import_from_geniehive_only_the_adapter_api(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    source = Source(f"plugins.{path.stem}", path, tree)
    outside = [
        f"{path.name}:{node.lineno} imports {name}"
        for name, node in imports(source)
        if name.split(".")[0] == "geniehive"
        and name != "geniehive.adapters" and not name.startswith("geniehive.adapters.")
    ]
    assert outside == []


def bound_names(source: Source) -> set[str]:
    """Names a module binds at its top level (also inside top-level if/try/with blocks).

    A star import from a geniehive module binds what that module exports.
    """
    names: set[str] = set()
    pending: list[ast.stmt] = list(source.tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom) and node.names[0].name == "*":
            names |= star_names(imports_of(source, node)[0])
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try | ast.With):
            pending += [*node.body, *getattr(node, "orelse", []),
                        *getattr(node, "finalbody", [])]
            pending += [s for h in getattr(node, "handlers", []) for s in h.body]
    return names


def star_names(module: str) -> set[str]:
    if module_path(module) is None:
        return set()  # outside the repository: not ours to check
    source = load(module)
    listed = declared_all(source.tree)
    if listed is not None:
        return set(listed)
    return {n for n in bound_names(source) if not n.startswith("_")}


def declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                value = ast.literal_eval(node.value)
                assert isinstance(value, list | tuple), "__all__ must be a literal list"
                return list(value)
    return None


def modules_with_all() -> list[Source]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        source = load(".".join(p for p in parts if p != "__init__"))
        if declared_all(source.tree) is not None:
            found.append(source)
    return found


def test_the_codebase_declares_all_somewhere() -> None:
    """The two checks below would pass vacuously if no module declared `__all__`."""
    assert any(s.name == "geniehive.adapters" for s in modules_with_all())


@pytest.mark.parametrize("source", modules_with_all(), ids=lambda s: s.name)
def test_all_lists_only_names_the_module_defines_or_imports(source: Source) -> None:
    listed = declared_all(source.tree) or []
    assert [n for n in listed if n not in bound_names(source)] == []
    assert len(set(listed)) == len(listed), "a name is listed twice"


@pytest.mark.parametrize("source", modules_with_all(), ids=lambda s: s.name)
def test_every_name_in_all_resolves_on_import(source: Source) -> None:
    module = importlib.import_module(source.name)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_no_dependency_is_declared_only_for_pythons_the_project_does_not_support() -> None:
    """A backport such as `tomli; python_version < '3.11'` is dead weight under >= 3.11."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimum = version(project["requires-python"].removeprefix(">="))
    declared = [*project["dependencies"],
                *(d for extra in project.get("optional-dependencies", {}).values() for d in extra)]
    dead = [
        dependency for dependency in declared
        for op, bound in re.findall(r"python_(?:full_)?version\s*(<=?)\s*['\"]([\d.]+)['\"]",
                                    dependency)
        if version(bound) < minimum or (op == "<" and version(bound) == minimum)
    ]
    assert dead == []


def test_no_test_module_imports_a_test_module_or_a_conftest() -> None:
    """What tests share lives in helper modules (tests/harness.py, tests/hive.py, ...)."""
    tests = REPO / "tests"
    found = []
    for path in sorted(tests.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        source = Source(".".join(p for p in parts if p != "__init__"), path,
                        ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for name, node in imports(source):
            last = name.rpartition(".")[2]
            if last == "conftest" or last.startswith("test_"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert found == []


def test_every_package_folder_ships_in_the_wheel() -> None:
    """`[tool.setuptools] packages` is an explicit list: a folder missing from it is missing
    from the built wheel, and `geniehive` fails on import there while every test here passes."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
                 ["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in PACKAGE.rglob("__init__.py") if "__pycache__" not in path.parts
    }
    assert sorted(folders - listed) == []


MAX_MODULE_LINES = 600


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    """A module past 600 lines has more than one concept in it: split it along its seams."""
    long = {
        path.relative_to(REPO).as_posix(): lines
        for root in (PACKAGE, PLUGINS) for path in sorted(root.rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def untyped_gateway_parameters(tree: ast.Module) -> list[str]:
    """`name:line` of each parameter named gateway or gw left unannotated or annotated Any."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
                if arg.arg in ("gateway", "gw") and (
                    arg.annotation is None or ast.unparse(arg.annotation) == "Any"
                ):
                    found.append(f"{node.name}:{node.lineno}")
    return found


def test_every_module_handed_the_gateway_names_its_type() -> None:
    """The gateway is the hub a request passes through: `Gateway`, never `Any`."""
    untyped = {
        path.relative_to(REPO).as_posix(): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := untyped_gateway_parameters(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert untyped == {}
    sample = ast.parse("def f(gateway: Any, gw, ok: Gateway) -> None: ...\n")
    assert untyped_gateway_parameters(sample) == ["f:1", "f:1"]
