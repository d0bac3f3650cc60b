"""The node agent stands apart from the control plane: it runs without Quart, hypercorn or
SQLite, and without the control plane's own task modules.

Each check runs in a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]

# What the agent's start-up may not load: the web stack and the registry's storage, and the
# control plane's modules that bring them or belong to it alone.
FORBIDDEN = ("quart", "quart_trio", "hypercorn", "sqlite3", "_sqlite3", "flask", "werkzeug")
CONTROL_ONLY = ("geniehive.daemon", "geniehive.discovery", "geniehive.prober",
                "geniehive.registry", "geniehive.app", "geniehive.proxy", "geniehive.gateway")

NODE_FILE = """
[node]
host_id = "gpu-01"
address = "127.0.0.1"
[control]
url = "http://127.0.0.1:9"
[[upstreams]]
id = "llm"
adapter = "openai"
base_url = "http://127.0.0.1:9"
operations = ["chat"]
"""

# Import the agent, read a node file and load and check its adapters, as `geniehive node`
# does before its first step; then list what got imported.
SCRIPT = """
import sys
from pathlib import Path
from geniehive.config import load_node
from geniehive.node.agent import load_specs
specs = load_specs(load_node(Path(sys.argv[1]), {}))
assert "openai" in specs, sorted(specs)
print("\\n".join(sorted(sys.modules)))
"""


async def test_the_node_agent_starts_without_quart_hypercorn_sqlite_or_the_daemon(
    tmp_path: Path,
) -> None:
    node_file = tmp_path / "node.toml"
    node_file.write_text(NODE_FILE, encoding="utf-8")
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", SCRIPT, str(node_file)],
            cwd=REPO, capture_stdout=True, capture_stderr=True, check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    loaded = set(done.stdout.decode().split())
    assert "geniehive.node.agent" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN) == []
    assert sorted(loaded.intersection(CONTROL_ONLY)) == []
