"""Managed upstream processes: readiness, start-up errors, restarts, stopping, no orphans.

These start real (tiny) processes: the fake upstream server, or a Python sleeper that writes
its pid to a marker file once it is ready (its probe is "the marker exists").
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from geniehive.adapters import ProbeResult
from geniehive.config import UpstreamConfig
from geniehive.launcher import LaunchError, describe_exit, run_launcher
from tests.harness import alive, http_probe
from tests.harness import managed_fake as fake_server
from tests.harness import managed_upstream as upstream

REPO = Path(__file__).resolve().parents[2]
SLEEPER = textwrap.dedent("""
    import os, signal, sys, time
    if sys.argv[2] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(300)
""")




async def wait_gone(pid: int) -> None:
    # Another process's state: nothing to wait on but polling.
    while alive(pid):  # noqa: ASYNC110
        await trio.sleep(0.02)






def sleeper(uid: str, marker: Path, mode: str = "plain", **launch: object) -> UpstreamConfig:
    return upstream(uid, [sys.executable, "-c", SLEEPER, str(marker), mode], **launch)


def marker_probe(marker: Path):
    async def probe(up: UpstreamConfig) -> ProbeResult:
        return ProbeResult(await trio.Path(marker).exists(), "no marker yet")
    return probe


def marker_pid(marker: Path) -> int:
    return int(marker.read_text())


async def test_launcher_reports_started_at_once_when_nothing_is_managed(autojump_clock):
    plain = UpstreamConfig(id="remote", adapter="openai", base_url="http://127.0.0.1:9")
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(run_launcher, [plain], http_probe)
            nursery.cancel_scope.cancel()
    assert states == {}


async def test_started_only_once_every_managed_upstream_answers_its_probe(caplog):
    caplog.set_level(logging.INFO, "geniehive.launcher")
    ups = [fake_server("a"), UpstreamConfig(id="plain", adapter="openai",
                                            base_url="http://127.0.0.1:9"), fake_server("b")]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(run_launcher, ups, http_probe)
            for up in (ups[0], ups[2]):
                assert (await http_probe(up)).ok
            pids = [states["a"].pid, states["b"].pid]
            nursery.cancel_scope.cancel()
    assert sorted(states) == ["a", "b"]
    assert not any(alive(pid) for pid in pids)
    # The fake server handles SIGTERM: no SIGKILL was needed.
    assert "SIGKILL" not in caplog.text
    assert "managed upstream a: stopped (exited with code 0)" in caplog.text


async def test_ready_timeout_names_the_upstream_its_last_probe_reason_and_the_process(
    tmp_path,
):
    ups = [fake_server("fine"), sleeper("slow", tmp_path / "m", ready_timeout_s=1)]

    async def failing_probe(up: UpstreamConfig) -> ProbeResult:
        return ProbeResult(False, "HTTP 503")

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            with pytest.raises(LaunchError) as caught:
                await nursery.start(run_launcher, ups, failing_probe)
    assert str(caught.value) == (
        "upstreams[1] 'slow': not ready after 1 s: HTTP 503; process still running, stopped it"
    )


async def test_process_exiting_before_ready_fails_at_once_with_its_exit_code():
    dying = upstream("dies", [sys.executable, "-c", "import sys; sys.exit(3)"],
                     ready_timeout_s=30)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(LaunchError) as caught:
                await nursery.start(run_launcher, [dying], http_probe)
    message = str(caught.value)
    assert message.startswith("upstreams[0] 'dies': not ready after ")
    assert message.endswith(": connect refused; process exited with code 3")


async def test_a_failing_upstream_stops_the_ones_already_running(tmp_path):
    marker = tmp_path / "ok"
    # "dies" exits only once "ok" is up, so that "ok" is running when the launch fails.
    dies = ("import os, sys, time\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
            "sys.exit(1)")
    ups = [sleeper("ok", marker), upstream("dies", [sys.executable, "-c", dies, str(marker)])]

    async def probe(up: UpstreamConfig) -> ProbeResult:
        return ProbeResult(up.id == "ok" and await trio.Path(marker).exists(), "not yet")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(LaunchError, match="'dies'"):
                await nursery.start(run_launcher, ups, probe)
    assert not alive(marker_pid(marker))


async def test_a_command_that_cannot_run_is_a_launch_error():
    missing = upstream("ghost", ["/nonexistent/geniehive-test-binary"])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(LaunchError) as caught:
                await nursery.start(run_launcher, [missing], http_probe)
    assert str(caught.value).startswith(
        "upstreams[0] 'ghost': cannot run '/nonexistent/geniehive-test-binary': "
    )


async def test_a_process_that_dies_is_restarted_and_the_restart_is_logged(caplog):
    caplog.set_level(logging.INFO, "geniehive.launcher")
    up = fake_server("phoenix")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(run_launcher, [up], http_probe)
            first = states["phoenix"].pid
            os.kill(first, signal.SIGKILL)
            # The launcher does not wait for a restarted process to be ready; the prober does.
            while states["phoenix"].pid == first or not (await http_probe(up)).ok:  # noqa: ASYNC110
                await trio.sleep(0.1)
            state = states["phoenix"]
            nursery.cancel_scope.cancel()
    assert (state.restarts, state.last_exit) == (1, "killed by SIGKILL")
    assert "managed upstream phoenix: killed by SIGKILL after " in caplog.text
    assert not alive(state.pid)


async def test_a_process_ignoring_sigterm_is_killed_after_stop_grace(tmp_path, caplog):
    marker = tmp_path / "stubborn"
    up = sleeper("stubborn", marker, "ignore-term", stop_grace_s=0.5)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_launcher, [up], marker_probe(marker))
            pid = marker_pid(marker)
            began = trio.current_time()
            nursery.cancel_scope.cancel()
        took = trio.current_time() - began
    assert not alive(pid)
    assert 0.5 <= took < 3
    assert "still running 0.5 s after SIGTERM; sending SIGKILL" in caplog.text


async def test_stopping_reaches_the_processes_the_upstream_started(tmp_path):
    marker = tmp_path / "grandchild"
    script = f"sleep 300 & echo $! > {marker}.tmp && mv {marker}.tmp {marker}; wait"
    up = upstream("shell", ["/bin/sh", "-c", script], stop_grace_s=5)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_launcher, [up], marker_probe(marker))
            grandchild = marker_pid(marker)
            assert alive(grandchild)
            nursery.cancel_scope.cancel()
        await wait_gone(grandchild)


LAUNCHER_PARENT = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from geniehive.adapters import ProbeResult
    from geniehive.config import LaunchConfig, UpstreamConfig
    from geniehive.launcher import run_launcher

    async def main():
        command = (sys.executable, "-c", sys.argv[1], sys.argv[2], "plain")
        up = UpstreamConfig(id="child", adapter="openai", base_url="http://127.0.0.1:9",
                            launch=LaunchConfig(command=command))
        async def probe(up):
            return ProbeResult(Path(sys.argv[2]).exists(), "no marker")
        async with trio.open_nursery() as nursery:
            states = await nursery.start(run_launcher, [up], probe)
            print(states["child"].pid, flush=True)
    trio.run(main)
""")


async def test_children_die_when_the_launcher_process_is_killed(tmp_path):
    command = [sys.executable, "-c", LAUNCHER_PARENT, SLEEPER, str(tmp_path / "m")]
    with trio.fail_after(20):
        parent = await trio.lowlevel.open_process(command, cwd=REPO, stdout=subprocess.PIPE)
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = await parent.stdout.receive_some()
                assert chunk, "the launcher process exited early"
                line += chunk
            child = int(line)
            assert alive(child)
        finally:
            parent.kill()  # like the OOM killer would: no chance to clean up
            await parent.wait()
            await parent.stdout.aclose()
        await wait_gone(child)


def test_exit_descriptions_name_the_signal():
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


async def test_a_managed_process_outlives_idle_worker_threads(tmp_path, monkeypatch):
    # The parent-death signal follows the thread that forked the child. Spawned from one of
    # trio's worker threads, a healthy server was killed when that thread retired after ten
    # idle seconds; here threads retire after 0.1 s, so the bug would show within a second.
    from trio._core import _thread_cache

    monkeypatch.setattr(_thread_cache, "IDLE_TIMEOUT", 0.1)
    marker = tmp_path / "pid"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            states = await nursery.start(run_launcher, [sleeper("s", marker)],
                                         marker_probe(marker))
            await trio.to_thread.run_sync(lambda: None)  # make a worker thread, let it retire
            await trio.sleep(1.0)
            assert alive(states["s"].pid)
            assert states["s"].restarts == 0
            nursery.cancel_scope.cancel()
