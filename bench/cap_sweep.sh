#!/usr/bin/env bash
# A naive admission cap at every size, against PAB (issue 12/13 headline check). vLLM at its tuned budget
# 1024 behind least-prefill placement refuses a request when the chosen node's queued prefill passes
# CAP tokens (--admission-cap-tokens); beside it, FairBatching and vLLM nodes behind PAB, which need
# no size. Default setting: the headline's (8 simulated H100 nodes, the whole Azure code trace, SLOs
# 1 s / 50 ms, 90 % attainment with refusals counted as misses, noise 0.05, 3 % bisection, the
# simulator's defaults). The cap's default size is what an idle node prefills within the TTFT SLO by
# the planning model: 44,349 tokens by the H100 profile's linear fit, 28,203 by its quadratic model.
# TRACE and FLAGS change the setting (FLAGS are added to every run, e.g. FLAGS="--duration-s 600
# --rate-scale 28" for the first 600 s of Azure conv; PAB_ARMS= leaves out the two PAB arms). Writes one JSON
# per run, prints the table.
#   bash bench/cap_sweep.sh [OUT_DIR] [SEEDS] [CAPS]    # ~2 min a run on 2 cores (two at a time)
set -euo pipefail
out=${1:-bench/results/sim/headline-cap-sweep}
seeds=${2:-1}
caps=${3:-"8000 12000 16000 20000 24000 28203 32000 34000 36000 38000 40000 44349"}
mkdir -p "$out"
common=(--trace "${TRACE:-azure-code}" --profile h100-llama3-8b --nodes 8 --ttft-slo 1 --tpot-slo 0.05 --noise 0.05
        --rate-scale 25 --rel-tol 0.03 --seeds "$seeds" --seed 0)
[ -n "${FLAGS:-}" ] && common+=($FLAGS)
run() {  # name flags...: its capacity unless already recorded
  local f="$out/$1-seeds$seeds.json"; shift
  [ -s "$f" ] || fairbatching sim capacity "${common[@]}" "$@" --json "$f" > "${f%.json}.log" 2>&1
}
jobs_=()
for cap in $caps; do
  jobs_+=("cap$cap --scheduler vllm --token-budget 1024 --balancer least-prefill --admission-cap --admission-cap-tokens $cap")
done
[ -n "${PAB_ARMS-1}" ] && jobs_+=("pab-fairbatching --scheduler fairbatching --balancer pab"
                                   "pab-vllm-1024 --scheduler vllm --token-budget 1024 --balancer pab")
for ((i = 0; i < ${#jobs_[@]}; i += 2)); do
  run ${jobs_[i]} &
  [ $((i + 1)) -lt ${#jobs_[@]} ] && run ${jobs_[i + 1]}
  wait
done

python3 - "$out" <<'PY'
import glob, json, os, re, sys
rows = []
for f in glob.glob(sys.argv[1] + "/*-seeds*.json"):
    m = re.match(r"(.+)-seeds(\d+)\.json", os.path.basename(f))
    d = json.load(open(f))
    r = d["report"] or {}
    cap = re.match(r"cap(\d+)$", m[1])
    rows.append((0 if cap else 1, int(cap[1]) if cap else 0, m[1], int(m[2]), d["capacity_rps"],
                 d.get("capacity_rps_min", d["capacity_rps"]), d.get("capacity_rps_max", d["capacity_rps"]),
                 r.get("rejected_fraction", 0), r.get("admitted_attainment", 0), r.get("ttft_p99", 0)))
print("| arm | seeds | capacity req/s, mean (min-max) | rejected | admitted attainment | TTFT P99 s |")
print("|---|---|---|---|---|---|")
for _, cap, name, n, c, lo, hi, rej, adm, p99 in sorted(rows):
    label = f"vLLM [1024] + cap {cap:,} tokens" if cap else name
    print(f"| {label} | {n} | {c:.2f} ({lo:.2f}-{hi:.2f}) | {rej:.1%} | {adm:.3f} | {p99:.2f} |")
PY
