"""Small control and node files for the start-up error tests."""

from __future__ import annotations

NODE_HEAD = """
[node]
host_id = "gpu-01"
address = "127.0.0.1"
[control]
url = "http://127.0.0.1:9"
"""

CONTROL_HEAD = """
[server]
bind = ["127.0.0.1:0"]
[registry]
path = "state.sqlite3"
[roles]
catalogs = []
[logging]
level = "warning"                  # the problem lines alone on stderr
"""


def upstream(adapter: str = "openai", extra: str = "") -> str:
    return f"""
[[upstreams]]
id = "llm"
adapter = "{adapter}"
base_url = "http://127.0.0.1:9"
operations = ["chat"]
{extra}
"""
