#!/usr/bin/env bash
# Build the documentation site and look at it in a real browser, as CI does:
#   1. `mkdocs build --strict`: every warning fails, broken internal links and anchors included
#      (mkdocs.yml's `validation`), and so does an API page whose docstrings do not render.
#   2. Serve the built site on 127.0.0.1 and screenshot the home page and an API reference page
#      with headless Chromium (Debian's, installed by scripts/provision.sh); each screenshot must
#      be a real page: a PNG of the window's size with enough distinct colours to hold text.
#
#   bash scripts/check-docs.sh [--no-browser]     (screenshots are kept in $PYKV_DOCS_SHOTS,
#                                                  default: a temporary directory)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1 # mkdocs-material's banner about its future, on every build

browser=1
[[ ${1:-} == --no-browser ]] && browser=0

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

site=$work/site
uv run --no-sync mkdocs build --strict --site-dir "$site" >"$work/build.log" 2>&1 ||
  { grep -v '^INFO' "$work/build.log" >&2; echo "check-docs: mkdocs build --strict failed" >&2; exit 1; }
for page in index.html reference/pykv.html contract.html backends/index.html; do
  [[ -s $site/$page ]] || { echo "check-docs: $page was not built" >&2; exit 1; }
done
# The API page really holds generated reference, not an empty shell.
grep -q 'doc-heading' "$site/reference/pykv.html" && grep -q 'open_store' "$site/reference/pykv.html" ||
  { echo "check-docs: reference/pykv.html has no generated API reference" >&2; exit 1; }
echo "check-docs: built $(find "$site" -name '*.html' | wc -l) pages with --strict"

if ((browser == 0)); then
  echo "check-docs: browser check skipped (--no-browser)"
  exit 0
fi
command -v chromium >/dev/null || { echo "check-docs: no chromium (scripts/provision.sh installs it)" >&2; exit 1; }

port=${PYKV_DOCS_PORT:-18765}
uv run --no-sync python -m http.server "$port" --bind 127.0.0.1 --directory "$site" \
  >"$work/http.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$port/index.html" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/http.log" >&2; exit 1; }
  sleep 0.1
done

shots=${PYKV_DOCS_SHOTS:-$work/shots}
mkdir -p "$shots"
shoot() { # shoot PAGE PNG: screenshot http://127.0.0.1:PORT/PAGE into PNG
  rm -f "$2"
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --hide-scrollbars --window-size=1280,900 \
    --user-data-dir="$work/chromium" --virtual-time-budget=5000 \
    --screenshot="$2" "http://127.0.0.1:$port/$1" >"$work/chromium.log" 2>&1 ||
    { tail -n 20 "$work/chromium.log" >&2; echo "check-docs: chromium failed on $1" >&2; exit 1; }
}
shoot index.html "$shots/home.png"
shoot reference/pykv.html "$shots/api.png"
uv run --no-sync python - "$shots/home.png" "$shots/api.png" <<'PY'
import sys

from matplotlib.image import imread

for path in sys.argv[1:]:
    image = imread(path)  # floats in [0, 1], height x width x channels
    height, width = image.shape[:2]
    if (width, height) != (1280, 900):
        sys.exit(f"check-docs: {path} is {width}x{height}, not the 1280x900 window")
    pixels = (image[..., :3] * 255).astype("uint8").reshape(-1, 3)
    colours = len({tuple(p) for p in pixels[:: 7].tolist()})
    dark = float((pixels.mean(axis=1) < 128).mean())
    # A blank or error page has a handful of colours and no dark ink; rendered text and the
    # theme's header have hundreds of anti-aliased shades and a few percent of dark pixels.
    if colours < 50 or not 0.005 < dark < 0.9:
        sys.exit(f"check-docs: {path} looks blank ({colours} colours, {dark:.1%} dark pixels)")
    print(f"check-docs: {path}: {width}x{height}, {colours} colours, {dark:.1%} dark pixels")
PY
echo "check-docs: ok"
