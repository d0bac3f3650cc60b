"""Real coding agents (Claude Code and Codex, from npm) complete one prompt through a real
`geniehive serve` in front of the real SmolLM2 llama.cpp server the gateway launches.

- Claude Code (`claude -p`) speaks the Anthropic Messages API: `POST /v1/messages?beta=true`
  (after a `HEAD /` it ignores the answer of), with `x-api-key`, `anthropic-version`,
  `anthropic-beta` and a session header, streamed.
- Codex (`codex exec`, a custom provider with `wire_api = "responses"`) speaks the OpenAI
  Responses API: `POST /v1/responses`, streamed, with `Authorization: Bearer` from `env_key`.

Each must exit 0 having printed an answer (SmolLM2-135M says little of sense: this checks the
protocol, not the prose), and the gateway's request log must show its endpoint answered 200.

Both agents are kept to what a 135M model with a few thousand tokens of context can take:
Claude Code gets a one-line system prompt, no tools, no MCP servers, no settings files and
one turn; Codex a one-line instructions file and its optional tools, skills, plugins and
context sections off. They send nothing anywhere but 127.0.0.1: a throwaway HOME (and
CODEX_HOME), telemetry, updates and plugin syncing off, and no login. Answers are kept
short: Claude Code asks for 512 tokens (CLAUDE_CODE_MAX_OUTPUT_TOKENS; its default is 32000),
and llama.cpp caps the rest (`--predict`), Codex naming no limit.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import llamacpp_toml, wait_routable

pytestmark = pytest.mark.realmodel

MODEL = "smollm2"
# Short answers end by themselves: a truncated one is an error to Claude Code.
PROMPT = "Reply with one word: hello."
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
KEY = "sk-local-agent-test"
# Room for the agents' first turn (a few hundred tokens) plus the answer; two threads, as
# the agents' own start-up leaves the CPUs idle while the model works.
# Greedy: the agents send no temperature, and one prompt then gets one (short) answer, where
# sampling sometimes ran on for hundreds of tokens, which Claude Code calls an error once
# they pass its max_tokens.
LLAMACPP_ARGS = ("--ctx", "4096", "--predict", "256", "--temperature", "0", "--threads", "2")


# Codex always sends tools. SmolLM2's chat template has none, so llama.cpp's /props does not
# claim tool support and the capability gate would refuse Codex; llama.cpp still takes tools
# in its generic format, which is what an operator declares here (docs/clients.md).
TOOLS_DECLARED = (
    f'[[upstreams.assets]]\nasset_id = "{MODEL}"\ncapabilities = ["completion", "tools"]\n'
)


async def start_gateway(nursery: trio.Nursery, tmp_path: Path, reap: list[Proc]) -> Proc:
    config = write_config(
        tmp_path, llamacpp_toml(MODEL, free_port(), args=LLAMACPP_ARGS) + TOOLS_DECLARED
    )
    gateway = await spawn_gateway(nursery, config)
    reap.append(gateway)
    await wait_routable(gateway.url, MODEL)
    return gateway


def base_env(home: Path) -> dict[str, str]:
    """Only what an agent needs: no proxy, key or config of the machine leaks in."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def claude_env(home: Path, gateway: Proc) -> dict[str, str]:
    """Claude Code on the gateway: every model alias (main, small/fast, haiku, sonnet, opus)
    is ours, so no call can ask for a model the hive does not have."""
    env = base_env(home)
    env.update({
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_MODEL": MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": MODEL,
        # Its max_tokens (32000 by default): llama.cpp's --predict cap does not hold on its
        # own /v1/messages, where SmolLM2 otherwise runs on for a thousand tokens at times.
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "512",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
    })
    return env


def claude_argv(claude: Path) -> list[str]:
    return [
        str(claude), "-p", PROMPT, "--model", MODEL,
        "--system-prompt", SYSTEM,
        "--tools", "", "--strict-mcp-config", "--setting-sources", "", "--max-turns", "1",
    ]


def codex_config(codex_home: Path, gateway: Proc) -> None:
    """`$CODEX_HOME/config.toml`: the hive as the one provider, and the first turn small.

    Every key is one this Codex knows (the test runs it with --strict-config)."""
    codex_home.mkdir(parents=True)
    instructions = codex_home / "instructions.md"
    instructions.write_text(SYSTEM + "\n")
    (codex_home / "config.toml").write_text(f"""\
model = "{MODEL}"
model_provider = "geniehive"
model_context_window = 4096
model_instructions_file = "{instructions}"
include_permissions_instructions = false
include_apps_instructions = false
include_environment_context = false
project_doc_max_bytes = 0
web_search = "disabled"
check_for_update_on_startup = false

[model_providers.geniehive]
name = "GenieHive"
base_url = "{gateway.url}/v1"
env_key = "GENIEHIVE_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[skills]
include_instructions = false

[agents]
enabled = false

[analytics]
enabled = false

[features]
goals = false
view_image = false
shell_tool = false
unified_exec = false
# These would sync plugin catalogues from github.com.
plugins = false
remote_plugin = false
apps = false
""")


def codex_argv(codex: Path) -> list[str]:
    return [str(codex), "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral",
            "--color", "never", PROMPT]


async def run_agent(argv: list[str], env: dict[str, str], cwd: Path
                    ) -> subprocess.CompletedProcess[bytes]:
    await trio.Path(cwd).mkdir(parents=True, exist_ok=True)
    return await trio.run_process(
        argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
        capture_stdout=True, capture_stderr=True, check=False,
    )


def request_lines(gateway: Proc, endpoint: str) -> list[str]:
    """The gateway's request log lines for one endpoint."""
    return [line for line in gateway.text().splitlines()
            if "geniehive.request" in line and f" endpoint={endpoint} " in line]


def explain(result: subprocess.CompletedProcess[bytes], gateway: Proc) -> str:
    return (f"exit {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}\n"
            f"stderr: {result.stderr.decode(errors='replace')[-3000:]}\n"
            f"gateway:\n{gateway.text()[-3000:]}")


async def test_claude_code_answers_through_the_messages_api(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, claude_code: Path,
    reap: list[Proc],
) -> None:
    with trio.fail_after(120):
        gateway = await start_gateway(nursery, tmp_path, reap)
        result = await run_agent(claude_argv(claude_code),
                                 claude_env(tmp_path / "home", gateway), tmp_path / "work")
    assert result.returncode == 0, explain(result, gateway)
    assert result.stdout.decode().strip(), explain(result, gateway)
    answered = request_lines(gateway, "messages")
    assert answered, explain(result, gateway)
    assert all(re.search(r" status=200 ", line) for line in answered), answered


async def test_codex_answers_through_the_responses_api(
    nursery: trio.Nursery, tmp_path: Path, llamacpp: None, codex: Path, reap: list[Proc],
) -> None:
    with trio.fail_after(120):
        gateway = await start_gateway(nursery, tmp_path, reap)
        codex_home = tmp_path / "codex-home"
        codex_config(codex_home, gateway)
        env = base_env(tmp_path / "home")
        env.update({"CODEX_HOME": str(codex_home), "GENIEHIVE_API_KEY": KEY})
        result = await run_agent(codex_argv(codex), env, tmp_path / "work")
    assert result.returncode == 0, explain(result, gateway)
    # The last message is printed alone on stdout; the session's log goes to stderr.
    assert result.stdout.decode().strip(), explain(result, gateway)
    answered = request_lines(gateway, "responses")
    assert answered, explain(result, gateway)
    # Codex closes the stream as soon as it has read `response.completed`: the answer ends
    # with that event, so the request is logged as answered, not as a client gone (499).
    assert all(" status=200 " in line for line in answered), answered
