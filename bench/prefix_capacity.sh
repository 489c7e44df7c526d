#!/usr/bin/env bash
# Prefix caching (issue: "uncached tokens everywhere"): capacity of 8 FairBatching nodes on the multi-turn
# conversation workload, PAB charging uncached tokens (with the balancer's PrefixIndex; placement: the default
# locality rule, and the largest-budget rule before it) vs every token
# (--pab-tokens all) vs the prefix-affinity balancer with the admission cap; H100 profile, SLOs 1 s / 50 ms,
# attainment 90 %, 4 % bisection, 3 seeds (each seed its own trace and simulator seed).
#   bash bench/prefix_capacity.sh [OUT_DIR]      then: python bench/prefix_summary.py [OUT_DIR]
# Files already written are kept (delete them to re-run).
set -euo pipefail
out=${1:-bench/results/prefix}
fb=${FAIRBATCHING:-fairbatching}
mkdir -p "$out"
for seed in 0 1 2; do
  trace="$out/multiturn-seed$seed.csv"
  [ -s "$trace" ] || $fb trace multiturn --out "$trace" --conversations 1000 --conversation-rate-rps 4 --seed "$seed"
  # --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
  common=(--step-model linear --no-seats-as-vllm --max-num-seqs 256 --trace "$trace" --columns timestamp:ms,input_length,output_length,hash_ids --prefix-block-tokens 16
          --profile h100-llama3-8b --nodes 8 --scheduler fairbatching --seed "$seed" --drain-s 120
          --anchor arrival --relegate none --chunk-align-tokens 0 --tpot-margin 0 --seat-pressure 0  # the defaults these results were recorded with
          --attainment 0.9 --rel-tol 0.04)
  f="$out/pab-uncached-seed$seed.json"
  [ -s "$f" ] || $fb sim capacity --seeds 1 "${common[@]}" --balancer pab --pab-tokens uncached --json "$f"
  f="$out/pab-uncached-budget-seed$seed.json"  # the placement rule before the locality rule (largest budget left)
  [ -s "$f" ] || $fb sim capacity --seeds 1 "${common[@]}" --balancer pab --pab-tokens uncached --pab-affinity-slack -1 \
    --pab-fresh-share 0 --json "$f"
  f="$out/pab-all-seed$seed.json"
  [ -s "$f" ] || $fb sim capacity --seeds 1 "${common[@]}" --balancer pab --pab-tokens all --json "$f"
  f="$out/prefix-affinity-cap-seed$seed.json"
  [ -s "$f" ] || $fb sim capacity --seeds 1 "${common[@]}" --balancer prefix-affinity --admission-cap --json "$f"
done
