#!/usr/bin/env bash
# SLO classes behind admission, single simulated H100 node, Azure conv, 50/50 interactive (1 s / 50 ms)
# and batch (30 s / 250 ms), 900 s trace window, seeds 0-2, at about 1.3x and 2x the round-robin capacity
# of FairBatching (17.26 req/s, bench/results/TIERS.md). Writes one JSON per run and prints a table.
#   bash bench/tiers_admission.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results/sim/tiers-admission}
mkdir -p "$out"
# (as recorded, before 2026-12-01: seats counted by the plan's cap only, 256 seats on the H100 profile)
# --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
common=(--step-model linear --no-seats-as-vllm --max-num-seqs 256 --trace azure-conv --profile h100-llama3-8b --nodes 1 --duration-s 900
        --slo-tier interactive=0.5:1:0.05 --slo-tier batch=0.5:30:0.25)
# (the arms recorded before --tier-shed-s existed run with it off; the -shed arm with its default, 1 s)
fb=(--scheduler fairbatching --anchor first-token --tpot-margin 0.2 --seat-pressure 0.8
    --relegate none --chunk-align-tokens 0)  # as recorded (the simulator now relegates and aligns by default)
declare -A arms=(
  [fb-pab-hold0.1]="${fb[*]} --balancer pab --tier-hold-fraction 0.1 --tier-shed-s 0"
  [fb-pab-hold0.1-shed]="${fb[*]} --balancer pab --tier-hold-fraction 0.1"
  [fb-pab-hold0.1-lend-at-risk]="${fb[*]} --balancer pab --tier-hold-fraction 0.1 --lend at-risk --tier-shed-s 0"
  [fb-pab-hold0]="${fb[*]} --balancer pab --tier-hold-fraction 0 --tier-shed-s 0"
  [fb-rr]="${fb[*]} --balancer round-robin"
  [vllm-priority-rr]="--scheduler vllm-priority --token-budget 1024 --balancer round-robin"
  [vllm-priority-pab]="--scheduler vllm-priority --token-budget 1024 --balancer pab --tier-hold-fraction 0.1 --tier-shed-s 0"
  [vllm-priority-pab-shed]="--scheduler vllm-priority --token-budget 1024 --balancer pab --tier-hold-fraction 0.1"
)
for rs in 4.5 7; do
  for arm in "${!arms[@]}"; do
    for seed in 0 1 2; do
      f="$out/$arm-rs$rs-seed$seed.json"
      [ -s "$f" ] || fairbatching sim run "${common[@]}" ${arms[$arm]} --rate-scale "$rs" --seed "$seed" --json "$f" >/dev/null
    done
  done
done
python3 - "$out" <<'PY'
import glob, json, statistics as st, sys, collections
rows = collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(f))
    arm = f.split("/")[-1].rsplit("-rs", 1)[0]
    rows[(arm, r["rate_scale"])].append(r)
print("| arm | rate req/s | goodput req/s | interactive attainment | interactive refused | batch attainment | batch refused | admitted attainment |")
print("|---|---|---|---|---|---|---|---|")
for (arm, rs), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    def m(get):
        v = [get(r) for r in runs]
        return f"{st.mean(v):.3g} ({min(v):.3g}-{max(v):.3g})"
    it = lambda r: r["per_tier"]["interactive"]
    bt = lambda r: r["per_tier"]["batch"]
    print(f"| {arm} | {m(lambda r: r['offered_rps'])} | {m(lambda r: r['goodput_rps'])} | {m(lambda r: it(r)['attainment'])} "
          f"| {m(lambda r: it(r)['rejected'])} | {m(lambda r: bt(r)['attainment'])} | {m(lambda r: bt(r)['rejected'])} "
          f"| {m(lambda r: r['admitted_attainment'])} |")
PY
