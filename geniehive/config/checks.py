"""The checking primitives: each converts one raw TOML value or raises `Invalid`.

A `Kind` pairs a check with the name docs/configuration.md gives the type, so the reference
describes exactly what the parser accepts. Checks that resolve paths need the folder of the
file being read, so a kind holds either a plain check or a factory taking that folder.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from geniehive.models import KEEP_ALIVE_EXPECTED, valid_id, valid_keep_alive

Check = Callable[[Any], Any]

_ADAPTER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
_BIND_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})$")
# The labels the routing gates read have fixed shapes; other labels take either shape.
_LIST_LABELS = ("workload_classes", "allowed_model_families")
_STRING_LABELS = ("trust_tier", "device_class")


class Invalid(Exception):
    """A value failed a check: (path suffix, message) pairs, the suffix as `[2]` or `.x`."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def bad(message: str, suffix: str = "") -> Invalid:
    return Invalid((suffix, message))


@dataclass(frozen=True, slots=True)
class Kind:
    """A key's type: its name in the reference and the check that converts a raw value."""

    name: str
    check: Check | None = None
    check_in: Callable[[Path], Check] | None = None  # for paths: takes the file's folder
    plural: str = ""  # the name in "list of ...", when not `name` + "s"

    def checker(self, base: Path) -> Check:
        if self.check is not None:
            return self.check
        assert self.check_in is not None
        return self.check_in(base)


# ---------------------------------------------------------------------------------------------
# Binds


def parse_bind(bind: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port` into (host, port); raises ValueError when malformed."""
    match = _BIND_RE.match(bind) if isinstance(bind, str) else None
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"bad bind address {bind!r}")
    host = match["v6"] if match["v6"] is not None else match["host"]
    if match["v6"] is not None:
        ipaddress.IPv6Address(host)  # raises ValueError (AddressValueError) when not IPv6
    return host, int(match["port"])


def is_loopback_bind(bind: str) -> bool:
    """True when the address only accepts local connections (127.0.0.0/8, ::1, localhost)."""
    try:
        host, _ = parse_bind(bind)
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Scalars


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise bad("expected a string")
    return value


def _text(value: Any) -> str:
    if not _string(value).strip():
        raise bad("expected a non-empty string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad("expected true or false")
    return value


def integer(minimum: int) -> Kind:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("expected an integer")
        if value < minimum:
            raise bad(f"expected an integer >= {minimum}, got {value}")
        return value

    return Kind(f"integer ≥ {minimum}", check)


def _number(value: Any) -> float:
    # bool is an int subclass; `true` where a number is expected is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad("expected a number")
    if not math.isfinite(value):
        raise bad("expected a finite number")
    return float(value)


def _positive(value: Any) -> float:
    if _number(value) <= 0:
        raise bad(f"expected a positive number, got {value}")
    return float(value)


def _non_negative(value: Any) -> float:
    if _number(value) < 0:
        raise bad(f"expected a number >= 0, got {value}")
    return float(value)


def positive_up_to(maximum: float) -> Kind:
    def check(value: Any) -> float:
        number = _positive(value)
        if number > maximum:
            raise bad(f"expected a number > 0 and <= {maximum:g}, got {value}")
        return number

    return Kind(f"number > 0 and ≤ {maximum:g}", check)


def choice(options: Sequence[str]) -> Kind:
    def check(value: Any) -> str:
        if _string(value) not in options:
            raise bad(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    names = ", ".join(f"`{o}`" for o in options)
    return Kind(f"one of {names}", check, plural=f"values among {names}")


def _identifier(value: Any) -> str:
    if not valid_id(value):
        if not isinstance(value, str):
            raise bad("expected a string")
        raise bad(f"invalid id {value!r} (1-128 letters, digits and . _ : / -)")
    return value


def _adapter_kind(value: Any) -> str:
    if not _ADAPTER_RE.match(_string(value)):
        raise bad(f"invalid adapter kind {value!r} (a letter, then letters, digits, _ . -)")
    return value


def _url(value: Any) -> str:
    """An http(s) server root; a trailing slash is dropped so paths can be appended."""
    try:
        parts = urlsplit(_string(value))
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise bad("expected an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise bad("expected an http(s) URL")
    return value.rstrip("/")


def _bind(value: Any) -> str:
    try:
        parse_bind(_string(value))
    except ValueError:
        raise bad(f'expected "host:port" or "[v6]:port" with a port 0-65535, got {value!r}') \
            from None
    return value


def _address(value: Any) -> str:
    if not _text(value) or any(c.isspace() or c == "/" for c in value):
        raise bad(f"expected a host name or IP address, got {value!r}")
    return value


def _network(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(_string(value), strict=False))
    except ValueError:
        raise bad(f'expected a network in CIDR form such as "10.0.0.0/24", got {value!r}') \
            from None


def _keep_alive(value: Any) -> str | int:
    if not valid_keep_alive(value):
        raise bad(f"expected {KEEP_ALIVE_EXPECTED}, got {value!r}")
    return value


def postgresql_url_problem(text: str) -> str | None:
    """What is wrong with a PostgreSQL URL, or None."""
    parts = urlsplit(text)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        return f"expected a postgresql://host/database URL, got {text!r}"
    return None


def _postgresql_url(value: Any) -> str:
    """A `postgresql://` URL; a password belongs in `url_env` or a password file, not here."""
    text = _text(value)
    problem = postgresql_url_problem(text)
    if problem is not None:
        raise bad(problem)
    if urlsplit(text).password is not None:
        raise bad("a password may not be written in the file: use `url_env` "
                  "(or PostgreSQL's password file)")
    return text


STRING = Kind("string", _string)
TEXT = Kind("non-empty string", _text)
BOOL = Kind("boolean", _bool)
POSITIVE = Kind("number > 0", _positive)
NON_NEGATIVE = Kind("number ≥ 0", _non_negative)
IDENTIFIER = Kind("id (1-128 letters, digits and `. _ : / -`)", _identifier,
                  plural="ids (1-128 letters, digits and `. _ : / -` each)")
ADAPTER = Kind("adapter kind (a letter, then letters, digits, `_ . -`)", _adapter_kind)
URL = Kind("http(s) URL", _url)
POSTGRESQL_URL = Kind("postgresql:// URL", _postgresql_url)
BIND = Kind('bind address (`"host:port"` or `"[v6]:port"`)', _bind,
            plural='bind addresses (`"host:port"` or `"[v6]:port"`)')
ADDRESS = Kind("host name or IP address", _address)
NETWORK = Kind('network in CIDR form (`"10.0.0.0/24"`)', _network,
               plural='networks in CIDR form (`"10.0.0.0/24"`)')
KEEP_ALIVE = Kind('duration (`"30m"`, `"1h30m"`), seconds ≥ 1, or -1 (forever)', _keep_alive)
ENV_NAME = Kind("name of an environment variable", _text)


# ---------------------------------------------------------------------------------------------
# Lists and tables


def _list(item: Check, *, non_empty: bool = False, unique: bool = False) -> Check:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise bad("expected a list")
        if non_empty and not value:
            raise bad("expected at least one item")
        out: list[Any] = []
        problems: list[tuple[str, str]] = []
        for index, element in enumerate(value):
            try:
                converted = item(element)
            except Invalid as exc:
                problems.extend((f"[{index}]{s}", m) for s, m in exc.problems)
                continue
            if unique and converted in out:
                problems.append((f"[{index}]", f"duplicate {converted!r}"))
            out.append(converted)
        if problems:
            raise Invalid(*problems)
        return tuple(out)

    return check


def list_of(item: Kind, *, non_empty: bool = False, unique: bool = False) -> Kind:
    """A list of `item`s (at least one when `non_empty`, each once when `unique`)."""
    name = ("non-empty " if non_empty else "") + "list of " + ("distinct " if unique else "") \
        + (item.plural or item.name + "s")
    if item.check is not None:
        return Kind(name, _list(item.check, non_empty=non_empty, unique=unique))
    return Kind(name, check_in=lambda base: _list(item.checker(base), non_empty=non_empty,
                                                  unique=unique))


def _json_value(value: Any, suffix: str, problems: list[tuple[str, str]]) -> None:
    # TOML dates and times have no JSON form; they would fail later, at request time.
    if isinstance(value, datetime | date | time):
        problems.append((suffix, "expected a JSON value (string, number, boolean, list, table)"))
    elif isinstance(value, dict):
        for key, item in value.items():
            _json_value(item, f"{suffix}.{key}", problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_value(item, f"{suffix}[{index}]", problems)


def _json_table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise bad("expected a table")
    problems: list[tuple[str, str]] = []
    _json_value(value, "", problems)
    if problems:
        raise Invalid(*problems)
    return MappingProxyType(value)


def _string_table(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise bad("expected a table")
    bad_items = [(f".{k}", "expected a string") for k, v in value.items()
                 if not isinstance(v, str)]
    if bad_items:
        raise Invalid(*bad_items)
    return MappingProxyType(dict(value))


def _labels(value: Any) -> Mapping[str, str | tuple[str, ...]]:
    """Host labels: a string or a list of strings each; the gates' labels have fixed shapes."""
    if not isinstance(value, dict):
        raise bad("expected a table")
    out: dict[str, str | tuple[str, ...]] = {}
    problems: list[tuple[str, str]] = []
    for key, item in value.items():
        try:
            if key in _LIST_LABELS or (key not in _STRING_LABELS and isinstance(item, list)):
                out[key] = _list(_string)(item)
            elif key in _STRING_LABELS:
                out[key] = _string(item)
            else:
                out[key] = _label_string(item)
        except Invalid as exc:
            problems.extend((f".{key}{s}", m) for s, m in exc.problems)
    if problems:
        raise Invalid(*problems)
    return MappingProxyType(out)


def _label_string(value: Any) -> str:
    if not isinstance(value, str):
        raise bad("expected a string or a list of strings")
    return value


JSON_TABLE = Kind("table of JSON values (no dates or times)", _json_table)
STRING_TABLE = Kind("table of strings", _string_table)
LABELS = Kind("table of labels (a string or a list of strings each)", _labels)


# ---------------------------------------------------------------------------------------------
# Paths: relative to the folder of the file that names them (an absolute value replaces it)


def _path_in(base: Path) -> Check:
    def check(value: Any) -> Path:
        return base / _text(value)

    return check


def _file_in(base: Path) -> Check:
    def check(value: Any) -> Path:
        path = base / _text(value)
        if not path.is_file():
            raise bad(f"file not found: {path}")
        return path

    return check


def _folder_in(base: Path) -> Check:
    def check(value: Any) -> Path:
        path = base / _text(value)
        if not path.is_dir():
            raise bad(f"folder not found: {path}")
        return path

    return check


PATH = Kind("path", check_in=_path_in)
FILE = Kind("path of an existing file", check_in=_file_in, plural="paths of existing files")
FOLDER = Kind("path of an existing folder", check_in=_folder_in,
              plural="paths of existing folders")
