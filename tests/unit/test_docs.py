"""The guides in docs/ stay true to the code.

- every `geniehive_*` metric name in docs/deployment.md (alert rules, scrape notes) and in
  docs/architecture.md is one the gateway really exports;
- every module of geniehive/ and plugins/ is described in docs/architecture.md;
- every complete config file in docs/deployment.md (a ```toml block not marked `# fragment`)
  passes `check_files`, with the files it names created under tmp_path.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from geniehive.config import check_files, load_control
from geniehive.exchange import Outcome
from geniehive.gateway import Gateway
from geniehive.models import Asset, Host, Service, Snapshot

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "docs" / "deployment.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "geniehive"
PLUGINS = REPO / "plugins"
ROLES = REPO / "conf" / "roles"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_METRIC = re.compile(r"\bgeniehive_[a-z_]+\b")
_INLINE_METRIC = re.compile(r"`(geniehive_[a-z_]+)")
_SYSTEM_PATH = re.compile(r'"(/(?:etc|var|srv|opt)/[^"]*)"')
_ENV_KEY = re.compile(r'^\s*\w*key_env\s*=\s*"(\w+)"', re.MULTILINE)


def fenced(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def exported_names(tmp_path: Path) -> set[str]:
    """Every series and family name of a gateway's /metrics after some traffic."""
    control = tmp_path / "metrics.toml"
    control.write_text('[server]\nbind = ["127.0.0.1:8800"]\n')
    config = load_control(control, {})
    service = Service(service_id="gpu-01-llama/chat", host_id="gpu-01", operation="chat",
                      adapter="openai", base_url="http://10.0.0.11:8080",
                      assets=(Asset(asset_id="m"),))
    host = Host(host_id="gpu-01", address="10.0.0.11", last_heartbeat=1.0, registered_at=1.0)
    registry = SimpleNamespace(snapshot=Snapshot(
        version=1, hosts={"gpu-01": host}, services={service.service_id: service}, roles={},
    ))
    gateway = Gateway(config, registry, {}, None, monotonic=lambda: 0.0)  # type: ignore[arg-type]
    outcome = Outcome(status=200, service_id=service.service_id, upstream_model="m",
                      route="role:a;fallback:b", attempts=2,
                      failures=[(service.service_id, "HTTP 503")], ttft_ms=12.0,
                      prompt_tokens=3, completion_tokens=5)
    gateway.metrics.observe_request("chat", outcome, 0.2)
    gateway.count_failure("discovery", "gpu-01-llama")
    gateway.count_failure("probe", service.service_id)
    names: set[str] = set()
    for line in gateway.metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_alert_rules_use_metrics_the_gateway_exports(tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    rules = [block for block in fenced(DEPLOYMENT.read_text(), "yaml") if "alert:" in block]
    assert rules, "docs/deployment.md shows no alert rules"
    assert sum(block.count("- alert:") for block in rules) >= 3
    used = {name for block in rules for name in _METRIC.findall(block)}
    assert used, "the alert rules use no geniehive metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


@pytest.mark.parametrize("doc", [DEPLOYMENT, ARCHITECTURE], ids=lambda p: p.name)
def test_metric_names_in_the_text_are_exported(doc: Path, tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    named = set(_INLINE_METRIC.findall(doc.read_text()))
    assert named <= exported, f"not exported: {sorted(named - exported)}"


def test_every_module_is_described_in_the_architecture() -> None:
    text = ARCHITECTURE.read_text()
    modules = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
               if "__pycache__" not in p.parts]
    modules += [f"plugins/{p.name}" for p in sorted(PLUGINS.glob("*.py"))]
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not describe: {missing}"


def config_blocks() -> list[str]:
    return [block for block in fenced(DEPLOYMENT.read_text(), "toml")
            if "# fragment" not in block.splitlines()[0]]


def materialize(block: str, root: Path) -> str:
    """The block with its system paths moved under `root`, the files they name created."""

    def move(match: re.Match[str]) -> str:
        target = root / match.group(1).lstrip("/")
        if "*" in target.name:  # a role catalog glob: the shipped catalogs
            target.parent.mkdir(parents=True, exist_ok=True)
            for catalog in ROLES.glob("*.toml"):
                shutil.copy(catalog, target.parent / catalog.name)
        elif target.suffix in (".pem", ".key"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("placeholder\n")
        return f'"{target}"'

    return _SYSTEM_PATH.sub(move, block)


def test_deployment_shows_a_control_file_and_two_node_files() -> None:
    blocks = config_blocks()
    assert sum("[node]" in b for b in blocks) == 2
    assert sum("[nodes.tls]" in b and "[[auth.keys]]" in b for b in blocks) == 1


@pytest.mark.parametrize("index", range(len(config_blocks())))
def test_complete_config_files_pass_check_config(index: int, tmp_path: Path) -> None:
    block = config_blocks()[index]
    path = tmp_path / "file.toml"
    path.write_text(materialize(block, tmp_path))
    environ = {name: f"secret-of-{name.lower()}" for name in _ENV_KEY.findall(block)}
    assert check_files([path], environ) == []


def test_nginx_body_limit_matches_the_gateway() -> None:
    text = DEPLOYMENT.read_text()
    (nginx,) = fenced(text, "nginx")
    (limit,) = re.findall(r"client_max_body_size (\d+);", nginx)
    (control,) = [b for b in config_blocks() if "[nodes.tls]" in b]
    (body,) = re.findall(r"^max_body_bytes = (\d+)", control, re.MULTILINE)
    assert limit == body
