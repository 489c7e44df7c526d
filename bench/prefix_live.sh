#!/usr/bin/env bash
# Live multi-turn run on the embedded default with prefix caching on (docs/prefix-caching.md): does each
# engine's budget charge exactly the prompt tokens vLLM computes? Writes bench/results/prefix-live/.
#
#   bash bench/prefix_live.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results/prefix-live
mkdir -p "$OUT"
FB=.venv/bin/fairbatching
TRACE=$OUT/multiturn-150conv-2048ctx.csv
$FB trace multiturn --out "$TRACE" --conversations 150 --conversation-rate-rps 2 --max-context-tokens 2048 \
    --think-time-s 5
ray stop --force >/dev/null 2>&1 || true
RAY_AUTH_MODE=disabled setsid $FB serve --config deploy/serve-prefix.yaml > "$OUT/serve.log" 2>&1 &
for _ in $(seq 120); do
  sleep 5
  curl -s localhost:8000/health | grep -q '"engines":2' && break
done
$FB load --trace "$TRACE" --columns timestamp:ms,input_length,output_length,hash_ids --max-output-tokens 64 \
    --json "$OUT/multiturn-live.json"
$FB status | tee "$OUT/status.txt"
ray stop --force >/dev/null 2>&1 || true
