#!/usr/bin/env bash
# Static checks, as CI runs them: ruff (lint and format) and mypy --strict on every package.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { echo "+ $*"; "$@"; }
run uv run --no-sync ruff check .
run uv run --no-sync ruff format --check .
packages=(pykv)
for dir in backends/*/; do
    name=$(basename "$dir")
    [[ $name == _* ]] && continue
    pkg="$dir/pykv_$name"
    [[ -d $pkg ]] && packages+=("$pkg")
done
run uv run --no-sync mypy --strict "${packages[@]}" tests bench
