#!/usr/bin/env python3
"""Linear vs quadratic step-time model: MAPE and P99 absolute % error per batch kind.

Two sources of steps:

* **the profile grid** (``--profile``, repeatable; default the two derived GPU profiles):
  the 659 batches of ``bench/derive_profiles.py`` (decode-only, prefill-only, mixed), timed
  by the simulator's own ground truth (``cluster.sim.true_step_time.TrueStepTime``, no
  noise), against the profile's two models (``Profile.step_model_as``): ``linear`` (its
  ``linear_fit``, the paper's ``a + b * new + c * context``) and ``quadratic`` (its own,
  with ``e * sum q * (p + q / 2)``);
* **a real engine's step log** (``--engine-log``, repeatable; the JSONL that
  ``fairbatching profile --step-log FILE`` keeps): both models fitted to the steps the way
  ``fairbatching profile`` fits (``robust_fit``: lower envelope, trimmed), then evaluated
  on the steps the fit kept and on every step. In-sample: the same steps fit and judge.

Prints a markdown report (and writes it with ``--out``); errors come from
``node.fit.step_time_fit.evaluate``, safety factor and host time aside.

Usage (from the repository root)::

    .venv/bin/python bench/steptime_report.py
    .venv/bin/python bench/steptime_report.py --engine-log /tmp/steps.jsonl --out bench/results/STEPTIME.md
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import typer

from cluster.sim.true_step_time import TrueStepTime
from node.fit.profile import STEP_MODEL_FORMS, load_profile
from node.fit.step_time_fit import BatchKind, FitReport, StepSample, evaluate, robust_fit

import derive_profiles  # bench/, beside this script

FORMS = tuple(reversed(STEP_MODEL_FORMS))  # linear first
KINDS = (BatchKind.DECODE_ONLY, BatchKind.PREFILL_ONLY, BatchKind.MIXED)


def grid_steps(profile_name: str) -> list[StepSample]:
    """The derivation's grid, each batch timed by the simulator's ground truth of the profile."""
    profile = load_profile(profile_name)
    truth = TrueStepTime(profile)
    if not truth.uses_ground_truth:
        raise typer.BadParameter(f"profile {profile_name!r} has no ground truth to time the grid with")
    g = derive_profiles.build_grid()
    y = np.array([truth.step_s(int(n), int(dec), int(ctx - dec), float(pairs))
                  for n, dec, ctx, pairs in zip(g["new"], g["dec"], g["ctx"], g["pre"])])
    # The simulator's truth and the derivation's are one formula written twice: they must agree.
    same = derive_profiles.t_true(profile.extra["ground_truth"], g["new"], g["dec"], g["pre"])
    if not np.allclose(y, same, rtol=1e-9, atol=0):
        raise RuntimeError(f"{profile_name}: the simulator's ground truth differs from the derivation's")
    return derive_profiles.grid_samples(g, y)


def rows(source: str, form: str, report: FitReport) -> list[str]:
    out = []
    for kind in KINDS:
        st = report.by_kind.get(kind)
        if st is not None:
            out.append(f"| {source} | {form} | {kind.value} | {st.samples} | {st.mape * 100:.1f} % | "
                       f"{st.p99_ape * 100:.1f} % | {st.p99_abs_error_s * 1e3:.2f} |")
    st = report.overall
    out.append(f"| {source} | {form} | all | {st.samples} | {st.mape * 100:.1f} % | {st.p99_ape * 100:.1f} % | "
               f"{st.p99_abs_error_s * 1e3:.2f} |")
    return out


HEADER = ["| source | model | batch kind | steps | MAPE | P99 abs % error | P99 abs error (ms) |",
          "|---|---|---|---|---|---|---|"]


def profile_section(names: list[str]) -> list[str]:
    lines = ["## Profile grid (simulator ground truth)", "", *HEADER]
    coefs = ["", "| profile | model | a (ms) | b (us/token) | c (us/context token) | e (ns/pair) |",
             "|---|---|---|---|---|---|"]
    for name in names:
        steps = grid_steps(name)
        profile = load_profile(name)
        for form in FORMS:
            model = profile.step_model_as(form)
            lines += rows(name, form, evaluate(model, steps))
            coefs.append(f"| {name} | {form} | {model.a_s * 1e3:.3f} | {model.b_s_per_token * 1e6:.2f} | "
                         f"{model.c_s_per_context_token * 1e6:.4f} | {model.attn_prefill_s_per_token_sq * 1e9:.4g} |")
    return lines + coefs


def engine_section(logs: list[Path]) -> list[str]:
    from node.vllm.profiling import read_step_log, samples_from_log

    lines = ["", "## CPU engine (fairbatching profile step log; fitted and judged on the same steps)", ""]
    coefs = ["", "| step log | model | a (ms) | b (us/token) | c (us/context token) | e (ns/pair) | steps kept |",
             "|---|---|---|---|---|---|---|"]
    table = [*HEADER]
    for log in logs:
        steps = samples_from_log(read_step_log(log))
        if not any(s.prefill_attention_pairs for s in steps):
            raise typer.BadParameter(f"{log}: no step records prefill attention pairs (a log from before them?)")
        for form in FORMS:
            model, kept_report, all_report, dropped = robust_fit(steps, prefill_attention=form == "quadratic")
            table += rows(f"{log.name} kept", form, kept_report)
            table += rows(f"{log.name} every step", form, all_report)
            coefs.append(f"| {log.name} | {form} | {model.a_s * 1e3:.3f} | {model.b_s_per_token * 1e6:.2f} | "
                         f"{model.c_s_per_context_token * 1e6:.4f} | {model.attn_prefill_s_per_token_sq * 1e9:.4g} | "
                         f"{len(steps) - dropped} of {len(steps)} |")
    return lines + table + coefs


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    profile: list[str] = typer.Option(["h100-llama3-8b", "a100-llama3-8b"], help="Profile with a ground truth (repeatable)."),
    engine_log: list[Path] = typer.Option([], help="Step log (JSONL) of `fairbatching profile --step-log` (repeatable)."),
    out: Path = typer.Option(None, help="Also write the report here (markdown)."),
) -> None:
    lines = profile_section(profile)
    if engine_log:
        lines += engine_section(engine_log)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if out is not None:
        out.write_text(text)


if __name__ == "__main__":
    app()
