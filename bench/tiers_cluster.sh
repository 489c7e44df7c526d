#!/usr/bin/env bash
# SLO classes at cluster scale (issue 13): 8 simulated H100 nodes, the whole Azure code trace, 50/50
# interactive (1 s / 50 ms) and batch (30 s / 250 ms), capacity at 90 % overall attainment (3 %
# bisection) and the rate at which interactive alone keeps 99 %. FairBatching behind per-class PAB
# (hold 0.1, shed 1 s) against each baseline behind least-prefill placement with the naive admission
# cap, each baseline at the token budget that measured best on one node (1024, bench/results/TIERS.md;
# Sarathi's derived from the TPOT SLO). One seed. Writes one JSON per arm and prints a table.
#   bash bench/tiers_cluster.sh [OUT_DIR]      # two arms at a time, ~30 min on 2 cores
set -euo pipefail
out=${1:-bench/results/sim/tiers-cluster-8}
mkdir -p "$out"
# (as recorded, before 2026-12-01: seats counted by the plan's cap only, 256 seats on the H100 profile)
# --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
common=(--step-model linear --no-seats-as-vllm --max-num-seqs 256 --trace azure-code --profile h100-llama3-8b --nodes 8 --rel-tol 0.03 --rate-scale 25
        --slo-tier interactive=0.5:1:0.05 --slo-tier batch=0.5:30:0.25)
declare -A arms=(
  [fb-pab]="--scheduler fairbatching --seat-pressure 0.8 --balancer pab --tier-hold-fraction 0.1"
  [vllm-priority-lp-cap]="--scheduler vllm-priority --token-budget 1024 --balancer least-prefill --admission-cap"
  [vllm-lp-cap]="--scheduler vllm --token-budget 1024 --balancer least-prefill --admission-cap"
  [sarathi-lp-cap]="--scheduler sarathi --balancer least-prefill --admission-cap"
)
run() {  # arm: its capacity unless already recorded
  [ -s "$out/$1.json" ] || fairbatching sim capacity --seeds 1 "${common[@]}" ${arms[$1]} --json "$out/$1.json" > "$out/$1.log" 2>&1
}
run fb-pab & run vllm-priority-lp-cap & wait
run vllm-lp-cap & run sarathi-lp-cap & wait
python3 - "$out" <<'PY'
import glob, json, os, sys
print("| arm | capacity req/s | interactive attainment there | batch attainment there | refused | interactive alone >= 99 % up to req/s |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    d = json.load(open(f))
    rep = d.get("report") or {}  # the report at capacity
    tiers = rep.get("per_tier", {})
    att = lambda t: f"{tiers[t]['attainment']:.3f}" if t in tiers and tiers[t].get("attainment") is not None else "-"
    tight = (d.get("tightest_tier") or {}).get("capacity_rps")
    cap = d.get("capacity_rps")
    print(f"| {os.path.basename(f)[:-5]} | {cap and round(cap, 2)} | {att('interactive')} | {att('batch')} "
          f"| {rep.get('rejected', '-')} | {tight and round(tight, 2)} |")
PY
