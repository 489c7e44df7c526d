#!/usr/bin/env bash
# The real CPU engine at saturation (issue 12's criterion), with a larger sample than engine_ab.sh:
# FairBatching (the serving layer's knobs plus seat pressure 0.8, and KNOBS_EXTRA) against stock vLLM,
# 600 requests of Azure conv per (arm, rate), REPEATS repeats with the arm order alternating. Run it on a
# quiet machine.
#   bash bench/engine_saturation.sh [OUT_DIR] [REPEATS]      (~3 min a repeat on 2 cores)
#   KNOBS_EXTRA=', "relegate": "doomed"' bash bench/engine_saturation.sh OUT_DIR
set -euo pipefail
out=${1:-bench/results/engine-ab/saturation-600}
repeats=${2:-3}
mkdir -p "$out"
knobs="{\"anchor\": \"first-token\", \"tpot_margin\": 0.2, \"seat_pressure\": 0.8${KNOBS_EXTRA:-}}"
for n in $(seq 1 "$repeats"); do
  if (( n % 2 )); then arms=fairbatching,vllm; else arms=vllm,fairbatching; fi
  .venv/bin/fairbatching bench engine --json "$out/r$n.json" --arms "$arms" --rates 32,64 \
    --num-requests 600 --ttft-slo-s 0.5 --tpot-slo-s 0.05 --fb-knobs "$knobs"
done
.venv/bin/python - "$out" <<'PY'
import json, sys, pathlib, statistics
rows = {}
for f in sorted(pathlib.Path(sys.argv[1]).glob("r*.json")):
    for r in json.loads(f.read_text())["rows"]:
        rows.setdefault((r["rate_rps"], r["arm"]), []).append(100 * r["attainment"])
print("| rate req/s | arm | attainment per repeat (%) | median |")
print("|---|---|---|---|")
for (rate, arm), v in sorted(rows.items()):
    print(f"| {rate:g} | {arm} | {', '.join(f'{x:.1f}' for x in v)} | {statistics.median(v):.1f} |")
PY
