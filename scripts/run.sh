#!/bin/sh
# scripts/run.sh: install, build, and run tame-eval on Split Fashion-MNIST
# (5 tasks, 10 epochs, global labels).  Until the daemon lands (issue 3) this
# is what "start tamed" means: the engine learning a shifting stream.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
[ -d build ] || meson setup build --buildtype=release
ninja -C build
exec ./build/tame-eval --stream split "$@"
