"""The one way to probe an upstream: its adapter's `probe()` within a time bound, never raising.

The control plane's prober (`prober.py`), the launcher waiting for a managed upstream
(`launcher.py`) and the node agent (`node/agent.py`) all probe through `bounded_probe`, so a
failure reads the same everywhere.

Rule: a probe's outcome is a `ProbeResult`, never an exception: transport and upstream errors
are an unreachable verdict, a plugin bug is logged and fails the probe, and no answer within
the bound fails it too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx
import trio

from geniehive.adapters import ProbeResult, UpstreamError

__all__ = ["bounded_probe"]

log = logging.getLogger("geniehive.prober")


async def bounded_probe(
    call: Callable[[], Awaitable[ProbeResult]], limit_s: float, what: str
) -> ProbeResult:
    """One probe within `limit_s`, never raising: transport and upstream errors are an
    unreachable verdict, any other exception (a plugin bug) is logged and fails the probe."""
    with trio.move_on_after(limit_s):
        try:
            return await call()
        except (httpx.HTTPError, OSError, UpstreamError) as exc:
            return ProbeResult(False, f"unreachable: {type(exc).__name__}")
        except Exception as exc:
            log.exception("probe of %s failed unexpectedly", what)
            return ProbeResult(False, f"probe error: {type(exc).__name__}")
    return ProbeResult(False, f"no answer within {limit_s:g} s")
