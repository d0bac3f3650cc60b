"""The node agent that runs on each GPU host (`geniehive node`).

`run_node(config, *, task_status)` discovers the host's upstreams, registers with the control
plane and heartbeats until cancelled. It never proxies client traffic.
"""

from __future__ import annotations

from geniehive.node.agent import run_node

__all__ = ["run_node"]
