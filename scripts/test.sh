#!/bin/sh
# scripts/test.sh: install, build, and run the whole test suite twice: the
# release build, then an ASan+UBSan build.  `meson test -C build-san --setup
# valgrind` is the third way, left out of the default run for its time.
# The last line is the tally of individual test cases over both runs.
set -u
cd "$(dirname "$0")/.."
sh scripts/deps.sh || exit 1
status=0
[ -d build ] || meson setup build --buildtype=release || exit 1
[ -d build-san ] || meson setup build-san --buildtype=debugoptimized \
  -Db_sanitize=address,undefined -Db_lundef=false || exit 1
for dir in build build-san; do
  ninja -C "$dir" || exit 1
  meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
done
# Tally the check cases ("Checks: N, Failures: F, Errors: E"); a test binary
# that died without printing its tally counts as one failure.
awk '
  function close_section() {
    if (!open) return
    if (!checks_seen) { if (ok) passed++; else failed++ }
    else if (!ok && !case_failed) failed++
    open = 0
  }
  /^=+ [0-9]+\/[0-9]+ =+$/ { close_section(); open = 1; checks_seen = 0; ok = 0; case_failed = 0; next }
  /^result:/ { ok = ($0 ~ /exit status 0$/) }
  /Checks: [0-9]+, Failures: [0-9]+, Errors: [0-9]+/ {
    match($0, /Checks: [0-9]+/); c = substr($0, RSTART + 8, RLENGTH - 8) + 0
    match($0, /Failures: [0-9]+/); f = substr($0, RSTART + 10, RLENGTH - 10) + 0
    match($0, /Errors: [0-9]+/); e = substr($0, RSTART + 8, RLENGTH - 8) + 0
    passed += c - f - e; failed += f + e; checks_seen = 1; if (f + e) case_failed = 1
  }
  END { close_section(); printf "%d passed, %d failed\n", passed, failed }
' build/meson-logs/testlog.txt build-san/meson-logs/testlog.txt
exit $status
