"""GPU statistics from `nvidia-smi`, when the host has it.

Rule: `parse_nvidia_smi` is pure and tested on recorded output; `read_gpus` runs the binary
as a subprocess (never on the event loop's thread) under a timeout and returns None when
there is no binary or no usable answer, so a host without NVIDIA GPUs simply reports none.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import trio

log = logging.getLogger("geniehive.node")

QUERY = ("index", "name", "memory.total", "memory.used", "utilization.gpu")
COMMAND = (
    "nvidia-smi",
    f"--query-gpu={','.join(QUERY)}",
    "--format=csv,noheader,nounits",
)
MIB = 1024 * 1024


def _number(text: str) -> float | None:
    """A field's number; nvidia-smi writes `[N/A]` or `[Not Supported]` when it has none."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """One dict per GPU line: index, name, memory_total_bytes, memory_used_bytes,
    utilization_pct (None where nvidia-smi had no value). Malformed lines are skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(QUERY):
            continue
        index = _number(fields[0])
        if index is None:
            continue
        total, used, utilization = (_number(f) for f in fields[2:])
        gpus.append({
            "index": int(index),
            "name": fields[1],
            "memory_total_bytes": None if total is None else int(total * MIB),
            "memory_used_bytes": None if used is None else int(used * MIB),
            "utilization_pct": utilization,
        })
    return gpus


def summarize(gpus: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Host totals: VRAM total and used, mean utilisation (keys left out when unknown)."""
    out: dict[str, Any] = {"gpu_count": len(gpus)}
    for key, field in (("vram_total_bytes", "memory_total_bytes"),
                       ("vram_used_bytes", "memory_used_bytes")):
        values = [g[field] for g in gpus if g[field] is not None]
        if values:
            out[key] = sum(values)
    utilization = [g["utilization_pct"] for g in gpus if g["utilization_pct"] is not None]
    if utilization:
        out["gpu_utilization_pct"] = sum(utilization) / len(utilization)
    return out


def find_nvidia_smi() -> str | None:
    return shutil.which(COMMAND[0])


async def read_gpus(binary: str | None, timeout_s: float = 5.0) -> list[dict[str, Any]] | None:
    """The GPUs `nvidia-smi` reports now, or None (no binary, failure or timeout)."""
    if binary is None:
        return None
    with trio.move_on_after(timeout_s):
        try:
            result = await trio.run_process(
                [binary, *COMMAND[1:]], capture_stdout=True, capture_stderr=True, check=False,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.debug("nvidia-smi could not run: %s", exc)
            return None
        if result.returncode != 0:
            log.debug("nvidia-smi exited %d", result.returncode)
            return None
        return parse_nvidia_smi(result.stdout.decode("utf-8", "replace"))
    log.debug("nvidia-smi gave no answer within %g s", timeout_s)
    return None
