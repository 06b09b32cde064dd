#!/bin/sh
# bench/rss.sh: peak RSS of tamed holding one model with 20 experts of the
# default network and a full selector buffer (Permuted Fashion-MNIST, 20 tasks,
# 1 epoch each, streamed with tame-eval --url).  Prints tamed's VmHWM.
set -eu
build=${1:-build}
mkdir -p bench/out
db=$(mktemp -d)
"$build/tamed" --listen 127.0.0.1:18182 --db "$db/tamed.db" --workers 1 --step-threads 2 > bench/out/tamed-rss.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$db"' EXIT
sleep 0.5
"$build/tame-eval" --quiet --stream permuted --tasks 20 --epochs 1 --json bench/out/rss-run.json \
  --url http://127.0.0.1:18182 > /dev/null
curl -s http://127.0.0.1:18182/v1/models/tame-eval-permuted-1 2>/dev/null | head -c 300 || true
echo
grep -E 'VmHWM|VmRSS' /proc/$pid/status
