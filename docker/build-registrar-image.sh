#!/usr/bin/env bash
# Build the pykv-registrar image without any registry or package index inside the build:
# the pykv wheel and its dependencies' wheels are prepared on this host, then installed
# offline on BASE (default: the local pykv-python-base:1, made by build-python-base.sh).
#
#   bash docker/build-registrar-image.sh [IMAGE] [BASE]     (default pykv-registrar:dev)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

image=${1:-pykv-registrar:dev}
base=${2:-pykv-python-base:1}
if [[ $base == pykv-python-base:* ]]; then
  bash docker/build-python-base.sh "$base"
fi
pyver=$(docker run --rm --entrypoint python3 "$base" -c \
  'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/dist"
uv build --quiet --wheel -o "$ctx/dist" . >/dev/null
# The registrar extra's dependencies, as wheels for the base image's Python.
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then # e.g. inside a uv venv
  pip=(env -u VIRTUAL_ENV uv tool run --quiet pip)
fi
"${pip[@]}" download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version "$pyver" --platform manylinux2014_x86_64 --platform any \
  -d "$ctx/dist" 'platformdirs>=4' 'docker>=7.1' 'tenacity>=8.2' 'prometheus-client>=0.20' \
  2>"$ctx/pip.log" || { cat "$ctx/pip.log" >&2; exit 1; }
docker build --quiet -f docker/Dockerfile.registrar -t "$image" \
  --build-arg BASE="$base" --build-arg PIP_OPTIONS=--no-index "$ctx" >/dev/null
echo "$image"
