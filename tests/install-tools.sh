#!/usr/bin/env bash
# Installs what the test suite drives besides the project's own venv (`make test` runs this):
#   - Debian packages: chromium (the playground in a headless browser), wrk and nginx (the
#     performance harness's smoke test), postgresql (the registry's PostgreSQL backend, run
#     by the tests on a throwaway folder: tests/pgserver.py);
#   - the real-server tier's servers and tools (tests/realmodel/install.sh).
# Idempotent: what is present is left alone, so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests need: ${need[*]} (apt-get install -y ${need[*]}, as root)" >&2
    exit 1
  fi
  began=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  echo "test tools: installed ${need[*]} in $((SECONDS - began)) s"
fi

bash tests/realmodel/install.sh
