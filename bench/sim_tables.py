"""Print the Markdown tables of bench/results/SIMULATION.md from bench/results/sim/*.json.

    .venv/bin/python bench/sim_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

SIM = Path(__file__).resolve().parent / "results" / "sim"


def fmt(x, nd=2):
    if x is None:
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def capacity_table(rows, title):
    print(f"\n**{title}**\n")
    print("| arm | trace | capacity req/s | attainment | admitted att. | rejected | TTFT P50 / P99 s | TPOT P99 ms | token att. arrival / first-token | preemptions | sim speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a = r["at_capacity"]
        print(f"| {r['arm']} | {r['trace']} | {fmt(r['capacity_rps'])} | {fmt(a['attainment'], 3)} | "
              f"{fmt(a['admitted_attainment'], 3)} | {fmt(a['rejected_fraction'], 3)} | {fmt(a['ttft_p50'])} / {fmt(a['ttft_p99'])} | "
              f"{fmt(a['tpot_p99'] and a['tpot_p99'] * 1000, 1)} | {fmt(a['token_attainment_arrival'], 3)} / "
              f"{fmt(a['token_attainment_first_token'], 3)} | {a['preemptions']} | {fmt(a['sim_speedup'], 0)} |")


def main() -> None:
    for path in sorted(SIM.glob("*.json")):
        data = json.loads(path.read_text())
        for key in ("rows", "rows_token_attainment"):
            if data.get(key):
                capacity_table(data[key], f"{path.stem} ({key})")
        if "tuning" in data:
            print(f"\nvLLM budget tuning ({path.stem}): " + json.dumps(data["tuning"]))
        if "at_baseline_capacity" in data:
            at = data["at_baseline_capacity"]
            print(f"\n**{path.stem}: every arm at {at['baseline']}'s capacity (rate scale {at['rate_scale']:.3g})**\n")
            print("| arm | offered req/s | attainment | rejected | TTFT P50 / P90 / P99 s | TPOT P99 ms |")
            print("|---|---|---|---|---|---|")
            for label, a in at["arms"].items():
                print(f"| {label} | {fmt(a['offered_rps'])} | {fmt(a['attainment'], 3)} | {fmt(a['rejected_fraction'], 3)} | "
                      f"{fmt(a['ttft_p50'])} / {fmt(a.get('ttft_p90'))} / {fmt(a['ttft_p99'])} | {fmt(a['tpot_p99'] and a['tpot_p99'] * 1000, 1)} |")


if __name__ == "__main__":
    main()
