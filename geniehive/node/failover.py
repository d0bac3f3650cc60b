"""Which control plane URL the node agent talks to, out of `[control] urls`.

Rule: one URL at a time, the first to begin with. When a call to the one in use fails as
unreachable (connect error, timeout, 5xx or 429), the agent moves to the next one, round the
list. A move names the URL that failed, so the heartbeat loop and the orders long poll, which
may both see the same failure, move once between them, not twice. Pure state, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence


class ControlUrls:
    """The control plane URLs in order, and the index of the one in use."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("at least one control plane URL")
        self.urls = tuple(urls)
        self.index = 0

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def move_from(self, failed: str) -> str | None:
        """Move on from `failed` to the next URL round the list; the new URL, or None when
        there is nowhere to move (a single URL) or `failed` is no longer the one in use
        (another caller moved already)."""
        if len(self.urls) == 1 or failed != self.current:
            return None
        self.index = (self.index + 1) % len(self.urls)
        return self.current
