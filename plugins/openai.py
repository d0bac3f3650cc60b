"""The generic OpenAI-compatible adapter: any server that lists its models at `/v1/models`.

Rule: like every plugin, this file imports only the public API `geniehive.adapters`.
"""

from __future__ import annotations

from geniehive.adapters import OPERATIONS, AdapterSpec, OpenAICompatibleAdapter

ADAPTER = AdapterSpec(
    kind="openai",
    api_version=1,
    factory=OpenAICompatibleAdapter,
    operations=frozenset(OPERATIONS),
    description="Any OpenAI-compatible server: models from /v1/models, requests passed through",
)
