#!/usr/bin/env bash
# Build the tiny workload image the registrar tests run: a static busybox with a link for each
# applet (sh, httpd, nc, sleep, ...) and a page in /www, imported from a directory tree since no
# image can be pulled.
#
#   bash scripts/images/busybox.sh IMAGE RECIPE_HASH      (provision.sh calls it)
#
# Try it: docker run -d -p 127.0.0.1:18080:80 IMAGE httpd -f -p 80 -h /www
set -euo pipefail
shopt -s inherit_errexit

image=$1
recipe=$2
busybox=/bin/busybox # from busybox-static: one static binary, no libraries needed

if [[ $(ldd "$busybox" 2>&1 || true) != *"not a dynamic executable"* ]]; then
  echo "busybox.sh: $busybox is not a static binary (install busybox-static)" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,www,root,usr/bin}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
ln -s ../../bin/env "$root/usr/bin/env"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '<html><body>pykv busybox</body></html>\n' >"$root/www/index.html"

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/bin:/usr/bin' \
  --change 'CMD ["sh"]' \
  --change "LABEL org.pykv.recipe=$recipe" \
  - "$image" >/dev/null
