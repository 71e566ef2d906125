#!/usr/bin/env bash
# Provision what the integration tests need on a Debian 12 (bookworm) machine, as root:
# Debian packages, Consul (bullseye), Docker Compose v2 and etcd 3.5 (trixie), a running Docker
# engine and the locally built images the compose file uses. Idempotent: each step checks first
# and does nothing when its result is already there, so a warm run takes a few seconds.
#
#   bash scripts/provision.sh
#
# Environment:
#   PYKV_CACHE_DIR       scratch space for side-suite apt lists, downloads and rootfs builds
#                        (default /var/cache/pykv)
#   PYKV_DOCKERD_LOG     where a dockerd started here logs (default /var/log/pykv-dockerd.log)
#   PYKV_SERVERS_IMAGE   name of the locally built server image (default pykv-servers:1)
#   PYKV_BUSYBOX_IMAGE   name of the locally built workload image (default pykv-busybox:1)
#   PYKV_PYTHON_BASE_IMAGE  base image of the registrar's image (default pykv-python-base:1)
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${PYKV_CACHE_DIR:-/var/cache/pykv}
dockerd_log=${PYKV_DOCKERD_LOG:-/var/log/pykv-dockerd.log}
servers_image=${PYKV_SERVERS_IMAGE:-pykv-servers:1}
busybox_image=${PYKV_BUSYBOX_IMAGE:-pykv-busybox:1}
python_base_image=${PYKV_PYTHON_BASE_IMAGE:-pykv-python-base:1}

consul_version=1.8.7
etcd35_minor=3.5 # second etcd for the compatibility tests (trixie's etcd-server, 3.5.x)
etcd35_bin=/usr/local/lib/pykv/etcd-3.5/etcd
compose_min_minor=23 # configs with inline `content:` need Compose >= 2.23
# A second Python for the unit tests (bookworm's is 3.11): trixie's 3.13, unpacked with the
# libraries it links (trixie's C library among them, newer than bookworm's) under one root.
py313_root=/usr/local/lib/pykv/python3.13
py313_packages=(python3.13-minimal libpython3.13-minimal libpython3.13-stdlib libc6 libcrypt1
  libssl3t64 libffi8 libsqlite3-0 libexpat1 zlib1g libbz2-1.0 liblzma5 libzstd1 libmpdec4 libuuid1
  libstdc++6 libgcc-s1)
# podman + netavark (its network stack, the default of podman 4): the registrar's tests against a
# Podman socket (`podman system service`, Docker-compatible API).
# chromium: the docs check screenshots the built site in a real headless browser; patchelf: points
# trixie's Python 3.13 (below) at its own C library.
# systemd: systemd-analyze verifies the registrar's unit file; zsh: the completion test.
apt_packages=(docker.io etcd-server etcd-client zookeeper debootstrap busybox-static podman netavark
  chromium patchelf systemd zsh)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg # holds bullseye, bookworm and trixie keys

export DEBIAN_FRONTEND=noninteractive

log() { printf '%s\n' "$*"; }
die() {
  printf 'provision: %s\n' "$*" >&2
  exit 1
}

now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
fmt_us() { printf '%d.%01ds' "$(($1 / 1000000))" "$((($1 % 1000000) / 100000))"; }

step_no=0
step() { # step TITLE FUNCTION: run FUNCTION, print its title and how long it took
  local title=$1 start
  step_no=$((step_no + 1))
  log "==> [$step_no] $title"
  start=$(now_us)
  "$2"
  log "    $title: $(fmt_us $(($(now_us) - start)))"
}

# The machine's own Debian mirror, read at run time so that no host name lives in the repository.
debian_mirror() {
  local uri=""
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list)
  fi
  [[ -n $uri ]] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources"
  printf '%s' "${uri%/}"
}

# ---------------------------------------------------------------------------------------------
# Debian packages from the machine's own suite

apt_updated=0
apt_update_once() {
  if ((apt_updated == 0)); then
    log "    apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
}

installed() { # installed PKG: true when dpkg has PKG fully installed
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

ensure_apt_packages() {
  local pkg missing=()
  for pkg in "${apt_packages[@]}"; do
    installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "    all present: ${apt_packages[*]}"
    return
  fi
  log "    installing: ${missing[*]}"
  apt_update_once
  # Packages must not start their services (dockerd is started below, the servers run in
  # containers): policy-rc.d answering 101 tells invoke-rc.d so, as in container builds.
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null >"$cache/apt-install.log" 2>&1 || rc=$?
  ((made_policy == 0)) || rm -f /usr/sbin/policy-rc.d
  if ((rc != 0)); then
    tail -n 30 "$cache/apt-install.log" >&2
    die "apt-get install failed (full log: $cache/apt-install.log)"
  fi
}

# ---------------------------------------------------------------------------------------------
# Single packages from another Debian suite, without touching the machine's apt state: a private
# deb822 sources file, private lists, no package cache files, `apt-get download`, `dpkg -x`.

side_apt() { # side_apt SUITE ARGS...: apt-get against SUITE only
  local suite=$1 dir=$cache/apt-$1
  shift
  apt-get -qq \
    -o "Dir::Etc::SourceList=$dir/$suite.sources" -o Dir::Etc::SourceParts=/dev/null \
    -o "Dir::State::Lists=$dir/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    -o Acquire::Languages=none -o APT::Get::List-Cleanup=1 "$@"
}

side_fetch() { # side_fetch SUITE PKG: unpack PKG from SUITE, print the directory it went to
  local suite=$1 pkg=$2 dir=$cache/apt-$1
  mkdir -p "$dir/lists/partial" "$dir/debs"
  cat >"$dir/$suite.sources" <<EOF
Types: deb
URIs: $(debian_mirror)
Suites: $suite
Components: main
Signed-By: $keyring
EOF
  # apt downloads as the unprivileged _apt user when that user can write there.
  if id -u _apt >/dev/null 2>&1; then
    chown _apt:root "$dir/lists/partial" "$dir/debs"
  fi
  if [[ -z $(find "$dir/lists" -maxdepth 1 -name '*_Packages*' -print -quit) ]]; then
    log "    apt-get update ($suite)" >&2
    side_apt "$suite" update >&2
  fi
  rm -f "$dir/debs/${pkg}_"*.deb
  # A failed download usually means stale lists (the mirror moved on): refresh once and retry.
  if ! (cd "$dir/debs" && side_apt "$suite" download "$pkg" >&2); then
    log "    apt-get update ($suite), lists were stale" >&2
    side_apt "$suite" update >&2
    (cd "$dir/debs" && side_apt "$suite" download "$pkg" >&2)
  fi
  local deb
  deb=$(find "$dir/debs" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)
  [[ -n $deb ]] || die "apt-get download $pkg ($suite) left no .deb"
  log "    fetched $(basename "$deb")" >&2
  rm -rf "$dir/x-$pkg"
  dpkg -x "$deb" "$dir/x-$pkg"
  printf '%s' "$dir/x-$pkg"
}

ensure_consul() {
  if [[ -x /usr/local/bin/consul ]] &&
    [[ $(/usr/local/bin/consul version 2>/dev/null | head -n 1) == "Consul v$consul_version" ]]; then
    log "    present: $(/usr/local/bin/consul version | head -n 1)"
    return
  fi
  local x
  x=$(side_fetch bullseye consul)
  install -m 755 "$x/usr/bin/consul" /usr/local/bin/consul
  rm -rf "$x"
  local got
  got=$(/usr/local/bin/consul version | head -n 1)
  [[ $got == "Consul v$consul_version" ]] || die "bullseye gave $got, expected Consul v$consul_version"
  log "    installed /usr/local/bin/consul: $got"
}

compose_ok() { # a `docker compose` v2 plugin new enough for this compose file
  local v
  v=$(docker compose version --short 2>/dev/null) || return 1
  v=${v#v}
  [[ $v =~ ^2\.([0-9]+) ]] && ((BASH_REMATCH[1] >= compose_min_minor))
}

ensure_compose() {
  command -v docker >/dev/null || die "no docker client on PATH (is docker.io installed?)"
  if compose_ok; then
    log "    present: docker compose $(docker compose version --short)"
    return
  fi
  local x bin
  x=$(side_fetch trixie docker-compose)
  bin=$x/usr/libexec/docker/cli-plugins/docker-compose
  [[ -x $bin ]] || bin=$x/usr/bin/docker-compose
  [[ -x $bin ]] || die "no docker-compose binary in trixie's docker-compose package"
  install -D -m 755 "$bin" /usr/libexec/docker/cli-plugins/docker-compose
  rm -rf "$x"
  compose_ok || die "docker compose still not usable: $(docker compose version 2>&1 || true)"
  log "    installed /usr/libexec/docker/cli-plugins/docker-compose: $(docker compose version --short)"
}

etcd_version_of() { # etcd_version_of BIN: "3.5.16", empty when BIN does not run
  "$1" --version 2>/dev/null | awk '$1 == "etcd" && $2 == "Version:" { print $3; exit }' || true
}

ensure_etcd35() {
  local got
  if [[ -x $etcd35_bin ]]; then
    got=$(etcd_version_of "$etcd35_bin")
    if [[ $got == "$etcd35_minor".* ]]; then
      log "    present: $etcd35_bin (etcd $got)"
      return
    fi
  fi
  local x
  x=$(side_fetch trixie etcd-server)
  [[ -x $x/usr/bin/etcd ]] || die "no usr/bin/etcd in trixie's etcd-server package"
  # Beside, not over, bookworm's /usr/bin/etcd (3.4): the tests run both.
  install -D -m 755 "$x/usr/bin/etcd" "$etcd35_bin"
  rm -rf "$x"
  got=$(etcd_version_of "$etcd35_bin")
  [[ $got == "$etcd35_minor".* ]] || die "trixie gave etcd '$got', expected $etcd35_minor.x"
  log "    installed $etcd35_bin: etcd $got"
}

# trixie's Python 3.13 beside bookworm's 3.11, without replacing any of the machine's libraries:
# its packages unpacked under one root and the interpreter pointed (patchelf) at the loader and
# libraries there. Rebuilt when the package list changes (a stamp holds its hash).
py313_ok() {
  [[ -x $py313_root/usr/bin/python3.13 && -f $py313_root/.packages ]] &&
    [[ $(<"$py313_root/.packages") == "${py313_packages[*]}" ]] &&
    "$py313_root/usr/bin/python3.13" -c \
      'import sys, ssl, sqlite3, ctypes, decimal, lzma, bz2, zlib, uuid; assert sys.version_info[:2] == (3, 13)' \
      >/dev/null 2>&1
}

ensure_python313() {
  if py313_ok; then
    log "    present: $py313_root/usr/bin/python3.13 ($("$py313_root/usr/bin/python3.13" -V))"
    return
  fi
  command -v patchelf >/dev/null || die "no patchelf (is it in apt_packages?)"
  local tmp=$py313_root.new pkg x lib
  rm -rf "$tmp"
  mkdir -p "$tmp"
  for pkg in "${py313_packages[@]}"; do
    x=$(side_fetch trixie "$pkg")
    cp -a "$x/." "$tmp/"
    rm -rf "$x"
  done
  lib=$py313_root/usr/lib/x86_64-linux-gnu # the final place: patchelf writes absolute paths
  patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$lib" \
    "$tmp/usr/bin/python3.13"
  printf '%s' "${py313_packages[*]}" >"$tmp/.packages"
  rm -rf "$py313_root"
  mv "$tmp" "$py313_root"
  py313_ok || die "trixie's python3.13 does not run here: $("$py313_root/usr/bin/python3.13" -V 2>&1)"
  log "    installed $py313_root/usr/bin/python3.13 ($("$py313_root/usr/bin/python3.13" -V))"
}

# ---------------------------------------------------------------------------------------------
# Docker engine

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

ensure_dockerd() {
  if engine_answers; then
    log "    engine answers: $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
    return
  fi
  command -v dockerd >/dev/null || die "no dockerd on PATH (is docker.io installed?)"
  log "    starting dockerd (log: $dockerd_log)"
  # setsid + nohup: the engine outlives this script and the shell that ran it; 9>&-: it must
  # not hold the provisioning lock.
  setsid nohup dockerd >>"$dockerd_log" 2>&1 </dev/null 9>&- &
  local deadline=$((SECONDS + 60))
  until engine_answers; do
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dockerd_log" >&2 || true
      die "dockerd did not answer within 60 s (log: $dockerd_log)"
    fi
    sleep 0.5
  done
  log "    engine answers: $(docker version -f '{{.Server.Version}}')"
}

# ---------------------------------------------------------------------------------------------
# Locally built images, labelled with a hash of their recipe: rebuilt when missing or stale.

recipe_hash() { cat "$@" | sha256sum | cut -c1-16; } # content only: same recipe, same image, wherever the checkout is

image_label() { # image_label IMAGE: the image's recipe label, empty when there is no image
  docker image inspect -f '{{ index .Config.Labels "org.pykv.recipe" }}' "$1" 2>/dev/null || true
}

ensure_image() { # ensure_image IMAGE RECIPE ARGS...
  local image=$1 recipe=$2 want have
  shift 2
  want=$(recipe_hash "$recipe")
  have=$(image_label "$image")
  if [[ $have == "$want" ]]; then
    log "    present: $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
    return
  fi
  local old=""
  if [[ -n $have ]]; then
    log "    $image is stale (recipe $have, now $want): rebuilding"
    old=$(docker image inspect -f '{{.Id}}' "$image")
  fi
  bash "$recipe" "$image" "$want" "$@"
  # The old build lost its tag; remove it unless a container still uses it.
  if [[ -n $old ]]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
  log "    built $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

ensure_busybox_image() {
  ensure_image "$busybox_image" "$here/images/busybox.sh"
}

# The registrar image's base (debootstrap with python3): built here, not in a test's fixture,
# so that no test waits a minute for it. The registrar image itself is built from the checkout
# by scripts/test.sh.
ensure_python_base_image() {
  ensure_image "$python_base_image" "$here/../docker/build-python-base.sh"
}

ensure_servers_image() {
  ensure_image "$servers_image" "$here/images/servers.sh" \
    "$(debian_mirror)" /usr/local/bin/consul "$cache"
}

# ---------------------------------------------------------------------------------------------

main() {
  [[ $(id -u) == 0 ]] || die "run as root (installs packages, starts dockerd)"
  mkdir -p "$cache"
  # One provisioning at a time on a machine.
  exec 9>"$cache/provision.lock"
  if ! flock -n 9; then
    log "waiting for another provision.sh (lock $cache/provision.lock)"
    flock -w 900 9 || die "another provision.sh held $cache/provision.lock for 15 minutes"
  fi
  local start
  start=$(now_us)
  step "Debian packages" ensure_apt_packages
  step "Consul $consul_version (bullseye)" ensure_consul
  step "Docker Compose v2 (trixie)" ensure_compose
  step "etcd $etcd35_minor (trixie)" ensure_etcd35
  step "Docker engine" ensure_dockerd
  step "image $busybox_image" ensure_busybox_image
  step "image $servers_image" ensure_servers_image
  step "image $python_base_image" ensure_python_base_image
  step "Python 3.13 (trixie)" ensure_python313
  log "provision: done in $(fmt_us $(($(now_us) - start)))"
}

main "$@"
