"""Issue 10 in the simulator: admission that keeps its promise on a long-context workload.

    .venv/bin/python bench/sim_issue10.py --only SECTION[,SECTION] [--seeds 0,1,2] [--quick]

Every section writes JSON under bench/results/sim/issue10/:

* ``reference``: the acceptance setting. 8 nodes, h100-llama3-8b (ground-truth
  step times), the ``long-context`` trace (whole, 19,366 requests), SLOs TTFT
  3 s / TPOT 50 ms, FairBatching (first-token anchor) + PAB with the issue-10
  knobs (whole-life PAB, ``--feedback``, ``--relegate lost``,
  ``--tpot-margin 0.1``). Per seed: capacity (attainment >= 90 %, bisection
  to 3 %), then runs at 1x, 1.5x, 2x and 3x the capacity rate.
  ``reference-seedK.json``.
* ``ablations``: each knob of the reference switched on its own, and the
  pre-issue setting, on the first 1800 s of the trace (seed 0): capacity,
  then 1.5x and 2x that arm's own capacity. ``ablations.json``.
* ``headline``: the README's cluster figure re-measured with the new PAB:
  8 nodes, the whole Azure code trace, SLOs 1 s / 50 ms, FB-first + PAB (new,
  old prefill-only, and with the issue-10 knobs) against the baselines,
  capacity by bisection to 3 %, and every arm at the best uncapped baseline's
  capacity. ``headline-azure-code.json``.
* ``model-error``: why the TPOT margin matters. The paper's FairBatching
  (no margin) at 4x the trace rate, first 600 s, with the ground-truth step
  times and with the planner's own linear model as the truth (the same
  profile with ``ground_truth`` removed). ``model-error.json``.
* ``plot``: ``goodput_vs_load.png`` from the reference and ablation JSON.

``--quick`` shortens every window to 300 s and loosens the bisection (a smoke
test of the pipeline, not results).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import typer

from cluster.sim.capacity import find_capacity
from cluster.sim.config import SimConfig
from cluster.sim.simulator import load_workload, simulate

OUT = Path(__file__).resolve().parent / "results" / "sim" / "issue10"
KEEP = ("offered_rps", "requests", "attainment", "admitted_attainment", "rejected_fraction", "goodput_rps",
        "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p99", "token_attainment_first_token", "unfinished",
        "dropped", "preemptions", "node_correction", "node_expected_output_tokens", "pab_binding_fraction",
        "host_s", "sim_s", "wall_s", "sim_speedup_cpu")
MULTIPLES = (1.0, 1.5, 2.0, 3.0)

REFERENCE = SimConfig(
    trace="long-context", profile="h100-llama3-8b", nodes=8, scheduler="fairbatching", anchor="first-token",
    balancer="pab", ttft_slo_s=3.0, tpot_slo_s=0.05, feedback=True, relegate="lost", tpot_margin=0.1,
    rate_scale=4.0, seed=0, chunk_align_tokens=0, seat_pressure=None,
    seats_as_vllm=False, max_num_seqs=256, step_model="linear",  # as recorded, before 2026-12-01 (-04)
)
PAPER_KNOBS = dict(feedback=False, relegate="none", tpot_margin=0.0)  # FairBatching and PAB as before issue 10

ABLATIONS = (
    ("reference: whole-life PAB, feedback, relegate lost, TPOT margin 0.1", {}),
    ("PAB prefill-only (before issue 10)", dict(pab_variant="prefill-only")),
    ("feedback off", dict(feedback=False)),
    ("relegate none", dict(relegate="none")),
    ("relegate doomed", dict(relegate="doomed")),
    ("TPOT margin 0", dict(tpot_margin=0.0)),
    ("paper FB (no margin, no relegation, no feedback), whole-life PAB", PAPER_KNOBS),
    ("paper FB, prefill-only PAB (the issue's starting point)", dict(PAPER_KNOBS, pab_variant="prefill-only")),
    ("host time 2 ms", dict(host_s=0.002)),
    ("host time 5 ms", dict(host_s=0.005)),
    ("host time 5 ms, not in the planning model", dict(host_s=0.005, host_in_model=False)),
    ("vLLM [1024] + least-prefill + naive cap (baseline)",
     dict(scheduler="vllm", token_budget=1024, balancer="least-prefill", admission_cap=True)),
    ("vLLM [1024] + whole-life PAB with feedback", dict(scheduler="vllm", token_budget=1024)),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def keep(report: dict) -> dict:
    out = {k: report.get(k) for k in KEEP}
    corr = report.get("node_correction") or []
    out["correction_min_over_nodes"] = min((c["min"] for c in corr), default=None)
    out["correction_mean_over_nodes"] = statistics.fmean(c["mean"] for c in corr) if corr else None
    return out


def code_version() -> dict:
    """The commit the results were computed at (and whether tracked files differed from it)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "tracked_files_modified": bool(git("status", "--porcelain", "-uno"))}


CODE = code_version()  # taken once, when the run starts


def save(name: str, data: dict) -> None:
    data = {"code": CODE, **data}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote {path}")


def capacity_and_multiples(label: str, cfg: SimConfig, multiples, *, rel_tol: float) -> dict:
    """Capacity of ``cfg`` by bisection, then one run at each multiple of the capacity rate scale."""
    t0 = time.perf_counter()
    workload = load_workload(cfg)
    res = find_capacity(cfg, target=0.9, rel_tol=rel_tol, workload=workload,
                        on_probe=lambda p: log(f"  {label}: x{p.rate_scale:.3f} {p.rate_rps:.2f} rps -> {p.attainment:.3f}"))
    row = {
        "arm": label, "config": {k: v for k, v in cfg.to_dict().items()},
        "capacity_rps": res.capacity_rps, "capacity_rate_scale": res.capacity_rate_scale,
        "capacity_is_lower_bound": res.lower_bound,
        "probes": [{"rate_scale": p.rate_scale, "rate_rps": p.rate_rps, "attainment": p.attainment,
                    "admitted_attainment": p.report["admitted_attainment"],
                    "rejected_fraction": p.report["rejected_fraction"], "goodput_rps": p.report["goodput_rps"]}
                   for p in sorted(res.probes, key=lambda p: p.rate_scale)],
        "at": {},
    }
    log(f"{label}: capacity {res.capacity_rps and round(res.capacity_rps, 2)} rps (x{res.capacity_rate_scale})")
    if res.capacity_rate_scale is not None:
        for m in multiples:
            if m == 1.0:
                rep = res.result_at_capacity.report
            else:
                rep = simulate(replace(cfg, rate_scale=res.capacity_rate_scale * m), workload=workload).report
            row["at"][f"{m:g}x"] = keep(rep)
            log(f"  {label} at {m:g}x: offered {rep['offered_rps']:.2f} admitted att {rep['admitted_attainment']:.3f} "
                f"rejected {rep['rejected_fraction']:.3f} goodput {rep['goodput_rps']:.2f}")
    row["search_wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def reference(seeds, quick: bool) -> None:
    for seed in seeds:
        cfg = replace(REFERENCE, seed=seed, duration_s=300.0 if quick else None)
        row = capacity_and_multiples(f"reference seed {seed}", cfg, MULTIPLES, rel_tol=0.06 if quick else 0.03)
        at = row["at"]
        if "1x" in at and "2x" in at:
            row["acceptance"] = {
                "admitted_attainment_1.5x": at["1.5x"]["admitted_attainment"],
                "admitted_attainment_2x": at["2x"]["admitted_attainment"],
                "goodput_2x_over_1x": at["2x"]["goodput_rps"] / at["1x"]["goodput_rps"],
                "holds": (at["1.5x"]["admitted_attainment"] >= 0.95 and at["2x"]["admitted_attainment"] >= 0.95
                          and at["2x"]["goodput_rps"] >= 0.9 * at["1x"]["goodput_rps"]),
            }
        save(f"reference-seed{seed}" + ("-quick" if quick else ""), row)


def ablations(quick: bool, only_arms: str = "") -> None:
    window = 300.0 if quick else 1800.0
    base = replace(REFERENCE, duration_s=window)
    name = "ablations" + ("-quick" if quick else "")
    path = OUT / f"{name}.json"
    done = json.loads(path.read_text()) if path.exists() else {"window_s": window, "rows": []}
    have = {r["arm"] for r in done["rows"]}
    picked = [a for i, a in enumerate(ABLATIONS) if not only_arms or str(i) in only_arms.split(",")]
    for label, kw in picked:
        if label in have:
            continue
        row = capacity_and_multiples(label, replace(base, **kw), (1.0, 1.5, 2.0), rel_tol=0.06 if quick else 0.04)
        # Re-read: a second process may be filling other arms of the same file.
        done = json.loads(path.read_text()) if path.exists() else {"window_s": window, "rows": []}
        done["rows"] = [r for r in done["rows"] if r["arm"] != label] + [row]
        order = [a for a, _ in ABLATIONS]
        done["rows"].sort(key=lambda r: order.index(r["arm"]))
        save(name, done)


def headline(quick: bool) -> None:
    """The README's cluster figure (cluster-h100-azure-code.json) re-measured with the new PAB."""
    cfg = SimConfig(trace="azure-code", profile="h100-llama3-8b", nodes=8, ttft_slo_s=1.0, tpot_slo_s=0.05, seed=0,
                    relegate="none", chunk_align_tokens=0, tpot_margin=0.0, seat_pressure=None, rate_scale=25.0,
                    duration_s=120.0 if quick else None,
                    seats_as_vllm=False, max_num_seqs=256, step_model="linear")  # as recorded, before 2026-12-01 (-04)
    fb = dict(scheduler="fairbatching", anchor="first-token")
    vllm = dict(scheduler="vllm", token_budget=1024)
    arms = [
        ("fb-first+pab (whole-life PAB)", dict(fb, balancer="pab")),
        ("fb-first+pab prefill-only (PAB before issue 10)", dict(fb, balancer="pab", pab_variant="prefill-only")),
        ("fb-first+pab + feedback, relegate lost, TPOT margin 0.1",
         dict(fb, balancer="pab", feedback=True, relegate="lost", tpot_margin=0.1)),
        ("vllm[1024]+pab (whole-life PAB)", dict(vllm, balancer="pab")),
    ]
    for bal in ("power-of-two", "least-prefill", "queue-kv", "round-robin"):
        for cap in (False, True):
            arms.append((f"vllm+{bal}{'+cap' if cap else ''}", dict(vllm, balancer=bal, admission_cap=cap)))
            arms.append((f"sarathi+{bal}{'+cap' if cap else ''}", dict(scheduler="sarathi", balancer=bal, admission_cap=cap)))
    workload = load_workload(cfg)
    rows = []
    for label, kw in arms:
        t0 = time.perf_counter()
        res = find_capacity(replace(cfg, **kw), target=0.9, rel_tol=0.06 if quick else 0.03, workload=workload)
        rep = res.result_at_capacity.report if res.result_at_capacity else {}
        rows.append({"arm": label, "capacity_rps": res.capacity_rps, "capacity_rate_scale": res.capacity_rate_scale,
                     "at_capacity": keep(rep) if rep else {},
                     "probes": [(round(p.rate_rps, 3), round(p.attainment, 4)) for p in sorted(res.probes, key=lambda p: p.rate_rps)],
                     "search_wall_s": round(time.perf_counter() - t0, 1)})
        log(f"{label:<58} capacity {res.capacity_rps and round(res.capacity_rps, 2)}")
        save("headline-azure-code" + ("-quick" if quick else ""), {"window": "whole trace", "slo": [1.0, 0.05], "rows": rows})
    baselines = [r for r in rows if not r["arm"].startswith("fb") and "pab" not in r["arm"] and "+cap" not in r["arm"]]
    best = max(baselines, key=lambda r: r["capacity_rps"] or 0.0)
    at_rate = {}
    for label, kw in arms:
        rep = simulate(replace(cfg, rate_scale=best["capacity_rate_scale"], **kw), workload=workload).report
        at_rate[label] = keep(rep)
    save("headline-azure-code" + ("-quick" if quick else ""),
         {"window": "whole trace", "slo": [1.0, 0.05], "rows": rows,
          "at_baseline_capacity": {"baseline": best["arm"], "rate_scale": best["capacity_rate_scale"], "arms": at_rate}})


def model_error(quick: bool) -> None:
    import dataclasses

    from node.fit.profile import load_profile

    truth = load_profile("h100-llama3-8b")
    linear = dataclasses.replace(truth, extra={**truth.extra, "ground_truth": None}, name="h100-llama3-8b-linear-truth")
    cfg = replace(REFERENCE, duration_s=120.0 if quick else 600.0, rate_scale=4.0, **PAPER_KNOBS)
    rows = []
    for label, profile, kw in (("ground-truth step times, paper FB", truth, {}),
                               ("planner's linear model as truth, paper FB", linear, {}),
                               ("ground-truth step times, TPOT margin 0.1", truth, dict(tpot_margin=0.1)),
                               ("ground-truth step times, paper FB, online refit", truth, dict(refit=True))):
        rep = simulate(replace(cfg, **kw), profile=profile).report
        rows.append({"arm": label, "true_step_time": rep["true_step_time"], **keep(rep)})
        log(f"{label}: admitted attainment {rep['admitted_attainment']:.3f}, TPOT P50/P99 "
            f"{rep['tpot_p50'] * 1000:.1f}/{rep['tpot_p99'] * 1000:.1f} ms")
    save("model-error" + ("-quick" if quick else ""), {"window_s": cfg.duration_s, "rate_scale": 4.0, "rows": rows})


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted(OUT.glob("reference-seed*.json")):
        if "quick" in path.stem:
            continue
        row = json.loads(path.read_text())
        ms = [float(k[:-1]) for k in row["at"]]
        ax1.plot(ms, [v["goodput_rps"] for v in row["at"].values()], marker="o", label=row["arm"])
        ax2.plot(ms, [v["admitted_attainment"] for v in row["at"].values()], marker="o", label=row["arm"])
    abl = OUT / "ablations.json"
    if abl.exists():
        for row in json.loads(abl.read_text())["rows"]:
            if row["arm"].startswith(("paper FB, prefill-only", "PAB prefill-only")) and row["at"]:
                ms = [float(k[:-1]) for k in row["at"]]
                ax1.plot(ms, [v["goodput_rps"] for v in row["at"].values()], marker="x", ls="--", label=row["arm"] + " (1800 s)")
                ax2.plot(ms, [v["admitted_attainment"] for v in row["at"].values()], marker="x", ls="--", label=row["arm"] + " (1800 s)")
    ax1.set_xlabel("offered load / capacity rate")
    ax1.set_ylabel("goodput, attaining req/s")
    ax2.set_xlabel("offered load / capacity rate")
    ax2.set_ylabel("attainment of admitted requests")
    ax2.axhline(0.95, color="grey", ls=":", lw=0.8)
    ax2.set_ylim(0, 1.02)
    ax1.legend(fontsize=6)
    fig.suptitle("long-context (Azure conv, prompts 8-16k), h100-llama3-8b, 8 nodes, SLO TTFT 3 s / TPOT 50 ms, "
                 "FB first-token + PAB", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "goodput_vs_load.png", dpi=120)
    log(f"wrote {OUT / 'goodput_vs_load.png'}")


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    only: str = typer.Option("reference,ablations,headline,plot",
                             help="Comma-separated sections to run: reference, ablations, headline, model-error, plot."),
    seeds: str = typer.Option("0,1,2", help="Seeds of the reference section (long-context pairing)."),
    arms: str = typer.Option("", help="Ablation arms by index (0-based, comma-separated); default all."),
    quick: bool = typer.Option(False, "--quick", help="Shorten every trace window and loosen the bisection "
                               "(a smoke test of the pipeline, not results)."),
) -> None:
    sections = set(only.split(","))
    if "reference" in sections:
        reference([int(s) for s in seeds.split(",")], quick)
    if "ablations" in sections:
        ablations(quick, arms)
    if "headline" in sections:
        headline(quick)
    if "model-error" in sections:
        model_error(quick)
    if "plot" in sections:
        plot()


if __name__ == "__main__":
    app()
