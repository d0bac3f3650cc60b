"""The processes of a benchmark run: preflight, the nginx upstream, the streaming upstream
and the gateway, each pinned to its CPU with `taskset` and stopped by its own PID.

Rule: nothing is installed here. A missing tool is reported with the exact command that
installs it (`missing_tools`, `INSTALL_HINT`) and the harness exits 2.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx", "taskset": "util-linux"}
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

# What the fake upstreams answer. Small, realistic bodies: the point is the gateway's cost.
JSON_BODY = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    '"model":"bench-json","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
SSE_EVENTS = 8


def sse_body(events: int = SSE_EVENTS) -> str:
    """A short streamed reply: `events` content chunks, then `[DONE]`."""
    parts = []
    for index in range(events):
        parts.append(
            'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk",'
            '"created":1700000000,"model":"bench-sse","choices":[{"index":0,'
            f'"delta":{{"content":"tok{index} "}},"finish_reason":null}}]}}\n\n'
        )
    parts.append("data: [DONE]\n\n")
    return "".join(parts)


def find_tool(name: str) -> str | None:
    """The path of a tool, also looking in sbin folders a non-login PATH may lack and beside
    this Python (py-spy installs into the virtualenv's bin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in (*SBIN, str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_tools(extra: tuple[str, ...] = ()) -> list[str]:
    return [name for name in ("wrk", "nginx", "taskset", *extra) if find_tool(name) is None]


def install_hint(missing: list[str]) -> str:
    packages = sorted({APT_PACKAGES.get(name, name) for name in missing if name != "py-spy"})
    lines = []
    if packages:
        lines.append(f"apt-get update && apt-get install -y {' '.join(packages)}")
    if "py-spy" in missing:
        lines.append(f"{sys.executable} -m pip install py-spy")
    return "\n".join(lines)


INSTALL_HINT = install_hint(list(APT_PACKAGES))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_plan() -> tuple[int, int]:
    """(gateway CPU, load CPU): two different CPUs when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]


def raise_open_files() -> tuple[int, int]:
    """Raise this process's open-files soft limit to the hard limit; returns the original."""
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (original[1], original[1]))
    return original


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_sample(pid: int, cpu: int) -> tuple[float, int, int, int, int, int]:
    """(time, CPU ticks of `pid`, busy, steal, all, and irq + softirq ticks of CPU `cpu`).

    Two samples tell how much of the gateway's CPU the gateway used, how much went to
    interrupts (loopback packet delivery is mostly the gateway's own sockets' work, booked
    as softirq), to other processes, and to the hypervisor (steal); other work on a shared
    machine skews every figure, and the report says so.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime + stime
    busy = steal = total = irq = 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            total = sum(values[:8])
            steal = values[7]
            irq = values[5] + values[6]
            # busy in processes: minus idle, iowait, irq, softirq and steal
            busy = total - values[3] - values[4] - irq - steal
            break
    return time.monotonic(), own, busy, steal, total, irq


def cpu_shares(before: tuple[float, int, int, int, int, int],
               after: tuple[float, int, int, int, int, int]) -> dict[str, float]:
    """Shares of that CPU between two samples, in %: the process, interrupts, other
    processes, steal."""
    ticks = max(after[4] - before[4], 1)

    def pct(index: int) -> float:
        return 100 * (after[index] - before[index]) / ticks

    own = pct(1)
    return {
        "gateway_cpu_pct": round(own, 1),
        "irq_cpu_pct": round(pct(5), 1),
        "others_cpu_pct": round(max(0.0, pct(2) - own), 1),
        "steal_cpu_pct": round(pct(3), 1),
    }


def machine_info() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": _version([find_tool("wrk") or "wrk", "-v"]),
        "nginx": _version([find_tool("nginx") or "nginx", "-v"]),
        "revision": _version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    text = (done.stdout or done.stderr).strip().splitlines()
    # wrk -v prints its copyright on the version line; keep the version only.
    return text[0].split(" Copyright", 1)[0] if text else ""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], cpu: int | None, port: int, logs: Path,
           env: dict[str, str] | None = None, nofile: tuple[int, int] | None = None) -> Proc:
    """Start `argv` pinned to `cpu` (None: on whatever CPUs this process may use), its
    output in `logs/<name>.log`."""
    log = logs / f"{name}.log"
    handle = log.open("wb")

    def restore_limit() -> None:
        # The gateway must raise its own open-files limit; give it the limit the
        # harness was started with, not the one the harness raised for its clients.
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    pin = [] if cpu is None else [find_tool("taskset") or "taskset", "-c", str(cpu)]
    popen = subprocess.Popen(
        [*pin, *argv],
        stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
        cwd=str(REPO), env=env, preexec_fn=restore_limit if nofile else None,
    )
    handle.close()
    return Proc(name, popen, port, log)


def wait_port(proc: Proc, timeout_s: float = 30.0) -> None:
    """Block until `proc` accepts TCP connections; raises RuntimeError if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proc.port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} did not listen on {proc.port} in {timeout_s} s:\n{proc.tail()}"
    )


def stop(proc: Proc, grace_s: float = 10.0) -> None:
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


def nginx_conf(work: Path, json_port: int, sse_port: int) -> str:
    """One nginx process, two servers: `bench-json` answers JSON, `bench-sse` answers SSE."""
    temp = "\n".join(
        f"  {kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )

    def server(port: int, model: str, content_type: str, body: str) -> str:
        models = f'{{"object":"list","data":[{{"id":"{model}","object":"model"}}]}}'
        return textwrap.indent(textwrap.dedent(f"""\
            server {{
              listen 127.0.0.1:{port} backlog=4096;
              location = /v1/models {{
                default_type application/json;
                return 200 '{models}';
              }}
              location / {{
                default_type {content_type};
                return 200 '{body}';
              }}
            }}
            """), "  ")

    return (
        f"daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 65536;\n"
        f"pid {work}/nginx.pid;\nerror_log {work}/nginx-error.log warn;\n"
        "events { worker_connections 16384; multi_accept on; }\n"
        "http {\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
        f"{temp}\n"
        + server(json_port, "bench-json", "application/json", JSON_BODY)
        + server(sse_port, "bench-sse", "text/event-stream", sse_body())
        + "}\n"
    )


def gateway_config(work: Path, port: int, ports: dict[str, int], *, name: str = "geniehive",
                   timeout_s: float = 5, upstream_extra: str = "", extra: str = "",
                   registry: str | None = None, quiet_s: float = 60) -> str:
    """The control file: one upstream per fake server, discovery and probes every `quiet_s`;
    `upstream_extra` is added to every upstream, `extra` (whole tables) to the file; the
    registry is `<name>.sqlite3`, or the `[registry]` table's lines `registry`."""
    registry = registry or f'path = "{work}/state/{name}.sqlite3"'
    upstreams = "".join(
        textwrap.dedent(f"""
            [[upstreams]]
            id = "{upstream}"
            adapter = "openai"
            base_url = "http://127.0.0.1:{upstream_port}"
            operations = ["chat"]
            timeout_s = {timeout_s:g}
            """) + upstream_extra
        for upstream, upstream_port in ports.items()
    )
    return textwrap.dedent(f"""\
        [server]
        bind = ["127.0.0.1:{port}"]
        shutdown_grace_s = 2

        [registry]
        {registry}

        [logging]
        level = "warning"

        [prober]
        interval_s = {quiet_s:g}

        [discovery]
        interval_s = {quiet_s:g}
        """) + extra + upstreams


@contextlib.contextmanager
def open_stack(out: Path, event_count: int, nofile: tuple[int, int]) -> Iterator[dict[str, Proc]]:
    """Start nginx, the streaming upstream and the gateway; stop them all on exit."""
    gw_cpu, load_cpu = cpu_plan()
    work = out / "work"
    logs = out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    procs: dict[str, Proc] = {}
    try:
        json_port, sse_port, stream_port, gw_port = (free_port() for _ in range(4))
        conf = work / "nginx.conf"
        conf.write_text(nginx_conf(work, json_port, sse_port))
        nginx = find_tool("nginx") or "nginx"
        procs["nginx"] = spawn(
            "nginx", [nginx, "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)],
            load_cpu, json_port, logs,
        )
        procs["nginx_sse"] = Proc("nginx", procs["nginx"].popen, sse_port, procs["nginx"].log)
        procs["stream"] = spawn(
            "upstream", [sys.executable, "-m", "bench.upstream", "--port", str(stream_port),
                         "--events", str(event_count)],
            load_cpu, stream_port, logs,
        )
        for name in ("nginx", "nginx_sse", "stream"):
            wait_port(procs[name])
        config = work / "geniehive.toml"
        config.write_text(gateway_config(
            work, gw_port, {"nginx-json": json_port, "nginx-sse": sse_port, "stream": stream_port}
        ))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        procs["gateway"] = spawn(
            "gateway", [sys.executable, "-m", "geniehive", "serve", "--config", str(config)],
            gw_cpu, gw_port, logs, env=env, nofile=nofile,
        )
        wait_ready(procs["gateway"])
        yield procs
    finally:
        for name in ("gateway", "stream", "nginx"):
            if name in procs:
                stop(procs[name])


BENCH_MODELS = (("bench-json", False), ("bench-sse", True), ("bench-events", True))


def wait_ready(gateway: Proc, timeout_s: float = 60.0,
               models: tuple[tuple[str, bool], ...] = BENCH_MODELS) -> None:
    """Poll /readyz, then check each of `models` (name, streamed) answers 200 through the
    gateway."""
    base = f"http://127.0.0.1:{gateway.port}"
    wait_port(gateway, timeout_s)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{base}/readyz").status_code == 200:
                    break
            if gateway.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway never became ready:\n{gateway.tail()}")
            time.sleep(0.1)
        for model, stream in models:
            body = {"model": model, "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]}
            response = client.post(f"{base}/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(
                    f"gateway answered {response.status_code} for {model}: "
                    f"{response.text[:500]}\n{gateway.tail()}"
                )
