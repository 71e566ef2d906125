#!/usr/bin/env bash
# Run the unit tests on every other Python the metadata claims (requires-python >= 3.10) that
# this machine has from Debian's packages: trixie's 3.13, unpacked by scripts/provision.sh.
# (The main run, scripts/test.sh, uses the machine's python3: bookworm's 3.11.) Why these and no
# others: CONTRIBUTING.md, "Python versions".
#
#   bash scripts/test-pythons.sh [PYTEST_ARGS...]
#
# Each interpreter gets its own environment from uv.lock (--frozen: the same pins as the main
# run), under the cache directory, outside the checkout.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never

pythons=(/usr/local/lib/pykv/python3.13/usr/bin/python3.13)
envs=${XDG_CACHE_HOME:-$HOME/.cache}/pykv/envs
ran=0
for python in "${pythons[@]}"; do
  if [[ ! -x $python ]]; then
    echo "test-pythons: $python is missing (scripts/provision.sh installs it)" >&2
    exit 1
  fi
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  echo "== unit tests on Python $version ($python)"
  # Not the docs group: the documentation is built on the main Python only.
  UV_PROJECT_ENVIRONMENT=$envs/py$version uv sync --quiet --frozen --all-packages --all-extras \
    --no-group docs --python "$python"
  "$envs/py$version/bin/python" -m pytest -p no:cacheprovider -q tests/unit "$@"
  ran=$((ran + 1))
done
echo "test-pythons: unit tests passed on $ran more Python version(s)"
