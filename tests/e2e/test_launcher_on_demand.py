"""On-demand managed upstreams: cold until asked, one start per crowd, reaped when idle.

Real processes: the fake upstream server where the probe must really reach it (real clock),
a plain `sleep` with a scripted probe where only the launcher's timing matters (autojump
clock).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from geniehive.adapters import ProbeResult
from geniehive.config import UpstreamConfig
from geniehive.launcher import Launcher, LaunchError
from tests.harness import alive, http_probe
from tests.harness import managed_fake as fake_server
from tests.harness import managed_upstream as managed

REPO = Path(__file__).resolve().parents[2]








# Tests on trio's fake clock that also wait for a real process (its exit after a stop) let
# the clock jump only once nothing happened for this long in real time, so the jump cannot
# overtake the real wait and fire the test's deadline.
REAL_WAIT_S = 5.0
SHORT_REAL_WAIT_S = 0.2


def sleeper(uid: str, **launch: object) -> UpstreamConfig:
    return managed(uid, ["sleep", "300"], **launch)


def probe_ready_after(polls: int):
    """A probe that fails `polls - 1` times per start, then passes."""
    calls: list[str] = []

    async def probe(up: UpstreamConfig) -> ProbeResult:
        calls.append(up.id)
        return ProbeResult(len(calls) % polls == 0, "warming up")
    return probe


async def test_on_demand_is_cold_at_boot_and_three_callers_share_one_start(caplog):
    caplog.set_level(logging.INFO, "geniehive.launcher")
    boot, lazy = fake_server("boot"), fake_server("lazy", on_demand=True)
    launcher = Launcher([boot, lazy], http_probe)
    waited: list[float] = []

    async def caller() -> None:
        waited.append(await launcher.ensure_running("lazy"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(launcher.run)
            assert (launcher.state("boot"), launcher.state("lazy")) == ("running", "cold")
            assert states["lazy"].pid is None
            assert not (await http_probe(lazy)).ok
            async with trio.open_nursery() as callers:
                for _ in range(3):
                    callers.start_soon(caller)
                await trio.testing.wait_all_tasks_blocked()
                assert launcher.state("lazy") == "starting"
            assert launcher.state("lazy") == "running"
            assert (await http_probe(lazy)).ok
            assert len(waited) == 3 and all(w > 0 for w in waited)
            assert await launcher.ensure_running("lazy") == 0.0
            pid = states["lazy"].pid
            nursery.cancel_scope.cancel()
    assert caplog.text.count("managed upstream lazy: started ") == 1
    assert not alive(pid)


async def test_stop_sends_sigterm_and_leaves_it_cold(caplog):
    caplog.set_level(logging.INFO, "geniehive.launcher")
    lazy = fake_server("lazy", on_demand=True)
    launcher = Launcher([lazy], http_probe)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(launcher.run)
            await launcher.ensure_running("lazy")
            pid = states["lazy"].pid
            await launcher.stop("lazy")
            assert launcher.state("lazy") == "cold"
            assert not alive(pid)
            assert not (await http_probe(lazy)).ok
            # Asked again, it starts again.
            assert await launcher.ensure_running("lazy") > 0
            assert states["lazy"].pid not in (None, pid)
            nursery.cancel_scope.cancel()
    assert "managed upstream lazy: stopped (exited with code 0)" in caplog.text


async def test_the_reaper_stops_it_after_idle_ttl_and_never_while_busy(autojump_clock):
    busy = {"lazy": False}
    lazy = sleeper("lazy", on_demand=True, idle_ttl_s=600, stop_grace_s=1)
    launcher = Launcher([lazy], probe_ready_after(1), busy=busy.__getitem__)
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(launcher.run)
            await launcher.ensure_running("lazy")
            await trio.sleep(590)
            launcher.touch("lazy")  # activity postpones the reaper
            await trio.sleep(590)
            assert launcher.state("lazy") == "running"
            busy["lazy"] = True
            await trio.sleep(5000)
            assert launcher.state("lazy") == "running"
            pid = states["lazy"].pid
            busy["lazy"] = False  # idle from now on
            await trio.sleep(590)
            assert launcher.state("lazy") == "running"
            await trio.sleep(20)
            # The reaper has begun stopping it. The process's exit takes real time: from now
            # on the fake clock jumps only after 5 real seconds of nothing happening.
            assert launcher.state("lazy") in ("stopping", "cold")
            autojump_clock.autojump_threshold = REAL_WAIT_S
            await launcher.stop("lazy")
            assert launcher.state("lazy") == "cold"
            assert states["lazy"].pid is None
            assert not alive(pid)
            nursery.cancel_scope.cancel()


async def test_a_caller_cancelled_while_waiting_leaves_the_start_to_the_others(autojump_clock):
    lazy = sleeper("lazy", on_demand=True, ready_timeout_s=60)
    launcher = Launcher([lazy], probe_ready_after(14))  # ready after ~4.5 s of polling
    autojump_clock.autojump_threshold = SHORT_REAL_WAIT_S  # the process's stop is real time
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(launcher.run)
            with trio.move_on_after(1):
                await launcher.ensure_running("lazy")
            assert launcher.state("lazy") == "starting"
            waited = await launcher.ensure_running("lazy")
            assert 3 <= waited <= 4
            assert launcher.state("lazy") == "running"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([sys.executable, "-c", "import sys; sys.exit(3)"],
         "process exited with code 3"),
        (["/nonexistent/geniehive-test-binary"],
         "cannot run '/nonexistent/geniehive-test-binary'"),
    ],
)
async def test_a_failing_start_fails_every_caller_and_leaves_it_cold(command, message):
    lazy = managed("lazy", command, on_demand=True, ready_timeout_s=30)
    launcher = Launcher([lazy], http_probe)
    errors: list[str] = []

    async def caller() -> None:
        with pytest.raises(LaunchError) as caught:
            await launcher.ensure_running("lazy")
        errors.append(str(caught.value))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(launcher.run)
            async with trio.open_nursery() as callers:
                for _ in range(3):
                    callers.start_soon(caller)
            assert launcher.state("lazy") == "cold"
            nursery.cancel_scope.cancel()
    assert len(errors) == 3
    for error in errors:
        assert error.startswith("upstreams[0] 'lazy': ")
        assert message in error


async def test_a_start_that_is_never_ready_is_stopped_and_cold(autojump_clock):
    lazy = sleeper("lazy", on_demand=True, ready_timeout_s=5, stop_grace_s=1)

    async def never(up: UpstreamConfig) -> ProbeResult:
        return ProbeResult(False, "HTTP 503")

    launcher = Launcher([lazy], never)
    autojump_clock.autojump_threshold = SHORT_REAL_WAIT_S  # the process's stop is real time
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(launcher.run)
            with pytest.raises(LaunchError) as caught:
                await launcher.ensure_running("lazy")
            assert launcher.state("lazy") == "cold"
            assert states["lazy"].pid is None
            nursery.cancel_scope.cancel()
    assert str(caught.value) == (
        "upstreams[0] 'lazy': not ready after 5 s: HTTP 503; process still running, stopped it"
    )


async def test_an_on_demand_process_that_dies_goes_cold_and_is_not_restarted(caplog):
    caplog.set_level(logging.INFO, "geniehive.launcher")
    lazy = fake_server("lazy", on_demand=True)
    launcher = Launcher([lazy], http_probe)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(launcher.run)
            await launcher.ensure_running("lazy")
            os.kill(states["lazy"].pid, signal.SIGKILL)
            while launcher.state("lazy") != "cold":  # noqa: ASYNC110 - another process's fate
                await trio.sleep(0.05)
            await trio.sleep(1.5)  # a boot upstream would have been restarted by now
            assert launcher.state("lazy") == "cold"
            assert states["lazy"].restarts == 0
            assert await launcher.ensure_running("lazy") > 0
            nursery.cancel_scope.cancel()
    assert "managed upstream lazy: killed by SIGKILL; cold until asked for again" in caplog.text


def test_unmanaged_upstreams_have_no_state():
    plain = UpstreamConfig(id="remote", adapter="openai", base_url="http://127.0.0.1:9")
    launcher = Launcher([plain], http_probe)
    assert launcher.managed_state("remote") is None
    with pytest.raises(KeyError, match="'remote' is not a managed upstream"):
        launcher.state("remote")
