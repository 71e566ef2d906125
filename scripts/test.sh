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
others_pid=""
if [[ ${PYKV_SKIP_PROVISION:-0} != 1 && -f scripts/provision.sh ]]; then
    step "servers and images"
    bash scripts/provision.sh
    integration=(tests/integration)
    # The unit tests on the other Python versions (provision.sh installed them), beside the
    # steps below: they mostly wait, so this costs little time.
    others_log=$(mktemp)
    bash scripts/test-pythons.sh >"$others_log" 2>&1 &
    others_pid=$!
    trap 'kill "$others_pid" 2>/dev/null || true' EXIT # a failed step below ends it too
    # The sidecar's image from this checkout, built here rather than under a test's timeout.
    step "registrar image"
    timeout 600 bash docker/build-registrar-image.sh pykv-registrar:test >/dev/null
    export PYKV_REGISTRAR_IMAGE=pykv-registrar:test
fi

step "static checks"
bash scripts/check.sh

step "distributions: build, install in a clean venv, run"
bash scripts/check-dist.sh

step "docs: mkdocs build --strict, headless browser"
if [[ ${PYKV_SKIP_PROVISION:-0} == 1 ]] && ! command -v chromium >/dev/null; then
    bash scripts/check-docs.sh --no-browser   # chromium comes with provisioning
else
    bash scripts/check-docs.sh
fi

if [[ -n $others_pid ]]; then
    step "unit tests on the other Python versions (started after provisioning)"
    others_rc=0
    wait "$others_pid" || others_rc=$?
    cat "$others_log"
    rm -f "$others_log"
    ((others_rc == 0)) || exit "$others_rc"
fi

step "tests"
uv run --no-sync pytest -p no:cacheprovider -ra tests/unit tests/faults "${integration[@]}" "$@"
step "done"
