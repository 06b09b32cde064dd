#!/bin/bash
# bench/soak.sh: tamed under a mixed load for MINUTES, watching for what a
# short test cannot see: memory that grows, requests that start failing, a
# stream that falls behind, a shutdown that stops being clean.
#
# Load, all at once for the whole run:
#   - a stream of Split Fashion-MNIST paced at 2,000 samples/s (tame-eval
#     --rate), its 5 tasks again and again, on model tame-eval-recurring-2;
#   - wrk, 16 connections, single-sample predictions of tame-eval-split-1
#     (trained first, 1 epoch);
#   - a churn loop: create a model, send it 256 samples, flush, predict,
#     delete it, again and again.
# Every 10 s it records tamed's VmRSS.  At the end it checks that tamed is
# alive, that every sample the stream had acknowledged gets trained, that
# SIGTERM exits 0, and prints one line "RESULT key=value ...", then "SOAK OK"
# or "SOAK FAILED: why".  The RSS verdict leaves out the first half of the
# run (warm-up: experts spawn, buffers fill, checkpoints grow to their full
# size; a 4-minute run still showed those steps at 60, 120 and 160 s) and
# compares the mean of the last quarter with the mean of the third: more
# than 10 % growth fails.
#
# Usage: bench/soak.sh [MINUTES] [BUILD_DIR]      (default 10 minutes, build)
# TAMED_WRAP runs tamed under a wrapper, e.g. a script doing
#   exec gdb -batch -ex run -ex "thread apply all bt" --args "$@"
# so that a crash leaves every thread's stack in bench/out/tamed-soak.log.
set -u
minutes=${1:-10}
build=${2:-build}
port=18184
url=http://127.0.0.1:$port
out=bench/out
mkdir -p "$out"
db=$(mktemp -d)
H='Content-Type: application/json'
${TAMED_WRAP:-} "$build/tamed" --listen 127.0.0.1:$port --db "$db/tamed.db" --per-ip-max 128 > "$out/tamed-soak.log" 2>&1 &
pid=$!
cleanup() { kill $pid ${feeder:-} ${wrk_pid:-} ${churn_pid:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$db"; }
trap cleanup EXIT
fail() { echo "SOAK FAILED: $*"; exit 1; }
sleep 0.5
"$build/tame-eval" --quiet --epochs 1 --seed 1 --url $url > /dev/null || fail "the first model did not train"
python3 - <<'PY' 2>/dev/null || printf '{"x":[[%s]]}' "$(seq -s, 0 783 | sed 's/[0-9]\+/0.5/g')" > "$out/predict-body.json"
import gzip, json
b = gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').read()[16:16 + 784]
open('bench/out/predict-body.json', 'w').write(json.dumps({'x': [[v / 255 for v in b]]}))
PY

seconds=$((minutes * 60))
# The 5 tasks in turn, 12 times (a visit is 6 s per epoch at this pace),
# with enough epochs per visit to outlast the run.
visits=$(for i in $(seq 1 12); do printf '1,2,3,4,5,'; done)
"$build/tame-eval" --quiet --stream recurring --sequence "${visits%,}" --epochs $((minutes / 6 + 1)) --seed 2 --rate 2000 \
  --url $url > "$out/soak-feeder.log" 2>&1 &
feeder=$!
wrk -t1 -c16 -d "${seconds}s" --latency -s bench/predict.lua $url/v1/models/tame-eval-split-1/predict \
  > "$out/wrk-soak.txt" 2>&1 &
wrk_pid=$!
# The churn loop writes one line per cycle: "ok" or what failed.
churn() {
  local x='[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]' body i
  body='{"x":['
  for i in $(seq 1 256); do body="$body$x,"; done
  body="${body%,}],\"y\":[$(seq -s, 0 255 | sed 's/[0-9]\+/1/g')]}"
  while :; do
    local why=ok
    curl -sf $url/v1/models -H "$H" -d '{"name":"churn","input_dim":16,"classes":2,"batch_size":64}' > /dev/null || why=create
    [ $why = ok ] && { curl -sf $url/v1/models/churn/samples -H "$H" -d "$body" > /dev/null || why=samples; }
    [ $why = ok ] && { curl -sf -XPOST $url/v1/models/churn/flush -H "$H" -d '{}' > /dev/null || why=flush; }
    [ $why = ok ] && sleep 0.2
    [ $why = ok ] && { curl -sf $url/v1/models/churn/predict -H "$H" -d "{\"x\":[$x]}" > /dev/null || why=predict; }
    curl -sf -XDELETE $url/v1/models/churn > /dev/null || [ $why != ok ] || why=delete
    echo $why
    sleep 1
  done
}
churn > "$db/churn.txt" 2>&1 &
churn_pid=$!
sleep 3
kill -0 $feeder 2>/dev/null || fail "the stream did not start: $(cat "$out/soak-feeder.log")"

: > "$out/soak-rss.txt"
for t in $(seq 13 10 $seconds); do
  sleep 10
  kill -0 $pid 2>/dev/null || fail "tamed died after about $t s (see $out/tamed-soak.log)"
  echo "$t $(awk '/^VmRSS/ { print $2 }' /proc/$pid/status)" >> "$out/soak-rss.txt"
done
wait $wrk_pid
kill $churn_pid $feeder 2>/dev/null
wait $churn_pid $feeder 2>/dev/null
churn_pid= feeder= wrk_pid=

curl -sf $url/livez > /dev/null || fail "tamed does not answer /livez"
# Everything the stream had acknowledged is trained after a flush.
curl -sf -XPOST $url/v1/models/tame-eval-recurring-2/flush -H "$H" -d '{}' > /dev/null || fail "flush"
for i in $(seq 1 600); do
  m=$(curl -sf $url/v1/models/tame-eval-recurring-2)
  acked=$(echo "$m" | sed 's/.*"samples_acknowledged":\([0-9]*\).*/\1/')
  trained=$(echo "$m" | sed 's/.*"samples_trained":\([0-9]*\).*/\1/')
  [ "$acked" = "$trained" ] && break
  sleep 0.1
done
[ "$acked" = "$trained" ] || fail "the stream's model trained $trained of $acked acknowledged samples"
failures=$(curl -sf $url/metrics | awk '/^tame_step_failures_total/ { n += $2 } END { print n + 0 }')
kill -TERM $pid
wait $pid
rc=$?
pid=
[ $rc = 0 ] || fail "tamed exited $rc after SIGTERM"

cycles=$(wc -l < "$db/churn.txt")
churn_bad=$(grep -vc '^ok$' "$db/churn.txt")
wrk_rps=$(awk '/^Requests\/sec/ { print $2 }' "$out/wrk-soak.txt")
wrk_errors=$(awk '/Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } /Non-2xx/ { n += $NF } END { print n + 0 }' "$out/wrk-soak.txt")
p99=$(awk '/^ +99%/ { print $2 }' "$out/wrk-soak.txt")
read -r rss_first rss_max rss_mid rss_last <<EOF
$(awk '{ r[NR] = $2; if ($2 > m) m = $2 } END { n = NR; a = int(n / 2); b = int(3 * n / 4)
        for (i = a + 1; i <= b; i++) s2 += r[i]; for (i = b + 1; i <= n; i++) s3 += r[i]
        printf "%d %d %d %d", r[1], m, s2 / (b - a), s3 / (n - b) }' "$out/soak-rss.txt")
EOF
growth=$(awk "BEGIN { printf \"%.1f\", ($rss_last - $rss_mid) * 100 / $rss_mid }")
echo "RESULT minutes=$minutes stream_trained=$trained predict_rps=$wrk_rps predict_p99=$p99 predict_errors=$wrk_errors" \
  "churn_cycles=$cycles churn_failed=$churn_bad step_failures=$failures" \
  "rss_kib_first=$rss_first rss_kib_max=$rss_max rss_kib_third_quarter=$rss_mid rss_kib_last_quarter=$rss_last" \
  "rss_growth_pct=$growth sigterm_exit=$rc"
[ "$wrk_errors" = 0 ] || fail "$wrk_errors prediction requests failed"
[ "$churn_bad" = 0 ] || fail "$churn_bad churn cycles failed: $(grep -v '^ok$' "$db/churn.txt" | sort | uniq -c | tr '\n' ' ')"
awk "BEGIN { exit !($growth <= 10) }" || fail "RSS grew $growth % between the third and the last quarter"
echo "SOAK OK"
