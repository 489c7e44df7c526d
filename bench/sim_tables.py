"""Print the Markdown tables of bench/results/SIMULATION.md from bench/results/sim/*.json.

    .venv/bin/python bench/sim_tables.py            # every table
    .venv/bin/python bench/sim_tables.py issue10    # only the issue-10 tables (bench/results/sim/issue10/)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

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


def _multiples_cells(at: dict, keys=("1x", "1.5x", "2x", "3x")) -> str:
    cells = []
    for k in keys:
        a = at.get(k)
        if a is None:
            cells.append("-")
            continue
        cells.append(f"{fmt(a['offered_rps'], 1)} / {fmt(a['admitted_attainment'], 3)} / {fmt(a['rejected_fraction'], 2)} / "
                     f"**{fmt(a['goodput_rps'], 1)}**")
    return " | ".join(cells)


def at_baseline_table(title: str, at: dict) -> None:
    """Every arm at the best baseline's capacity rate (the ``at_baseline_capacity`` block of a result)."""
    print(title)
    print("| arm | offered req/s | attainment | rejected | TTFT P50 / P90 / P99 s | TPOT P99 ms |")
    print("|---|---|---|---|---|---|")
    for label, a in at["arms"].items():
        print(f"| {label} | {fmt(a['offered_rps'])} | {fmt(a['attainment'], 3)} | {fmt(a['rejected_fraction'], 3)} | "
              f"{fmt(a['ttft_p50'])} / {fmt(a.get('ttft_p90'))} / {fmt(a['ttft_p99'])} | "
              f"{fmt(a['tpot_p99'] and a['tpot_p99'] * 1000, 1)} |")


def issue10_tables() -> None:
    out = SIM / "issue10"
    refs = sorted(p for p in out.glob("reference-seed*.json") if "quick" not in p.stem)
    if refs:
        print("\n**Reference: capacity, then 1x / 1.5x / 2x / 3x its rate** (cells: offered req/s / admitted attainment / "
              "rejected / **goodput req/s**)\n")
        print("| seed | capacity req/s | 1x | 1.5x | 2x | 3x | acceptance |")
        print("|---|---|---|---|---|---|---|")
        for path in refs:
            r = json.loads(path.read_text())
            acc = r.get("acceptance") or {}
            verdict = (f"{'holds' if acc.get('holds') else 'fails'} (2x/1x goodput {fmt(acc.get('goodput_2x_over_1x'), 2)})"
                       if acc else "-")
            print(f"| {r['config']['seed']} | {fmt(r['capacity_rps'])} | {_multiples_cells(r['at'])} | {verdict} |")
        print("\n| seed | multiple | TTFT P50 / P99 s | TPOT P50 / P99 ms | correction mean (min) | PAB binding | unfinished | dropped |")
        print("|---|---|---|---|---|---|---|---|")
        for path in refs:
            r = json.loads(path.read_text())
            for k, a in r["at"].items():
                binding = ", ".join(f"{b} {v:.0%}" for b, v in (a.get("pab_binding_fraction") or {}).items())
                print(f"| {r['config']['seed']} | {k} | {fmt(a['ttft_p50'])} / {fmt(a['ttft_p99'])} | "
                      f"{fmt(a['tpot_p50'] and a['tpot_p50'] * 1000, 0)} / {fmt(a['tpot_p99'] and a['tpot_p99'] * 1000, 0)} | "
                      f"{fmt(a['correction_mean_over_nodes'])} ({fmt(a['correction_min_over_nodes'])}) | {binding} | "
                      f"{a['unfinished']} | {a['dropped']} |")
    abl = out / "ablations.json"
    if abl.exists():
        data = json.loads(abl.read_text())
        print(f"\n**Ablations** (first {data['window_s']:g} s of the trace, seed 0; each arm at 1x / 1.5x / 2x its own "
              "capacity; cells as above)\n")
        print("| arm | capacity req/s | 1x | 1.5x | 2x | TTFT P99 / TPOT P99 at 2x |")
        print("|---|---|---|---|---|---|")
        for r in data["rows"]:
            a2 = r["at"].get("2x") or {}
            tails = (f"{fmt(a2.get('ttft_p99'))} s / {fmt(a2.get('tpot_p99') and a2['tpot_p99'] * 1000, 0)} ms"
                     if a2 else "-")
            print(f"| {r['arm']} | {fmt(r['capacity_rps'])} | {_multiples_cells(r['at'], ('1x', '1.5x', '2x'))} | {tails} |")
    head = out / "headline-azure-code.json"
    if head.exists():
        data = json.loads(head.read_text())
        print("\n**Headline re-measured** (8 nodes, whole Azure code trace, SLOs 1 s / 50 ms)\n")
        print("| arm | capacity req/s | attainment | admitted att. | rejected | TTFT P50 / P99 s | TPOT P99 ms |")
        print("|---|---|---|---|---|---|---|")
        for r in data["rows"]:
            a = r["at_capacity"]
            print(f"| {r['arm']} | {fmt(r['capacity_rps'])} | {fmt(a.get('attainment'), 3)} | {fmt(a.get('admitted_attainment'), 3)} | "
                  f"{fmt(a.get('rejected_fraction'), 3)} | {fmt(a.get('ttft_p50'))} / {fmt(a.get('ttft_p99'))} | "
                  f"{fmt(a.get('tpot_p99') and a['tpot_p99'] * 1000, 1)} |")
        if "at_baseline_capacity" in data:
            at = data["at_baseline_capacity"]
            at_baseline_table(f"\nEvery arm at {at['baseline']}'s capacity (rate scale {at['rate_scale']:.3g}):\n", at)


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    section: Optional[Literal["issue10"]] = typer.Argument(
        None, help="issue10: only the issue-10 tables (bench/results/sim/issue10/); default: every table."),
) -> None:
    if section == "issue10":
        issue10_tables()
        return
    for path in sorted(SIM.glob("*.json")):
        data = json.loads(path.read_text())
        for key in ("rows", "rows_token_attainment"):
            if data.get(key):
                capacity_table(data[key], f"{path.stem} ({key})")
        if "tuning" in data:
            print(f"\nvLLM budget tuning ({path.stem}): " + json.dumps(data["tuning"]))
        if "at_baseline_capacity" in data:
            at = data["at_baseline_capacity"]
            at_baseline_table(f"\n**{path.stem}: every arm at {at['baseline']}'s capacity "
                              f"(rate scale {at['rate_scale']:.3g})**\n", at)
    issue10_tables()


if __name__ == "__main__":
    app()
