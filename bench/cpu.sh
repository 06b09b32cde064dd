#!/bin/bash
# bench/cpu.sh: where the CPU of HTTP ingest goes.  Streams Split Fashion-MNIST
# (tame-eval --url, 128-sample requests, the settings of bench/http.sh) and,
# over a 3 s window in the middle of the stream, reads every thread's CPU time
# from /proc (utime + stime, by thread name: tamed's threads name themselves)
# for tamed and tame-eval, and prints milliseconds of CPU per request.  On 2
# cores the total can be at most 2 x the wall time per request.  Then the
# ingest ratio these costs allow at best: the same stream in-process (1
# thread) costs C ms a request, so on 2 cores HTTP ingest reaches at most
# 2C / (CPU a request), and only if the chain packed both cores with no idle
# moment.  The background selector is left out of that sum: it retrains at a
# lower priority in whatever time is idle, and in-process trains no
# selector while streaming.
# Usage: bench/cpu.sh [BUILD_DIR] [extra tamed flags...]
set -eu
build=${1:-build}
shift || true
db=$(mktemp -d)
"$build/tame-eval" --quiet --epochs 1 --threads 1 --json "$db/inproc.json" > /dev/null
inproc_ms=$(sed -n 's/.*"samples_per_second": *\([0-9.]*\).*/\1/p' "$db/inproc.json" |
  awk '{ printf "%.3f", 128 * 1000 / $1 }')
"$build/tamed" --listen 127.0.0.1:18183 --db "$db/tamed.db" --workers 1 --step-threads 1 --http-threads 2 "$@" \
  > "$db/tamed.log" 2>&1 &
pid=$!
"$build/tame-eval" --quiet --epochs 4 --url http://127.0.0.1:18183 > /dev/null 2>&1 &
ev=$!
trap 'kill $ev $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$db"' EXIT
sleep 1.5
hz=$(getconf CLK_TCK)
# "process:thread-name ticks", summed over threads of the same name.
snap() {
  for p in $pid $ev; do
    name=$(cat /proc/$p/comm)
    for t in /proc/$p/task/*; do
      echo "$name:$(tr ' ' _ < "$t/comm") $(awk '{ print $14 + $15 }' "$t/stat")"
    done
  done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}
acked() { curl -s http://127.0.0.1:18183/metrics | awk '/^tame_samples_ingested_total/ { print $2 }'; }
a0=$(acked); snap > "$db/s0"
sleep 3
a1=$(acked); snap > "$db/s1"
req=$(( (a1 - a0) / 128 ))
[ "$req" -gt 0 ] || { echo "nothing ingested in the window"; exit 1; }
echo "window 3 s: $req requests, $(( (a1 - a0) / 3 )) samples/s, wall $(awk "BEGIN { printf \"%.3f\", 3000 / $req }") ms a request"
join "$db/s0" "$db/s1" | awk -v r="$req" -v hz="$hz" -v c="$inproc_ms" '
  { ms = ($3 - $2) * 1000 / hz; tot += ms; printf "  %-24s %6.3f ms CPU a request\n", $1, ms / r }
  $1 == "tamed:selector" { sel = ms }
  END { printf "  %-24s %6.3f ms CPU a request\n", "total", tot / r
        chain = (tot - sel) / r
        printf "in-process (1 thread): %.3f ms a request; the chain without the selector: %.3f ms CPU\n", c, chain
        printf "ratio at best on 2 cores: %.2f (2 x %.3f / %.3f)\n", 2 * c / chain, c, chain }'
