#!/bin/sh
# scripts/fuzz.sh: coverage-guided fuzzing of the code that reads what
# clients and a damaged database hand tamed (tests/fuzz, README "Fuzzing").
# Installs clang and its libFuzzer runtime, builds build-fuzz with
# libFuzzer + ASan + UBSan, and runs each target for SECONDS (default 600),
# starting from its committed corpus.  Inputs that add coverage land in
# build-fuzz/corpus/TARGET; a crash is saved as build-fuzz/crash-TARGET-*
# and fails the run (commit it under tests/fuzz/corpus/TARGET once fixed:
# the default suite replays that directory).
# scripts/fuzz.sh merge [TARGET...] folds build-fuzz/corpus into the
# committed corpus, keeping only inputs that add coverage.
# Usage: scripts/fuzz.sh [SECONDS | merge] [TARGET...]   (targets: body logcodec state api)
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-body logcodec state api}
sh scripts/deps.sh
fuzz_packages="clang-14 libclang-rt-14-dev"
missing=""
for p in $fuzz_packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
[ -d build-fuzz ] || CC=clang-14 meson setup build-fuzz -Dfuzz=true --buildtype=debugoptimized \
  -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-fuzz
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OPENBLAS_NUM_THREADS=1
if [ "$seconds" = merge ]; then
  for t in $targets; do
    rm -rf "build-fuzz/merged-$t" && mkdir -p "build-fuzz/merged-$t" "build-fuzz/corpus/$t"
    build-fuzz/tests/fuzz-$t -merge=1 -rss_limit_mb=2048 "build-fuzz/merged-$t" "tests/fuzz/corpus/$t" \
      "build-fuzz/corpus/$t" 2> "build-fuzz/merge-$t.log"
    # regression inputs (named, not hashes) stay whatever their coverage
    find "tests/fuzz/corpus/$t" -type f -regex '.*/[0-9a-f]\{40\}' -delete
    cp -n "build-fuzz/merged-$t"/* "tests/fuzz/corpus/$t/"
    echo "$t: $(ls "tests/fuzz/corpus/$t" | wc -l) inputs"
  done
  exit 0
fi
status=0
for t in $targets; do
  mkdir -p "build-fuzz/corpus/$t"
  echo "== fuzz-$t, $seconds s"
  # -rss_limit_mb: a checkpoint or a create may describe a large model; the
  # targets skip or cap those, and anything past 2 GB is a finding.
  if ! build-fuzz/tests/fuzz-$t -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/crash-$t-" \
      "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" 2> "build-fuzz/fuzz-$t.log"; then
    status=1
    echo "fuzz-$t FAILED: build-fuzz/fuzz-$t.log"
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE" "build-fuzz/fuzz-$t.log" || true
  tail -n 3 "build-fuzz/fuzz-$t.log"
done
exit $status
