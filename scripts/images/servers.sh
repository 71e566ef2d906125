#!/usr/bin/env bash
# Build the server image the compose file runs Consul, etcd and ZooKeeper from, since no image can
# be pulled: a minimal Debian bookworm root filesystem (debootstrap) with etcd 3.4 and the
# ZooKeeper 3.8 jars from Debian, Java 17, and the Consul binary provision.sh installed.
#
#   bash scripts/images/servers.sh IMAGE RECIPE_HASH MIRROR CONSUL_BINARY CACHE_DIR
#
# The commands the compose file gives (`consul agent ...`, `etcd ...`, `zkServer.sh
# start-foreground` with /conf/zoo.cfg) are those the official images answer to as well.
set -euo pipefail
shopt -s inherit_errexit

image=$1
recipe=$2
mirror=$3
consul=$4
cache=$5

root=$cache/servers-rootfs
debs=$cache/debootstrap-debs # kept: a rebuild does not download again

remove_root() { # unmount what a failed debootstrap may have left (proc, sys), then delete
  local mnt
  awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mnt; do umount -l "$mnt" || true; done
  rm -rf --one-file-system "$root"
}
remove_root
mkdir -p "$root" "$debs"
trap remove_root EXIT

# The zookeeper package would pull default-jre (X11, sound); the library package has the server.
include=openjdk-17-jre-headless,libzookeeper-java,etcd-server,etcd-client
debootstrap --foreign --variant=minbase --include="$include" --cache-dir="$debs" \
  bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
  { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
# Between the two stages: packages must not start their services (etcd-server has an init script).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
chroot "$root" /debootstrap/debootstrap --second-stage >>"$cache/debootstrap.log" 2>&1 ||
  { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }

# Smaller image: no documentation, locales, apt lists or package cache.
rm -rf "$root"/usr/share/{doc,man,info,locale}/* "$root"/var/lib/apt/lists/* \
  "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/debootstrap

install -m 755 "$consul" "$root/usr/local/bin/consul"
mkdir -p "$root"/{consul/data,consul/config,conf,data,etcd-data}
chmod 700 "$root/etcd-data" # etcd warns about anything wider

# What the official zookeeper image's entrypoint and zkServer.sh do, for `start-foreground`.
cat >"$root/usr/local/bin/zkServer.sh" <<'EOF'
#!/bin/sh
# zkServer.sh start-foreground: config $ZOOCFGDIR/zoo.cfg (default /conf/zoo.cfg); writes
# $dataDir/myid from $ZOO_MY_ID when missing; JVM options from $SERVER_JVMFLAGS and $JVMFLAGS.
set -eu
if [ "${1:-}" != start-foreground ]; then
  echo "zkServer.sh: only start-foreground is supported in this image" >&2
  exit 2
fi
cfgdir=${ZOOCFGDIR:-/conf}
datadir=$(sed -n 's/^[[:space:]]*dataDir[[:space:]]*=[[:space:]]*//p' "$cfgdir/zoo.cfg")
datadir=${datadir:-/data}
mkdir -p "$datadir"
[ -f "$datadir/myid" ] || echo "${ZOO_MY_ID:-1}" >"$datadir/myid"
# slf4j-simple: the server logs to stderr, so `docker logs` shows it; not each health check's
# four-letter word, though.
# shellcheck disable=SC2086 # the flag variables hold several words
exec java ${SERVER_JVMFLAGS:-} ${JVMFLAGS:-} \
  -Dorg.slf4j.simpleLogger.showDateTime=true \
  -Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd\'T\'HH:mm:ss.SSS \
  -Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.NIOServerCnxn=warn \
  -cp "$cfgdir:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar" \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$cfgdir/zoo.cfg"
EOF
chmod 755 "$root/usr/local/bin/zkServer.sh"

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.pykv.recipe=$recipe" \
  --change 'CMD ["bash"]' \
  - "$image" >/dev/null
