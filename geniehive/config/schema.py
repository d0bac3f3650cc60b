"""The declared schema of the files, and the reader that walks a file along it.

Every table of every file is a `Section`: its keys (`Key`: name, kind, default, meaning) and
its sub-tables. The parsers read keys only by name through `Table.get`, which takes the check,
the default and whether the key is required from the declaration; docs/configuration.md is
rendered from the same declarations. So a key cannot be parsed without being documented, and
`Table.done` refuses a declared key that the parser never read.

Problems are collected, never raised, so that every one is reported, each under its dotted
path (`upstreams[1].base_url: expected an http(s) URL`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geniehive.config.checks import Invalid, Kind


@dataclass(frozen=True, slots=True)
class InFolder:
    """A default path relative to the folder of the file, as a value of the key would be."""

    relative: str


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table. `default` is the value when the key is absent (or invalid)."""

    name: str
    kind: Kind
    default: Any
    meaning: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    """One table: `name` is its key in the parent table ("" for a file's top level)."""

    name: str
    meaning: str
    keys: tuple[Key, ...] = ()
    tables: tuple[Section, ...] = ()
    array: bool = False  # an array of tables, `[[name]]`
    keyed: bool = False  # a table of tables keyed by id: `tables[0]` describes each entry

    def key(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise LookupError(f"{self.name or 'the top level'} declares no key {name!r}")

    def table(self, name: str) -> Section:
        for table in self.tables:
            if table.name == name:
                return table
        raise LookupError(f"{self.name or 'the top level'} declares no table {name!r}")


class Table:
    """One TOML table being read along its section: remembers the keys taken, reports others."""

    def __init__(self, data: Any, where: str, problems: list[str], section: Section,
                 base: Path) -> None:
        self.present = isinstance(data, dict)
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.where = where
        self.problems = problems
        self.section = section
        self.base = base  # the folder relative paths resolve against
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def report(self, key: str, message: str, suffix: str = "") -> None:
        self.problems.append(f"{self.path(key)}{suffix}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def declares(self, name: str) -> bool:
        return any(key.name == name for key in self.section.keys)

    def get(self, name: str) -> Any:
        """The value of the declared key `name`, checked; its default when absent or bad."""
        key = self.section.key(name)
        self._seen.add(name)
        default = self.base / key.default.relative if isinstance(key.default, InFolder) \
            else key.default
        if name not in self.data:
            if key.required:
                self.report(name, "required key missing")
            return default
        try:
            return key.kind.checker(self.base)(self.data[name])
        except Invalid as exc:
            for suffix, message in exc.problems:
                self.report(name, message, suffix)
            return default

    def table(self, name: str) -> Table:
        """The sub-table `name` (empty when absent; `.present` tells which)."""
        section = self.section.table(name)
        self._seen.add(name)
        value = self.data.get(name)
        if value is not None and not isinstance(value, dict):
            self.report(name, "expected a table")
        return Table(value, self.path(name), self.problems, section, self.base)

    def tables(self, name: str) -> list[Table]:
        """The array of tables `name`, each addressed as `name[i]`."""
        section = self.section.table(name)
        self._seen.add(name)
        value = self.data.get(name, [])
        if not isinstance(value, list):
            self.report(name, "expected a list of tables")
            return []
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.report(name, "expected a table", f"[{index}]")
                continue
            out.append(Table(item, f"{self.path(name)}[{index}]", self.problems, section,
                             self.base))
        return out

    def entries(self) -> Iterator[tuple[str, Table]]:
        """Every entry of a table keyed by id, all counted as known."""
        (section,) = self.section.tables
        self._seen.update(self.data)
        for key, value in list(self.data.items()):
            yield key, Table(value, self.path(key), self.problems, section, self.base)

    def done(self) -> None:
        """Report the keys nobody read as unknown."""
        declared = {k.name for k in self.section.keys} | {t.name for t in self.section.tables}
        if self.present and not self.section.keyed and declared - self._seen:
            raise LookupError(f"{self.where}: declared but never read: "
                              f"{sorted(declared - self._seen)}")
        for key in self.data:
            if key not in self._seen:
                self.report(key, "unknown key")


def secret(t: Table, name: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(variable name, its value) for a `*_env` key; an unset variable is a problem."""
    variable = t.get(name)
    if variable is None:
        return None, None
    value = environ.get(variable)
    if value is None:
        t.report(name, f"environment variable {variable!r} is not set")
    elif not value:
        t.report(name, f"environment variable {variable!r} is empty")
    return variable, value or None


def read_toml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The parsed file, or None with the reason added to `problems`."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"cannot read file: {exc.strerror or exc}")
    except UnicodeDecodeError:
        problems.append("cannot read file: not UTF-8 text")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"invalid TOML: {exc}")  # the message names line and column
    return None
