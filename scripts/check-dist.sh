#!/usr/bin/env bash
# Build the wheel and sdist of every distribution (pykvstore and each pykvstore-<backend>),
# install the wheels into a clean virtual environment — from the built files, never the source
# tree — and run the installed `pykv` from a directory outside the checkout:
# --version, demo, backends.
#
#   bash scripts/check-dist.sh [DIST_DIR]    (default: a temporary directory, removed after)
#
# uv builds each wheel from its sdist, so a file missing from an sdist fails here too.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dist=${1:-$work/dist}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' pykv/_version.py)
[[ -n $version ]] || { echo "check-dist: no __version__ in pykv/_version.py" >&2; exit 1; }

rm -rf "$dist"
uv build --quiet --all-packages -o "$dist" 2>"$work/build.log" || { cat "$work/build.log" >&2; exit 1; }
names=(pykvstore pykvstore_consul pykvstore_etcd pykvstore_zookeeper)
for name in "${names[@]}"; do
  for file in "$dist/$name-$version.tar.gz" "$dist/$name-$version-py3-none-any.whl"; do
    [[ -f $file ]] || { echo "check-dist: not built: $file" >&2; ls "$dist" >&2; exit 1; }
  done
  # Every distribution carries the license and the package's type marker.
  python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' \
    "$dist/$name-$version-py3-none-any.whl" >"$work/files"
  grep -q "dist-info/licenses/LICENSE$" "$work/files" ||
    { echo "check-dist: no LICENSE in $name's wheel" >&2; exit 1; }
done
echo "built: $(cd "$dist" && echo *)"

# A clean environment on the machine's python3, with the wheels by path: the backends come
# from dist/, the third-party dependencies from the package index.
uv venv --quiet --python "$(command -v python3)" "$work/venv"
uv pip install --quiet --python "$work/venv/bin/python" \
  "$dist/pykvstore-$version-py3-none-any.whl[all,testing]" \
  "$dist"/pykvstore_{consul,etcd,zookeeper}-"$version"-py3-none-any.whl

# From outside the checkout, on a store in the work directory: what a user gets.
cd "$work"
export PYKV_STORE="sqlite:///$work/demo.db"
origin=$("$work/venv/bin/python" -c 'import pykv; print(pykv.__file__)')
[[ $origin == "$work/venv/"* ]] || { echo "check-dist: pykv imported from $origin" >&2; exit 1; }
got=$("$work/venv/bin/pykv" --version)
[[ $got == "pykv $version" ]] || { echo "check-dist: pykv --version said '$got'" >&2; exit 1; }
"$work/venv/bin/pykv" demo >"$work/demo.out" || { cat "$work/demo.out" >&2; exit 1; }
"$work/venv/bin/pykv" backends | tee "$work/backends.out"
for want in pykvstore pykvstore-consul pykvstore-etcd pykvstore-zookeeper; do
  grep -qw -- "$want" "$work/backends.out" || { echo "check-dist: $want not in pykv backends" >&2; exit 1; }
done
if grep -q "failed to load" "$work/backends.out"; then
  echo "check-dist: a backend failed to load" >&2
  exit 1
fi
"$work/venv/bin/pykv-registrar" --help >/dev/null
echo "check-dist: ok: $got from the built wheels; demo ($(wc -l <"$work/demo.out") lines) and backends ran"
