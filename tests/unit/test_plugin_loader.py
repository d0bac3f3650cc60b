"""The plugin loader: built-ins, extra folders, entry points, and every validation error.

Each error claim checks the full message, because the message (naming the file or entry point)
is what a plugin author sees when GenieHive refuses to start.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geniehive.adapters import (
    OPERATIONS,
    Adapter,
    AdapterSpec,
    OpenAICompatibleAdapter,
    UpstreamContext,
    loader,
)
from geniehive.adapters.loader import PluginError, build_adapter, builtin_folder, load_adapters

HEADER = "from geniehive.adapters import AdapterSpec, OpenAICompatibleAdapter\n"


def plugin_source(kind: str = "demo", **fields: str) -> str:
    """A plugin file whose AdapterSpec arguments can be swapped for bad ones."""
    args = {
        "kind": repr(kind),
        "api_version": "1",
        "factory": "OpenAICompatibleAdapter",
        "operations": '{"chat"}',
        **fields,
    }
    joined = ", ".join(f"{key}={value}" for key, value in args.items())
    return f"{HEADER}ADAPTER = AdapterSpec({joined})\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def added_kinds(specs: dict[str, AdapterSpec]) -> list[str]:
    """The kinds that came after the built-ins, in load order."""
    builtins = load_adapters(entry_points=False)
    return [kind for kind in specs if kind not in builtins]


# --- built-ins ------------------------------------------------------------------------------


def test_builtin_folder_is_the_repository_plugins_folder():
    assert builtin_folder() == Path(__file__).resolve().parents[2] / "plugins"


def test_builtin_folder_falls_back_to_the_source_tree(monkeypatch):
    # Running from a checkout that was never installed: the package is not importable.
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    assert builtin_folder() == Path(loader.__file__).resolve().parents[2] / "plugins"


def test_builtin_openai_plugin_loads_with_every_operation():
    spec = load_adapters(entry_points=False)["openai"]
    assert spec.kind == "openai"
    assert spec.api_version == 1
    assert spec.factory is OpenAICompatibleAdapter
    assert set(spec.operations) == set(OPERATIONS)
    assert spec.description


def test_builtin_package_init_file_is_not_a_plugin():
    # plugins/__init__.py starts with "_" and defines no ADAPTER: loading must not trip on it.
    assert "openai" in load_adapters(entry_points=False)


# --- folders --------------------------------------------------------------------------------


# The built-in plugins, in the order their files sort.
BUILTIN_KINDS = ["llamacpp", "ollama", "openai", "vllm", "whisper", "whispercpp"]


def test_extra_folder_plugins_load_after_builtins_sorted_by_file_name(tmp_path):
    write(tmp_path, "b_second.py", plugin_source("alpha"))
    write(tmp_path, "a_first.py", plugin_source("zulu"))
    specs = load_adapters([tmp_path], entry_points=False)
    assert list(specs)[:len(BUILTIN_KINDS)] == BUILTIN_KINDS
    assert added_kinds(specs) == ["zulu", "alpha"]
    assert specs["alpha"].operations == {"chat"}


def test_underscore_files_and_non_plugins_are_skipped(tmp_path):
    write(tmp_path, "_private.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path, "_hidden_pkg/__init__.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path, "README.md", "not python\n")
    write(tmp_path, "data/notes.py", "raise RuntimeError('not a package: no __init__.py')\n")
    write(tmp_path, "real.py", plugin_source("real"))
    assert added_kinds(load_adapters([tmp_path], entry_points=False)) == ["real"]


def test_package_directory_plugin_loads_with_relative_imports(tmp_path):
    write(tmp_path, "mypkg/__init__.py", "from .spec import ADAPTER\n")
    write(tmp_path, "mypkg/spec.py", plugin_source("packaged"))
    specs = load_adapters([tmp_path], entry_points=False)
    assert specs["packaged"].factory is OpenAICompatibleAdapter


def test_plugins_with_the_same_file_name_in_two_folders_do_not_collide(tmp_path):
    first = write(tmp_path / "one", "plug.py", plugin_source("first"))
    second = write(tmp_path / "two", "plug.py", plugin_source("second"))
    specs = load_adapters([first.parent, second.parent], entry_points=False)
    assert added_kinds(specs) == ["first", "second"]


def test_plugin_may_define_its_own_adapter_class(tmp_path):
    write(
        tmp_path,
        "custom.py",
        "from dataclasses import dataclass\n"
        "from geniehive.adapters import AdapterSpec, OpenAICompatibleAdapter\n"
        "@dataclass\n"
        "class Settings:\n"
        "    path: str = '/models'\n"
        "class Custom(OpenAICompatibleAdapter):\n"
        "    kind = 'custom'\n"
        "    models_path = Settings().path\n"
        "ADAPTER = AdapterSpec(kind='custom', api_version=1, factory=Custom)\n",
    )
    spec = load_adapters([tmp_path], entry_points=False)["custom"]
    assert spec.factory.models_path == "/models"
    assert spec.operations == frozenset()


def test_the_same_folder_named_twice_loads_once(tmp_path):
    write(tmp_path, "one.py", plugin_source("once"))
    specs = load_adapters([tmp_path, tmp_path / "."], entry_points=False)
    assert added_kinds(specs) == ["once"]


def test_missing_folder_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PluginError) as info:
        load_adapters([missing], entry_points=False)
    assert str(info.value) == f"{missing}: plugins folder does not exist"


# --- validation -----------------------------------------------------------------------------

OPS = ", ".join(OPERATIONS)
BAD_PLUGINS = [
    pytest.param(
        "raise RuntimeError('boom')\n",
        "import failed: RuntimeError: boom",
        id="import-raises",
    ),
    pytest.param(
        "def broken(:\n",
        "import failed: SyntaxError: ",
        id="syntax-error",
    ),
    pytest.param("VALUE = 1\n", "defines no ADAPTER", id="no-adapter"),
    pytest.param(
        "ADAPTER = {'kind': 'demo'}\n",
        "ADAPTER is a dict, not an AdapterSpec",
        id="not-a-spec",
    ),
    pytest.param(
        plugin_source(api_version="2"),
        "api_version 2 is not supported (this GenieHive speaks 1)",
        id="api-version",
    ),
    pytest.param(
        plugin_source(""),
        "kind '' must be lowercase letters, digits and '_', starting with a letter",
        id="empty-kind",
    ),
    pytest.param(
        plugin_source("My-Kind"),
        "kind 'My-Kind' must be lowercase letters, digits and '_', starting with a letter",
        id="kind-with-dash",
    ),
    pytest.param(
        plugin_source("9lives"),
        "kind '9lives' must be lowercase letters, digits and '_', starting with a letter",
        id="kind-starts-with-digit",
    ),
    pytest.param(
        plugin_source(kind="None").replace("kind='None'", "kind=None"),
        "kind None must be lowercase letters, digits and '_', starting with a letter",
        id="kind-not-a-string",
    ),
    pytest.param(
        plugin_source(operations='{"chat", "telepathy", "dreams"}'),
        f"unknown operation(s) dreams, telepathy (valid: {OPS})",
        id="unknown-operation",
    ),
    pytest.param(
        plugin_source(operations='"chat"'),
        "operations must be a set of names, not a string",
        id="operations-string",
    ),
    pytest.param(
        plugin_source(factory="42"),
        "factory is not callable",
        id="factory-not-callable",
    ),
]


@pytest.mark.parametrize(("source", "message"), BAD_PLUGINS)
def test_bad_plugin_is_an_error_naming_its_file(tmp_path, source, message):
    write(tmp_path, "a_good.py", plugin_source("good"))
    bad = write(tmp_path, "b_bad.py", source)
    with pytest.raises(PluginError) as info:
        load_adapters([tmp_path], entry_points=False)
    assert str(info.value).startswith(f"{bad}: {message}")


def test_bad_package_plugin_names_its_init_file(tmp_path):
    init = write(tmp_path, "pkg/__init__.py", "VALUE = 1\n")
    with pytest.raises(PluginError) as info:
        load_adapters([tmp_path], entry_points=False)
    assert str(info.value) == f"{init}: defines no ADAPTER"


def test_failed_import_leaves_no_half_module_behind(tmp_path):
    write(tmp_path, "broken.py", "raise RuntimeError('boom')\n")
    with pytest.raises(PluginError):
        load_adapters([tmp_path], entry_points=False)
    assert not [name for name in sys.modules if name.endswith("_broken")]


def test_duplicate_kind_names_both_files(tmp_path):
    first = write(tmp_path, "first.py", plugin_source("twin"))
    second = write(tmp_path, "second.py", plugin_source("twin"))
    with pytest.raises(PluginError) as info:
        load_adapters([tmp_path], entry_points=False)
    assert str(info.value) == f"{second}: adapter kind 'twin' is already defined by {first}"


def test_extra_plugin_cannot_replace_a_builtin_kind(tmp_path):
    mine = write(tmp_path, "openai.py", plugin_source("openai"))
    with pytest.raises(PluginError) as info:
        load_adapters([tmp_path], entry_points=False)
    builtin = builtin_folder() / "openai.py"
    assert str(info.value) == f"{mine}: adapter kind 'openai' is already defined by {builtin}"


# --- entry points ---------------------------------------------------------------------------


class FakeEntryPoint:
    """Just the part of importlib.metadata.EntryPoint the loader uses."""

    def __init__(self, name: str, value: str, target: Any) -> None:
        self.name = name
        self.value = value
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def spec_of(kind: str) -> AdapterSpec:
    return AdapterSpec(kind=kind, api_version=1, factory=OpenAICompatibleAdapter)


def module_with(**attrs: Any) -> types.ModuleType:
    module = types.ModuleType("fake_plugin_module")
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def installed(monkeypatch):
    """Set the entry points the loader will see: `installed(ep, ...)`."""
    found: list[FakeEntryPoint] = []

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        return list(found) if group == "geniehive.adapters" else []

    monkeypatch.setattr(loader, "entry_points", fake_entry_points)
    return lambda *eps: found.extend(eps)


def test_entry_points_load_modules_and_specs_sorted_by_name(installed):
    installed(
        FakeEntryPoint("zeta", "zeta_pkg:ADAPTER", spec_of("from_spec")),
        FakeEntryPoint("alpha", "alpha_pkg.plugin", module_with(ADAPTER=spec_of("from_module"))),
    )
    specs = load_adapters()
    assert list(specs)[-2:] == ["from_module", "from_spec"]
    assert list(specs)[:len(BUILTIN_KINDS)] == BUILTIN_KINDS


def test_entry_points_are_ignored_when_disabled(installed):
    installed(FakeEntryPoint("bad", "bad_pkg", ImportError("must not be loaded")))
    assert "openai" in load_adapters(entry_points=False)


ENTRY_POINT_ERRORS = [
    pytest.param(
        ImportError("No module named 'gone'"),
        "load failed: ImportError: No module named 'gone'",
        id="load-raises",
    ),
    pytest.param(
        module_with(OTHER=1), "module fake_plugin_module defines no ADAPTER", id="no-adapter"
    ),
    pytest.param(42, "loads a int, not a module or an AdapterSpec", id="wrong-object"),
    pytest.param(
        module_with(ADAPTER=AdapterSpec(kind="x", api_version=3, factory=Adapter)),
        "api_version 3 is not supported (this GenieHive speaks 1)",
        id="validated-like-files",
    ),
]


@pytest.mark.parametrize(("target", "message"), ENTRY_POINT_ERRORS)
def test_bad_entry_point_is_an_error_naming_it(installed, target, message):
    installed(FakeEntryPoint("broken", "broken_pkg.adapter", target))
    with pytest.raises(PluginError) as info:
        load_adapters()
    assert str(info.value) == f"entry point 'broken' (broken_pkg.adapter): {message}"


def test_entry_point_duplicating_a_builtin_names_both(installed):
    installed(FakeEntryPoint("mine", "my_pkg:ADAPTER", spec_of("openai")))
    with pytest.raises(PluginError) as info:
        load_adapters()
    builtin = builtin_folder() / "openai.py"
    assert str(info.value) == (
        f"entry point 'mine' (my_pkg:ADAPTER): adapter kind 'openai' is already defined by "
        f"{builtin}"
    )


# --- build_adapter --------------------------------------------------------------------------


async def test_build_adapter_calls_the_factory_with_the_context():
    with trio.fail_after(5):
        async with httpx.AsyncClient() as client:
            ctx = UpstreamContext("up1", "http://127.0.0.1:9", client)
            adapter = build_adapter(load_adapters(entry_points=False), "openai", ctx)
    assert isinstance(adapter, OpenAICompatibleAdapter)
    assert adapter.ctx is ctx
    assert adapter.client is client


async def test_build_adapter_rejects_an_unknown_kind():
    with trio.fail_after(5):
        async with httpx.AsyncClient() as client:
            ctx = UpstreamContext("up1", "http://127.0.0.1:9", client)
            with pytest.raises(PluginError) as info:
                build_adapter({"openai": spec_of("openai")}, "ollama", ctx)
    assert str(info.value) == "unknown adapter kind 'ollama' (known: openai)"


async def test_build_adapter_rejects_a_factory_that_returns_no_adapter():
    specs = {"odd": AdapterSpec(kind="odd", api_version=1, factory=lambda ctx: object())}
    with trio.fail_after(5):
        async with httpx.AsyncClient() as client:
            ctx = UpstreamContext("up1", "http://127.0.0.1:9", client)
            with pytest.raises(PluginError) as info:
                build_adapter(specs, "odd", ctx)
    assert str(info.value) == "adapter kind 'odd': factory returned object, not an Adapter"
