"""Process mode for the emulators: serve one fake until SIGTERM/SIGINT, announcing the port.

A test that spawns an emulator reads the first stdout line, ``LISTENING <port>``, exactly as
it does for ``python -m tests.fakes.upstream``.
"""

from __future__ import annotations

import signal
from functools import partial

import trio

from tests.fakes.upstream import FakeUpstream


async def serve_until_signalled(fake: FakeUpstream, host: str, port: int) -> None:
    """Serve `fake` on host:port until SIGTERM or SIGINT; print the bound port first."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(fake.serve, host=host, port=port))
            print(f"LISTENING {bound}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
