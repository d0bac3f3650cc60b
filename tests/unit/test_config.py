"""Configuration loading: defaults, values, every error path with its exact dotted message."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from geniehive.auth import NO_LIMITS, KeyLimits
from geniehive.config import (
    AuthKeyConfig,
    BreakerConfig,
    CapacityConfig,
    ConfigError,
    ControlLink,
    DiscoveryConfig,
    LaunchConfig,
    LoggingConfig,
    NodesConfig,
    NodeSection,
    PluginsConfig,
    ProberConfig,
    RegistryConfig,
    RoutingConfig,
    ServerConfig,
    TLSConfig,
    UpstreamConfig,
    check_files,
    file_kind,
    is_loopback_bind,
    load_control,
    load_node,
    load_role_catalog,
    parse_bind,
)
from geniehive.models import Asset, Policy, Role, RoutingPolicy

NODE_MINIMAL = """
[node]
host_id = "gpu-01"
address = "10.0.0.5"
[control]
url = "http://control:8801"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def control_problems(folder: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = write(folder, "geniehive.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_control(path, environ or {})
    return caught.value.problems


def node_problems(folder: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = write(folder, "node.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_node(path, environ or {})
    return caught.value.problems


# --- defaults and values -----------------------------------------------------------------------


def test_an_empty_control_file_takes_every_default(tmp_path: Path) -> None:
    path = write(tmp_path, "geniehive.toml", "")
    config = load_control(path, {})
    assert config.server == ServerConfig(
        bind=("127.0.0.1:8800",), shutdown_grace_s=30.0, max_body_bytes=26214400, tls=None
    )
    assert config.nodes == NodesConfig(bind=(), stale_after_s=15.0, forget_after_s=86400.0)
    assert config.registry == RegistryConfig(tmp_path / "state/geniehive.sqlite3")
    assert config.auth_keys == ()
    assert config.routing == RoutingConfig("scored", 3, 5.0, 600.0, 60.0, 120.0)
    assert config.capacity == CapacityConfig(max_queue=1000, queue_timeout_s=60.0, aging_s=30.0)
    assert config.breaker == BreakerConfig(3, 30.0)
    assert config.prober == ProberConfig(10.0, 5.0, 2, 1)
    assert config.discovery == DiscoveryConfig(30.0)
    assert config.plugins == PluginsConfig((), True)
    assert dict(config.roles) == {}
    assert config.role_catalogs == ()
    assert dict(config.local_labels) == {}
    assert config.upstreams == ()
    assert config.logging == LoggingConfig("info", "text")
    assert config.source == path


def test_integers_are_accepted_where_numbers_are_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "geniehive.toml", "[routing]\nconnect_timeout_s = 7\n")
    value = load_control(path, {}).routing.connect_timeout_s
    assert value == 7.0
    assert type(value) is float


def test_a_full_control_file_loads_every_key(tmp_path: Path) -> None:
    write(tmp_path, "certs/server.pem", "")
    write(tmp_path, "certs/server.key", "")
    write(tmp_path, "certs/ca.pem", "")
    (tmp_path / "extra_plugins").mkdir()
    (tmp_path / "work").mkdir()
    write(tmp_path, "roles/general.toml", '[roles.general]\noperation = "chat"\n')
    path = write(tmp_path, "geniehive.toml", """
[server]
bind = ["127.0.0.1:9000", "[::1]:9000"]
shutdown_grace_s = 5
max_body_bytes = 1024
[server.tls]
certfile = "certs/server.pem"
keyfile = "certs/server.key"
[nodes]
bind = ["0.0.0.0:8801"]
stale_after_s = 20
forget_after_s = 3600
[nodes.tls]
certfile = "certs/server.pem"
keyfile = "certs/server.key"
ca_certs = "certs/ca.pem"
require_client_cert = true
[registry]
path = "/var/lib/geniehive/db.sqlite3"
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["inference", "read"]
models = ["qwen*"]
[routing]
strategy = "least_loaded"
max_attempts = 2
[breaker]
failures = 5
open_s = 10
[prober]
interval_s = 2.5
down_after = 3
[discovery]
interval_s = 60
[plugins]
paths = ["extra_plugins"]
entry_points = false
[local]
labels = { trust_tier = "trusted", workload_classes = ["batch"], zone = ["a", "b"] }
[logging]
level = "debug"
format = "json"
[[upstreams]]
id = "local-ollama"
adapter = "ollama"
base_url = "http://127.0.0.1:11434/"
operations = ["chat", "embeddings"]
api_key_env = "UP_KEY"
timeout_s = 3
launch = { command = ["serve", "--port", "1"], env = { A = "1" }, cwd = "work" }
[[upstreams.assets]]
asset_id = "qwen3:8b"
aliases = ["qwen3"]
family = "qwen3"
context_length = 32768
loaded = true
policy = { body_defaults = { temperature = 0.6 }, strip_reasoning = true }
""")
    config = load_control(path, {"OPS_KEY": "s3cret", "UP_KEY": "upkey"})
    assert config.server == ServerConfig(
        bind=("127.0.0.1:9000", "[::1]:9000"), shutdown_grace_s=5.0, max_body_bytes=1024,
        tls=TLSConfig(tmp_path / "certs/server.pem", tmp_path / "certs/server.key"),
    )
    assert config.nodes == NodesConfig(
        bind=("0.0.0.0:8801",), stale_after_s=20.0, forget_after_s=3600.0,
        tls=TLSConfig(
            tmp_path / "certs/server.pem", tmp_path / "certs/server.key",
            tmp_path / "certs/ca.pem", True,
        ),
    )
    assert config.registry == RegistryConfig(Path("/var/lib/geniehive/db.sqlite3"))
    assert config.auth_keys == (
        AuthKeyConfig("ops", "s3cret", "OPS_KEY", frozenset({"inference", "read"}), ("qwen*",)),
    )
    assert config.routing == RoutingConfig(strategy="least_loaded", max_attempts=2)
    assert config.breaker == BreakerConfig(5, 10.0)
    assert config.prober == ProberConfig(interval_s=2.5, down_after=3)
    assert config.discovery == DiscoveryConfig(60.0)
    assert config.plugins == PluginsConfig((tmp_path / "extra_plugins",), False)
    assert dict(config.local_labels) == {
        "trust_tier": "trusted", "workload_classes": ("batch",), "zone": ("a", "b"),
    }
    assert config.logging == LoggingConfig("debug", "json")
    assert config.role_catalogs == (tmp_path / "roles/general.toml",)
    assert dict(config.roles) == {"general": Role("general", "chat")}
    assert config.upstreams == (
        UpstreamConfig(
            id="local-ollama", adapter="ollama", base_url="http://127.0.0.1:11434",
            operations=("chat", "embeddings"), api_key="upkey", api_key_env="UP_KEY",
            timeout_s=3.0,
            launch=LaunchConfig(
                command=("serve", "--port", "1"), env={"A": "1"}, cwd=tmp_path / "work"
            ),
            assets=(
                Asset(
                    asset_id="qwen3:8b", aliases=("qwen3",), family="qwen3",
                    context_length=32768, loaded=True,
                    policy=Policy(body_defaults={"temperature": 0.6}, strip_reasoning=True),
                ),
            ),
        ),
    )


def test_relative_paths_resolve_against_the_folder_of_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    write(conf, "teams/a.toml", '[roles.a]\noperation = "chat"\n')
    (conf / "plugins").mkdir()
    path = write(conf, "geniehive.toml", """
[registry]
path = "state/db.sqlite3"
[plugins]
paths = ["plugins"]
[roles]
catalogs = ["teams/*.toml"]
""")
    config = load_control(path, {})
    assert config.registry.path == conf / "state/db.sqlite3"
    assert config.plugins.paths == (conf / "plugins",)
    assert config.role_catalogs == (conf / "teams/a.toml",)


def test_the_default_catalog_glob_loads_roles_beside_the_control_file(tmp_path: Path) -> None:
    write(tmp_path, "roles/b.toml", '[roles.b]\noperation = "embeddings"\n')
    write(tmp_path, "roles/a.toml", '[roles.a]\noperation = "chat"\n')
    config = load_control(write(tmp_path, "geniehive.toml", ""), {})
    assert config.role_catalogs == (tmp_path / "roles/a.toml", tmp_path / "roles/b.toml")
    assert list(config.roles) == ["a", "b"]


def test_an_absolute_catalog_glob_is_used_as_is(tmp_path: Path) -> None:
    write(tmp_path, "shared/x.toml", '[roles.x]\noperation = "chat"\n')
    path = write(
        tmp_path, "conf/geniehive.toml", f'[roles]\ncatalogs = ["{tmp_path}/shared/*.toml"]\n'
    )
    assert load_control(path, {}).role_catalogs == (tmp_path / "shared/x.toml",)


def test_secrets_come_from_the_environment_and_never_appear_in_repr(tmp_path: Path) -> None:
    path = write(tmp_path, "geniehive.toml", """
[[auth.keys]]
name = "ops"
key_env = "OPS_KEY"
scopes = ["admin"]
[[upstreams]]
id = "u"
adapter = "openai"
base_url = "https://api.example.com"
api_key_env = "UP_KEY"
launch = { command = ["x"], env = { TOKEN = "launch-token" } }
""")
    config = load_control(path, {"OPS_KEY": "ops-secret", "UP_KEY": "up-secret"})
    assert config.auth_keys[0].key == "ops-secret"
    assert config.auth_keys[0].key_env == "OPS_KEY"
    assert config.upstreams[0].api_key == "up-secret"
    text = repr(config)
    assert "ops-secret" not in text
    assert "up-secret" not in text
    assert "launch-token" not in text
    assert "OPS_KEY" in text


# --- error paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("colour = 1", "colour: unknown key"),
        ("[server]\nbnd = 1", "server.bnd: unknown key"),
        ('[[upstreams]]\nid = "u"\nadapter = "a"\nbase_url = "http://h"\nbogus = 1',
         "upstreams[0].bogus: unknown key"),
        ('[[upstreams]]\nid = "u"\nadapter = "a"\nbase_url = "http://h"\n'
         '[[upstreams.assets]]\nasset_id = "m"\nsize = 1',
         "upstreams[0].assets[0].size: unknown key"),
        ("[server]\nshutdown_grace_s = \"30\"", "server.shutdown_grace_s: expected a number"),
        ("[routing]\nmax_attempts = true", "routing.max_attempts: expected an integer"),
        ("[routing]\nmax_attempts = 2.5", "routing.max_attempts: expected an integer"),
        ("[prober]\ninterval_s = true", "prober.interval_s: expected a number"),
        ("[prober]\ninterval_s = inf", "prober.interval_s: expected a finite number"),
        ("[plugins]\nentry_points = 1", "plugins.entry_points: expected true or false"),
        ("server = 1", "server: expected a table"),
        ("upstreams = 1", "upstreams: expected a list of tables"),
        ('[server]\nbind = "127.0.0.1:1"', "server.bind: expected a list"),
        ("[server]\nbind = []", "server.bind: expected at least one item"),
        ("[server]\nbind = [1]", "server.bind[0]: expected a string"),
        ('[routing]\nstrategy = "fast"',
         "routing.strategy: expected one of scored, round_robin, least_loaded, got 'fast'"),
        ("[routing]\nmax_attempts = 0", "routing.max_attempts: expected an integer >= 1, got 0"),
        ("[routing]\nconnect_timeout_s = -1",
         "routing.connect_timeout_s: expected a positive number, got -1"),
        ("[routing]\nfirst_byte_timeout_s = 0",
         "routing.first_byte_timeout_s: expected a positive number, got 0"),
        ("[server]\nshutdown_grace_s = -0.5",
         "server.shutdown_grace_s: expected a number >= 0, got -0.5"),
        ("[server]\nmax_body_bytes = 0", "server.max_body_bytes: expected an integer >= 1, got 0"),
        ('[logging]\nlevel = "loud"',
         "logging.level: expected one of debug, info, warning, error, got 'loud'"),
        ('[logging]\nformat = "xml"', "logging.format: expected one of text, json, got 'xml'"),
        ("[nodes]\nstale_after_s = 100\nforget_after_s = 10",
         "nodes.forget_after_s: must not be less than nodes.stale_after_s"),
        ('[nodes]\nbind = ["127.0.0.1:8800"]', "nodes.bind[0]: already used by server.bind"),
        ('[registry]\npath = ""', "registry.path: expected a non-empty string"),
        ('[plugins]\npaths = ["nowhere"]', "plugins.paths[0]: folder not found: {tmp}/nowhere"),
        ("[local]\nlabels = { trust_tier = 1 }", "local.labels.trust_tier: expected a string"),
        ('[local]\nlabels = { workload_classes = "batch" }',
         "local.labels.workload_classes: expected a list"),
        ("[local]\nlabels = { allowed_model_families = [1] }",
         "local.labels.allowed_model_families[0]: expected a string"),
        ('[local]\nlabels = { device_class = ["gpu"] }',
         "local.labels.device_class: expected a string"),
        ("[local]\nlabels = { zone = 3 }",
         "local.labels.zone: expected a string or a list of strings"),
    ],
)
def test_control_file_problems_name_their_dotted_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    assert control_problems(tmp_path, text) == [problem.format(tmp=tmp_path)]


@pytest.mark.parametrize(
    ("bind", "ok"),
    [
        ("127.0.0.1:8800", True),
        ("[::1]:0", True),
        ("example.org:65535", True),
        ("127.0.0.1:65536", False),
        ("127.0.0.1", False),
        ("::1:80", False),
        ("[not-v6]:80", False),
        (":80", False),
        ("host:port", False),
        ("host:-1", False),
    ],
)
def test_binds_need_host_and_port_in_range(tmp_path: Path, bind: str, ok: bool) -> None:
    path = write(tmp_path, "geniehive.toml", f'[server]\nbind = ["{bind}"]\n')
    if ok:
        assert load_control(path, {}).server.bind == (bind,)
    else:
        assert control_problems(tmp_path, f'[server]\nbind = ["{bind}"]\n') == [
            f'server.bind[0]: expected "host:port" or "[v6]:port" with a port 0-65535,'
            f" got {bind!r}"
        ]


def test_capacity_key_limits_and_upstream_slots_load(tmp_path: Path) -> None:
    path = write(tmp_path, "geniehive.toml", """
[capacity]
max_queue = 0
queue_timeout_s = 2.5
aging_s = 10
[[auth.keys]]
name = "batch"
key_env = "BATCH_KEY"
scopes = ["inference"]
max_in_flight = 2
requests_per_minute = 60
priority = "low"
weight = 0.5
[[auth.keys]]
name = "plain"
key_env = "PLAIN_KEY"
scopes = ["read"]
[[upstreams]]
id = "gpu"
adapter = "llamacpp"
base_url = "http://h:8080"
max_in_flight = 3
[[upstreams]]
id = "other"
adapter = "openai"
base_url = "http://h:8081"
""")
    config = load_control(path, {"BATCH_KEY": "b", "PLAIN_KEY": "p"})
    assert config.capacity == CapacityConfig(max_queue=0, queue_timeout_s=2.5, aging_s=10.0)
    batch, plain = config.auth_keys
    assert batch.limits == KeyLimits(max_in_flight=2, requests_per_minute=60, priority="low",
                                     weight=0.5)
    assert plain.limits == NO_LIMITS
    assert [u.max_in_flight for u in config.upstreams] == [3, None]


@pytest.mark.parametrize("keep_alive", ['"30m"', '"1h30m"', '"90s"', '"1.5h"', "600", "-1"])
def test_upstream_keep_alive_and_max_loaded_models_load_in_control_and_node_files(
    tmp_path: Path, keep_alive: str
) -> None:
    extra = f"keep_alive = {keep_alive}\nmax_loaded_models = 2\n"
    control = load_control(write(tmp_path, "geniehive.toml", upstream(extra) + upstream(
        id_="plain")), {})
    node = load_node(write(tmp_path, "node.toml", NODE_MINIMAL + upstream(extra)), {})
    expected = int(keep_alive) if keep_alive.lstrip("-").isdigit() else keep_alive.strip('"')
    for config in (control, node):
        assert (config.upstreams[0].keep_alive, config.upstreams[0].max_loaded_models) == (
            expected, 2)
    assert (control.upstreams[1].keep_alive, control.upstreams[1].max_loaded_models) == (
        None, None)


KEEP_ALIVE_EXPECTED = ('expected a duration such as "30m" or "1h30m", a whole number of '
                       "seconds >= 1, or -1 (forever), got ")


@pytest.mark.parametrize(
    ("value", "got"),
    [('"soon"', "'soon'"), ('"5x"', "'5x'"), ('"0m"', "'0m'"), ('"-1"', "'-1'"), ("0", "0"),
     ("-5", "-5"), ("1.5", "1.5"), ("true", "True"), ('"5 m"', "'5 m'")],
)
def test_a_bad_keep_alive_names_its_dotted_path_in_control_and_node_files(
    tmp_path: Path, value: str, got: str
) -> None:
    problem = f"upstreams[0].keep_alive: {KEEP_ALIVE_EXPECTED}{got}"
    text = upstream(f"keep_alive = {value}")
    assert control_problems(tmp_path, text) == [problem]
    assert node_problems(tmp_path, NODE_MINIMAL + text) == [problem]


def test_max_loaded_models_must_be_a_whole_number_of_at_least_one(tmp_path: Path) -> None:
    assert control_problems(tmp_path, upstream("max_loaded_models = 0")) == [
        "upstreams[0].max_loaded_models: expected an integer >= 1, got 0"]
    assert node_problems(tmp_path, NODE_MINIMAL + upstream("max_loaded_models = 1.5")) == [
        "upstreams[0].max_loaded_models: expected an integer"]


def upstream(extra: str = "", *, id_: str = "u", base_url: str = "http://h:1") -> str:
    return f'[[upstreams]]\nid = "{id_}"\nadapter = "ollama"\nbase_url = "{base_url}"\n{extra}\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[upstreams]]\nadapter = "x"\nbase_url = "http://h"',
         "upstreams[0].id: required key missing"),
        (upstream(id_="a b"),
         "upstreams[0].id: invalid id 'a b' (1-128 letters, digits and . _ : / -)"),
        (upstream().replace('"ollama"', '"9lives"'),
         "upstreams[0].adapter: invalid adapter kind '9lives' "
         "(a letter, then letters, digits, _ . -)"),
        (upstream(base_url="ftp://h"), "upstreams[0].base_url: expected an http(s) URL"),
        (upstream(base_url="localhost:11434"), "upstreams[0].base_url: expected an http(s) URL"),
        (upstream(base_url="http://h:99999"), "upstreams[0].base_url: expected an http(s) URL"),
        (upstream(base_url="http://h/?x=1"), "upstreams[0].base_url: expected an http(s) URL"),
        (upstream("operations = []"), "upstreams[0].operations: expected at least one item"),
        (upstream('operations = ["chat", "dance"]'),
         "upstreams[0].operations[1]: expected one of chat, completion, embeddings, "
         "transcription, speech, image, got 'dance'"),
        (upstream('operations = ["chat", "chat"]'), "upstreams[0].operations[1]: duplicate 'chat'"),
        (upstream("timeout_s = -2"), "upstreams[0].timeout_s: expected a positive number, got -2"),
        (upstream('api_key_env = "NOPE"'),
         "upstreams[0].api_key_env: environment variable 'NOPE' is not set"),
        (upstream('api_key_env = "EMPTY"'),
         "upstreams[0].api_key_env: environment variable 'EMPTY' is empty"),
        (upstream("launch = { ready_timeout_s = 5 }"),
         "upstreams[0].launch.command: required key missing"),
        (upstream("launch = { command = [] }"),
         "upstreams[0].launch.command: expected at least one item"),
        (upstream('launch = { command = ["x"], env = { A = 1 } }'),
         "upstreams[0].launch.env.A: expected a string"),
        (upstream('launch = { command = ["x"], stop_grace_s = -1 }'),
         "upstreams[0].launch.stop_grace_s: expected a number >= 0, got -1"),
        (upstream('launch = { command = ["x"], on_demand = "yes" }'),
         "upstreams[0].launch.on_demand: expected true or false"),
        (upstream('launch = { command = ["x"], on_demand = true, idle_ttl_s = 0 }'),
         "upstreams[0].launch.idle_ttl_s: expected a positive number, got 0"),
        (upstream('launch = { command = ["x"], idle_ttl_s = 30 }'),
         "upstreams[0].launch.idle_ttl_s: only meaningful with on_demand = true"),
        (upstream("[[upstreams.assets]]\nfamily = \"q\""),
         "upstreams[0].assets[0].asset_id: required key missing"),
        (upstream('[[upstreams.assets]]\nasset_id = "m"\ncontext_length = 0'),
         "upstreams[0].assets[0].context_length: expected an integer >= 1, got 0"),
        (upstream('[[upstreams.assets]]\nasset_id = "m"\n[[upstreams.assets]]\nasset_id = "m"'),
         "upstreams[0].assets[1].asset_id: duplicate asset_id 'm'"),
        (upstream('[[upstreams.assets]]\nasset_id = "m"\n'
                  'policy = { system_prompt_position = "middle" }'),
         "upstreams[0].assets[0].policy.system_prompt_position: expected one of prepend, append, "
         "replace, got 'middle'"),
        (upstream('[[upstreams.assets]]\nasset_id = "m"\npolicy = { colour = 1 }'),
         "upstreams[0].assets[0].policy.colour: unknown key"),
        (upstream('[[upstreams.assets]]\nasset_id = "m"\n'
                  "policy = { body_overrides = { stop = [1979-05-27] } }"),
         "upstreams[0].assets[0].policy.body_overrides.stop[0]: expected a JSON value "
         "(string, number, boolean, list, table)"),
        (upstream() + upstream(), "upstreams[1].id: duplicate upstream id 'u'"),
        (upstream("max_in_flight = 0"),
         "upstreams[0].max_in_flight: expected an integer >= 1, got 0"),
        (upstream("max_in_flight = 2.5"), "upstreams[0].max_in_flight: expected an integer"),
    ],
)
def test_upstream_problems_name_their_dotted_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    assert control_problems(tmp_path, text, {"EMPTY": ""}) == [problem]


KEY = '[[auth.keys]]\nname = "n"\nkey_env = "K"\nscopes = ["read"]\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[auth.keys]]\nkey_env = "K"\nscopes = ["read"]',
         "auth.keys[0].name: required key missing"),
        ('[[auth.keys]]\nname = "n"\nscopes = ["read"]',
         "auth.keys[0].key_env: required key missing"),
        ('[[auth.keys]]\nname = "n"\nkey_env = "UNSET"\nscopes = ["read"]',
         "auth.keys[0].key_env: environment variable 'UNSET' is not set"),
        ('[[auth.keys]]\nname = "n"\nkey_env = "K"', "auth.keys[0].scopes: required key missing"),
        ('[[auth.keys]]\nname = "n"\nkey_env = "K"\nscopes = []',
         "auth.keys[0].scopes: expected at least one item"),
        ('[[auth.keys]]\nname = "n"\nkey_env = "K"\nscopes = ["read", "root"]',
         "auth.keys[0].scopes[1]: expected one of inference, read, operate, admin, node, "
         "got 'root'"),
        ('[[auth.keys]]\nname = "n"\nkey_env = "K"\nscopes = ["read"]\n'
         '[[auth.keys]]\nname = "n"\nkey_env = "K2"\nscopes = ["read"]',
         "auth.keys[1].name: duplicate key name 'n'"),
        ('[[auth.keys]]\nname = "n"\nkey_env = "K"\nscopes = ["read"]\n'
         '[[auth.keys]]\nname = "m"\nkey_env = "K"\nscopes = ["read"]',
         "auth.keys[1].key_env: the same key as another entry"),
        ("[auth]\nkeys = []\nstatic = 1", "auth.static: unknown key"),
        (KEY + "max_in_flight = 0", "auth.keys[0].max_in_flight: expected an integer >= 1, got 0"),
        (KEY + "requests_per_minute = true",
         "auth.keys[0].requests_per_minute: expected an integer"),
        (KEY + 'priority = "urgent"',
         "auth.keys[0].priority: expected one of high, normal, low, got 'urgent'"),
        (KEY + "weight = -1", "auth.keys[0].weight: expected a positive number, got -1"),
        (KEY + "weight = 0", "auth.keys[0].weight: expected a positive number, got 0"),
        (KEY + "weight = 1000.5",
         "auth.keys[0].weight: expected a number > 0 and <= 1000, got 1000.5"),
        (KEY + "weight = nan", "auth.keys[0].weight: expected a finite number"),
        (KEY + 'weight = "2"', "auth.keys[0].weight: expected a number"),
    ],
)
def test_auth_key_problems_name_their_dotted_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    assert control_problems(tmp_path, text, {"K": "k", "K2": "k2"}) == [problem]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("max_queue = -1", "capacity.max_queue: expected an integer >= 0, got -1"),
        ("max_queue = 1.5", "capacity.max_queue: expected an integer"),
        ("queue_timeout_s = 0", "capacity.queue_timeout_s: expected a positive number, got 0"),
        ('aging_s = "30"', "capacity.aging_s: expected a number"),
        ("queue = 5", "capacity.queue: unknown key"),
    ],
)
def test_capacity_problems_name_their_dotted_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    assert control_problems(tmp_path, f"[capacity]\n{text}\n") == [problem]


def test_tls_files_must_exist_and_client_certs_need_a_ca(tmp_path: Path) -> None:
    write(tmp_path, "c.pem", "")
    problems = control_problems(tmp_path, """
[server.tls]
certfile = "c.pem"
keyfile = "missing.key"
[nodes]
bind = ["0.0.0.0:8801"]
[nodes.tls]
certfile = "c.pem"
keyfile = "c.pem"
require_client_cert = true
""")
    assert problems == [
        f"server.tls.keyfile: file not found: {tmp_path / 'missing.key'}",
        "nodes.tls.ca_certs: required when require_client_cert is true",
    ]


def test_tls_tables_check_types_required_keys_and_unknown_keys(tmp_path: Path) -> None:
    assert control_problems(tmp_path, "[server.tls]\ncertfile = 1\nextra = 3\n") == [
        "server.tls.certfile: expected a string",
        "server.tls.keyfile: required key missing",
        "server.tls.extra: unknown key",
    ]


def test_nodes_tls_requires_a_separate_node_bind(tmp_path: Path) -> None:
    write(tmp_path, "c.pem", "")
    assert control_problems(
        tmp_path, '[nodes.tls]\ncertfile = "c.pem"\nkeyfile = "c.pem"\n'
    ) == ["nodes.tls: requires nodes.bind (node traffic on its own port)"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "geniehive.toml", """
surprise = true
[server]
bind = ["nowhere"]
[routing]
strategy = "fast"
connect_timeout_s = -1
[[upstreams]]
id = "u"
adapter = "ollama"
base_url = "http://h"
[[upstreams]]
id = "u"
adapter = "ollama"
base_url = "gopher://h"
""")
    with pytest.raises(ConfigError) as caught:
        load_control(path, {})
    expected = [
        "server.bind[0]: expected \"host:port\" or \"[v6]:port\" with a port 0-65535,"
        " got 'nowhere'",
        "routing.strategy: expected one of scored, round_robin, least_loaded, got 'fast'",
        "routing.connect_timeout_s: expected a positive number, got -1",
        "upstreams[1].base_url: expected an http(s) URL",
        "upstreams[1].id: duplicate upstream id 'u'",
        "surprise: unknown key",
    ]
    assert caught.value.problems == expected
    assert str(caught.value) == "\n".join(expected)


def test_an_explicit_catalog_glob_matching_nothing_is_an_error(tmp_path: Path) -> None:
    assert control_problems(tmp_path, '[roles]\ncatalogs = ["roles/*.toml", "teams/*.toml"]') == [
        "roles.catalogs[0]: no file matches 'roles/*.toml'",
        "roles.catalogs[1]: no file matches 'teams/*.toml'",
    ]


def test_a_missing_file_and_a_syntax_error_are_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_control(tmp_path / "absent.toml", {})
    assert caught.value.problems == ["cannot read file: No such file or directory"]
    path = write(tmp_path, "bad.toml", "[server]\nbind = \n")
    with pytest.raises(ConfigError) as caught:
        load_control(path, {})
    assert caught.value.problems == [
        "invalid TOML: Invalid value (at line 2, column 8)"
    ]


# --- node files --------------------------------------------------------------------------------


def test_a_node_file_loads_with_resolved_paths_and_secret(tmp_path: Path) -> None:
    for name in ("ca.pem", "gpu.pem", "gpu.key"):
        write(tmp_path, f"tls/{name}", "")
    path = write(tmp_path, "node.toml", """
[node]
host_id = "gpu-01"
display_name = "GPU box 1"
address = "10.0.0.5"
labels = { trust_tier = "trusted", device_class = "gpu_server", workload_classes = ["batch"] }
[control]
url = "https://control:8801/"
node_key_env = "NODE_KEY"
[control.tls]
ca_certs = "tls/ca.pem"
certfile = "tls/gpu.pem"
keyfile = "tls/gpu.key"
[heartbeat]
interval_s = 2
[inventory]
model_roots = ["/srv/models", "models"]
[logging]
level = "warning"
[[upstreams]]
id = "gpu-01-vllm"
adapter = "vllm"
base_url = "http://127.0.0.1:8000"
""")
    config = load_node(path, {"NODE_KEY": "node-secret"})
    assert config.node == NodeSection(
        host_id="gpu-01", address="10.0.0.5", display_name="GPU box 1",
        labels={"trust_tier": "trusted", "device_class": "gpu_server",
                "workload_classes": ("batch",)},
    )
    assert config.control == ControlLink(
        url="https://control:8801", node_key="node-secret", node_key_env="NODE_KEY",
        tls=TLSConfig(tmp_path / "tls/gpu.pem", tmp_path / "tls/gpu.key", tmp_path / "tls/ca.pem"),
    )
    assert config.heartbeat_interval_s == 2.0
    assert config.model_roots == (Path("/srv/models"), tmp_path / "models")
    assert config.logging == LoggingConfig("warning", "text")
    assert config.upstreams == (
        UpstreamConfig("gpu-01-vllm", "vllm", "http://127.0.0.1:8000"),
    )
    assert config.source == path
    assert "node-secret" not in repr(config)


def test_a_minimal_node_file_takes_the_defaults(tmp_path: Path) -> None:
    config = load_node(write(tmp_path, "node.toml", NODE_MINIMAL), {})
    assert config.node == NodeSection("gpu-01", "10.0.0.5")
    assert dict(config.node.labels) == {}
    assert config.control == ControlLink("http://control:8801")
    assert config.heartbeat_interval_s == 5.0
    assert config.model_roots == ()
    assert config.upstreams == ()
    assert config.logging == LoggingConfig()


def test_an_empty_node_section_reports_its_required_keys(tmp_path: Path) -> None:
    assert node_problems(tmp_path, "[node]\n") == [
        "node.host_id: required key missing",
        "node.address: required key missing",
        "control.url: required key missing (or set control.urls)",
    ]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("[heartbeat]\ninterval_s = 0", "heartbeat.interval_s: expected a positive number, got 0"),
        ("[heartbeat]\nevery = 1", "heartbeat.every: unknown key"),
        ("[inventory]\nmodel_roots = [1]", "inventory.model_roots[0]: expected a string"),
        ("[control.tls]\nca_certs = \"x\"", "control.tls.certfile: required key missing"),
        ('[[upstreams]]\nid = "v"\nadapter = "vllm"\nbase_url = "http//x"',
         "upstreams[0].base_url: expected an http(s) URL"),
        ('[[upstreams]]\nid = "v"\nadapter = "vllm"\nbase_url = "http://x"\n'
         'launch = { command = ["x"], on_demand = true, idle_ttl_s = -1 }',
         "upstreams[0].launch.idle_ttl_s: expected a positive number, got -1"),
    ],
)
def test_node_file_problems_name_their_dotted_path(
    tmp_path: Path, extra: str, problem: str
) -> None:
    problems = node_problems(tmp_path, NODE_MINIMAL + extra)
    assert problems[0] == problem


def test_node_key_env_and_address_and_host_id_are_checked(tmp_path: Path) -> None:
    text = NODE_MINIMAL.replace('"gpu-01"', '"gpu 01"').replace('"10.0.0.5"', '"http://x"')
    assert node_problems(tmp_path, text + 'node_key_env = "NODE_KEY"\n') == [
        "node.host_id: invalid id 'gpu 01' (1-128 letters, digits and . _ : / -)",
        "node.address: expected a host name or IP address, got 'http://x'",
        "control.node_key_env: environment variable 'NODE_KEY' is not set",
    ]


def test_control_tls_on_a_node_has_no_require_client_cert(tmp_path: Path) -> None:
    write(tmp_path, "c.pem", "")
    text = NODE_MINIMAL + '[control.tls]\ncertfile = "c.pem"\nkeyfile = "c.pem"\n'
    assert node_problems(tmp_path, text + "require_client_cert = true\n") == [
        "control.tls.require_client_cert: unknown key"
    ]


# --- role catalogs -----------------------------------------------------------------------------

TRANSLATOR = """
[roles.scientific_translator]
display_name = "Scientific Translator"
description = "Faithful translation"
operation = "chat"
system_prompt = "Translate faithfully."
system_prompt_position = "append"
body_defaults = { temperature = 0.1 }
body_overrides = { stream = false }
strip_reasoning = true
benchmark_workloads = ["chat.short_reasoning"]

[roles.scientific_translator.routing]
strategy = "round_robin"
preferred_families = ["qwen3", "mistral"]
min_context = 8192
prefer_loaded = false
require_loaded = true
allowed_trust_tiers = ["trusted"]
denied_trust_tiers = ["public"]
allowed_device_classes = ["gpu_server"]
denied_device_classes = ["laptop"]
allowed_workload_classes = ["batch"]
denied_workload_classes = ["interactive"]
fallback_roles = ["general_assistant"]
"""


def test_a_role_catalog_loads_every_key(tmp_path: Path) -> None:
    roles = load_role_catalog(write(tmp_path, "team.toml", TRANSLATOR))
    assert roles == {
        "scientific_translator": Role(
            role_id="scientific_translator",
            operation="chat",
            display_name="Scientific Translator",
            description="Faithful translation",
            policy=Policy(
                system_prompt="Translate faithfully.", system_prompt_position="append",
                body_defaults={"temperature": 0.1}, body_overrides={"stream": False},
                strip_reasoning=True,
            ),
            routing=RoutingPolicy(
                strategy="round_robin", preferred_families=("qwen3", "mistral"),
                min_context=8192, prefer_loaded=False, require_loaded=True,
                allowed_trust_tiers=("trusted",), denied_trust_tiers=("public",),
                allowed_device_classes=("gpu_server",), denied_device_classes=("laptop",),
                allowed_workload_classes=("batch",), denied_workload_classes=("interactive",),
                fallback_roles=("general_assistant",),
            ),
            benchmark_workloads=("chat.short_reasoning",),
        )
    }
    assert isinstance(roles["scientific_translator"].policy.body_defaults, MappingProxyType)


def test_a_role_needs_only_an_operation(tmp_path: Path) -> None:
    roles = load_role_catalog(write(tmp_path, "team.toml", '[roles.a]\noperation = "speech"\n'))
    assert roles == {"a": Role("a", "speech")}
    assert roles["a"].routing.prefer_loaded is True
    assert roles["a"].policy.strip_reasoning is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[roles.a]\ndisplay_name = \"A\"", "team.toml: roles.a.operation: required key missing"),
        ('[roles.a]\noperation = "dance"',
         "team.toml: roles.a.operation: expected one of chat, completion, embeddings, "
         "transcription, speech, image, got 'dance'"),
        ('[roles.a]\noperation = "chat"\nsystem_prompt_position = "middle"',
         "team.toml: roles.a.system_prompt_position: expected one of prepend, append, replace,"
         " got 'middle'"),
        ('[roles.a]\noperation = "chat"\ntemperature = 0.2',
         "team.toml: roles.a.temperature: unknown key"),
        ('[roles.a]\noperation = "chat"\n[roles.a.routing]\nstrategy = "best"',
         "team.toml: roles.a.routing.strategy: expected one of scored, round_robin, least_loaded,"
         " got 'best'"),
        ('[roles.a]\noperation = "chat"\n[roles.a.routing]\nfallback = ["b"]',
         "team.toml: roles.a.routing.fallback: unknown key"),
        ('[roles.a]\noperation = "chat"\n[roles.a.routing]\nmin_context = "big"',
         "team.toml: roles.a.routing.min_context: expected an integer"),
        ('[roles.a]\noperation = "chat"\nbody_defaults = 1',
         "team.toml: roles.a.body_defaults: expected a table"),
        ('[roles."a b"]\noperation = "chat"',
         "team.toml: roles.a b: invalid role id (1-128 letters, digits and . _ : / -)"),
        ("[roles]\na = 1", "team.toml: roles.a: expected a table"),
    ],
)
def test_catalog_problems_are_prefixed_with_the_file_name(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_role_catalog(write(tmp_path, "team.toml", text))
    assert caught.value.problems == [problem]


def test_load_role_catalog_leaves_fallback_references_to_the_control_file(
    tmp_path: Path,
) -> None:
    roles = load_role_catalog(write(tmp_path, "team.toml", TRANSLATOR))
    assert roles["scientific_translator"].routing.fallback_roles == ("general_assistant",)


def test_catalogs_merge_and_fallbacks_may_cross_files_and_form_cycles(tmp_path: Path) -> None:
    write(tmp_path, "roles/a.toml", '[roles.a]\noperation = "chat"\n'
          '[roles.a.routing]\nfallback_roles = ["b"]\n')
    write(tmp_path, "roles/b.toml", '[roles.b]\noperation = "chat"\n'
          '[roles.b.routing]\nfallback_roles = ["a", "b"]\n')
    config = load_control(write(tmp_path, "geniehive.toml", ""), {})
    assert list(config.roles) == ["a", "b"]
    assert config.roles["b"].routing.fallback_roles == ("a", "b")


def test_catalog_reference_problems_name_file_and_path(tmp_path: Path) -> None:
    write(tmp_path, "roles/a.toml", '[roles.a]\noperation = "chat"\n'
          '[roles.a.routing]\nfallback_roles = ["x", "e"]\n')
    write(tmp_path, "roles/b.toml", '[roles.a]\noperation = "chat"\n'
          '[roles.e]\noperation = "embeddings"\n[roles.e.routing]\nbogus = 1\n')
    assert control_problems(tmp_path, "") == [
        "b.toml: roles.e.routing.bogus: unknown key",
        "b.toml: roles.a: duplicate role id (also in a.toml)",
        "a.toml: roles.a.routing.fallback_roles[0]: unknown role 'x'",
        "a.toml: roles.a.routing.fallback_roles[1]: role 'e' has operation 'embeddings',"
        " not 'chat'",
    ]


def test_a_broken_catalog_is_reported_with_its_name(tmp_path: Path) -> None:
    write(tmp_path, "roles/bad.toml", "[roles.a\n")
    assert control_problems(tmp_path, "") == [
        "bad.toml: invalid TOML: Expected ']' at the end of a table declaration"
        " (at line 1, column 9)"
    ]


# --- check_files -------------------------------------------------------------------------------


def test_file_kind_is_detected_from_top_level_keys() -> None:
    assert file_kind({"node": {}, "upstreams": []}) == "node"
    assert file_kind({"roles": {"a": {}}}) == "catalog"
    assert file_kind({"roles": {"catalogs": []}}) == "control"
    assert file_kind({"roles": {"a": {}}, "server": {}}) == "control"
    assert file_kind({}) == "control"


def test_check_files_reports_each_kind_with_its_file_name(tmp_path: Path) -> None:
    control = write(tmp_path, "c/geniehive.toml", "[server]\nbind = [\"x\"]\n")
    node = write(tmp_path, "n/node.toml", "[node]\nhost_id = \"h\"\n")
    catalog = write(tmp_path, "r/team.toml", "[roles.a]\noperation = \"dance\"\n")
    broken = write(tmp_path, "broken.toml", "a = \n")
    problems = check_files([control, node, catalog, broken], {})
    assert problems == [
        f"{control}: server.bind[0]: expected \"host:port\" or \"[v6]:port\" with a port"
        " 0-65535, got 'x'",
        f"{node}: node.address: required key missing",
        f"{node}: control.url: required key missing (or set control.urls)",
        f"{catalog}: roles.a.operation: expected one of chat, completion, embeddings,"
        " transcription, speech, image, got 'dance'",
        f"{broken}: invalid TOML: Invalid value (at line 1, column 5)",
    ]


def test_check_files_checks_the_catalogs_of_one_call_together(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", '[roles.a]\noperation = "chat"\n'
              '[roles.a.routing]\nfallback_roles = ["b"]\n')
    b = write(tmp_path, "b.toml", '[roles.b]\noperation = "chat"\n')
    dup = write(tmp_path, "dup.toml", '[roles.b]\noperation = "chat"\n')
    assert check_files([a, b], {}) == []
    assert check_files([a], {}) == [
        f"{a}: roles.a.routing.fallback_roles[0]: unknown role 'b'"
    ]
    assert check_files([a, b, dup], {}) == [f"{dup}: roles.b: duplicate role id (also in {b})"]


def test_check_files_accepts_valid_files_and_resolves_env(tmp_path: Path) -> None:
    node = write(tmp_path, "node.toml", NODE_MINIMAL + 'node_key_env = "NK"\n')
    control = write(tmp_path, "geniehive.toml", "")
    assert check_files([node, control], {"NK": "k"}) == []
    assert check_files([node], {}) == [
        f"{node}: control.node_key_env: environment variable 'NK' is not set"
    ]


# --- binds -------------------------------------------------------------------------------------


def test_parse_bind_splits_host_and_port() -> None:
    assert parse_bind("127.0.0.1:8800") == ("127.0.0.1", 8800)
    assert parse_bind("[::1]:0") == ("::1", 0)
    assert parse_bind("localhost:1") == ("localhost", 1)
    for bad in ("127.0.0.1", "[::1]", "h:70000", "::1:80", ""):
        with pytest.raises(ValueError):
            parse_bind(bad)


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1:8800", True),
        ("127.3.4.5:1", True),
        ("[::1]:8800", True),
        ("localhost:8800", True),
        ("0.0.0.0:8800", False),
        ("[::]:8800", False),
        ("10.0.0.5:8800", False),
        ("example.org:80", False),
        ("garbage", False),
    ],
)
def test_is_loopback_bind(bind: str, loopback: bool) -> None:
    assert is_loopback_bind(bind) is loopback


def test_port_zero_binds_never_collide(tmp_path: Path) -> None:
    path = write(tmp_path, "geniehive.toml", """
[server]
bind = ["127.0.0.1:0"]
[nodes]
bind = ["127.0.0.1:0"]
""")
    assert load_control(path, {}).nodes.bind == ("127.0.0.1:0",)


def test_on_demand_launch_reads_its_idle_ttl_in_control_and_node_files(tmp_path: Path) -> None:
    launch = 'launch = { command = ["x"], on_demand = true, idle_ttl_s = 45 }\n'
    node = load_node(write(tmp_path, "node.toml", NODE_MINIMAL + (
        '[[upstreams]]\nid = "v"\nadapter = "vllm"\nbase_url = "http://x"\n' + launch)), {})
    assert node.upstreams[0].launch == LaunchConfig(
        command=("x",), on_demand=True, idle_ttl_s=45.0)
    boot = load_node(write(tmp_path, "boot.toml", NODE_MINIMAL + (
        '[[upstreams]]\nid = "v"\nadapter = "vllm"\nbase_url = "http://x"\n'
        'launch = { command = ["x"] }\n')), {})
    assert boot.upstreams[0].launch is not None
    assert (boot.upstreams[0].launch.on_demand, boot.upstreams[0].launch.idle_ttl_s) == (
        False, 600.0)


def test_an_upstreams_dialect_loads_in_control_and_node_files_and_defaults_to_native(
    tmp_path: Path
) -> None:
    control = load_control(write(tmp_path, "geniehive.toml", upstream('dialect = "openai"\n')
                                 + upstream(id_="plain")), {})
    node = load_node(write(tmp_path, "node.toml", NODE_MINIMAL + upstream('dialect = "openai"')),
                     {})
    assert [u.dialect for u in control.upstreams] == ["openai", "native"]
    assert node.upstreams[0].dialect == "openai"
    problem = "upstreams[0].dialect: expected one of native, openai, got 'ollama'"
    text = upstream('dialect = "ollama"')
    assert control_problems(tmp_path, text) == [problem]
    assert node_problems(tmp_path, NODE_MINIMAL + text) == [problem]


# --- workers -----------------------------------------------------------------------------------


def test_server_workers_takes_a_count_of_processes(tmp_path: Path) -> None:
    assert load_control(write(tmp_path, "a.toml", ""), {}).server.workers == 1
    assert load_control(write(tmp_path, "b.toml", "[server]\nworkers = 4\n"), {}).server.workers == 4


def test_server_workers_below_one_or_not_an_integer_is_an_error(tmp_path: Path) -> None:
    zero = control_problems(tmp_path, "[server]\nworkers = 0\n")
    two = control_problems(tmp_path, '[server]\nworkers = "two"\n')
    assert len(zero) == 1 and zero[0].startswith("server.workers: ")
    assert len(two) == 1 and two[0].startswith("server.workers: ")


def test_several_workers_refuse_managed_upstreams(tmp_path: Path) -> None:
    text = """
[server]
workers = 2
[[upstreams]]
id = "m"
adapter = "openai"
base_url = "http://127.0.0.1:9"
[upstreams.launch]
command = ["true"]
"""
    assert control_problems(tmp_path, text) == [
        "server.workers: more than one worker cannot run managed upstreams "
        "(upstreams[0].launch); run the upstream as its own service instead"
    ]
