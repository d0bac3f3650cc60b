"""What an upstream reports about its models, combined with what the configuration says.

Shared by the control plane's discovery (`discovery.py`) and the node agent
(`node/agent.py`), which look at their upstreams the same way.

Rule: pure. The configured aliases, family, context length, capabilities and policy of an asset
win over what discovery reports; whether it is loaded comes from discovery. An upstream that did
not answer keeps its last known assets, shown not loaded, so that their names stay known. A
configured `max_in_flight` is the service's slot count whatever the upstream reports, and a
configured `max_loaded_models` its loaded-model limit (no upstream reports one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from geniehive.models import Asset, Observed

__all__ = [
    "configured_models", "configured_slots", "fill_observed", "forget_loaded", "merge_assets",
]


def merge_assets(configured: Sequence[Asset], discovered: Sequence[Asset]) -> tuple[Asset, ...]:
    """Configured aliases, family, context, capabilities and policy are kept; `loaded`,
    `max_context` and unconfigured capabilities come from discovery.

    Configured assets that discovery did not report are kept, not loaded.
    """
    found = {a.asset_id: a for a in discovered}
    merged: list[Asset] = []
    for asset in configured:
        seen = found.pop(asset.asset_id, None)
        if seen is None:
            merged.append(replace(asset, loaded=False if asset.loaded is None else asset.loaded))
            continue
        merged.append(
            replace(
                seen,
                aliases=asset.aliases or seen.aliases,
                family=asset.family or seen.family,
                context_length=asset.context_length or seen.context_length,
                policy=asset.policy or seen.policy,
                capabilities=(seen.capabilities if asset.capabilities is None
                              else asset.capabilities),
            )
        )
    merged.extend(found.values())
    return tuple(merged)


def forget_loaded(assets: Sequence[Asset]) -> tuple[Asset, ...]:
    """Assets last seen, shown not loaded (their upstream did not answer)."""
    return tuple(replace(asset, loaded=False) for asset in assets)


def fill_observed(observed: Observed | None, assets: Sequence[Asset] | None) -> Observed:
    """The adapter's load report, with the loaded-model count from discovery if it had none."""
    observed = observed or Observed()
    if observed.loaded_model_count is None and assets is not None:
        loaded = sum(1 for asset in assets if asset.loaded)
        observed = replace(observed, loaded_model_count=loaded)
    return observed


def configured_slots(observed: Observed, max_in_flight: int | None) -> Observed:
    """The load report with the configured slot count, if any, in place of the reported one."""
    if max_in_flight is None:
        return observed
    return replace(observed, slots_total=max_in_flight)


def configured_models(observed: Observed, max_loaded_models: int | None) -> Observed:
    """The load report with the configured loaded-model limit, if any."""
    if max_loaded_models is None:
        return observed
    return replace(observed, max_loaded_models=max_loaded_models)
