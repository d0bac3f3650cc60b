"""Sampling the gateway with py-spy while wrk loads it, and ranking where the time goes.

Rule: the profile is taken in its own load phase, after the measured runs, because the
sampler costs CPU; it reads py-spy's raw (collapsed-stack) output, one `stack count` a line.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import find_tool
from bench.wrkrun import run_wrk

FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PACKAGES = ("geniehive", "hypercorn", "quart_trio", "quart", "werkzeug", "h11", "h2", "httpcore",
            "httpx", "trio", "anyio", "sniffio", "outcome", "idna", "json", "logging")


def record(pid: int, kind: str, port: int, seconds: int, cpu: int, out: Path,
           concurrency: int = 16) -> dict[str, Any]:
    """Load the gateway with wrk while py-spy samples it; returns the ranking."""
    raw = out / (f"profile-{kind}.txt" if concurrency == 16 else
                 f"profile-{kind}-c{concurrency}.txt")
    argv = [
        find_tool("taskset") or "taskset", "-c", str(cpu), find_tool("py-spy") or "py-spy",
        "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
        "--nonblocking", "--function", "--format", "raw", "--output", str(raw),
    ]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: load.update(run_wrk(kind, port, concurrency, seconds + 1, cpu)),
        daemon=True,
    )
    worker.start()
    _, err = sampler.communicate(timeout=seconds + 60)
    worker.join(seconds + 60)
    if sampler.returncode != 0 or not raw.exists():
        return {"error": f"py-spy exited {sampler.returncode}: {err.decode(errors='replace')}"}
    ranking = rank(raw.read_text())
    ranking["raw"] = raw.name
    ranking["rps_while_sampled"] = load.get("rps")
    return ranking


def short_location(file: str) -> tuple[str, str]:
    """(package, readable path) of a frame's file."""
    path = file.replace("\\", "/")
    for marker in ("site-packages/", "/work/main/", "dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        match = re.search(r"/lib/python3\.\d+/(.*)$", path)
        if match:
            path = match.group(1)
    top = path.split("/", 1)[0].removesuffix(".py")
    package = top if top in PACKAGES else ("stdlib" if "/" not in path else top)
    if top in ("json", "logging"):
        package = "stdlib"
    return package, path


def rank(text: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares by function, and self shares by package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = []
        for frame in stack.split(";"):
            match = FRAME_RE.match(frame)
            if match is None:
                names.append((frame, "other"))
                continue
            package, path = short_location(match["file"])
            where = f"{path}:{match['line']}" if match["line"] else path
            names.append((f"{match['func']} ({where})", package))
        own[names[-1][0]] += count
        packages[names[-1][1]] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count

    def share(counter: Counter[str], limit: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": n, "pct": round(100 * n / total, 1)}
            for name, n in counter.most_common(limit)
        ]

    geniehive_inclusive = Counter(
        {name: n for name, n in inclusive.items() if "(geniehive/" in name}
    )
    return {
        "samples": total,
        "self": share(own, top),
        "inclusive_geniehive": share(geniehive_inclusive, top),
        "packages": share(packages, len(packages)),
    }
