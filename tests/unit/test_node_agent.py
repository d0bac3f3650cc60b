"""The node agent's pure parts: backoff, advertised URLs, nvidia-smi, model files, services."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from geniehive.assets import fill_observed
from geniehive.config import (
    ControlLink,
    LoggingConfig,
    NodeConfig,
    NodeSection,
    UpstreamConfig,
    load_node,
)
from geniehive.models import Asset, Observed
from geniehive.node.agent import (
    MAX_DELAY_S,
    OK,
    REFUSED,
    REJECTED,
    UNREACHABLE,
    NodeAgent,
    next_delay,
    not_running_health,
)
from geniehive.node.gpu import parse_nvidia_smi, summarize
from geniehive.node.inventory import (
    advertised_url,
    scan_models,
    upstream_services,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


@pytest.mark.parametrize("attempt", range(1, 30))
def test_backoff_doubles_from_one_second_up_to_a_minute_with_jitter(attempt: int) -> None:
    ceiling = min(60.0, 2.0 ** (attempt - 1))
    delays = [next_delay(attempt, random.Random(seed)) for seed in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) <= MAX_DELAY_S
    assert len(set(delays)) > 100  # jittered: nodes that failed together spread out


def test_backoff_never_spins_even_for_odd_attempts() -> None:
    rng = random.Random(1)
    assert next_delay(0, rng) >= 0.5
    assert next_delay(-3, rng) >= 0.5
    assert 30 <= next_delay(10_000, rng) <= 60


@pytest.mark.parametrize(
    ("base_url", "address", "expected"),
    [
        ("http://127.0.0.1:8000", "10.0.0.5", "http://10.0.0.5:8000"),
        ("http://localhost:11434/", "gpu-01.lan", "http://gpu-01.lan:11434/"),
        ("https://127.0.0.2/api", "10.0.0.5", "https://10.0.0.5/api"),
        ("http://[::1]:8080", "10.0.0.5", "http://10.0.0.5:8080"),
        ("http://127.0.0.1:8080", "fd00::5", "http://[fd00::5]:8080"),
        ("http://10.0.0.9:8000", "10.0.0.5", "http://10.0.0.9:8000"),
        ("http://127.0.0.1:8000", "127.0.0.1", "http://127.0.0.1:8000"),
    ],
)
def test_only_loopback_upstreams_are_advertised_with_the_node_address(
    base_url: str, address: str, expected: str
) -> None:
    assert advertised_url(base_url, address) == expected


def test_nvidia_smi_recorded_output_is_parsed() -> None:
    gpus = parse_nvidia_smi((FIXTURES / "nvidia_smi.txt").read_text())
    assert gpus == [
        {"index": 0, "name": "NVIDIA GeForce RTX 3090", "memory_total_bytes": 24576 * MIB,
         "memory_used_bytes": 18843 * MIB, "utilization_pct": 87.0},
        {"index": 1, "name": "NVIDIA GeForce RTX 3090", "memory_total_bytes": 24576 * MIB,
         "memory_used_bytes": 6 * MIB, "utilization_pct": 0.0},
        {"index": 2, "name": "Tesla T4", "memory_total_bytes": 15360 * MIB,
         "memory_used_bytes": None, "utilization_pct": None},
    ]
    assert summarize(gpus) == {
        "gpu_count": 3,
        "vram_total_bytes": (24576 * 2 + 15360) * MIB,
        "vram_used_bytes": (18843 + 6) * MIB,
        "gpu_utilization_pct": 43.5,
    }


def test_nvidia_smi_noise_is_skipped() -> None:
    text = "NVIDIA-SMI has failed\n\n0, A100, 81920, 10, 3\nx, y, 1, 2, 3\n"
    assert [g["name"] for g in parse_nvidia_smi(text)] == ["A100"]
    assert summarize([]) == {"gpu_count": 0}


def test_gguf_files_are_found_recursively_and_missing_roots_skipped(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "qwen3-8b.Q4_K_M.gguf").write_bytes(b"x" * 10)
    (tmp_path / "a" / "Model.GGUF").write_bytes(b"x" * 3)
    (tmp_path / "a" / "notes.txt").write_text("not a model")
    models = scan_models([tmp_path / "a", tmp_path / "missing"])
    assert models == [
        {"path": str(tmp_path / "a" / "Model.GGUF"), "size_bytes": 3},
        {"path": str(tmp_path / "a" / "deep" / "qwen3-8b.Q4_K_M.gguf"), "size_bytes": 10},
    ]


def test_gguf_scan_stops_at_its_limit(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"m{index}.gguf").write_bytes(b"")
    assert len(scan_models([tmp_path], limit=3)) == 3


def test_each_operation_is_a_service_named_after_the_upstream() -> None:
    upstream = UpstreamConfig(id="gpu-01-vllm", adapter="vllm", base_url="http://127.0.0.1:8000",
                              operations=("chat", "embeddings"), timeout_s=2)
    assets = (Asset("m", loaded=True), Asset("n", loaded=False))
    observed = fill_observed(None, assets)
    services = upstream_services("gpu-01", "10.0.0.5", upstream, assets, observed, "healthy")
    assert [s.service_id for s in services] == ["gpu-01-vllm/chat", "gpu-01-vllm/embeddings"]
    assert {s.base_url for s in services} == {"http://10.0.0.5:8000"}
    assert {s.state.health for s in services} == {"healthy"}
    assert services[0].observed == Observed(loaded_model_count=1)


def test_an_adapter_count_of_loaded_models_wins_over_discovery() -> None:
    assert fill_observed(Observed(loaded_model_count=4), [Asset("m", loaded=True)]) \
        == Observed(loaded_model_count=4)
    assert fill_observed(None, None) == Observed()


def test_the_shipped_node_example_loads() -> None:
    config = load_node(REPO / "conf" / "node.toml", {"GENIEHIVE_NODE_KEY": "k"})
    assert config.node.host_id == "gpu-01"
    assert config.control.url == "http://127.0.0.1:8800"
    assert config.control.node_key == "k"
    assert config.heartbeat_interval_s == 5
    assert [u.adapter for u in config.upstreams] == ["openai"]


def quiet_agent() -> NodeAgent:
    config = NodeConfig(
        node=NodeSection("gpu-01", "10.0.0.5"), control=ControlLink("http://control:8800"),
        heartbeat_interval_s=5, model_roots=(), upstreams=(), logging=LoggingConfig(),
        source=Path("node.toml"),
    )
    return NodeAgent(config, {}, None, None, random.Random(3))  # type: ignore[arg-type]


def test_the_agent_logs_each_link_state_once_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "geniehive.node")
    agent = quiet_agent()
    delays = [agent.settle(UNREACHABLE, "ConnectError") for _ in range(8)]
    assert caplog.text.count("unreachable") == 1
    assert delays[0] <= 1 and 30 <= delays[-1] <= 60
    assert agent.settle(OK, "") == 5
    assert caplog.text.count("reachable") == 2  # unreachable, then reachable again


def test_a_refused_key_is_logged_once_per_change_and_retried_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "geniehive.node")
    agent = quiet_agent()
    delays = [agent.settle(REFUSED, "HTTP 401: invalid API key") for _ in range(6)]
    assert caplog.text.count("refused this node's key") == 1
    assert delays[0] >= 0.5 and delays[-1] >= 16  # the sixth refusal waits 16-32 s
    agent.settle(REFUSED, "HTTP 403: this key lacks the 'node' scope")
    assert caplog.text.count("refused this node's key") == 2
    agent.settle(REJECTED, "HTTP 409: service 'a/chat' belongs to host 'b'")
    agent.settle(REJECTED, "HTTP 409: service 'a/chat' belongs to host 'b'")
    assert caplog.text.count("rejected this node's report") == 1
    agent.settle(OK, "")
    assert agent.failures == 0


async def test_a_plugin_bug_in_a_probe_marks_the_upstream_unhealthy_and_is_logged(
    caplog: pytest.LogCaptureFixture, autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe that raises something unexpected must not end the agent's step (its heartbeat
    # would stop carrying every upstream): the upstream is reported unhealthy instead.
    import httpx
    import trio

    from geniehive.adapters import ProbeResult

    agent = quiet_agent()
    upstream = load_node(REPO / "conf" / "node.toml", {"GENIEHIVE_NODE_KEY": "k"}).upstreams[0]
    answers = {
        "bug": KeyError("models"),
        "refused": httpx.ConnectError("refused"),
        "fine": ProbeResult(True, "HTTP 200"),
        "slow": None,
    }

    async def probe_upstream(_: object) -> ProbeResult:
        answer = answers[mode]
        if answer is None:
            await trio.sleep(3600)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(agent, "probe_upstream", probe_upstream)
    caplog.set_level(logging.INFO, "geniehive")
    with trio.fail_after(upstream.timeout_s * 10):
        for mode, expected in (("bug", "unhealthy"), ("fine", "healthy"),
                               ("refused", "unhealthy"), ("fine", "healthy"),
                               ("slow", "unhealthy")):
            assert await agent.probe(upstream) == expected, mode
    assert "probe of" in caplog.text and "KeyError" in caplog.text  # the bug has a traceback
    assert "unreachable: ConnectError" in caplog.text
    assert f"no answer within {upstream.timeout_s:g} s" in caplog.text


def lazy_agent() -> tuple[NodeAgent, UpstreamConfig]:
    """An agent with one cold on_demand upstream serving `big-model`, and no client at all:
    asking the upstream or the control plane anything would fail loudly."""
    from geniehive.adapters.loader import load_adapters
    from geniehive.config import LaunchConfig

    lazy = UpstreamConfig(
        id="lazy", adapter="openai", base_url="http://127.0.0.1:9", max_in_flight=2,
        launch=LaunchConfig(command=("serve",), on_demand=True),
        assets=(Asset("big-model", loaded=True, context_length=8192),),
    )
    config = NodeConfig(
        node=NodeSection("gpu-01", "10.0.0.5"), control=ControlLink("http://control:8800"),
        heartbeat_interval_s=5, model_roots=(), upstreams=(lazy,), logging=LoggingConfig(),
        source=Path("node.toml"),
    )
    specs = load_adapters()
    agent = NodeAgent(config, specs, None, None, random.Random(3))  # type: ignore[arg-type]
    return agent, lazy


async def test_a_cold_on_demand_upstream_is_reported_with_its_assets_and_not_asked() -> None:
    agent, lazy = lazy_agent()
    (service,) = await agent.discover(lazy)
    assert service.managed == "cold"
    assert service.assets == (Asset("big-model", loaded=False, context_length=8192),)
    assert service.state.health == "unknown"
    assert service.observed.slots_total == 2


@pytest.mark.parametrize(
    ("managed", "health"), [("cold", "unknown"), ("starting", "unknown"), ("stopping", "unhealthy")]
)
def test_a_managed_upstream_not_running_is_unknown_unless_it_is_going_away(
    managed: str, health: str
) -> None:
    assert not_running_health(managed) == health


async def test_a_cold_managed_node_service_is_a_routing_candidate_to_be_started() -> None:
    # A request must be able to pick a cold upstream, so the control plane can start it:
    # the node's report passes every routing gate and is placed as a cold model that fits.
    from geniehive.models import Host, Snapshot
    from geniehive.routing import RoutingContext, resolve

    agent, lazy = lazy_agent()
    (service,) = await agent.discover(lazy)
    host = Host("gpu-01", "10.0.0.5", last_heartbeat=1000.0)
    snapshot = Snapshot(1, {"gpu-01": host}, {service.service_id: service}, {})
    decision = resolve(snapshot, "big-model", "chat",
                       RoutingContext(now=1001.0, stale_after_s=15.0))
    assert decision.error is None and decision.excluded == ()
    assert [c.service_id for c in decision.candidates] == ["lazy/chat"]
    assert decision.chosen is not None
    assert decision.chosen.placement.klass == "cold_fits"
