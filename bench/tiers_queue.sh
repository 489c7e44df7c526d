#!/usr/bin/env bash
# The balancer's admission queue at cluster scale (issue 13): 8 simulated H100 nodes, the whole Azure
# code trace, 50/50 interactive (1 s / 50 ms) and batch (30 s / 250 ms), seeds 0-2.
#  1. Capacity (90 % overall attainment, 3 % bisection) and the rate at which interactive alone keeps
#     99 %, per seed: FairBatching behind per-class PAB (hold 0.1, shed 1 s) refusing at once, the same
#     with a 0.1 s earliest-deadline-first queue, and vLLM-priority [1024] behind least-prefill with the
#     naive cap (the best capped baseline, bench/results/TIERS.md).
#  2. At 1.5x the baseline's median capacity, every seed: no queue, and queues of 0.05-0.2 s in each
#     order (edf, arrival, fifo): interactive attainment and refusals, batch attainment.
# Writes one JSON per run (the per-node PAB timelines dropped from the runs at 1.5x) and prints both
# tables (median and range over seeds).
# SIM_FLAGS: simulator flags for every run; default the settings the recorded results ran with (before
# 2026-12-01: seats counted by the plan's cap only, 256 on H100); SIM_FLAGS= runs the current defaults.
# QUEUES: the queue arms at 1.5x (default: every one), e.g. QUEUES="none edf0.1".
#   bash bench/tiers_queue.sh [OUT_DIR]      # ~15 min on 2 cores
set -euo pipefail
out=${1:-bench/results/sim/tiers-queue-8}
mkdir -p "$out/capacity" "$out/at-1.5x"
# --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
read -r -a sim_flags <<< "${SIM_FLAGS---no-seats-as-vllm --max-num-seqs 256 --step-model linear}"
common=("${sim_flags[@]}" --trace azure-code --profile h100-llama3-8b --nodes 8
        --slo-tier interactive=0.5:1:0.05 --slo-tier batch=0.5:30:0.25)
fb=(--scheduler fairbatching --seat-pressure 0.8 --balancer pab --tier-hold-fraction 0.1)
declare -A cap_arms=(
  [fb-pab]="${fb[*]}"
  [fb-pab-edf0.1]="${fb[*]} --balancer-queue-s 0.1 --balancer-queue-order edf"
  [vllm-priority-lp-cap]="--scheduler vllm-priority --token-budget 1024 --balancer least-prefill --admission-cap"
)
capacity() {  # arm seed: its capacity unless already recorded
  local f="$out/capacity/$1-seed$2.json"
  [ -s "$f" ] || fairbatching sim capacity --seeds 1 "${common[@]}" ${cap_arms[$1]} --seed "$2" --rate-scale 25 \
      --rel-tol 0.03 --json "$f" > "${f%.json}.log" 2>&1
}
for seed in 0 1 2; do
  capacity fb-pab "$seed" & capacity fb-pab-edf0.1 "$seed" & wait
  capacity vllm-priority-lp-cap "$seed"
done

# 1.5x the baseline's median capacity, as a rate scale of the trace.
scale=$(python3 - "$out" <<'PY'
import glob, json, statistics, sys
caps = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[1] + "/capacity/vllm-priority-lp-cap-seed*.json"))]
rate = 1.5 * statistics.median(c["capacity_rps"] for c in caps)
r = caps[0]["report"]  # rate_rps = rate_scale x the trace's own rate
print(round(rate / (r["rate_rps"] / r["rate_scale"]), 4))
PY
)
declare -A at_arms=([none]="")
for q in 0.05 0.1 0.2; do
  for order in edf arrival fifo; do at_arms[$order$q]="--balancer-queue-s $q --balancer-queue-order $order"; done
done
at() {  # arm seed
  local f="$out/at-1.5x/$1-seed$2.json"
  [ -s "$f" ] || fairbatching sim run "${common[@]}" "${fb[@]}" ${at_arms[$1]} --seed "$2" --rate-scale "$scale" \
      --json "$f" > "${f%.json}.log" 2>&1
}
[ -n "${QUEUES:-}" ] && for a in "${!at_arms[@]}"; do [[ " $QUEUES " == *" $a "* ]] || unset "at_arms[$a]"; done
for arm in "${!at_arms[@]}"; do
  at "$arm" 0 & at "$arm" 1 & wait
  at "$arm" 2
done

python3 - "$out" <<'PY'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
for f in glob.glob(out + "/at-1.5x/*.json") + glob.glob(out + "/ablation/*.json"):  # the record without the per-node timelines
    d = json.load(open(f))
    if d.pop("pab_timeline", None) is not None:
        json.dump(d, open(f, "w"), indent=1)

def spread(xs, fmt):
    xs = sorted(xs)
    return f"{fmt(statistics.median(xs))} ({fmt(xs[0])}-{fmt(xs[-1])})" if xs else "-"

def by_arm(pattern):
    arms = {}
    for f in sorted(glob.glob(pattern)):
        arm = re.sub(r"-seed\d+\.json$", "", os.path.basename(f))
        arms.setdefault(arm, []).append(json.load(open(f)))
    return arms

num = lambda x: f"{x:.1f}"
pct = lambda x: f"{100 * x:.2f} %"
print("| arm | capacity req/s | interactive alone >= 99 % up to req/s |")
print("|---|---|---|")
for arm, runs in by_arm(out + "/capacity/*-seed*.json").items():
    tight = [r["tightest_tier"]["capacity_rps"] for r in runs if (r.get("tightest_tier") or {}).get("capacity_rps")]
    print(f"| {arm} | {spread([r['capacity_rps'] for r in runs], num)} | {spread(tight, num)} |")
print()
arms = by_arm(out + "/at-1.5x/*-seed*.json")
rate = next(iter(arms.values()))[0]["rate_rps"]
print(f"At {rate:.1f} req/s (1.5x the baseline's median capacity), seeds {len(next(iter(arms.values())))}:")
print()
print("| balancer queue | interactive attainment | interactive refused | interactive admitted attainment | batch attainment | overall |")
print("|---|---|---|---|---|---|")
for arm, runs in sorted(arms.items(), key=lambda kv: (kv[0] != "none", kv[0])):
    it = [r["per_tier"]["interactive"] for r in runs]
    bt = [r["per_tier"]["batch"] for r in runs]
    print(f"| {arm} | {spread([t['attainment'] for t in it], pct)} | {spread([t['rejected'] for t in it], str)} "
          f"| {spread([t['admitted_attainment'] for t in it], pct)} | {spread([t['attainment'] for t in bt], pct)} "
          f"| {spread([r['attainment'] for r in runs], pct)} |")
PY
