"""Every request finishes, is rejected, or is reported unfinished; runs are a function of their seed."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from cluster.cli.sim import app
from cluster.sim.capacity import find_capacity
from cluster.sim.config import SimConfig
from cluster.sim.metrics import attains
from cluster.sim.simulator import simulate
from cluster.workload.traces import TraceRequest, Workload
from node.fit.profile import load_profile

PROFILE = load_profile("ref-linear-h100")


def bursty(n=300, seed=1, rate=40.0) -> Workload:
    rng = random.Random(seed)
    t, rows = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate) * (0.1 if i % 50 < 10 else 1.0)  # bursts
        rows.append(TraceRequest(i, t, rng.randint(16, 3000), rng.randint(1, 200)))
    return Workload(rows, name="bursty")


def run(workload, **kw):
    return simulate(SimConfig(trace="bursty", profile="ref-linear-h100", **kw), workload=workload, profile=PROFILE)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(scheduler="fairbatching", balancer="pab", nodes=2),
        dict(scheduler="vllm", balancer="power-of-two", nodes=3, token_budget=512, drain_s=0.5),
        dict(scheduler="sarathi", balancer="least-prefill", nodes=2, admission_cap=True, kv_cache_tokens=8000),
        dict(scheduler="fairbatching", balancer="queue-kv", nodes=2, pab_variant="edf", pab_delay_s=0.2, noise=0.1),
    ],
)
def test_no_request_disappears(knobs):
    w = bursty()
    res = run(w, rate_scale=2.0, **knobs)
    rep = res.report
    assert rep["finished"] + rep["rejected"] + rep["dropped"] + rep["unfinished"] == rep["requests"] == len(w)
    for r in res.requests:
        states = [r.finished, r.rejected, r.dropped, not (r.finished or r.rejected or r.dropped)]
        assert sum(states) == 1
        if r.finished:
            assert r.emitted == r.output_tokens and r.first_token_s >= r.arrival_s
        assert r.on_time_arrival <= r.emitted and r.on_time_first <= r.emitted
    assert rep["dropped"] == 0


def test_a_cut_off_run_reports_its_unfinished_requests():
    res = run(bursty(), rate_scale=4.0, scheduler="vllm", balancer="round-robin", drain_s=0.0)
    assert res.report["unfinished"] > 0
    assert res.report["finished"] + res.report["unfinished"] == res.report["requests"]


def test_same_seed_same_result_and_the_seed_matters():
    w = bursty()
    knobs = dict(scheduler="fairbatching", balancer="power-of-two", nodes=3, noise=0.2, rate_scale=2.0)
    volatile = {"wall_s", "sim_speedup", "sim_speedup_cpu"}
    a, b = (dict(run(w, seed=7, **knobs).report) for _ in range(2))
    for rep in (a, b):
        for k in volatile:
            rep.pop(k)
    assert a == b
    c = run(w, seed=8, **knobs).report
    assert c["ttft_p99"] != a["ttft_p99"]


def test_pab_report_delay_is_modelled():
    w = bursty()
    fresh = run(w, rate_scale=3.0, nodes=2, balancer="pab").report
    stale = run(w, rate_scale=3.0, nodes=2, balancer="pab", pab_delay_s=2.0).report
    assert fresh != stale
    # the balancer decided on views about the delay older (as a live balancer reports it: view_age_s)
    assert stale["view_age_s"]["mean"] - fresh["view_age_s"]["mean"] == pytest.approx(2.0, abs=0.1)
    assert 0.9 * len(w.requests) <= fresh["view_age_s"]["decisions"] <= len(w.requests)  # (none before a report)


def test_capacity_bisection_brackets_the_target():
    w = bursty(n=200)
    res = find_capacity(SimConfig(trace="bursty", profile="ref-linear-h100", balancer="round-robin", rate_scale=1.0),
                        target=0.9, rel_tol=0.1, workload=w, profile=PROFILE)
    assert res.capacity_rps is not None
    passing = [p for p in res.probes if p.attainment >= 0.9]
    failing = [p for p in res.probes if p.attainment < 0.9]
    assert max(p.rate_scale for p in passing) == res.capacity_rate_scale
    assert min(p.rate_scale for p in failing if p.rate_scale > res.capacity_rate_scale) <= res.capacity_rate_scale * 1.1 + 1e-9


def test_cli_run_and_capacity_write_the_promised_json(tmp_path):
    trace = tmp_path / "t.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.05:.3f},{200 + 37 * i % 900},{1 + 13 * i % 60}" for i in range(80)]
    trace.write_text("\n".join(rows) + "\n")
    common = ["--trace", str(trace), "--profile", "ref-linear-h100", "--nodes", "2", "--scheduler", "fairbatching",
              "--balancer", "pab", "--ttft-slo", "1", "--tpot-slo", "0.05", "--seed", "1"]
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["run", *common, "--rate-scale", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("attainment", "admitted_attainment", "rejected", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50",
                "tpot_p99", "goodput_rps", "requests", "sim_speedup", "token_attainment_first_token"):
        assert key in report
    assert report["requests"] == 80
    cap = tmp_path / "cap.json"
    result = CliRunner().invoke(app, ["capacity", *common, "--attainment", "0.9", "--rel-tol", "0.2", "--json", str(cap)])
    assert result.exit_code == 0, result.output
    data = json.loads(cap.read_text())
    assert data["capacity_rps"] > 0 and data["report"]["attainment"] >= 0.9
    # three seeds by default, each its own search; nothing here is drawn at random, so no spread (the summary
    # says so without claiming why: with --noise, seeds can also agree within the search's resolution)
    assert data["seeds"] == [1, 2, 3] and len(set(data["capacity_rps_per_seed"])) == 1
    assert data["capacity_rps_min"] == data["capacity_rps"] == data["capacity_rps_max"]
    assert data["report_seed"] == 1 and len(data["probes_per_seed"]) == 3  # every seed's search, not only the first's
    assert all(probes and all("attainment" in p for p in probes) for probes in data["probes_per_seed"])
    assert "the same on every seed" in " ".join(result.output.split())  # (rich wraps lines)


def test_cli_capacity_reports_the_spread_over_seeds_of_step_noise(tmp_path):
    """With step-time noise each seed's search finds its own capacity: the JSON has every seed's, the
    mean between the min and max, and the console says so."""
    trace = tmp_path / "t.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.05:.3f},{200 + 37 * i % 900},{1 + 13 * i % 60}" for i in range(120)]
    trace.write_text("\n".join(rows) + "\n")
    cap = tmp_path / "cap.json"
    result = CliRunner().invoke(app, ["capacity", "--trace", str(trace), "--profile", "ref-linear-h100",
                                      "--scheduler", "fairbatching", "--noise", "0.4", "--seeds", "4",
                                      "--rel-tol", "0.05", "--json", str(cap)])
    assert result.exit_code == 0, result.output
    data = json.loads(cap.read_text())
    per_seed = data["capacity_rps_per_seed"]
    assert data["seeds"] == [0, 1, 2, 3] and len(per_seed) == 4 and len(set(per_seed)) > 1
    assert data["capacity_rps_min"] == min(per_seed) < data["capacity_rps_max"] == max(per_seed)
    assert data["capacity_rps"] == pytest.approx(sum(per_seed) / 4)
    text = " ".join(result.output.split())  # (rich wraps lines)
    assert "over 4 seeds" in text and "seed 3:" in text


def test_cli_capacity_of_one_looser_tier_alone(tmp_path):
    """--only-tier batch: the batch requests alone, as the only class, and the capacity command's
    second search is on that tier (it used to look for the dropped tightest tier and fail)."""
    trace = tmp_path / "t.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.05:.3f},{200 + 37 * i % 900},{1 + 13 * i % 60}" for i in range(80)]
    trace.write_text("\n".join(rows) + "\n")
    tiers = ["--slo-tier", "interactive=0.5:1:0.05", "--slo-tier", "batch=0.5:30:0.25"]
    common = ["--trace", str(trace), "--profile", "ref-linear-h100", "--nodes", "1", "--balancer", "pab", *tiers,
              "--only-tier", "batch", "--seed", "1"]
    cap = tmp_path / "cap.json"
    result = CliRunner().invoke(app, ["capacity", *common, "--rel-tol", "0.2", "--json", str(cap)])
    assert result.exit_code == 0, result.output
    data = json.loads(cap.read_text())
    assert list(data["report"]["per_tier"]) == ["batch"] and data["tightest_tier"]["tier"] == "batch"
    # nothing is held back for the dropped interactive tier: the held share refuses no batch request
    runs = [json.loads(CliRunner().invoke(app, ["run", *common, "--rate-scale", "20", "--tier-hold-fraction", h,
                                                "--json", str(tmp_path / f"h{h}.json")]).exit_code == 0 and
                       (tmp_path / f"h{h}.json").read_text()) for h in ("0", "0.5")]
    assert runs[0]["rejected"] == runs[1]["rejected"]


def test_cli_refuses_bad_names():
    result = CliRunner().invoke(app, ["run", "--trace", "azure-code", "--balancer", "nope", "--duration-s", "1"])
    assert result.exit_code != 0


def test_cli_compare_writes_a_summary_and_three_plots(tmp_path):
    trace = tmp_path / "t.csv"
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    rows += [f"{i * 0.1:.3f},{100 + 53 * i % 1500},{1 + 7 * i % 40}" for i in range(60)]
    trace.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "compare", "--trace", str(trace), "--profile", "ref-linear-h100", "--nodes", "2",
        "--schedulers", "fairbatching,sarathi", "--balancers", "pab,least-prefill", "--caps", "both",
        "--rel-tol", "0.25", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {row["arm"] for row in summary["arms"]} == {
        "fairbatching/pab", "fairbatching/least-prefill", "fairbatching/least-prefill+cap",
        "sarathi/pab", "sarathi/least-prefill", "sarathi/least-prefill+cap"}
    assert all(row["capacity_rps"] for row in summary["arms"])
    for png in ("attainment_vs_rate.png", "ttft_cdf.png", "pab_timeline.png"):
        assert (out / png).stat().st_size > 1000


def test_queueing_at_the_balancer_admits_some_requests_pab_would_reject_at_once():
    w = bursty()
    # The paper's node policy (the scenario was sized for it; the simulator's defaults relegate, align and
    # keep a TPOT margin).
    knobs = dict(scheduler="fairbatching", anchor="arrival", relegate="none", chunk_align_tokens=0, tpot_margin=0.0,
                 balancer="pab", nodes=2, rate_scale=4.0)
    at_once = run(w, **knobs).report
    queued = run(w, balancer_queue_s=0.5, **knobs).report
    assert queued["rejected"] < at_once["rejected"]
    assert queued["finished"] + queued["rejected"] + queued["unfinished"] == queued["requests"]


def test_a_first_come_queue_blocks_interactive_requests_behind_batch_ones_and_edf_does_not():
    # Two classes under overload: a held batch request that does not fit stops a FIFO queue, so
    # interactive requests behind it expire; earliest-deadline-first passes over it (issue 13).
    w = bursty(n=600)
    knobs = dict(scheduler="fairbatching", balancer="pab", nodes=2, rate_scale=4.0, tier_hold_fraction=0.1,
                 slo_tier=("interactive=0.5:1:0.05", "batch=0.5:30:0.25"))
    at_once = run(w, **knobs).report["per_tier"]["interactive"]
    fifo = run(w, balancer_queue_s=0.3, balancer_queue_order="fifo", **knobs).report
    edf = run(w, balancer_queue_s=0.3, balancer_queue_order="edf", **knobs).report
    assert fifo["per_tier"]["interactive"]["rejected"] > at_once["rejected"]
    assert edf["per_tier"]["interactive"]["rejected"] < at_once["rejected"]
    assert edf["per_tier"]["interactive"]["attainment"] > fifo["per_tier"]["interactive"]["attainment"]
    for rep in (fifo, edf):
        assert rep["finished"] + rep["rejected"] + rep["unfinished"] == rep["requests"]


def test_a_metric_that_load_cannot_break_gives_a_flagged_lower_bound():
    w = bursty(n=60)
    res = find_capacity(SimConfig(trace="bursty", profile="ref-linear-h100", balancer="pab", rate_scale=1.0),
                        target=0.01, metric="admitted_attainment", max_doublings=3, workload=w, profile=PROFILE)
    assert res.lower_bound and len(res.probes) == 4


def test_online_refit_replans_with_the_true_step_times():
    # h100-llama3-8b carries ground-truth step times; its a, b, c are only the planner's prior.
    # Planning with a prior twice as slow per token, a node that refits from the steps it runs
    # comes back to about the profile's own fit of the truth; without refit it keeps the prior.
    from dataclasses import replace as dc_replace

    truth = load_profile("h100-llama3-8b")
    slow = dc_replace(truth, b_s_per_token=2 * truth.b_s_per_token)
    cfg = SimConfig(trace="bursty", profile="h100-llama3-8b", scheduler="fairbatching", balancer="round-robin",
                    nodes=1, refit=True, step_model="quadratic")  # (the profile's own a, b, c: the slow prior's)
    models = simulate(cfg, workload=bursty(), profile=slow).report["planning_models"]
    assert models[0]["refits"] >= 1
    assert models[0]["b_s_per_token"] < 1.4 * truth.b_s_per_token
    fixed = simulate(dc_replace(cfg, refit=False), workload=bursty(), profile=slow).report["planning_models"]
    assert fixed[0]["refits"] == 0 and fixed[0]["b_s_per_token"] == slow.b_s_per_token


def test_capacity_says_why_when_no_rate_meets_the_target():
    """Prompts that cannot be prefilled within the TTFT SLO even alone, and arrivals sharing a timestamp."""
    rows = [TraceRequest(i, float(i // 10), 20_000 if i % 2 else 100, 10) for i in range(60)]  # 10 per second
    res = find_capacity(SimConfig(trace="ties", profile="ref-linear-h100", balancer="round-robin", ttft_slo_s=0.2),
                        target=0.9, rel_tol=0.5, max_probes=4, workload=Workload(rows, name="ties"), profile=PROFILE)
    assert res.capacity_rps is None
    text = " ".join(res.why)
    assert "30 of 60 prompts (50.0%) take longer than their TTFT SLO" in text and "at most 50.0%" in text, res.why
    assert "share a timestamp" in text and "up to 10 at once" in text, res.why
    assert res.to_dict()["why_no_capacity"] == res.why


def test_seats_as_vllm_start_no_request_beyond_max_num_seqs():
    """vLLM starts a waiting request only into a free seat, paced decodes holding theirs (the default); with
    --no-seats-as-vllm the simulator's only seat limit is the plan's per-step cap, and FairBatching's paced decodes leave seats
    to more requests than the node has (the favour issue 12 names)."""
    import dataclasses

    profile = dataclasses.replace(PROFILE, max_num_seqs=2)
    rows = [TraceRequest(i, 0.001 * i, 200, 40) for i in range(3)]
    # (decodes ahead of their envelope are skipped: first-token anchor, urgent only below their own TPOT)
    # (no seat pressure: on two seats it would serve every decode each step, and nothing would be paced)
    cfg = SimConfig(trace="three", profile="ref-linear-h100", balancer="round-robin", ttft_slo_s=30.0,
                    tpot_slo_s=1.0, anchor="first-token", urgency="tpot", seat_pressure=None)

    def third_starts_before_a_finish(**kw) -> bool:
        res = simulate(dataclasses.replace(cfg, **kw), workload=Workload(rows, name="three"), profile=profile)
        by_id = {r.rid: r for r in res.requests}
        return by_id[2].first_token_s < min(by_id[0].finish_s, by_id[1].finish_s)

    assert third_starts_before_a_finish(seats_as_vllm=False)  # the favour: three requests live on two seats
    assert not third_starts_before_a_finish()  # the default counts seats as vLLM does


def test_chunk_alignment_defaults_to_the_profiles_tiles():
    """256 on a profile with measured operator times (whose step cost jumps past each GEMM tile), off
    on one whose truth is its own smooth model; a value set on the command line wins."""
    from node.fit.profile import load_profile, tile_tokens_of

    def align(name: str, **kw) -> int:
        return SimConfig(profile=name, **kw).scheduler_knobs(tile_tokens_of(load_profile(name)))["chunk_align_tokens"]

    assert align("h100-llama3-8b") == 256
    assert align("ref-linear-h100") == 0
    assert align("cpu-tiny-llama") == 0
    assert align("h100-llama3-8b", chunk_align_tokens=64) == 64
    # the profile the simulator runs decides, not only the name in the config
    assert SimConfig(profile="h100-llama3-8b").scheduler_knobs(tile_tokens=0)["chunk_align_tokens"] == 0


def test_a_waiting_request_the_policy_relegates_takes_a_free_seat_after_one_that_can_still_attain():
    """One seat, held by a decode for about 2 s. Request 1 waits past its first-token deadline
    (lost); request 2 arrives later and can still attain. vLLM's seat gate in EDF order gives the
    freed seat to the lost one, which then holds it while request 2 misses too; with relegation the
    seat goes to request 2 first (``ConfiguredPolicy.seat_order``, used by the engine host alike)."""
    import dataclasses

    profile = dataclasses.replace(PROFILE, max_num_seqs=1)
    rows = [TraceRequest(0, 0.0, 200, 350), TraceRequest(1, 0.001, 200, 350), TraceRequest(2, 1.5, 200, 350)]
    cfg = SimConfig(trace="seat", profile="ref-linear-h100", balancer="round-robin", ttft_slo_s=1.0,
                    tpot_slo_s=0.05, anchor="first-token", tpot_margin=0.2)

    def attained(relegate: str) -> list[bool]:
        res = simulate(dataclasses.replace(cfg, relegate=relegate), workload=Workload(rows, name="seat"),
                       profile=profile)
        return [attains(r) for r in sorted(res.requests, key=lambda r: r.rid)]

    assert attained("none") == [True, False, False]  # the lost request took the seat (EDF)
    for relegate in ("lost", "doomed", "fewest-late"):
        assert attained(relegate) == [True, False, True], relegate


def test_cli_refuses_inputs_that_give_no_rate_or_would_be_ignored(tmp_path):
    """Each of these ran before with exit 0 and a misleading report (NaN rates, an empty window reported
    as attainment None, --arrivals silently ignored, --kv-cache-tokens 0 read as the profile's)."""
    tied = tmp_path / "tied.csv"
    tied.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "0,300,20\n" * 3)
    base = ["--profile", "ref-linear-h100", "--nodes", "1"]
    cases = [
        (["run", "--trace", "azure-conv", "--start-s", "1e9", "--duration-s", "20", *base], "holds no requests"),
        (["run", "--trace", "azure-conv", "--duration-s", "20", "--arrivals", "poisson", *base], "has its own arrivals"),
        (["capacity", "--trace", str(tied), "--seeds", "1", *base], "request rate is undefined"),
        (["run", "--trace", "azure-conv", "--duration-s", "20", "--kv-cache-tokens", "0", *base], "--kv-cache-tokens must be >= 1"),
    ]
    for args, says in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert says in " ".join(result.output.replace("│", " ").split()), (args, result.output)
        assert "Traceback" not in result.output


def test_capacity_summary_says_when_the_search_found_only_a_lower_bound():
    from cluster.sim.capacity import CapacityResult, SeedCapacities

    bounded = CapacityResult(10.0, 4.0, 0.9, [])
    ceiling = CapacityResult(12.0, 64.0, 0.9, [], lower_bound=True)
    text = SeedCapacities([0, 1], [bounded, ceiling]).summary()
    assert text.startswith("at least 11 req/s") and "1 still met the target at the highest rate" in text
    assert not SeedCapacities([0, 1], [bounded, bounded]).summary().startswith("at least")
    assert "over 1 seed)" in SeedCapacities([0], [bounded]).summary()


def test_why_bounds_attainment_on_the_truth_and_names_refusals():
    """The "at most" bound is what the simulated truth allows, not what an inflated planning model
    predicts: it must never sit below the attainment a probe measured. (Before, with a safety factor of 3
    it said "at most 18.6 %" beside a measured 47.5 %.) Refusals at admission are named."""
    import re

    from cluster.sim.simulator import load_workload

    cfg = SimConfig(trace="azure-conv", duration_s=30, profile="h100-llama3-8b", ttft_slo_s=0.03, safety_factor=3.0)
    res = find_capacity(cfg, target=0.9, rel_tol=0.2, workload=load_workload(cfg))
    assert res.capacity_rps is None
    assert len(res.probes) <= 8, [p.rate_rps for p in res.probes]  # no halving on once the rate changes nothing
    text = " ".join(res.why)
    bound = float(re.search(r"at most ([\d.]+)%", text).group(1)) / 100
    lowest = min(res.probes, key=lambda p: p.rate_rps)
    assert bound >= lowest.attainment, res.why
    assert f"refused {lowest.report['rejected']} of" in text and lowest.report["rejected"] > 0, res.why


def test_a_stalled_node_preempts_without_thrashing(tmp_path):
    """A cache of 512 tokens (32 blocks) that cannot hold two of azure-conv's prompts at once: when no
    running request can take a step, the node must free KV so that one of them progresses. Taking the most
    relaxed deadline there preempted one request 20,686 times and left two unfinished at the drain cutoff
    (vLLM's scheduler: 210 preemptions, every request finished)."""
    from pathlib import Path

    doc = json.loads((Path(__file__).resolve().parents[1] / "deploy/profiles/h100-llama3-8b.json").read_text())
    doc["kv_cache_tokens"] = 512
    path = tmp_path / "tiny-kv.json"
    path.write_text(json.dumps(doc))
    for scheduler in ("fairbatching", "vllm"):
        report = simulate(SimConfig(trace="azure-conv", duration_s=30, profile=str(path), balancer="round-robin",
                                    scheduler=scheduler)).report
        assert report["unfinished"] == 0, (scheduler, report["unfinished"])
        assert report["preemptions"] < 20 * report["requests"], (scheduler, report["preemptions"])


def test_cli_says_a_trace_warning_as_one_line_and_names_its_own_flags(tmp_path):
    tied = tmp_path / "tied.csv"
    tied.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                    + "".join(f"{i // 8},300,20\n" for i in range(80)))
    base = ["--profile", "ref-linear-h100", "--nodes", "1"]
    result = CliRunner().invoke(app, ["run", "--trace", str(tied), *base])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: tied: 88% of arrivals share a timestamp" in text and "warnings.warn" not in text, result.output
    assert "dropped=0" in text and "unfinished=0" in text, result.output  # what the run lost is in the text report
    for args, flag in ((["--attainment", "1.5"], "--attainment"), (["--rel-tol", "0"], "--rel-tol")):
        result = CliRunner().invoke(app, ["capacity", "--trace", str(tied), *base, *args])
        assert result.exit_code == 2 and flag in result.output, result.output
