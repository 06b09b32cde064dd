#!/bin/sh
# bench/http.sh: the daemon benchmarks of the README.  Starts tamed on
# 127.0.0.1:18181, streams Split Fashion-MNIST over HTTP (tame-eval --url, 128-sample
# requests) and in-process for the ingest ratio, then measures single-sample
# predictions with wrk at 1 and 64 connections: with nothing training, while
# another stream trains as fast as tamed takes it, and while a stream paced at
# 5,000 samples/s trains (tame-eval --rate).
# Ends with one line "RESULT key=value ..." (p99 in ms), for collecting
# several runs: for i in 1 2 3; do sh bench/http.sh build; done | grep RESULT
# Usage: bench/http.sh [BUILD_DIR] [EPOCHS]
set -eu
build=${1:-build}
epochs=${2:-1}
out=bench/out
mkdir -p "$out"
db=$(mktemp -d)
# Every client here comes from 127.0.0.1: wrk's 64 connections and a feeding
# stream's would be 65 from one address, over the default --per-ip-max 64
# (the 65th is refused at accept, again and again, as wrk reconnects).
"$build/tamed" --listen 127.0.0.1:18181 --db "$db/tamed.db" --workers 1 --step-threads 1 --per-ip-max 128 \
  ${TAMED_ARGS:---http-threads 2} \
  > "$out/tamed-bench.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$db"' EXIT
sleep 0.5
"$build/tame-eval" --quiet --epochs "$epochs" --json "$out/ingest-http.json" \
  --url http://127.0.0.1:18181 > /dev/null
"$build/tame-eval" --quiet --epochs "$epochs" --json "$out/ingest-inprocess.json" > /dev/null
"$build/tame-eval" --quiet --epochs "$epochs" --threads 1 --json "$out/ingest-inprocess-1.json" > /dev/null
# One single-sample prediction body (the first test image, as 784 pixels).
python3 - <<'PY' 2>/dev/null || printf '{"x":[[%s]]}' "$(seq -s, 0 783 | sed 's/[0-9]\+/0.5/g')" > "$out/predict-body.json"
import gzip, json
b = gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').read()[16:16 + 784]
open('bench/out/predict-body.json', 'w').write(json.dumps({'x': [[v / 255 for v in b]]}))
PY
# wrk on single-sample predictions of the first model: connections,
# wrk threads, name of the output.
predict() {
  wrk -t "$2" -c "$1" -d 10s --latency -s bench/predict.lua \
    http://127.0.0.1:18181/v1/models/tame-eval-split-1/predict | tee "$out/wrk-$3.txt"
}
trained_now() {
  curl -s "http://127.0.0.1:18181/v1/models/$1" | sed 's/.*"samples_trained":\([0-9]*\).*/\1/'
}
# The floor: 64 connections with nothing training (the first model's
# background selector retrains are over once its stream has been evaluated).
echo "== predict, 64 connections, 1 wrk thread, nothing training"
predict 64 1 64-idle
# A second model keeps training while wrk predicts from the first, streamed
# as fast as tamed acknowledges it (30 epochs: it must outlast the wrk runs,
# or they measure an idle daemon).  wrk runs with 1 thread and with 2: on 2
# cores, 2 wrk threads and tamed's 2 HTTP threads take turns, and wrk's
# latency includes the time its own threads wait for a core.
"$build/tame-eval" --quiet --epochs 30 --seed 2 --url http://127.0.0.1:18181 > /dev/null &
feeder=$!
sleep 1
for run in "1 1" "64 1" "64 2"; do
  set -- $run
  echo "== predict, $1 connections, $2 wrk threads, another model training at full speed"
  kill -0 $feeder || { echo "the feeding stream ended early"; exit 1; }
  t0=$(trained_now tame-eval-split-2)
  predict "$1" "$2" "$1-t$2"
  t1=$(trained_now tame-eval-split-2)
  echo "meanwhile the other model trained $((t1 - t0)) samples"
  echo $((t1 - t0)) > "$out/trained-$1-t$2.txt"
done
kill $feeder 2>/dev/null || true
# A stream arriving at its own pace, 5,000 samples a second (a sensor fleet,
# a feed), rather than as fast as the daemon takes it.
"$build/tame-eval" --quiet --epochs 30 --seed 3 --rate 5000 --url http://127.0.0.1:18181 > /dev/null &
feeder=$!
sleep 1
echo "== predict, 64 connections, 1 wrk thread, another model training a stream of 5,000 samples/s"
t0=$(trained_now tame-eval-split-3)
predict 64 1 64-paced
t1=$(trained_now tame-eval-split-3)
echo "meanwhile the other model trained $((t1 - t0)) samples"
echo $((t1 - t0)) > "$out/trained-64-paced.txt"
kill $feeder 2>/dev/null || true
# Connections refused at accept over the whole run (0 unless a limit was
# hit) and socket errors wrk saw: either would make the rows lie.
refused=$(curl -s http://127.0.0.1:18181/metrics |
  awk '/^tame_http_connections_refused_total/ { n += $2 } END { print n + 0 }')
wrk_errors=$(cd "$out" && cat wrk-64-idle.txt wrk-1-t1.txt wrk-64-t1.txt wrk-64-t2.txt wrk-64-paced.txt | awk '/Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }')
# wrk prints latencies in us, ms or s: p99 in ms, and requests/s.
wrk_stats() {
  awk '/^ +99%/ { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                  p = u == "us" ? v / 1000 : u == "s" ? v * 1000 : v }
       /^Requests\/sec/ { r = $2 } END { printf "%.0f %.2f", r, p }' "$1"
}
sps() { sed -n 's/.*"samples_per_second": *\([0-9.]*\).*/\1/p' "$1"; }
set -- $(wrk_stats "$out/wrk-64-idle.txt") $(wrk_stats "$out/wrk-1-t1.txt") $(wrk_stats "$out/wrk-64-t1.txt") \
  $(wrk_stats "$out/wrk-64-t2.txt") $(wrk_stats "$out/wrk-64-paced.txt")
h=$(sps "$out/ingest-http.json"); i2=$(sps "$out/ingest-inprocess.json"); i1=$(sps "$out/ingest-inprocess-1.json")
echo "RESULT idle64_rps=$1 idle64_p99=$2 c1_rps=$3 c1_p99=$4 c64t1_rps=$5 c64t1_p99=$6 c64t2_rps=$7 c64t2_p99=$8" \
  "paced_rps=$9 paced_p99=${10} c64t1_trained=$(cat "$out/trained-64-t1.txt") paced_trained=$(cat "$out/trained-64-paced.txt")" \
  "ingest_http=$h inproc_1t=$i1 inproc_2t=$i2" \
  "ratio_1t=$(awk "BEGIN { printf \"%.2f\", $h / $i1 }") ratio_2t=$(awk "BEGIN { printf \"%.2f\", $h / $i2 }")" \
  "refused=$refused wrk_socket_errors=$wrk_errors"
