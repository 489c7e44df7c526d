#!/usr/bin/env bash
# How much counting seats as vLLM does changes single-node capacity (issue 12 item 4): FairBatching
# (first-token anchor) and vLLM's scheduler at its best budget on conv (SIMULATION.md), with and
# without --seats-as-vllm; H100 profile, first 600 s, 2 % bisection, seed 0.
#   bash bench/seats_as_vllm.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results/sim/seats}
mkdir -p "$out"
# --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
common=(--step-model linear --trace azure-conv --profile h100-llama3-8b --nodes 1 --duration-s 600 --balancer round-robin
        --rate-scale 2 --rel-tol 0.02 --seat-pressure 0)  # (seat pressure off: as recorded)
for seats in off on; do
  flag=(--no-seats-as-vllm --max-num-seqs 256); [ "$seats" = on ] && flag=(--seats-as-vllm --max-num-seqs 256)
  f="$out/fairbatching-seats-$seats.json"
  [ -s "$f" ] || fairbatching sim capacity --seeds 1 "${common[@]}" "${flag[@]}" --scheduler fairbatching --anchor first-token \
    --relegate none --chunk-align-tokens 0 --tpot-margin 0 --json "$f"
  f="$out/vllm-1024-seats-$seats.json"
  [ -s "$f" ] || fairbatching sim capacity --seeds 1 "${common[@]}" "${flag[@]}" --scheduler vllm --token-budget 1024 \
    --json "$f"
done
