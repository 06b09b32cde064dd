#!/bin/sh
# scripts/run.sh: install, build, and start tamed on 127.0.0.1:8080 with its
# default database path (./tamed.db).  Extra arguments go to tamed
# (`sh scripts/run.sh --help` lists them).
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
[ -d build ] || meson setup build --buildtype=release
ninja -C build
exec ./build/tamed "$@"
