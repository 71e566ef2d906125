#!/usr/bin/env bash
# Build a local Python base image for docker/Dockerfile.registrar when no registry can be
# reached (CI here): a minimal Debian bookworm root filesystem with python3 and python3-venv
# made by debootstrap, imported with `docker import`. Elsewhere use an official Python image.
#
#   bash docker/build-python-base.sh [IMAGE [RECIPE_HASH]]   (default pykv-python-base:1)
#
# scripts/provision.sh builds it with RECIPE_HASH (a hash of this file, kept as a label, so a
# changed recipe rebuilds). Without one: does nothing when IMAGE exists. The mirror is read from
# the machine's apt config so that no host name lives in the repository. Debs are cached in $PYKV_CACHE_DIR.
set -euo pipefail
shopt -s inherit_errexit

image=${1:-pykv-python-base:1}
recipe=${2:-}
cache=${PYKV_CACHE_DIR:-/var/cache/pykv}

if [[ -z $recipe ]] && docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
[[ -n $mirror ]] || { echo "no Debian mirror in debian.sources" >&2; exit 1; }

mkdir -p "$cache/python-base-debs"
root=$(mktemp -d "$cache/python-base-root.XXXXXX")
cleanup() {
  awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mnt; do umount -l "$mnt" || true; done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  --cache-dir="$cache/python-base-debs" bookworm "$root" "$mirror" \
  >"$cache/python-base-debootstrap.log" 2>&1 ||
  { tail -n 30 "$cache/python-base-debootstrap.log" >&2; exit 1; }
# Trim what a runtime image never needs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.pykv.recipe=$recipe" \
  - "$image" >/dev/null
