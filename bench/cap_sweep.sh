#!/usr/bin/env bash
# A naive admission cap at every size, against PAB (issue 12/13 headline check). vLLM at its tuned budget
# 1024 behind least-prefill placement refuses a request when the chosen node's queued prefill passes
# CAP tokens (--admission-cap-tokens); beside it, FairBatching and vLLM nodes behind PAB, which need
# no size. Default setting: the headline's (8 simulated H100 nodes, the whole Azure code trace, SLOs
# 1 s / 50 ms, 90 % attainment with refusals counted as misses, noise 0.05, 3 % bisection, the
# simulator's defaults). The cap's default size is what an idle node prefills within the TTFT SLO by
# the planning model: 44,349 tokens by the H100 profile's linear fit, 28,203 by its quadratic model.
# TRACE and FLAGS change the setting (FLAGS are added to every run, e.g. FLAGS="--duration-s 600
# --rate-scale 28" for the first 600 s of Azure conv; PAB_ARMS=0 leaves out the two PAB arms). Writes one JSON
# per run (reused when there: one setting per OUT_DIR, default bench/results/sim/headline-cap-sweep for the
# code trace, cap-sweep-TRACE for another), prints the table, exits 1 when a run failed.
#   bash bench/cap_sweep.sh [OUT_DIR] [SEEDS] [CAPS]    # ~2 min a run on 2 cores (two at a time)
set -euo pipefail
trace=${TRACE:-azure-code}
default_out=bench/results/sim/headline-cap-sweep
[ "$trace" = azure-code ] || default_out=bench/results/sim/cap-sweep-$trace
out=${1:-$default_out}
seeds=${2:-1}
caps=${3:-"8000 12000 16000 20000 24000 28203 32000 34000 36000 38000 40000 44349"}
mkdir -p "$out"
common=(--trace "$trace" --profile h100-llama3-8b --nodes 8 --ttft-slo 1 --tpot-slo 0.05 --noise 0.05
        --rate-scale 25 --rel-tol 0.03 --seed 0)
[ -n "${FLAGS:-}" ] && common+=($FLAGS)
# A folder holds one setting (seeds aside: they are in the file names): its runs are reused, so another
# trace or other flags need another folder.
settings="$out/settings.txt"
if [ -s "$settings" ] && [ "$(cat "$settings")" != "${common[*]}" ]; then
  echo "error: $out holds runs of another setting ($(cat "$settings")); give another OUT_DIR" >&2
  exit 2
fi
echo "${common[*]}" > "$settings"
run() {  # name flags...: its capacity unless already recorded
  local f="$out/$1-seeds$seeds.json"; shift
  [ -s "$f" ] || fairbatching sim capacity "${common[@]}" --seeds "$seeds" "$@" --json "$f" > "${f%.json}.log" 2>&1 \
    || { echo "error: a run failed, see ${f%.json}.log" >&2; return 1; }
}
jobs_=()
for cap in $caps; do
  jobs_+=("cap$cap --scheduler vllm --token-budget 1024 --balancer least-prefill --admission-cap --admission-cap-tokens $cap")
done
case "${PAB_ARMS-1}" in
  ""|0|no|off) ;;
  *) jobs_+=("pab-fairbatching --scheduler fairbatching --balancer pab"
             "pab-vllm-1024 --scheduler vllm --token-budget 1024 --balancer pab") ;;
esac
failed=0
for ((i = 0; i < ${#jobs_[@]}; i += 2)); do  # two at a time; every pair waited for, a failure reported at the end
  run ${jobs_[i]} & pid=$!
  if [ $((i + 1)) -lt ${#jobs_[@]} ]; then run ${jobs_[i + 1]} || failed=1; fi
  wait "$pid" || failed=1
done

python3 - "$out" <<'PY'
import glob, json, os, re, sys
rows = []
for f in glob.glob(sys.argv[1] + "/*-seeds*.json"):
    m = re.match(r"(.+)-seeds(\d+)\.json", os.path.basename(f))
    d = json.load(open(f))
    r = d["report"] or {}
    cap = re.match(r"cap(\d+)$", m[1])
    c = d["capacity_rps"]
    if c is None:
        text = "none: " + str(d.get("why_no_capacity") or "no rate met the target")
    else:
        text = f"{'at least ' if d.get('capacity_is_lower_bound') else ''}{c:.2f} " \
               f"({d.get('capacity_rps_min', c):.2f}-{d.get('capacity_rps_max', c):.2f})"
    rows.append((0 if cap else 1, int(cap[1]) if cap else 0, m[1], int(m[2]), text,
                 r.get("rejected_fraction", 0), r.get("admitted_attainment", 0), r.get("ttft_p99", 0)))
print("| arm | seeds | capacity req/s, mean (min-max) | rejected | admitted attainment | TTFT P99 s |")
print("|---|---|---|---|---|---|")
for _, cap, name, n, text, rej, adm, p99 in sorted(rows):
    label = f"vLLM [1024] + cap {cap:,} tokens" if cap else name
    print(f"| {label} | {n} | {text} | {rej:.1%} | {adm:.3f} | {p99:.2f} |")
PY
exit "$failed"
