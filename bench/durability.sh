#!/bin/sh
# bench/durability.sh: the durability benchmarks of the README.
#   1. ingest over HTTP (tame-eval --url, 128-sample requests, Split
#      Fashion-MNIST, 1 epoch) into tamed with durability normal and full, and
#      into the in-memory daemon of the previous issue (commit 4a1004e, built
#      in a git worktree): samples/s, RUNS runs each, interleaved;
#      and the same with two clients streaming two models at once (PARTS
#      "ingest2"): the sum of their samples/s;
#   2. restart-to-ready of a model with 20 experts of the default network and
#      a full selector buffer (Permuted, 20 tasks, 1 epoch), after SIGTERM
#      (checkpointed: nothing to replay);
#   3. restart-to-ready after SIGKILL with the largest replay backlog the
#      default cadence allows (Split, 2 epochs = 938 batches, under the 1000
#      of --checkpoint-batches: all of it replayed).
# Usage: [PARTS="ingest ingest2 ready"] [STREAM="--stream rotated --tasks 2"] bench/durability.sh [BUILD_DIR] [RUNS]
# (STREAM: tame-eval's stream for part 1; rotated images have thousands of
# distinct values per request, so their log records stay float32)
set -eu
build=${1:-build}
runs=${2:-3}
out=bench/out
mkdir -p "$out"
tmp=$(mktemp -d)
port=18184
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; git worktree remove --force "$tmp-mem" 2>/dev/null || true; }
trap cleanup EXIT

start() { # start BINARY ARGS...: tamed in the background, wait until it listens
  bin=$1; shift
  "$bin" --listen 127.0.0.1:$port "$@" > "$tmp/tamed.log" 2>&1 &
  pid=$!
  until curl -s -o /dev/null http://127.0.0.1:$port/livez; do sleep 0.01; done
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
stream=${STREAM:---stream split}
ingest() { # ingest LABEL: stream, print samples/s
  "$build/tame-eval" --quiet --epochs 1 $stream --json "$tmp/ingest.json" --url http://127.0.0.1:$port > /dev/null
  sps=$(sed -n 's/.*"samples_per_second": \([0-9.]*\).*/\1/p' "$tmp/ingest.json")
  echo "$1 $sps" | tee -a "$out/durability-ingest.txt"
}
ready_after() { # ready_after ARGS...: $ready = seconds from exec to /readyz 200
  t0=$(date +%s.%N)
  "$build/tamed" --listen 127.0.0.1:$port "$@" > "$tmp/tamed.log" 2>&1 &
  pid=$!
  until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz)" = 200 ]; do sleep 0.005; done
  t1=$(date +%s.%N)
  ready=$(echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}')
}

ingest2() { # ingest2 LABEL: two clients, two models, at once; print the sum
  "$build/tame-eval" --quiet --epochs 1 --seed 1 --json "$tmp/i1.json" --url http://127.0.0.1:$port > /dev/null &
  c1=$!
  "$build/tame-eval" --quiet --epochs 1 --seed 2 --json "$tmp/i2.json" --url http://127.0.0.1:$port > /dev/null
  wait $c1
  sps=$(cat "$tmp/i1.json" "$tmp/i2.json" | sed -n 's/.*"samples_per_second": \([0-9.]*\).*/\1/p' | awk '{s += $1} END {print s}')
  echo "$1 $sps" | tee -a "$out/durability-ingest2.txt"
}

parts=${PARTS:-ingest ingest2 ready}
case " $parts " in *" ingest "*|*" ingest2 "*) ;; *) skip_ingest=1 ;; esac

if [ -z "${skip_ingest:-}" ]; then
# The in-memory daemon of the previous issue.
git worktree add --force --detach "$tmp-mem" 4a1004e > /dev/null 2>&1
(cd "$tmp-mem" && meson setup b --buildtype=release > /dev/null && ninja -C b tamed > /dev/null)
mem="$tmp-mem/b/tamed"
fi

case " $parts " in *" ingest "*)

: > "$out/durability-ingest.txt"
for r in $(seq "$runs"); do
  start "$mem" --workers 1 --step-threads 1
  ingest memory; stop
  rm -f "$tmp"/d.db*
  start "$build/tamed" --db "$tmp/d.db" --workers 1 --step-threads 1
  ingest normal; stop
  rm -f "$tmp"/d.db*
  start "$build/tamed" --db "$tmp/d.db" --workers 1 --step-threads 1 --durability full
  ingest full; stop
done
awk '{s[$1] = s[$1] " " $2} END {for (k in s) print k ":" s[k]}' "$out/durability-ingest.txt"
;; esac

case " $parts " in *" ingest2 "*)
: > "$out/durability-ingest2.txt"
for r in $(seq "$runs"); do
  start "$mem" --workers 2 --step-threads 1
  ingest2 memory; stop
  rm -f "$tmp"/d.db*
  start "$build/tamed" --db "$tmp/d.db" --workers 2 --step-threads 1
  ingest2 normal; stop
done
awk '{s[$1] = s[$1] " " $2} END {for (k in s) print k ":" s[k]}' "$out/durability-ingest2.txt"
;; esac
: > "$out/durability-ready.txt"
case " $parts " in *" ready "*) ;; *) exit 0 ;; esac

# A model of 20 experts, checkpointed at SIGTERM.
rm -f "$tmp"/r.db*
start "$build/tamed" --db "$tmp/r.db" --workers 1 --step-threads 2
"$build/tame-eval" --quiet --stream permuted --tasks 20 --epochs 1 --url http://127.0.0.1:$port > /dev/null
curl -s http://127.0.0.1:$port/v1/models/tame-eval-permuted-1 | sed 's/.*"n_experts":\([0-9]*\).*/experts: \1/'
stop
ls -l "$tmp"/r.db
for r in $(seq "$runs"); do
  ready_after --db "$tmp/r.db"
  echo "ready after SIGTERM, 20 experts: $ready s" | tee -a "$out/durability-ready.txt"
  stop
done

# The largest backlog: 938 batches since the model was created, then SIGKILL.
rm -f "$tmp"/k.db*
start "$build/tamed" --db "$tmp/k.db" --workers 1 --step-threads 1
"$build/tame-eval" --quiet --epochs 2 --url http://127.0.0.1:$port > /dev/null
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
cp "$tmp"/k.db "$tmp"/k0.db; [ -f "$tmp"/k.db-wal ] && cp "$tmp"/k.db-wal "$tmp"/k0.db-wal
for r in $(seq "$runs"); do
  cp "$tmp"/k0.db "$tmp"/k.db; rm -f "$tmp"/k.db-wal "$tmp"/k.db-shm
  [ -f "$tmp"/k0.db-wal ] && cp "$tmp"/k0.db-wal "$tmp"/k.db-wal
  ready_after --db "$tmp/k.db" --workers 1
  echo "ready after SIGKILL, 938 batches to replay: $ready s" | tee -a "$out/durability-ready.txt"
  grep -o 'msg="log replayed".*' "$tmp/tamed.log" || true
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
