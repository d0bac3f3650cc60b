"""The vLLM adapter: OpenAI-compatible, with its context limits and its Prometheus load.

`/v1/models` carries `max_model_len` (the context length); `/metrics` carries the requests
running and waiting and the KV-cache usage (`vllm:gpu_cache_usage_perc` in the V0 engine,
`vllm:kv_cache_usage_perc` in V1; both are fractions 0..1 despite the name). `/health`
answers 200 once the engine serves.

Rule: like every plugin, this file imports only the public API `geniehive.adapters` (and the
httpx exceptions its injected client raises).
"""

from __future__ import annotations

from geniehive.adapters import (
    AdapterSpec,
    Observed,
    OpenAICompatibleAdapter,
    ProbeResult,
)
from geniehive.adapters.prometheus import metric_max, metric_sum, parse_prometheus

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def parse_vllm_metrics(text: str) -> Observed:
    """Load from a vLLM metrics page: running, waiting and KV-cache use (None when absent).

    With several engines (data parallel) or models the counts add up and the KV-cache
    figure is the fullest engine's, because that one decides whether a request waits.
    """
    samples = parse_prometheus(text)
    running = metric_sum(samples, RUNNING)
    waiting = metric_sum(samples, WAITING)
    return Observed(
        in_flight=None if running is None else round(running),
        queue_depth=None if waiting is None else round(waiting),
        kv_cache_usage=metric_max(samples, *KV_CACHE),
    )


class VllmAdapter(OpenAICompatibleAdapter):
    """vLLM: discovery from `/v1/models` (inherited), probe on `/health`, load from `/metrics`."""

    kind = "vllm"

    async def probe(self) -> ProbeResult:
        return await self.probe_get("/health")  # only a 200 means the engine serves

    async def observe(self) -> Observed | None:
        # Load figures are advisory: a failed reading must not fail the discovery pass.
        text = await self.get_text("/metrics")
        return None if text is None else parse_vllm_metrics(text)


ADAPTER = AdapterSpec(
    kind="vllm",
    api_version=1,
    factory=VllmAdapter,
    operations=frozenset({"chat", "completion", "embeddings"}),
    default_port=8000,
    description="vLLM: models and max_model_len from /v1/models, load from /metrics",
)
