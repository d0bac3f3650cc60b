"""The node file (`geniehive node`): its declared tables and the parser that reads them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geniehive.config.checks import (
    ADDRESS,
    IDENTIFIER,
    LABELS,
    PATH,
    POSITIVE,
    STRING,
    TEXT,
    URL,
    list_of,
)
from geniehive.config.schema import Key, Section, Table, secret
from geniehive.config.sections import (
    CLIENT_TLS,
    ENV_KEY_MEANING,
    LOGGING,
    UPSTREAMS,
    parse_logging,
    parse_tls,
    parse_upstreams,
)
from geniehive.config.values import ControlLink, NodeConfig, NodeSection
from geniehive.models import EMPTY

NODE = Section("node", "This host, as the control plane knows it.", (
    Key("host_id", IDENTIFIER, "", "the host's unique id", required=True),
    Key("address", ADDRESS, "",
        "how the control plane reaches this host; loopback upstream URLs are advertised "
        "with it", required=True),
    Key("display_name", STRING, None, "name shown in listings"),
    Key("labels", LABELS, EMPTY,
        "labels the routing gates read (`trust_tier`, `device_class`, `workload_classes`, "
        "`allowed_model_families`) and any others"),
))

CONTROL = Section("control", "The control plane this node reports to.", (
    Key("url", URL, None,
        "the control plane's node port (or client port) root; required unless `urls` is set"),
    Key("urls", list_of(URL, non_empty=True, unique=True), None,
        "instead of `url`: several control plane replicas' roots, used one at a time from the "
        "first; the node moves to the next (round the list) when the one in use is "
        "unreachable (connect error, timeout, 5xx or 429)"),
    Key("node_key_env", TEXT, None,
        ENV_KEY_MEANING + "a key with the `node` scope; absent: an open-mode control plane"),
), tables=(CLIENT_TLS,))

HEARTBEAT = Section("heartbeat", "How often the node reports.", (
    Key("interval_s", POSITIVE, 5.0, "seconds between two heartbeats"),
))

INVENTORY = Section("inventory", "Model files the node reports besides its upstreams' models.", (
    Key("model_roots", list_of(PATH), (), "folders searched for `*.gguf` files"),
))

NODE_FILE = Section("", "The node file.", tables=(
    NODE, CONTROL, HEARTBEAT, INVENTORY, LOGGING, UPSTREAMS,
))


def control_urls(c: Table) -> tuple[str, ...]:
    """The control plane URLs: `url` or `urls`, exactly one of them (either missing or both
    set is a problem); ("",) when that is not so or a URL is bad."""
    url, urls = c.get("url"), c.get("urls")
    if c.has("url") and c.has("urls"):
        c.report("urls", "set either control.url or control.urls, not both")
        return ("",)
    if not c.has("url") and not c.has("urls"):
        c.report("url", "required key missing (or set control.urls)")
        return ("",)
    if urls is not None:
        return tuple(urls)
    return (url,) if url is not None else ("",)


def parse_node(data: dict[str, Any], path: Path, environ: Mapping[str, str],
               problems: list[str]) -> NodeConfig:
    top = Table(data, "", problems, NODE_FILE, path.parent)
    n = top.table("node")
    node = NodeSection(
        host_id=n.get("host_id"),
        address=n.get("address"),
        display_name=n.get("display_name"),
        labels=n.get("labels"),
    )
    n.done()
    c = top.table("control")
    node_key_env, node_key = secret(c, "node_key_env", environ)
    urls = control_urls(c)
    control = ControlLink(
        url=urls[0],
        urls=urls,
        node_key=node_key,
        node_key_env=node_key_env,
        tls=parse_tls(c.table("tls")),
    )
    c.done()
    heartbeat = top.table("heartbeat")
    interval_s = heartbeat.get("interval_s")
    heartbeat.done()
    inventory = top.table("inventory")
    model_roots = inventory.get("model_roots")
    inventory.done()
    config = NodeConfig(
        node=node, control=control, heartbeat_interval_s=interval_s, model_roots=model_roots,
        upstreams=parse_upstreams(top, environ), logging=parse_logging(top.table("logging")),
        source=path,
    )
    top.done()
    return config
