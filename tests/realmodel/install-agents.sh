#!/usr/bin/env bash
# Installs the coding agents the real-server tier drives against a gateway
# (tests/realmodel/test_agents.py), from the npm registry, pinned:
#   - Claude Code (@anthropic-ai/claude-code): the newest 2.x whose package still accepts
#     Node 20 (2.1.198 and later declare node >= 22);
#   - Codex (@openai/codex): a Node launcher around a native binary that npm installs as an
#     optional dependency per platform (@openai/codex-linux-x64 here).
# Both go to $GENIEHIVE_REALMODEL_DIR/npm (default ~/.cache/geniehive-realmodel/npm), outside
# the work tree, like install.sh's venvs; tests/realmodel/support.py looks there.
#
# Idempotent: when the recorded package list matches and both programs answer --version,
# nothing is fetched, so a second run takes about a second. Without npm it says so and
# stops (exit 0): the agent tests then skip, as they say.
set -euo pipefail

DIR="${GENIEHIVE_REALMODEL_DIR:-$HOME/.cache/geniehive-realmodel}"
PREFIX="$DIR/npm"
BIN="$PREFIX/node_modules/.bin"
PACKAGES=(@anthropic-ai/claude-code@2.1.197 @openai/codex@0.171.0)

# A throwaway HOME and CODEX_HOME: --version must leave no state in the user's.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

run_agent() {
    HOME="$SCRATCH" CODEX_HOME="$SCRATCH" "$BIN/$1" --version 2>/dev/null
}

agents_answer() {
    # Both programs run: a missing native binary fails here, not in a test.
    run_agent claude >/dev/null && run_agent codex >/dev/null
}

if ! command -v npm >/dev/null; then
    echo "coding agents: npm is not installed; the agent tests will skip"
    exit 0
fi

wanted="${PACKAGES[*]}"
if [ -f "$PREFIX/.installed" ] && [ "$(cat "$PREFIX/.installed")" = "$wanted" ] \
        && agents_answer; then
    echo "coding agents up to date ($wanted)"
    exit 0
fi

rm -rf "$PREFIX"
mkdir -p "$PREFIX"
# --include=optional: the native binaries are optional dependencies, which an npm configured
# to omit them would skip.
npm install --prefix "$PREFIX" --no-audit --no-fund --save-exact --include=optional \
    --loglevel=error "${PACKAGES[@]}"
# Claude Code's postinstall copies its native binary over the bin/claude.exe placeholder;
# an npm that holds install scripts back leaves the placeholder, so run it here.
if ! run_agent claude >/dev/null; then
    (cd "$PREFIX/node_modules/@anthropic-ai/claude-code" && node install.cjs)
fi
if ! agents_answer; then
    echo "coding agents: installed, but claude or codex does not run (is the native" \
         "package for $(uname -m) there? ls $PREFIX/node_modules/@openai)" >&2
    exit 1
fi
# Written last: an interrupted install is redone next time.
echo "$wanted" > "$PREFIX/.installed"
echo "coding agents installed: $(run_agent claude), $(run_agent codex)"
