#!/usr/bin/env bash
# Install everything (servers included) and run every check and test: the README's second
# command, and what CI runs (.ci/run). Idempotent; quick when everything is already there.
#   PYKV_SKIP_PROVISION=1  do not install or start servers (unit tests only)
#   extra arguments go to pytest, e.g. scripts/test.sh -k sqlite
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - started))"; }

step "python environment"
export UV_PYTHON_DOWNLOADS=never
if ! command -v uv >/dev/null 2>&1; then
    # uv in a virtual environment of its own: Debian's python3 refuses pip installs outside one
    tools=${XDG_CACHE_HOME:-$HOME/.cache}/pykv/tools
    if [[ ! -x $tools/bin/uv ]]; then
        python3 -m venv "$tools"
        "$tools/bin/python" -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
    fi
    export PATH="$tools/bin:$PATH"
fi
uv sync --all-packages --all-extras --quiet

integration=()
if [[ ${PYKV_SKIP_PROVISION:-0} != 1 && -f scripts/provision.sh ]]; then
    step "servers and images"
    bash scripts/provision.sh
    integration=(tests/integration)
fi

step "static checks"
bash scripts/check.sh

step "tests"
uv run --no-sync pytest -p no:cacheprovider -ra tests/unit tests/faults "${integration[@]}" "$@"
step "done"
