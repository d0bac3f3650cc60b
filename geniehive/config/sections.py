"""The tables several files share: TLS, logging, request policies and `[[upstreams]]`.

Each table's keys are declared here next to the parser that reads them (see
geniehive/config/schema.py); docs/configuration.md is rendered from these declarations.
"""

from __future__ import annotations

from collections.abc import Mapping

from geniehive.config.checks import (
    ADAPTER,
    BOOL,
    FILE,
    FOLDER,
    IDENTIFIER,
    JSON_TABLE,
    KEEP_ALIVE,
    NON_NEGATIVE,
    POSITIVE,
    STRING,
    STRING_TABLE,
    TEXT,
    URL,
    choice,
    integer,
    list_of,
)
from geniehive.config.schema import Key, Section, Table, secret
from geniehive.config.values import (
    LOG_FORMATS,
    LOG_LEVELS,
    LaunchConfig,
    LoggingConfig,
    TLSConfig,
    UpstreamConfig,
)
from geniehive.models import DIALECTS, EMPTY, OPERATIONS, SYSTEM_PROMPT_POSITIONS, Asset, Policy

ENV_KEY_MEANING = "the environment variable that holds "

_TLS_KEYS = (
    Key("certfile", FILE, None, "certificate chain (PEM) this side presents", required=True),
    Key("keyfile", FILE, None, "private key (PEM) of the certificate", required=True),
    Key("ca_certs", FILE, None, "CA bundle (PEM) the other side's certificate must chain to"),
)
SERVER_TLS = Section("tls", "TLS for this listener; absent: plain HTTP.", (
    *_TLS_KEYS,
    Key("require_client_cert", BOOL, False,
        "refuse clients without a certificate signed by `ca_certs` (mutual TLS)"),
))
CLIENT_TLS = Section(
    "tls", "TLS towards the control plane; absent: the system's CA store for `https` URLs.",
    _TLS_KEYS,
)

LOGGING = Section("logging", "The log written to stderr.", (
    Key("level", choice(LOG_LEVELS), "info", "the least severe level written"),
    Key("format", choice(LOG_FORMATS), "text", "`text` lines, or one JSON object per line"),
))

POLICY_KEYS = (
    Key("system_prompt", STRING, None, "system prompt added to every chat request"),
    Key("system_prompt_position", choice(SYSTEM_PROMPT_POSITIONS), "prepend",
        "where `system_prompt` goes: before, after, or instead of the client's system messages"),
    Key("body_defaults", JSON_TABLE, EMPTY,
        "request body fields filled in where the client sent none (deep-merged)"),
    Key("body_overrides", JSON_TABLE, EMPTY,
        "request body fields forced whatever the client sent (deep-merged)"),
    Key("strip_reasoning", BOOL, None,
        "drop `reasoning_content`/`reasoning` from answers; unset at every level: true"),
)

LAUNCH = Section(
    "launch", "A process the gateway (or node) starts, keeps running and stops for this "
    "upstream; absent: the upstream is run by someone else.", (
        Key("command", list_of(TEXT, non_empty=True), (),
            "program and arguments (a bare `python` is the interpreter GenieHive runs on)",
            required=True),
        Key("env", STRING_TABLE, EMPTY, "environment variables added to the process's own"),
        Key("ready_timeout_s", POSITIVE, 60.0,
            "seconds the process has to answer its probe after each start"),
        Key("stop_grace_s", NON_NEGATIVE, 10.0,
            "seconds between SIGTERM and SIGKILL when stopping it"),
        Key("cwd", FOLDER, None, "working folder of the process; absent: that of GenieHive"),
        Key("on_demand", BOOL, False,
            "do not start the process at start-up: its assets are listed cold until a request "
            "for one of them starts it (a node's: by an order from the control plane, or "
            "`POST /v1/admin/nodes/{host_id}/orders`); the request waits until it is ready. "
            "It goes back to cold after `idle_ttl_s` idle, or when it dies"),
        Key("idle_ttl_s", POSITIVE, 600.0,
            "seconds with no request in flight, waiting or loading after which an `on_demand` "
            "process is stopped (on a node, which hears of the control plane's requests in "
            "each heartbeat answer: keep it well above `heartbeat.interval_s`); only with "
            "`on_demand = true`"),
    ))

ASSET = Section(
    "assets", "Configured models of the upstream, merged with what discovery finds.", (
        Key("asset_id", TEXT, "", "the model id as the upstream names it", required=True),
        Key("aliases", list_of(TEXT, unique=True), (), "more names clients may use for it"),
        Key("family", TEXT, None, "model family (`qwen3`), read by `preferred_families` and "
            "`allowed_model_families`"),
        Key("context_length", integer(1), None, "context window in tokens"),
        Key("loaded", BOOL, None, "whether it is in memory; absent: as discovery reports"),
    ),
    tables=(Section("policy", "The request policy for this model (below a role's).",
                    POLICY_KEYS),),
    array=True,
)

UPSTREAMS = Section(
    "upstreams", "A model server this process serves itself (discovered and probed).", (
        Key("id", IDENTIFIER, "", "unique id; services are named `<id>/<operation>`",
            required=True),
        Key("adapter", ADAPTER, "", "adapter that speaks to it: `openai`, `ollama`, `vllm`, "
            "`llamacpp`, `whisper`, `whispercpp` or a plugin's", required=True),
        Key("base_url", URL, "", "server root, without `/v1` (a trailing slash is dropped)",
            required=True),
        Key("operations", list_of(choice(OPERATIONS), non_empty=True, unique=True), ("chat",),
            "operations it serves"),
        Key("api_key_env", TEXT, None, ENV_KEY_MEANING + "a bearer key sent upstream"),
        Key("timeout_s", POSITIVE, 5.0, "seconds allowed for each discovery and probe call"),
        Key("max_in_flight", integer(1), None,
            "its slots: requests it serves at once, more wait in the admission queue; absent: "
            "what discovery reads (llama.cpp's `total_slots`), else no limit"),
        Key("max_loaded_models", integer(1), None,
            "models it can hold in memory at once (Ollama's `OLLAMA_MAX_LOADED_MODELS`), "
            "reported on its services for placement; absent: unknown"),
        Key("keep_alive", KEEP_ALIVE, None,
            "how long a model loaded by GenieHive stays in memory once idle; absent: the "
            "adapter's default (Ollama: `\"30m\"`)"),
        Key("dialect", choice(DIALECTS), "native",
            "how the `ollama` adapter sends chat: `native` (its `/api/chat`, which honours "
            "`num_ctx`, `keep_alive` and `think`) or `openai` (its `/v1/chat/completions`); "
            "other adapters ignore it"),
    ),
    tables=(ASSET, LAUNCH),
    array=True,
)


def parse_tls(t: Table) -> TLSConfig | None:
    if not t.present:
        return None
    certfile = t.get("certfile")
    keyfile = t.get("keyfile")
    ca_certs = t.get("ca_certs")
    # Only a listener checks client certificates; the client side does not declare the key.
    require = t.get("require_client_cert") if t.declares("require_client_cert") else False
    if require and ca_certs is None and not t.has("ca_certs"):
        t.report("ca_certs", "required when require_client_cert is true")
    t.done()
    return TLSConfig(certfile, keyfile, ca_certs, require)


def parse_logging(t: Table) -> LoggingConfig:
    config = LoggingConfig(level=t.get("level"), format=t.get("format"))
    t.done()
    return config


def parse_policy(t: Table) -> Policy:
    """A request policy from the keys of `t` (a role, or an asset's `policy` table)."""
    return Policy(
        system_prompt=t.get("system_prompt"),
        system_prompt_position=t.get("system_prompt_position"),
        body_defaults=t.get("body_defaults"),
        body_overrides=t.get("body_overrides"),
        strip_reasoning=t.get("strip_reasoning"),
    )


def _optional_policy(t: Table) -> Policy | None:
    policy = parse_policy(t) if t.present else None
    t.done()
    return policy


def _asset(t: Table) -> Asset:
    asset = Asset(
        asset_id=t.get("asset_id"),
        aliases=t.get("aliases"),
        family=t.get("family"),
        context_length=t.get("context_length"),
        loaded=t.get("loaded"),
        policy=_optional_policy(t.table("policy")),
    )
    t.done()
    return asset


def _launch(t: Table) -> LaunchConfig | None:
    if not t.present:
        return None
    config = LaunchConfig(
        command=t.get("command"),
        env=t.get("env"),
        ready_timeout_s=t.get("ready_timeout_s"),
        stop_grace_s=t.get("stop_grace_s"),
        cwd=t.get("cwd"),
        on_demand=t.get("on_demand"),
        idle_ttl_s=t.get("idle_ttl_s"),
    )
    if t.has("idle_ttl_s") and not config.on_demand:
        t.report("idle_ttl_s", "only meaningful with on_demand = true")
    t.done()
    return config


def _upstream(t: Table, environ: Mapping[str, str]) -> UpstreamConfig:
    upstream_id = t.get("id")
    adapter = t.get("adapter")
    base_url = t.get("base_url")
    operations = t.get("operations")
    api_key_env, api_key = secret(t, "api_key_env", environ)
    assets = tuple(_asset(a) for a in t.tables("assets"))
    seen: set[str] = set()
    for index, asset in enumerate(assets):
        if asset.asset_id and asset.asset_id in seen:
            t.report("assets", f"duplicate asset_id {asset.asset_id!r}", f"[{index}].asset_id")
        seen.add(asset.asset_id)
    config = UpstreamConfig(
        id=upstream_id,
        adapter=adapter,
        base_url=base_url,
        operations=operations,
        api_key=api_key,
        api_key_env=api_key_env,
        timeout_s=t.get("timeout_s"),
        launch=_launch(t.table("launch")),
        assets=assets,
        max_in_flight=t.get("max_in_flight"),
        max_loaded_models=t.get("max_loaded_models"),
        keep_alive=t.get("keep_alive"),
        dialect=t.get("dialect"),
    )
    t.done()
    return config


def parse_upstreams(top: Table, environ: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    upstreams = []
    seen: set[str] = set()
    for index, t in enumerate(top.tables("upstreams")):
        upstream = _upstream(t, environ)
        if upstream.id and upstream.id in seen:
            top.report("upstreams", f"duplicate upstream id {upstream.id!r}", f"[{index}].id")
        seen.add(upstream.id)
        upstreams.append(upstream)
    return tuple(upstreams)
