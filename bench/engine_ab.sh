#!/usr/bin/env bash
# The real CPU engine at saturation, three repeats (bench/results/ENGINE.md, "The serving layer's knobs
# and relegation"): FairBatching with the serving layer's knobs, with and without relegation of doomed
# requests, against stock vLLM measured by the same instrument. Run it on a quiet machine.
#   bash bench/engine_ab.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results/engine-ab}
mkdir -p "$out"
common=(--rates 32,64 --num-requests 150 --ttft-slo-s 0.5 --tpot-slo-s 0.05)
for n in 1 2 3; do
  fairbatching bench engine --json "$out/doomed-vs-vllm-r$n.json" --arms fairbatching,vllm "${common[@]}" \
    --fb-knobs '{"anchor": "first-token", "tpot_margin": 0.2, "relegate": "doomed"}'
  fairbatching bench engine --json "$out/serve-knobs-r$n.json" --arms fairbatching "${common[@]}" \
    --fb-knobs '{"anchor": "first-token", "tpot_margin": 0.2}'
done
