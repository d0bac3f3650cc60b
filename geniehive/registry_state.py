"""The registry's state and its snapshots: what a write edits, and what readers read.

Rule: a committed `State` is never changed again (its snapshot shares its dicts); a write edits
a draft (`edit()`) whose tables are copied on first use and note the keys they change
(registry_rows.Tracked). A snapshot is built from a committed state, taking over from the
previous one whatever depends only on what did not change (the sorted samples; the name
indexes, while no service changed its host, operation, models or aliases).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from geniehive.models import BenchmarkSample, Host, Role, Service, Snapshot
from geniehive.registry_rows import StoredKey, Tracked


class State:
    """What the snapshot is built from. Once committed it is never changed again (the
    snapshot shares its dicts): a write edits a draft from `edit()`, whose dicts are copied
    from the committed ones on first use and note what changes (registry_rows.Tracked), so a
    write costs what it touched: a heartbeat copies the hosts, not every service."""

    __slots__ = ("_base", "_own")

    def __init__(self, hosts: dict[str, Host], services: dict[str, Service],
                 roles: dict[str, Role], samples: dict[str, BenchmarkSample],
                 keys: dict[str, StoredKey]) -> None:
        self._base: State | None = None
        self._own: dict[str, dict[str, Any]] = {
            "hosts": hosts, "services": services, "roles": roles, "samples": samples,
            "keys": keys}

    def edit(self) -> State:
        draft = State.__new__(State)
        draft._base, draft._own = self, {}
        return draft

    def _field(self, name: str) -> dict[str, Any]:
        found = self._own.get(name)
        if found is None:
            assert self._base is not None
            found = self._own[name] = Tracked(self._base._field(name))
        return found

    def changed_fields(self) -> Collection[str] | None:
        """The fields a draft has touched (None: not a draft, compare everything)."""
        return None if self._base is None else self._own.keys()

    def committed(self) -> State:
        """This state as a committed one: every field its own (no copy is made)."""
        if self._base is None:
            return self
        base = self._base
        return State(*(self._own[name] if name in self._own else base._own[name]
                        for name in FIELDS))

    @property
    def hosts(self) -> dict[str, Host]:
        return self._field("hosts")

    @property
    def services(self) -> dict[str, Service]:
        return self._field("services")

    @property
    def roles(self) -> dict[str, Role]:
        return self._field("roles")

    @property
    def samples(self) -> dict[str, BenchmarkSample]:
        return self._field("samples")

    @property
    def keys(self) -> dict[str, StoredKey]:
        return self._field("keys")


FIELDS = ("hosts", "services", "roles", "samples", "keys")


def _snapshot(version: int, state: State, previous: Snapshot | None = None,
              changed: Mapping[str, Collection[str]] | Collection[str] = ()) -> Snapshot:
    """The snapshot of `state`. With the `previous` one and the state fields that `changed`
    since, what depends only on unchanged fields is taken over instead of rebuilt (a
    heartbeat changes a host: the name indexes over every service stay)."""
    if previous is not None and "samples" not in changed:
        benchmarks = previous.benchmarks
    else:
        benchmarks = tuple(sorted(state.samples.values(),
                                  key=lambda s: (s.observed_at, s.benchmark_id)))
    same_names = (previous is not None and "roles" not in changed
                  and _same_names(previous.services, state.services,
                                  changed.get("services", ()) if isinstance(changed, Mapping)
                                  else None if "services" in changed else ()))
    return Snapshot(
        version=version,
        hosts=MappingProxyType(state.hosts),
        services=MappingProxyType(state.services),
        roles=MappingProxyType(state.roles),
        benchmarks=benchmarks,
        indexes_from=previous,
        names_unchanged=same_names,
    )


def _same_services(state: State, held: Sequence[str], services: Sequence[Service]) -> bool:
    """Whether a node's `services` are the ones `held` for it, as stored (its drains kept):
    then nothing of them needs writing, or copying."""
    if len(held) != len(services):
        return False
    for service in services:
        stored = state.services.get(service.service_id)
        if stored is None or stored.host_id != service.host_id:
            return False
        if service.state.availability != stored.state.availability:
            service = replace(service, state=replace(service.state,
                                                     availability=stored.state.availability))
        if service != stored:
            return False
    return True


def _same_names(before: Mapping[str, Service], after: Mapping[str, Service],
                keys: Collection[str] | None) -> bool:
    """Whether the services `keys` (None: unknown which) kept what the snapshot indexes them
    by (host, operation, model ids and aliases): a load figure that moved needs no new index."""
    if keys is None:
        return False
    for key in keys:
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            return False
        if (old.host_id, old.operation) != (new.host_id, new.operation) or [
                (a.asset_id, a.aliases) for a in old.assets] != [
                (a.asset_id, a.aliases) for a in new.assets]:
            return False
    return True


def _drop_old_samples(state: State, retention_s: float, now: float) -> bool:
    """Remove samples observed longer than `retention_s` ago; whether any went."""
    cutoff = (datetime.fromtimestamp(now, UTC) - timedelta(seconds=retention_s)).isoformat()
    old = [k for k, sample in state.samples.items() if _observed_iso(sample) < cutoff]
    for key in old:
        del state.samples[key]
    return bool(old)


def _observed_iso(sample: BenchmarkSample) -> str:
    try:
        return datetime.fromisoformat(sample.observed_at.replace("Z", "+00:00")) \
            .astimezone(UTC).isoformat()
    except ValueError:
        return sample.observed_at  # compared as text: an unparsable stamp is kept or not by it
