#!/usr/bin/env bash
# FairBatching nodes against vLLM nodes behind PAB (issue 12): simulated H100 nodes, the first 1200 s of
# Azure code, SLOs 1 s / 50 ms, capacity = 90 % attainment (refusals count as misses), step-time
# noise sigma 0.05, seeds 0-2. 4 nodes (2 % bisection) and 8 nodes (3 %). vLLM at token budgets 512,
# 1024 and 2048 (its PAB plans with the budget it runs at); FairBatching at the simulator's defaults of
# 2026-12-01 (doomed relegation, no seat pressure: the recorded runs). EXTRA_ARMS adds others, e.g. the
# recorded fewest-late arm: EXTRA_ARMS='[fairbatching-fewest-late]="--scheduler fairbatching --relegate fewest-late"'.
# Writes one JSON per run and prints capacity per arm (median, range) and FairBatching / best vLLM
# per seed. FLAGS="..." adds simulator flags to every run (the seats256 record:
# FLAGS="--no-seats-as-vllm --max-num-seqs 256", the simulator's settings before 2026-12-01).
#   bash bench/pab_nodes.sh [OUT_DIR]      # ~10 min on 2 cores
set -euo pipefail
out=${1:-bench/results/sim/pab-nodes}
mkdir -p "$out"
# --step-model linear: the planning model these results were recorded with (the default until 2026-12-04)
common=(--step-model linear --trace azure-code --duration-s 1200 --profile h100-llama3-8b --balancer pab
        --ttft-slo 1 --tpot-slo 0.05 --noise 0.05 --seat-pressure 0)  # (seat pressure off: as recorded)
[ -n "${FLAGS:-}" ] && common+=($FLAGS)
declare -A arms=(
  [fairbatching]="--scheduler fairbatching --relegate doomed"  # (as recorded, 2026-12-01)
  [vllm-512]="--scheduler vllm --token-budget 512"
  [vllm-1024]="--scheduler vllm --token-budget 1024"
  [vllm-2048]="--scheduler vllm --token-budget 2048"
)
[ -n "${EXTRA_ARMS:-}" ] && eval "arms+=($EXTRA_ARMS)"
run() {  # nodes arm seed: its capacity unless already recorded
  local f="$out/$1nodes-$2-seed$3.json" scale=$(( $1 * 3 / 4 )) tol=0.02
  [ "$1" -ge 8 ] && tol=0.03
  [ -s "$f" ] || fairbatching sim capacity --seeds 1 "${common[@]}" ${arms[$2]} --nodes "$1" --seed "$3" \
      --rate-scale "$scale" --rel-tol "$tol" --json "$f" > "${f%.json}.log" 2>&1
}
for nodes in 4 8; do
  for arm in "${!arms[@]}"; do
    run "$nodes" "$arm" 0 & run "$nodes" "$arm" 1 & wait
    run "$nodes" "$arm" 2
  done
done

python3 - "$out" <<'PY'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
caps = {}  # (nodes, arm) -> {seed: capacity}
for f in glob.glob(out + "/*.json"):
    m = re.match(r"(\d+)nodes-(.+)-seed(\d+)\.json", os.path.basename(f))
    if m:
        caps.setdefault((int(m[1]), m[2]), {})[int(m[3])] = json.load(open(f))["capacity_rps"]
for nodes in sorted({n for n, _ in caps}):
    print(f"\n### {nodes} nodes: capacity req/s, median (min-max) over seeds\n")
    print("| arm | capacity | admitted attainment at capacity |")
    print("|---|---|---|")
    for (n, arm), by_seed in sorted(caps.items()):
        if n != nodes:
            continue
        adm = [json.load(open(f"{out}/{n}nodes-{arm}-seed{s}.json"))["report"]["admitted_attainment"] for s in by_seed]
        v = list(by_seed.values())
        print(f"| {arm} | {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f}) | {min(adm):.3f}-{max(adm):.3f} |")
    vllm = {arm: s for (n, arm), s in caps.items() if n == nodes and arm.startswith("vllm")}
    for (n, arm), by_seed in sorted(caps.items()):
        if n != nodes or arm.startswith("vllm") or not vllm:
            continue
        ratios = [by_seed[s] / max(v[s] for v in vllm.values() if s in v) for s in sorted(by_seed)]
        print(f"\n{arm} / best vLLM budget, per seed 0, 1, 2...: " + ", ".join(f"{r:.3f}" for r in ratios)
              + f" (median {statistics.median(ratios):.3f})")
PY
