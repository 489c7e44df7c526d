"""Recorded sim-vs-live checks simulated again with other simulator settings, against the same live runs.

A diagnosis, not a prediction: the live runs are already known, so a setting that lands closer
here has been chosen after the fact. ``bench/results/SIMULATION.md`` uses it three times: "With the
serving layer's current defaults" (the settings of commit 9362f88: the host's cost per request
and the nodes' online refit), "A steady window" (the settings below: the serving path's
background and ceiling, and the report cadence, each against the simulator before them), and "The
serving path in front of the engines" (``--settings "as the check runs now;now, with the time in
front of the engines" --no-capacity``, the command there).

    python bench/sim_vs_live_resimulate.py bench/results/sim-vs-live bench/results/sim-vs-live/fewest-late \\
        bench/results/sim-vs-live/overload-probe bench/results/sim-vs-live/conv-240-linear-host \\
        bench/results/sim-vs-live/conv-240 bench/results/sim-vs-live/code-60 \\
        --json bench/results/sim-vs-live/resimulated-2026-12-02.json      # ~10 min
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Union

import typer

from cluster.bench.sim_vs_live import resimulate

#: Nodes reporting after every step, on time (the simulator's default; the check's before 2026-12-02).
REPORTS_PER_STEP = {"pab_interval_s": 0.0, "pab_delay_s": 0.0}
#: What the simulator did before 2026-12-02: the serving path's CPU without its background and up to
#: 90 % of the host, nodes reporting after every step, on time.
BEFORE = {"host_background_cores": 0.0, "host_max_share": 0.9, **REPORTS_PER_STEP}


def truth_at_client_tpot(recorded: dict) -> dict:
    """The calibrated profile's step times (a, b, c, host) scaled by the calibration replay's client TPOT P50
    over the simulated one, written beside the system's temporary files: the simulator then replays the
    calibration window at the cadence the client saw. Tried, not kept (``SIMULATION.md``)."""
    from node.fit.profile import load_profile, save_profile

    cal = recorded["calibration"]
    k = cal["live"]["tpot_p50"] / cal["sim_without_path"]["tpot_p50"]
    prof = load_profile(cal["profile"])
    scaled = replace(prof, a_s=prof.a_s * k, b_s_per_token=prof.b_s_per_token * k,
                     c_s_per_context_token=prof.c_s_per_context_token * k, host_s=(prof.host_s or 0.0) * k)
    out = Path(tempfile.mkdtemp(prefix="truth-at-client-tpot-")) / Path(cal["profile"]).name
    save_profile(scaled, out)
    return {"profile": str(out)}


def with_ingress_delay(recorded: dict) -> dict:
    """The serving path's time in front of the engines (``IngressDelay``) fitted through the recorded idle probe's
    and calibration's front delays, as the check now does, and the client path less what that adds to the
    calibration replay's simulated TTFT P50 (the checks recorded before it kept no per-request calibration rows,
    so the path is corrected by the difference of the medians, not re-measured)."""
    from cluster.bench.sim_vs_live import HostCPU, SimLiveConfig, _window, fit_ingress_delay, sim_config_for
    from cluster.config import ServeConfig
    from cluster.sim.simulator import simulate

    cal = recorded["calibration"]
    if cal.get("ingress_delay"):  # recorded with it: as the check ran
        return {}
    ingress = fit_ingress_delay([cal["idle_probe"]["live"], cal["live"]]) if "idle_probe" in cal else None
    if ingress is None:
        return {}
    cfg, serve = SimLiveConfig(**recorded["config"]), ServeConfig.model_validate(recorded["serve_config"])
    host = HostCPU(**cal["shared_host"]) if cal.get("shared_host") else None
    window = _window(cfg, cfg.calibration_start_s, cfg.calibration_duration_s)
    ttft = [simulate(sim_config_for(serve, cfg, cal["profile"], start_s=cfg.calibration_start_s,
                                    rate_scale=cal["rate_scale"], host=host, ingress=i),
                     workload=window).report["ttft_p50"]
            for i in (None, ingress)]
    return {"ingress_delay_s": ingress["base_s"], "ingress_delay_s_per_rps": ingress["s_per_rps"],
            "client_path_s": max(0.0, cal["client_path_s"] - (ttft[1] - ttft[0]))}


#: Settings tried, by label: ``SimConfig`` fields set over what the check's deployment runs now, or a
#: function of the recorded check that returns them.
SETTINGS: dict[str, Union[dict, Callable[[dict], dict]]] = {
    "as the check runs now": {},
    "before 2026-12-02": BEFORE,
    "now, but reports after every step, on time": REPORTS_PER_STEP,
    "now, but no shared host": {"host_cpu_s_per_request": 0.0},
    "now, truth scaled to the calibration's client TPOT": truth_at_client_tpot,
    "now, with the time in front of the engines": with_ingress_delay,
}


def main(folders: list[Path] = typer.Argument(..., help="Folders of recorded checks (*.json with a verdict)."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows here."),
         settings: Optional[str] = typer.Option(None, help="Labels of SETTINGS to run, separated by ';' "
                                                           "(default: all)."),
         capacity: bool = typer.Option(True, help="Find each check's simulated capacity again (for the record; "
                                                  "--no-capacity: only the rows, several times faster).")) -> None:
    """Each recorded check's 1.5x (and 0.5x) rows simulated again under every setting of ``SETTINGS``."""
    labels = list(SETTINGS) if settings is None else [k.strip() for k in settings.split(";")]
    unknown = [k for k in labels if k not in SETTINGS]
    if unknown:
        raise typer.BadParameter(f"unknown setting(s) {unknown}; known: {list(SETTINGS)}", param_hint="--settings")
    chosen = {k: SETTINGS[k] for k in labels}
    rows = []
    for path in sorted(p for folder in folders for p in folder.glob("*.json")):
        recorded = json.loads(path.read_text())
        if "verdict" not in recorded or "resimulated_from" in recorded:
            continue
        for label, overrides in chosen.items():
            result = resimulate(recorded, capacity=capacity,
                                **(overrides(recorded) if callable(overrides) else overrides))
            verdict = result.verdict()  # the check's own medians and criterion
            for row in result.rows:
                v, sim = verdict[f"{row['multiple']:g}x"], row["sim"]
                att, ttft = v["live_attainment_median"], v["live_ttft_p50_median_s"]
                rows.append({"check": str(path), "setting": label, "multiple": row["multiple"],
                             "live_attainment_median": att, "sim_attainment": sim["attainment"],
                             "attainment_gap_pts": 100 * (sim["attainment"] - att),  # signed: + optimistic
                             "live_ttft_p50_median_s": ttft, "sim_ttft_p50_s": sim["ttft_p50"],
                             "ttft_p50_rel_err": (sim["ttft_p50"] - ttft) / ttft if ttft else None,
                             "holds": v["holds"], "sim_rejected": sim["rejected"]})
                typer.echo(f"{path} | {label} | {row['multiple']:g}x | attainment live {att:.3f} sim "
                           f"{sim['attainment']:.3f} ({100 * (sim['attainment'] - att):+.1f} pts) | TTFT p50 live "
                           f"{ttft:.3f} sim {sim['ttft_p50']:.3f}")
    typer.echo("\n| setting | load | checks | criterion held | attainment within 5 pts | TTFT P50 within 25 % "
               "| mean abs attainment gap, pts | mean abs TTFT P50 error |")
    typer.echo("|---|---|---|---|---|---|---|---|")
    for label in chosen:
        for multiple in sorted({r["multiple"] for r in rows}):
            rs = [r for r in rows if r["setting"] == label and r["multiple"] == multiple]
            gaps = [abs(r["attainment_gap_pts"]) for r in rs]
            errs = [abs(r["ttft_p50_rel_err"]) for r in rs if r["ttft_p50_rel_err"] is not None]
            typer.echo(f"| {label} | {multiple:g}x | {len(rs)} | {sum(r['holds'] for r in rs)} | "
                       f"{sum(g <= 5.0 for g in gaps)} | {sum(e <= 0.25 for e in errs)} | "
                       f"{statistics.fmean(gaps):.1f} | {100 * statistics.fmean(errs):.0f} % |")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=1))
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    typer.run(main)
