#!/usr/bin/env bash
# Two SLO classes live on the embedded default (two tiny CPU engines): deploy/serve-tiers.yaml
# (interactive 2 s / 250 ms, batch 30 s / 1 s, tier_hold_fraction HOLD), Azure code clipped to
# 512 / 32 tokens, a 50/50 mix sent with x-slo-class by `fairbatching load`, at RATE_SCALE
# (19 = ~48 req/s, 4x the 12 req/s capacity measured in SERVE.md).
# SHED (optional) is tier_shed_s: after an interactive refusal batch is refused this long (default:
# the interactive TTFT, 2 s; 0: off).
# Ablations through the environment: INGRESS_REPLICAS (the config's 2), ENGINE_CORE_NICE (default:
# 4 on CPU engines; 0 runs the engine cores at the replicas' priority), PAB_HORIZON_FRACTION (the
# config's 0.45), TPOT_MARGIN (the config's 0.4) and TOKEN_GRANTS (false: the engines set only each
# step's total token budget, not every planned request's tokens), ADMISSION_WAIT_S (hold a request no
# engine has budget for this long before its 429; default 0) and ADMISSION_WAIT_ORDER (edf, arrival, fifo).
#   [ADMISSION_WAIT_S=S [ADMISSION_WAIT_ORDER=O]] [INGRESS_REPLICAS=N] [ENGINE_CORE_NICE=N] [PAB_HORIZON_FRACTION=F] [TPOT_MARGIN=M] [TOKEN_GRANTS=false] \
#     bash bench/tiers_live.sh HOLD RATE_SCALE OUT.json [SHED]
set -euo pipefail
hold=$1; rs=$2; out=$3; shed=${4:-}
cfg=$(mktemp --suffix=.yaml)
sed "s/tier_hold_fraction: .*/tier_hold_fraction: $hold/" deploy/serve-tiers.yaml > "$cfg"
add() {  # one more key of the application's args, beside tier_hold_fraction
  sed -i "s/^\( *\)tier_hold_fraction: .*/&\n\1$1/" "$cfg"
}
if [ -n "$shed" ]; then add "tier_shed_s: $shed"; fi
if [ -n "${INGRESS_REPLICAS:-}" ]; then sed -i "s/^\( *\)ingress_replicas: .*/\1ingress_replicas: $INGRESS_REPLICAS/" "$cfg"; fi
if [ -n "${ENGINE_CORE_NICE:-}" ]; then add "engine_core_nice: $ENGINE_CORE_NICE"; fi
if [ -n "${PAB_HORIZON_FRACTION:-}" ]; then
  sed -i "s/^\( *\)pab_horizon_fraction: .*/\1pab_horizon_fraction: $PAB_HORIZON_FRACTION/" "$cfg"
fi
if [ -n "${TOKEN_GRANTS:-}" ]; then sed -i "s/^\( *\)knobs: .*tpot_margin.*/&\n\1token_grants: $TOKEN_GRANTS/" "$cfg"; fi
if [ -n "${ADMISSION_WAIT_S:-}" ]; then add "admission_wait_s: $ADMISSION_WAIT_S"; fi
if [ -n "${ADMISSION_WAIT_ORDER:-}" ]; then add "admission_wait_order: $ADMISSION_WAIT_ORDER"; fi
if [ -n "${TPOT_MARGIN:-}" ]; then sed -i "s/tpot_margin: [0-9.]*/tpot_margin: $TPOT_MARGIN/" "$cfg"; fi
ray stop --force >/dev/null 2>&1 || true
RAY_AUTH_MODE=disabled fairbatching serve --config "$cfg" > /tmp/tiers-serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; ray stop --force >/dev/null 2>&1 || true' EXIT
for _ in $(seq 240); do
  curl -sf http://127.0.0.1:8000/health 2>/dev/null | grep -q '"engines": *2' && break
  sleep 1
done
curl -sf http://127.0.0.1:8000/health
# warm-up: the first requests of a fresh engine are slow (slow start); then the measured run
fairbatching load --trace azure-code --duration-s 60 --max-prompt-tokens 512 --max-output-tokens 32 \
  --rate-scale 2 --slo-tier interactive=0.5:2:0.25 --slo-tier batch=0.5:30:1 --send-class >/dev/null
fairbatching load --trace azure-code --duration-s 600 --max-prompt-tokens 512 --max-output-tokens 32 \
  --rate-scale "$rs" --slo-tier interactive=0.5:2:0.25 --slo-tier batch=0.5:30:1 --send-class --json "$out"
fairbatching status --json > "${out%.json}.status.json"  # each engine's budgets, held share and counts by class
