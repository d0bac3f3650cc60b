"""The heartbeats bench's node bodies and its verdict (bench/heartbeats.py)."""

from __future__ import annotations

import json
from typing import Any

from bench import heartbeats
from geniehive.node import gpu
from geniehive.nodewire import parse_heartbeat, parse_register, render_heartbeat


def test_a_simulated_heartbeat_is_what_the_agent_sends_and_the_gateway_accepts() -> None:
    node = heartbeats.SimNode.make(7, 1000)
    for beat in (0, 1, heartbeats.CHANGE_EVERY):
        found = heartbeats.gpus(7, beat)
        services = heartbeats.node_services(7, heartbeats.services_busy(7, beat))
        expected = render_heartbeat(heartbeats.host_id(7), {**gpu.summarize(found),
                                                            "gpus": found}, services)
        assert node.heartbeat_body(beat) == json.dumps(expected).encode()
        host_id, _metrics, parsed = parse_heartbeat(json.loads(node.heartbeat_body(beat)))
        assert host_id == "sim-00007" and [s.operation for s in parsed] == ["chat", "embeddings"]
    # GPU memory moves on every beat; the services change only every CHANGE_EVERY beats.
    first, second = (json.loads(node.heartbeat_body(b)) for b in (0, 1))
    assert first["metrics"]["vram_used_bytes"] != second["metrics"]["vram_used_bytes"]
    assert first["services"] == second["services"]
    assert first["services"] != json.loads(
        node.heartbeat_body(heartbeats.CHANGE_EVERY))["services"]
    host, services = parse_register(heartbeats.register_payload(7))
    assert host.host_id == "sim-00007" and len(services) == 2


def window(p99: float | None, cpu: float, errors: int = 0) -> dict[str, Any]:
    return {"p99_ms": p99, "gateway_cpu_pct": cpu, "cpu_per_100_nodes_pct": cpu / 10,
            "errors": errors, "skipped": 0, "simulator_cpu_pct": 10.0, "lag_max_ms": 1.0}


def test_the_verdict_needs_flat_p99_and_cpu_and_a_cheap_gateway() -> None:
    flat = heartbeats.summarize([window(10.0, 30.0), window(12.0, 33.0)], 1000)
    assert flat["flat"] is True and flat["target_met"] is True
    assert flat["p99_ratio"] == 1.2 and flat["cpu_ratio"] == 1.1
    growing = heartbeats.summarize([window(10.0, 30.0), window(20.0, 33.0)], 1000)
    assert growing["flat"] is False and growing["target_met"] is False
    costly = heartbeats.summarize([window(10.0, 60.0), window(10.0, 60.0)], 1000)
    assert costly["flat"] is True and costly["target_met"] is False  # 6 % per 100 nodes
    # An overloaded gateway that answers nothing in the last window is not flat.
    stuck = heartbeats.summarize([window(10.0, 90.0), window(None, 95.0, errors=600)], 1000)
    assert stuck["flat"] is False and stuck["errors"] == 600
    assert heartbeats.summarize([window(10.0, 30.0)], 1000)["flat"] is None


def test_the_report_section_has_a_row_per_window() -> None:
    rows = [heartbeats.window_row(n, 60.0 * (n - 1), heartbeats.Tally([5.0, 7.0, 9.0]),
                                  ((0.0, 0, 0, 0, 100, 0), (60.0, 600, 10, 0, 6100, 0)),
                                  (0.0, 6.0), 60.0, 1000) for n in (1, 2)]
    assert rows[0]["gateway_cpu_pct"] == 100 * 600 / heartbeats.procs.CLOCK_TICKS / 60
    assert rows[0]["p50_ms"] == 7.0 and rows[0]["p99_ms"] == 9.0
    result = {"nodes": 1000, "interval_s": 5.0, "change_every": 12, "backend": "sqlite",
              "connections": "one per heartbeat", "cpus": {"gateway": 0, "simulator": 1},
              "register": {"nodes": 1000, "seconds": 7.0, "p50_ms": 1.0, "p99_ms": 2.0},
              "windows": rows, "summary": heartbeats.summarize(rows, 1000)}
    text = "\n".join(heartbeats.section(result))
    assert "## Heartbeats of 1,000 nodes" in text
    assert sum(line.startswith("| 1 |") or line.startswith("| 2 |")
               for line in text.splitlines()) == 2
