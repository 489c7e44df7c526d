#!/usr/bin/env bash
# FairBatching (today's defaults) and vLLM [1024] behind PAB, 4 and 8 nodes, bisection to 0.5 %
set -euo pipefail
out=bench/results/sim/pab-nodes/quadratic/fine
common=(--trace azure-code --duration-s 1200 --profile h100-llama3-8b --balancer pab --ttft-slo 1 --tpot-slo 0.05
        --noise 0.05 --seeds 1 --rel-tol 0.005)
run() {  # nodes arm seed flags...
  local n=$1 arm=$2 seed=$3; shift 3
  local f="$out/${n}nodes-$arm-seed$seed.json"
  [ -s "$f" ] || fairbatching sim capacity "${common[@]}" --nodes "$n" --rate-scale $(( n * 3 / 4 )) --seed "$seed" "$@" \
      --json "$f" > "${f%.json}.log" 2>&1
}
for n in 4 8; do for s in 0 1 2; do
  run $n fairbatching-defaults $s --scheduler fairbatching &
  run $n vllm-1024 $s --scheduler vllm --token-budget 1024
  wait
done; done
