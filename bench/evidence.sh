#!/bin/sh
# bench/evidence.sh: the runs behind the README's evidence tables.  Writes one
# JSON report per run under bench/out/ (git-ignored).  Long: about an hour on
# 2 cores.  Usage: bench/evidence.sh [BUILD_DIR]
set -eu
build=${1:-build}
eval="$build/tame-eval --quiet"
out=bench/out
mkdir -p "$out"
for seed in 1 2 3; do
  for labels in global local; do
    for sys in tame finetune oracle; do
      $eval --stream split --labels $labels --seed $seed --baseline $sys \
        --json "$out/split-$labels-$sys-$seed.json" > /dev/null
    done
  done
  for sys in tame finetune oracle; do
    $eval --stream recurring --sequence 1,2,3,2,4 --seed $seed --baseline $sys \
      --json "$out/recurring-global-$sys-$seed.json" > /dev/null
  done
done
for seed in 1 2 3; do
  for sys in tame finetune oracle; do
    $eval --stream permuted --tasks 10 --seed $seed --baseline $sys \
      --json "$out/permuted-global-$sys-$seed.json" > /dev/null
  done
done
$eval --stream split --bench --json "$out/bench-split.json"
