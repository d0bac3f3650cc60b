"""Configuration files: TOML in, frozen dataclasses out (docs/configuration.md lists every key).

Three kinds of file: the control file (`geniehive serve`), the node file (`geniehive node`) and
role catalogs (named by the control file's `[roles] catalogs` globs).

Rule: validation is strict and complete. Unknown keys, wrong types, bad values and bad
references are all collected, each naming its dotted path (`upstreams[1].base_url: expected an
http(s) URL`), and raised together as one `ConfigError`. Nothing is read from the process
environment: secrets named by `*_env` keys are looked up in the mapping the caller passes.
Relative paths are resolved against the folder of the file that names them. Besides reading
the files, globs are expanded and named TLS files and folders are checked to exist (a missing
certificate is a problem `check-config` should catch); nothing else touches the system.

The modules, bottom up: `values` (the dataclasses and `ConfigError`), `checks` (one value
each), `schema` (the declared tables and the reader that walks them), `sections` (tables
several files share), `roles`, `control` and `node` (one kind of file each), `files` (the
loaders) and `reference` (renders docs/configuration.md from the declarations).
"""

from __future__ import annotations

from geniehive.config.checks import is_loopback_bind, parse_bind
from geniehive.config.files import (
    check_files,
    file_kind,
    load_control,
    load_node,
    load_role_catalog,
)
from geniehive.config.values import (
    DEFAULT_BIND,
    DEFAULT_CATALOG_GLOB,
    LOG_FORMATS,
    LOG_LEVELS,
    AuthKeyConfig,
    BreakerConfig,
    CapacityConfig,
    ConfigError,
    ControlConfig,
    ControlLink,
    DiscoveryConfig,
    LaunchConfig,
    LoggingConfig,
    NodeConfig,
    NodesConfig,
    NodeSection,
    PluginsConfig,
    ProberConfig,
    RegistryConfig,
    ResponsesConfig,
    RoutingConfig,
    ServerConfig,
    TLSConfig,
    TracingConfig,
    UpstreamConfig,
)

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_CATALOG_GLOB",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AuthKeyConfig",
    "BreakerConfig",
    "CapacityConfig",
    "ConfigError",
    "ControlConfig",
    "ControlLink",
    "DiscoveryConfig",
    "LaunchConfig",
    "LoggingConfig",
    "NodeConfig",
    "NodeSection",
    "NodesConfig",
    "PluginsConfig",
    "ProberConfig",
    "RegistryConfig",
    "ResponsesConfig",
    "RoutingConfig",
    "ServerConfig",
    "TLSConfig",
    "TracingConfig",
    "UpstreamConfig",
    "check_files",
    "file_kind",
    "is_loopback_bind",
    "load_control",
    "load_node",
    "load_role_catalog",
    "parse_bind",
]
