"""Pure rendering of the client commands' answers: plain text tables, the cluster status and
a route explanation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def cell(value: Any) -> str:
    """A value as a table cell: '-' for nothing, floats without noise, lists joined."""
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    return str(value)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *text_rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


Column = tuple[str, Callable[[Mapping[str, Any]], Any]]

HOST_COLUMNS: tuple[Column, ...] = (
    ("HOST", lambda h: h["host_id"]),
    ("ADDRESS", lambda h: h.get("address")),
    ("STATE", lambda h: h["state"]),
    ("HEARTBEAT AGE S", lambda h: h.get("last_heartbeat_age_s")),
    ("SERVICES", lambda h: h.get("service_count")),
    ("MEMORY", lambda h: memory_cell(h.get("memory"))),
    ("LOCAL", lambda h: "yes" if h.get("is_local") else ""),
)
SERVICE_COLUMNS: tuple[Column, ...] = (
    ("SERVICE", lambda s: s["service_id"]),
    ("HOST", lambda s: s["host_id"]),
    ("OP", lambda s: s["operation"]),
    ("HEALTH", lambda s: s["health"]),
    ("AVAILABILITY", lambda s: s["availability"]),
    ("LOADED", lambda s: [a["asset_id"] for a in s.get("assets", []) if a.get("loaded")]),
    ("SLOTS", lambda s: _slots(s)),
    ("QUEUED", lambda s: s.get("queued")),
    ("P50 MS", lambda s: s["measured"]["p50_latency_ms"]),
    ("GATE", lambda s: s.get("gate")),
)
ROLE_COLUMNS: tuple[Column, ...] = (
    ("ROLE", lambda r: r["role_id"]),
    ("OP", lambda r: r["operation"]),
    ("STRATEGY", lambda r: r["routing"].get("strategy")),
    ("TARGETS", lambda r: r["targets"]),
    ("FALLBACK USED", lambda r: r.get("fallback_used")),
)
CANDIDATE_COLUMNS: tuple[Column, ...] = (
    ("SERVICE", lambda c: c["service_id"]),
    ("HOST", lambda c: c["host_id"]),
    ("MODEL", lambda c: c["upstream_model"]),
    ("SCORE", lambda c: c["score"]),
    ("LOADED", lambda c: c["loaded"]),
    ("TIER", lambda c: "pool" if c["pool"] else "failover"),
    ("SLOTS", lambda c: "full" if c.get("full") else "free"),
    ("PLACEMENT", lambda c: _placement(c.get("placement"))),
    ("BREAKDOWN", lambda c: _breakdown(c["breakdown"])),
)
EXCLUDED_COLUMNS: tuple[Column, ...] = (
    ("SERVICE", lambda e: e["service_id"]),
    ("GATE", lambda e: e["gate"]),
    ("DETAIL", lambda e: e["detail"]),
)
KEY_COLUMNS: tuple[Column, ...] = (
    ("KEY ID", lambda k: k["key_id"]),
    ("NAME", lambda k: k["name"]),
    ("SCOPES", lambda k: k["scopes"]),
    ("MODELS", lambda k: k["models"] or "*"),
    ("STATE", lambda k: "disabled" if k["disabled"] else "enabled"),
    ("HOST", lambda k: k.get("host")),
    ("CREATED", lambda k: _when(k.get("created_at"))),
    ("LIMITS", lambda k: key_limits(k)),
)


def render_rows(columns: Sequence[Column], items: Iterable[Mapping[str, Any]]) -> str:
    """`items` as a table, one column per (header, getter)."""
    rows = ([get(item) for _, get in columns] for item in items)
    return render_table([header for header, _ in columns], rows)


def render_status(
    hosts: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    roles: Sequence[Mapping[str, Any]],
    capacity: Mapping[str, Any] | None = None,
) -> str:
    parts = [
        "HOSTS\n" + render_rows(HOST_COLUMNS, hosts),
        "SERVICES\n" + render_rows(SERVICE_COLUMNS, services),
        "ROLES\n" + render_rows(ROLE_COLUMNS, roles),
    ]
    if capacity is not None:
        parts.append("QUEUE\n" + render_queue(capacity))
    return "\n\n".join(parts)


def render_queue(capacity: Mapping[str, Any]) -> str:
    """The admission queue in two lines: who waits, and what was refused."""
    by = capacity.get("waiting_by_priority", {})
    classes = ", ".join(f"{name} {count}" for name, count in by.items())
    refused = dict(capacity.get("refused", {}))
    if capacity.get("rate_limited"):
        refused["rate_limited"] = capacity["rate_limited"]
    said = ", ".join(f"{code} {count}" for code, count in refused.items()) or "none"
    return (
        f"waiting {capacity.get('waiting', 0)} of at most {capacity.get('max_queue')} "
        f"({classes}); longest wait {capacity.get('queue_timeout_s')} s\n"
        f"refused: {said}"
    )


GIB = 1024**3


def memory_cell(memory: Mapping[str, Any] | None) -> str | None:
    """A host's memory in one cell: `GPU 3.1/24.0 GiB, 2 loaded (6.6 GiB)`.

    GPU used/total (`?` for an unknown part) when the host reports GPUs; the loaded models'
    count always, with their VRAM when known. None (shown `-`) without any memory view.
    """
    if not memory:
        return None
    parts = []
    total, used = memory.get("gpu_total_bytes"), memory.get("gpu_used_bytes")
    if memory.get("gpus"):
        parts.append(f"GPU {_gib(used)}/{_gib(total)} GiB")
    loaded = f"{memory.get('loaded_count', 0)} loaded"
    if memory.get("loaded_vram_bytes"):
        loaded += f" ({_gib(memory['loaded_vram_bytes'])} GiB)"
    parts.append(loaded)
    return ", ".join(parts)


def _gib(value: Any) -> str:
    return "?" if not isinstance(value, int) else f"{value / GIB:.1f}"


def _slots(service: Mapping[str, Any]) -> str:
    """`in flight/slots`, or `in flight/-` for a service with unknown slots."""
    total = service.get("slots_total")
    return f"{service.get('in_flight', 0)}/{total if total is not None else '-'}"


def _breakdown(parts: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:+.2f}" if k != "runtime" else f"{k}={v:.2f}" for k, v in parts.items())


def _verdict(expl: Mapping[str, Any]) -> list[str]:
    head = f"{expl['model']} ({expl['operation']}): match {expl['match']}"
    if expl.get("role"):
        head += f", role {expl['role']}"
    if expl.get("fallback_role"):
        head += f", fallback used: {expl['fallback_role']}"
    if expl.get("strategy"):
        head += f", strategy {expl['strategy']}"
    candidates = expl.get("candidates") or []
    if candidates:
        chosen = f"chosen: {candidates[0]['service_id']} -> {candidates[0]['upstream_model']}"
    else:
        chosen = f"no choice: {expl.get('error')}: {expl.get('message')}"
    return [head, chosen]


def render_explanation(expl: Mapping[str, Any]) -> str:
    """`routes/resolve` as text: the verdict, candidates with scores, excluded with gates."""
    lines = _verdict(expl)
    if expl.get("candidates"):
        lines += ["", "CANDIDATES", render_rows(CANDIDATE_COLUMNS, expl["candidates"])]
    if expl.get("excluded"):
        lines += ["", "EXCLUDED", render_rows(EXCLUDED_COLUMNS, expl["excluded"])]
    for walked in expl.get("fallbacks_without_candidates") or []:
        gates = ", ".join(f"{s} ({g})" for s, g in walked["excluded"]) or "no services"
        lines.append(f"fallback {walked['role']} had no candidate: {gates}")
    return "\n".join(lines)


def render_keys(keys: Sequence[Mapping[str, Any]]) -> str:
    return render_rows(KEY_COLUMNS, keys)


def key_limits(key: Mapping[str, Any]) -> str | None:
    """A key's limits in one cell (`2 in flight, 60/min, high, weight 2`); None: no limits."""
    parts = []
    if key.get("max_in_flight") is not None:
        parts.append(f"{key['max_in_flight']} in flight")
    if key.get("requests_per_minute") is not None:
        parts.append(f"{key['requests_per_minute']}/min")
    if key.get("priority"):
        parts.append(key["priority"])
    if key.get("weight", 1) != 1:
        parts.append(f"weight {key['weight']:g}")
    return ", ".join(parts) or None


def _when(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _placement(placement: Any) -> str | None:
    """`cold_evicts (unload a, b; waits)`-style cell for a candidate's placement."""
    if not isinstance(placement, Mapping):
        return None
    text = str(placement.get("class"))
    notes = []
    if placement.get("evict"):
        notes.append("unload " + ", ".join(map(str, placement["evict"])))
    if placement.get("waits"):
        notes.append("waits for models in use")
    return f"{text} ({'; '.join(notes)})" if notes else text
