"""docs/configuration.md is the configuration schema, rendered; it may not drift from it.

- the committed page is exactly what `python -m geniehive.config.reference` prints;
- every default the page shows is the default the loader applies (a file that spells out
  every documented default loads to the same config as an empty one);
- the declared defaults agree with the dataclasses' own (code that builds them directly);
- a declared key the parser never reads is refused, so the page cannot list a dead key.
"""

from __future__ import annotations

import dataclasses
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from geniehive.auth import KeyLimits
from geniehive.config import (
    BreakerConfig,
    CapacityConfig,
    DiscoveryConfig,
    LaunchConfig,
    LoggingConfig,
    NodesConfig,
    PluginsConfig,
    ProberConfig,
    RoutingConfig,
    ServerConfig,
    UpstreamConfig,
    control,
    load_control,
    load_node,
    node,
    roles,
    sections,
)
from geniehive.config.checks import TEXT
from geniehive.config.reference import COMMAND, _toml, render
from geniehive.config.schema import Key, Section, Table
from geniehive.models import Asset, Policy, RoutingPolicy

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "configuration.md"
ROLES = REPO / "conf" / "roles"


def test_the_committed_reference_is_what_the_schema_renders() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        f"docs/configuration.md is stale: regenerate it with `{COMMAND}`"
    )


def test_the_documented_command_prints_the_reference(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `python -m` runs it: a fresh module named __main__, not the one imported above.
    monkeypatch.delitem(sys.modules, "geniehive.config.reference")
    runpy.run_module("geniehive.config.reference", run_name="__main__")
    assert capsys.readouterr().out == REFERENCE.read_text(encoding="utf-8")


def test_the_reference_names_every_table_of_the_three_files() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    for heading in ("[server]", "[server.tls]", "[nodes.tls]", "[[auth.keys]]", "[routing]",
                    "[[upstreams]]", "[[upstreams.assets]]", "[upstreams.assets.policy]",
                    "[upstreams.launch]", "[node]", "[control.tls]", "[heartbeat]",
                    "[inventory]", "[roles.<role id>]", "[roles.<role id>.routing]"):
        assert f"### `{heading}`" in text
    assert "| `write_timeout_s` | number > 0 | `60` |" in text
    assert "| `key_env` | non-empty string | *required* |" in text


def _spelled_out(section: Section, given: dict[str, list[str]], where: str = "") -> list[str]:
    """TOML lines setting every documented default of the plain tables below `section`.

    Tables that exist only with values of their own (TLS, launch, keys, upstreams) are left
    out, unless `given` holds the lines of their required keys.
    """
    lines: list[str] = []
    for table in section.tables:
        name = f"{where}.{table.name}" if where else table.name
        required = any(k.required for k in table.keys)
        if table.array or table.keyed or (required and name not in given):
            continue
        values = [f"{k.name} = {_toml(k.default)}" for k in table.keys
                  if k.default is not None and not k.required]
        lines += [f"[{name}]", *given.get(name, []), *values]
        lines += _spelled_out(table, given, name)
    return lines


def test_a_control_file_spelling_out_every_default_loads_like_an_empty_one(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROLES, tmp_path / "roles")  # the default catalog glob, given explicitly
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    full = tmp_path / "full.toml"
    full.write_text("\n".join(_spelled_out(control.CONTROL_FILE, {})) + "\n")
    for line in ("[server]", "shutdown_grace_s = 30", "[roles]", "[local]", "[logging]"):
        assert line in full.read_text().splitlines()
    assert dataclasses.replace(load_control(full, {}), source=empty) == load_control(empty, {})


def test_a_node_file_spelling_out_every_default_loads_like_a_minimal_one(tmp_path: Path) -> None:
    given = {"node": ['host_id = "gpu-01"', 'address = "10.0.0.5"'],
             "control": ['url = "http://control:8801"']}
    minimal = tmp_path / "minimal.toml"
    minimal.write_text("".join(f"[{t}]\n" + "\n".join(v) + "\n" for t, v in given.items()))
    full = tmp_path / "full.toml"
    full.write_text("\n".join(_spelled_out(node.NODE_FILE, given)) + "\n")
    for line in ("[heartbeat]", "interval_s = 5", "labels = {}", "model_roots = []"):
        assert line in full.read_text().splitlines()
    assert dataclasses.replace(load_node(full, {}), source=minimal) == load_node(minimal, {})


@pytest.mark.parametrize(
    ("section", "values"),
    [
        (control.SERVER, ServerConfig), (control.NODES, NodesConfig),
        (control.ROUTING, RoutingConfig), (control.CAPACITY, CapacityConfig),
        (control.AUTH.table("keys"), KeyLimits), (control.BREAKER, BreakerConfig),
        (control.PROBER, ProberConfig), (control.DISCOVERY, DiscoveryConfig),
        (control.PLUGINS, PluginsConfig), (sections.LOGGING, LoggingConfig),
        (sections.LAUNCH, LaunchConfig), (sections.UPSTREAMS, UpstreamConfig),
        (sections.ASSET, Asset), (roles.ROUTING, RoutingPolicy), (roles.ROLE, Policy),
    ],
    ids=lambda v: getattr(v, "name", None) or getattr(v, "__name__", "?"),
)
def test_declared_defaults_agree_with_the_dataclasses(section: Section, values: type) -> None:
    fields = {f.name: f for f in dataclasses.fields(values)}
    compared = 0
    for key in section.keys:
        f = fields.get(key.name)
        if f is None or key.required:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        assert key.default == default, key.name
        compared += 1
    assert compared


def test_a_declared_key_the_parser_never_reads_is_refused(tmp_path: Path) -> None:
    section = Section("t", "a table", (Key("a", TEXT, None, "read"),
                                       Key("b", TEXT, None, "never read")))
    t = Table({"a": "x"}, "t", [], section, tmp_path)
    t.get("a")
    with pytest.raises(LookupError, match="never read"):
        t.done()
    with pytest.raises(LookupError, match="declares no key 'c'"):
        t.get("c")
