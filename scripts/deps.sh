#!/bin/sh
# scripts/deps.sh: install, by name, every Debian 12 package tamed needs to
# build, test and benchmark.  Run as root on a bare debian:bookworm.
set -eu
packages="gcc libc6-dev pkg-config meson ninja-build
  libopenblas-dev libopenblas-pthread-dev zlib1g-dev libjansson-dev check
  libmicrohttpd-dev libcurl4-openssl-dev libsqlite3-dev
  valgrind dataset-fashion-mnist curl wrk"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
fi
