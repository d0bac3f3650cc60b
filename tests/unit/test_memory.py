"""A host's memory view: GPUs from the node's latest readings (else its registration), models
once per upstream with installed size and loaded VRAM; bad shapes from a node are skipped."""

from __future__ import annotations

from types import MappingProxyType

from geniehive.memory import gpu_memory, host_memory, loaded_model_memory, model_memory
from geniehive.models import Asset, Host, Service

GIB = 1024**3
METRICS = {"gpu_count": 2, "gpus": [
    {"index": 0, "name": "RTX 4090", "memory_total_bytes": 24 * GIB,
     "memory_used_bytes": 3 * GIB, "utilization_pct": 10.0},
    {"index": 1, "name": "RTX 4090", "memory_total_bytes": 24 * GIB,
     "memory_used_bytes": None, "utilization_pct": None},
]}
RESOURCES = {"gpu_count": 1, "gpus": [{"index": 0, "name": "A100", "memory_total_bytes": 80}]}
QWEN = Asset("qwen3:8b", loaded=True, size_bytes=5_000, vram_bytes=6_000,
             expires_at="2025-01-01T00:30:00Z")
LLAMA = Asset("llama3.2:3b", loaded=False, size_bytes=2_000)


def host(**fields: object) -> Host:
    return Host("gpu-01", "10.0.0.5", **{k: MappingProxyType(v) for k, v in fields.items()})


def ollama(operation: str, base_url: str = "http://10.0.0.5:11434") -> Service:
    return Service(f"ol/{operation}", "gpu-01", operation, "ollama", base_url,
                   assets=(QWEN, LLAMA))


def test_gpus_come_from_the_latest_readings_else_from_the_registration() -> None:
    assert gpu_memory(host(metrics=METRICS, resources=RESOURCES)) == [
        {"index": 0, "name": "RTX 4090", "total_bytes": 24 * GIB, "used_bytes": 3 * GIB},
        {"index": 1, "name": "RTX 4090", "total_bytes": 24 * GIB, "used_bytes": None},
    ]
    assert gpu_memory(host(resources=RESOURCES)) == [
        {"index": 0, "name": "A100", "total_bytes": 80, "used_bytes": None}]
    assert gpu_memory(host()) == []


def test_gpu_entries_of_another_shape_are_skipped_never_raised_on() -> None:
    odd = {"gpus": [1, "x", {"index": "0", "name": 5, "memory_total_bytes": -1,
                             "memory_used_bytes": True}]}
    assert gpu_memory(host(metrics=odd)) == [
        {"index": 0, "name": None, "total_bytes": None, "used_bytes": None}]
    assert gpu_memory(host(metrics={"gpus": {"0": {}}})) == []


def test_models_are_listed_once_per_upstream_with_the_services_offering_them() -> None:
    services = [ollama("chat"), ollama("embeddings"),
                ollama("completion", base_url="http://10.0.0.5:11435")]
    models = model_memory(services)
    assert [(m["model"], m["services"]) for m in models] == [
        ("qwen3:8b", ["ol/chat", "ol/embeddings"]), ("llama3.2:3b", ["ol/chat", "ol/embeddings"]),
        ("qwen3:8b", ["ol/completion"]), ("llama3.2:3b", ["ol/completion"]),
    ]
    assert models[0] == {"model": "qwen3:8b", "services": ["ol/chat", "ol/embeddings"],
                         "loaded": True, "size_bytes": 5_000, "vram_bytes": 6_000,
                         "expires_at": "2025-01-01T00:30:00Z"}
    assert models[1]["loaded"] is False and models[1]["vram_bytes"] is None
    assert models[1]["size_bytes"] == 2_000


def test_host_memory_totals_what_is_known() -> None:
    memory = host_memory(host(metrics=METRICS), [ollama("chat"), ollama("embeddings")])
    assert (memory["gpu_total_bytes"], memory["gpu_used_bytes"]) == (48 * GIB, 3 * GIB)
    assert (memory["loaded_count"], memory["loaded_vram_bytes"]) == (1, 6_000)
    empty = host_memory(host(), [])
    assert empty == {"gpus": [], "gpu_total_bytes": None, "gpu_used_bytes": None,
                     "models": [], "loaded_count": 0, "loaded_vram_bytes": None}


def test_loaded_model_memory_lists_each_service_s_loaded_models_with_known_vram() -> None:
    unknown = Service("x/chat", "gpu-01", "chat", "openai", "http://h:1",
                      assets=(Asset("m", loaded=True),))
    assert loaded_model_memory([ollama("chat"), ollama("embeddings"), unknown]) == [
        ("ol/chat", "qwen3:8b", 6_000), ("ol/embeddings", "qwen3:8b", 6_000)]
