"""docs/api.md names every endpoint the gateway serves, and only those, and every error code.

The routes come from where they are served: the Quart app's url_map (it registers the node,
cluster and playground routes itself), the proxy's forwarding routes, the websocket path, the
node endpoints and the probes. A new route without a line in docs/api.md fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from geniehive import api_nodes, dialects, errors, events, gate, proxy, ws
from geniehive.app import create_app
from geniehive.config import load_control
from geniehive.gateway import Gateway
from geniehive.models import Snapshot

REPO = Path(__file__).resolve().parents[2]
API = REPO / "docs" / "api.md"
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")
PARAMETER = r"<\1>"
_DOCUMENTED = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")


def served_routes(tmp_path: Path) -> set[str]:
    """`METHOD /path` of every route of the client port, with `<name>` for path parameters."""
    control = tmp_path / "geniehive.toml"
    control.write_text('[server]\nbind = ["127.0.0.1:8800"]\n')
    registry = SimpleNamespace(snapshot=Snapshot(version=1, hosts={}, services={}, roles={}))
    gateway = Gateway(load_control(control, {}), registry, {}, None)  # type: ignore[arg-type]
    app = create_app(gateway)
    # Quart adds a `/static/<filename>` rule of its own; with no static folder it serves
    # nothing (404), so it is not an endpoint to document.
    serves_static = app.static_folder is not None and Path(app.static_folder).is_dir()
    routes = {
        f"{method} {_CONVERTER.sub(PARAMETER, rule.rule)}"
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" or serves_static
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    routes |= {f"POST {path}" for path in proxy.ROUTES}
    routes |= {f"POST {path}" for path in dialects.served(gateway)}
    routes.add(f"POST {proxy.COUNT_TOKENS_PATH}")
    routes |= {f"POST {path}" for path in api_nodes.ROUTES}
    routes |= {f"GET {path}" for path in gate.PROBES | gate.PAGES}
    routes.add(f"GET {ws.PATH}")
    routes.add(f"GET {events.PATH}")
    return routes


def test_every_served_route_is_documented(tmp_path: Path) -> None:
    documented = {f"{m} {p}" for m, p in _DOCUMENTED.findall(API.read_text(encoding="utf-8"))}
    served = served_routes(tmp_path)
    assert "GET /v1/cluster/routes/resolve" in served and "POST /v1/chat/completions" in served
    assert "DELETE /v1/admin/keys/<key_id>" in served
    missing = sorted(served - documented)
    assert not missing, f"docs/api.md does not document: {missing}"


def test_every_documented_route_is_served(tmp_path: Path) -> None:
    documented = {f"{m} {p}" for m, p in _DOCUMENTED.findall(API.read_text(encoding="utf-8"))}
    stale = sorted(documented - served_routes(tmp_path))
    assert not stale, f"docs/api.md documents routes nobody serves: {stale}"


def _error_classes(root: type) -> list[type]:
    out = []
    for cls in root.__subclasses__():
        out += [cls, *_error_classes(cls)]
    return out


def test_every_error_code_is_documented_with_its_status() -> None:
    text = API.read_text(encoding="utf-8")
    rows = {code: status for status, code in
            re.findall(r"^\| (\d{3}|4xx) \| [^|]+ \| `(\w+|upstream_<status>)` \|", text,
                       re.MULTILINE)}
    classes = [errors.GenieHiveError, *_error_classes(errors.GenieHiveError)]
    coded = [cls for cls in classes if cls.code is not None]
    assert len(coded) >= 15
    for cls in coded:
        assert rows.get(cls.code) == str(cls.status), f"{cls.__name__} ({cls.code})"
    assert rows.get("upstream_<status>") == "4xx"  # UpstreamStatus: the upstream's own code


def test_the_readme_sends_users_to_both_references() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](docs/configuration.md)" in readme and "](docs/api.md)" in readme
    assert "specification" not in readme.lower()
