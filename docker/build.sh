#!/usr/bin/env bash
# Builds the image weir:dev from this checkout: compiles `weir`, strips it, copies it and
# the shared libraries it links into a scratch root, and runs `docker build`.
# PROFILE=release (default) or test (reuses the test build of CI: quicker, slower binary).
# WEIR_BIN=path uses a binary already built (CI passes the one its workspace build made, so
# that building the image compiles nothing again).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
case "$PROFILE" in
  release) DIR=release ;;
  test | dev) DIR=debug ;;
  *) echo "PROFILE must be release, test or dev" >&2; exit 2 ;;
esac
if [ -n "${WEIR_BIN:-}" ]; then
  BIN="$WEIR_BIN"
else
  cargo build --locked --profile "$PROFILE" -p weir-server --bin weir
  BIN="target/$DIR/weir"
fi
# The compose cluster's certificates (its members speak mutual TLS): made once, kept.
if [ ! -f docker/tls/ca.key ]; then
  "$BIN" tls generate --dir docker/tls --nodes 3 --name 'weir{i}' --name localhost >/dev/null
fi
CTX=$(mktemp -d "${TMPDIR:-/tmp}/weir-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
ROOT="$CTX/rootfs"
mkdir -p "$ROOT/usr/local/bin" "$ROOT/var/lib/weir" "$ROOT/etc/weir" "$ROOT/tmp"
strip -o "$ROOT/usr/local/bin/weir" "$BIN"
# Every library the dynamic loader resolves, and the loader itself.
for lib in $(ldd "$BIN" | awk '/=>/ { print $3 } /^[ \t]*\/lib/ { print $1 }'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
cp docker/Dockerfile "$CTX/"
docker build -q -t weir:dev "$CTX"
echo "built weir:dev ($(du -sh "$ROOT" | cut -f1) root)"
