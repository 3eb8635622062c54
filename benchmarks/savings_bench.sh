#!/usr/bin/env bash
# The savings benchmark runs behind BENCHMARKS.md ("Savings benchmark"), and the copy of their reports
# and plots into benchmarks/results/. Each command resumes: finished runs are reused.
# --threads 1: the machine was shared; one thread per process was faster and steadier than two.
# --three-seeds: only the 3-seed GPT-2 tiny and tiny-long re-measure with --jobs 2 (about 1 h and 2 h on 2 idle cores).
set -euo pipefail
cd "$(dirname "$0")/.."
ALL=scratch,stackbert,interpolate,net2net,bert2bert,exact,ligo,mango

run() { growkit bench --threads 1 "$@"; }

if [[ "${1:-}" == "--three-seeds" ]]; then
  # the 3-seed re-measure (issue 13): GPT-2 tiny and tiny-long, every method, two worker processes
  growkit bench --jobs 2 --family gpt2 --preset tiny --seeds 3 --methods $ALL --out runs/bench-gpt2-tiny-3seeds
  growkit bench --jobs 2 --family gpt2 --preset tiny-long --seeds 3 --methods $ALL --out runs/bench-gpt2-tiny-long-3seeds  # measured so far: scratch,net2net,bert2bert,ligo,mango
  for name in bench-gpt2-tiny-3seeds bench-gpt2-tiny-long-3seeds; do
    mkdir -p benchmarks/results/$name
    cp runs/$name/report.md runs/$name/results.json runs/$name/*.png benchmarks/results/$name/
  done
  exit 0
fi

if [[ "${1:-}" != "--collect-only" ]]; then
  # main comparison: GPT-2 2L/64 -> 4L/128, 2 seeds
  run --family gpt2 --preset tiny --seeds 2 --out runs/bench-gpt2-tiny \
    --methods $ALL,mango+init=bert2bert+rank=2,mango+init=bert2bert+rank=2+fit_steps=25,ligo+fit_steps=25
  # second family, 1 seed
  run --family vit --preset tiny --methods $ALL --seeds 1 --out runs/bench-vit-tiny
  # ablations of the learned operators' recipe (seed 0; reuses the fixed-method and scratch runs)
  run --family gpt2 --preset tiny --seeds 1 --out runs/ablate-gpt2-tiny --methods \
    $ALL,ligo+fit_steps=25,mango+fit_steps=25,mango+rank=2,ligo+fit_steps=25+fit_lr=1e-2,mango+fit_steps=25+fit_lr=1e-2,ligo+init=exact,mango+init=exact+rank=2,mango+init=bert2bert+rank=2
  # the target's schedule after growth: a lower peak lr for every method, scratch included
  run --family gpt2 --preset tiny --lr 1e-3 --methods scratch,stackbert,bert2bert,exact,ligo,mango --seeds 1 \
    --out runs/bench-gpt2-tiny-lr1e-3
  # a 2.5x longer target budget, so that scratch ends well below the small model
  run --family gpt2 --preset tiny --steps 2500 --seeds 1 --out runs/bench-gpt2-tiny-2500 \
    --methods $ALL,mango+init=bert2bert+rank=2,mango+fit_steps=25
fi

for name in bench-gpt2-tiny bench-vit-tiny ablate-gpt2-tiny bench-gpt2-tiny-lr1e-3 bench-gpt2-tiny-2500; do
  [[ -f runs/$name/report.md ]] || continue
  mkdir -p benchmarks/results/$name
  cp runs/$name/report.md runs/$name/loss_vs_flops.png runs/$name/loss_vs_seconds.png benchmarks/results/$name/
done
