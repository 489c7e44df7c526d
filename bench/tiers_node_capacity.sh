#!/usr/bin/env bash
# SLO classes on one simulated H100 node behind admission (issue 13): Azure conv, 900 s window, 50/50
# interactive (1 s / 50 ms) and batch (30 s / 250 ms), capacity at 90 % overall attainment (refusals
# count as misses; 3 % bisection) and the rate at which interactive alone keeps 99 %, seeds 0-2 (the
# tier draw and the step-time noise, sigma 0.05). FairBatching behind per-class PAB (hold 0.1, shed
# 1 s, seat pressure 0.8: the serving layer's settings) against each baseline behind the same PAB and
# behind the naive admission cap, at token budgets 1024 and 2048 (Sarathi: its own, from the TPOT SLO).
# Writes one JSON per run and prints capacity per arm (median, range) and FairBatching / the best
# baseline per seed.
#   bash bench/tiers_node_capacity.sh [OUT_DIR]      # ~25 min on 2 cores
set -euo pipefail
out=${1:-bench/results/sim/tiers-node-capacity}
mkdir -p "$out"
# (as recorded, before 2026-12-01: seats counted by the plan's cap only, 256 seats on the H100 profile)
# --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
common=(--step-model linear --no-seats-as-vllm --max-num-seqs 256 --trace azure-conv --profile h100-llama3-8b --nodes 1 --duration-s 900 --noise 0.05
        --slo-tier interactive=0.5:1:0.05 --slo-tier batch=0.5:30:0.25 --rate-scale 3 --rel-tol 0.03)
pab=(--balancer pab --tier-hold-fraction 0.1)
cap=(--balancer round-robin --admission-cap)
declare -A arms=(
  [fb-pab]="--scheduler fairbatching --seat-pressure 0.8 ${pab[*]}"
  [sarathi-cap]="--scheduler sarathi ${cap[*]}"
  [sarathi-pab]="--scheduler sarathi ${pab[*]}"
)
for b in 1024 2048; do
  for s in vllm vllm-priority; do
    arms[$s-$b-cap]="--scheduler $s --token-budget $b ${cap[*]}"
    arms[$s-$b-pab]="--scheduler $s --token-budget $b ${pab[*]}"
  done
done
[ -n "${ONLY_ARMS:-}" ] && for a in "${!arms[@]}"; do [[ " $ONLY_ARMS " == *" $a "* ]] || unset "arms[$a]"; done
run() {  # arm seed: its capacity unless already recorded
  local f="$out/$1-seed$2.json"
  [ -s "$f" ] || fairbatching sim capacity --seeds 1 "${common[@]}" ${arms[$1]} --seed "$2" --json "$f" > "${f%.json}.log" 2>&1
}
for arm in "${!arms[@]}"; do
  run "$arm" 0 & run "$arm" 1 & wait
  run "$arm" 2
done

python3 - "$out" <<'PY'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
runs = {}  # arm -> {seed: capacity document}
for f in glob.glob(out + "/*.json"):
    m = re.match(r"(.+)-seed(\d+)\.json", os.path.basename(f))
    if m:
        runs.setdefault(m[1], {})[int(m[2])] = json.load(open(f))
def med(v):
    return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
print("| arm | capacity req/s | interactive / batch attainment at capacity | interactive alone >= 99 % up to req/s |")
print("|---|---|---|---|")
for arm, by_seed in sorted(runs.items()):
    docs = list(by_seed.values())
    tiers = [d["report"]["per_tier"] for d in docs]
    tight = [(d.get("tightest_tier") or {}).get("capacity_rps") or 0.0 for d in docs]
    print(f"| {arm} | {med([d['capacity_rps'] for d in docs])} "
          f"| {med([t['interactive']['attainment'] for t in tiers])} / {med([t['batch']['attainment'] for t in tiers])} "
          f"| {med(tight)} |")
if "fb-pab" in runs:
    base = {a: s for a, s in runs.items() if a != "fb-pab"}
    ratios = []
    for seed, d in sorted(runs["fb-pab"].items()):
        best_arm = max((a for a in base if seed in base[a]), key=lambda a: base[a][seed]["capacity_rps"])
        ratios.append(d["capacity_rps"] / base[best_arm][seed]["capacity_rps"])
        print(f"seed {seed}: fb-pab / best baseline ({best_arm}) = {ratios[-1]:.3f}")
    print(f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f})")
PY
