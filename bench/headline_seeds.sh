#!/usr/bin/env bash
# The README's cluster headline over three seeds: 8 simulated H100 nodes, the whole Azure code trace,
# SLOs 1 s / 50 ms, capacity = 90 % attainment (refusals count as misses), step-time noise sigma 0.05
# (what the seeds draw), seeds 0-2, 3 % bisection, the simulator's defaults (FairBatching with fewest-late
# relegation, tile alignment, TPOT margin 0.2, seat pressure 0.8; seats counted as vLLM counts them).
# Arms: FairBatching behind PAB and behind least-prefill placement (no admission); vLLM at its tuned
# budget 1024 behind least-prefill, without and with the naive admission cap (the best uncapped and capped
# baselines of the one-seed headline, SIMULATION.md "Headline re-measured"), and behind PAB.
# Writes one JSON per arm (each with every seed's capacity) and prints the table and per-seed ratios.
# FLAGS="..." adds simulator flags to every run: the first record (sim/headline-seeds/, before the planning
# model's default became the quadratic one with a 10 % margin) is FLAGS="--step-model linear".
#   bash bench/headline_seeds.sh [OUT_DIR]      # ~10-15 min on 2 cores
set -euo pipefail
out=${1:-bench/results/sim/headline-seeds-quadratic}
mkdir -p "$out"
common=(--trace azure-code --profile h100-llama3-8b --nodes 8 --ttft-slo 1 --tpot-slo 0.05 --noise 0.05
        --rate-scale 25 --rel-tol 0.03 --seeds 3 --seed 0)
[ -n "${FLAGS:-}" ] && common+=($FLAGS)
declare -A arms=(
  [fairbatching-pab]="--scheduler fairbatching --balancer pab"
  [fairbatching-least-prefill]="--scheduler fairbatching --balancer least-prefill"
  [vllm-1024-pab]="--scheduler vllm --token-budget 1024 --balancer pab"
  [vllm-1024-least-prefill]="--scheduler vllm --token-budget 1024 --balancer least-prefill"
  [vllm-1024-least-prefill-cap]="--scheduler vllm --token-budget 1024 --balancer least-prefill --admission-cap"
)
run() {  # arm: its capacity on every seed unless already recorded
  local f="$out/$1.json"
  [ -s "$f" ] || fairbatching sim capacity "${common[@]}" ${arms[$1]} --json "$f" > "$out/$1.log" 2>&1
}
names=("${!arms[@]}")
for ((i = 0; i < ${#names[@]}; i += 2)); do
  run "${names[i]}" &
  [ $((i + 1)) -lt ${#names[@]} ] && run "${names[i + 1]}"
  wait
done

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
arms = ["fairbatching-pab", "fairbatching-least-prefill", "vllm-1024-pab", "vllm-1024-least-prefill",
        "vllm-1024-least-prefill-cap"]
data = {a: json.load(open(f"{out}/{a}.json")) for a in arms}
print("| arm | capacity req/s, mean (min-max) over seeds 0-2 | rejected | admitted attainment | TTFT P99 s |")
print("|---|---|---|---|---|")
for a, d in data.items():
    r = d["report"] or {}
    print(f"| {a} | {d['capacity_rps']:.2f} ({d['capacity_rps_min']:.2f}-{d['capacity_rps_max']:.2f}) | "
          f"{r.get('rejected_fraction', 0):.1%} | {r.get('admitted_attainment', 0):.3f} | {r.get('ttft_p99', 0):.2f} |")
per_seed = {a: d["capacity_rps_per_seed"] for a, d in data.items()}
for num in ("fairbatching-pab", "fairbatching-least-prefill"):
    for den in ("vllm-1024-least-prefill", "vllm-1024-least-prefill-cap", "vllm-1024-pab"):
        ratios = [x / y for x, y in zip(per_seed[num], per_seed[den])]
        print(f"{num} / {den}, per seed: " + ", ".join(f"{q:.2f}" for q in ratios))
PY
