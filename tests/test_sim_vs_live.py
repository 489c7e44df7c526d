"""The pieces by which the simulator stands for the live cluster (``fairbatching bench sim-vs-live``).

The whole check replays a trace against a real local cluster for minutes; its recorded runs
are in ``bench/results/sim-vs-live/``. Here: the simulator's knobs the check sets (client path
latency, PAB horizon, output clipping), the mapping from the serve config, the calibrated
profile and the path-latency estimate.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cluster.bench.sim_vs_live import (EngineStep, SimLiveConfig, calibrated_profile, engine_steps, fit_step_truth,
                                       _live_per_request, front_delays, path_latency_s, sim_config_for,
                                       step_summary)
from node.fit.step_time_fit import StepSample
from cluster.config import ServeConfig
from cluster.sim.config import SimConfig
from cluster.sim.metrics import ttft_s
from cluster.workload.loadgen import LiveRecord
from node.fit.profile import load_profile
from tests.test_sim_timeline import run


def test_client_path_latency_delays_every_served_token_as_the_client_sees_it():
    plain = run([(0.0, 100, 3)], scheduler="fairbatching")
    path = run([(0.0, 100, 3)], scheduler="fairbatching", client_path_s=0.05)
    (p,), (q,) = plain.requests, path.requests
    assert ttft_s(q) == pytest.approx(ttft_s(p) + 0.05)
    assert q.last_token_s - q.first_token_s == pytest.approx(p.last_token_s - p.first_token_s)  # TPOT unchanged
    assert path.report["ttft_p50"] == pytest.approx(plain.report["ttft_p50"] + 0.05)
    # A path that pushes the first token past the TTFT SLO turns an attained request into a miss.
    late = run([(0.0, 100, 3)], scheduler="fairbatching", ttft_slo_s=0.15, client_path_s=0.05)
    assert plain.report["attainment"] == 1.0 and late.report["attainment"] == 0.0
    with pytest.raises(ValueError, match="client_path_s"):
        SimConfig(client_path_s=-0.01)


def test_a_shorter_pab_horizon_admits_less_prompt_work_under_overload():
    rows = [(0.01 * i, 300, 4) for i in range(12)]  # 0.31 s of prefill each, arriving together
    whole = run(rows, scheduler="fairbatching", balancer="pab", ttft_slo_s=1.0, tpot_slo_s=0.1)
    part = run(rows, scheduler="fairbatching", balancer="pab", ttft_slo_s=1.0, tpot_slo_s=0.1,
               pab_horizon_fraction=0.5)
    assert part.report["rejected"] > whole.report["rejected"] > 0
    assert part.report["admitted_attainment"] == whole.report["admitted_attainment"] == 1.0
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="pab_horizon_fraction"):
            SimConfig(pab_horizon_fraction=bad)


def test_outputs_are_clipped_as_a_clients_max_tokens_clips_them():
    cfg = SimConfig(trace="azure-code", duration_s=120, max_output_tokens=8, profile="cpu-tiny-llama")
    from cluster.sim.simulator import load_workload

    w = load_workload(cfg)
    assert max(r.output_tokens for r in w.requests) == 8 and w.clipped_outputs > 0
    assert "clip outputs to 8" in w.transforms
    with pytest.raises(ValueError, match="max_output_tokens"):
        SimConfig(max_output_tokens=0)


def test_the_simulator_runs_the_deployments_own_settings():
    serve = ServeConfig(engines=3, pab_horizon_fraction=0.5, anchor="arrival",
                        node_config={"knobs": {"tpot_margin": 0.1, "relegate": "doomed"}})
    sim = sim_config_for(serve, SimLiveConfig(), "cpu-tiny-llama", start_s=30.0, rate_scale=2.0, client_path_s=0.04)
    assert (sim.nodes, sim.balancer, sim.anchor, sim.pab_horizon_fraction) == (3, "pab", "arrival", 0.5)
    assert (sim.tpot_margin, sim.relegate, sim.chunk_align_tokens, sim.feedback) == (0.1, "doomed", 0, True)
    assert (sim.start_s, sim.rate_scale, sim.client_path_s, sim.max_output_tokens) == (30.0, 2.0, 0.04, 32)
    default = sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0)
    # the serve config's default knobs
    assert (default.relegate, default.tpot_margin, default.seat_pressure) == ("fewest-late", 0.2, 0.8)
    assert default.refit is True  # the engines refit their model online (NodeConfig.refit), so the nodes do
    # the engines report every report_interval_s and the routers poll as often: reports that often, that late
    assert (default.pab_interval_s, default.pab_delay_s) == (0.1, 0.1)
    slower = sim_config_for(ServeConfig(report_interval_s=0.25), SimLiveConfig(), "x", start_s=0.0)
    assert (slower.pab_interval_s, slower.pab_delay_s) == (0.25, 0.25)
    for off in (False, "false"):  # read as the engines read it (pydantic's coercion included)
        assert sim_config_for(ServeConfig(node_config={"refit": off}), SimLiveConfig(), "x", start_s=0.0).refit is False
    named_none = sim_config_for(ServeConfig(node_config={"knobs": {}}), SimLiveConfig(), "x", start_s=0.0)
    assert named_none.relegate == "none"  # the policy's default where the deployment names none
    assert sim_config_for(ServeConfig(feedback={"enabled": False}), SimLiveConfig(), "cpu-tiny-llama",
                          start_s=0.0).feedback is False
    with pytest.raises(ValueError, match="seat_cap"):
        sim_config_for(ServeConfig(node_config={"knobs": {"seat_cap": 3}}), SimLiveConfig(), "x", start_s=0.0)
    with pytest.raises(ValueError, match="scheduler 'vllm'"):
        sim_config_for(ServeConfig(scheduler="vllm"), SimLiveConfig(), "x", start_s=0.0)


def test_the_calibrated_profile_carries_the_live_model_and_the_engines_limits(tmp_path):
    model = {"a_s": 0.008, "b_s_per_token": 4e-5, "c_s_per_context_token": 1e-6, "safety_factor": 1.0,
             "host_s": 0.0007, "attn_prefill_s_per_token_sq": 0.0, "nodes": 2}
    path = calibrated_profile(model, ServeConfig(), tmp_path / "cal.json")
    prof = load_profile(path)
    assert (prof.a_s, prof.b_s_per_token, prof.c_s_per_context_token, prof.host_s) == (0.008, 4e-5, 1e-6, 0.0007)
    assert prof.max_num_seqs == ServeConfig().engine_args["max_num_seqs"]
    assert prof.name == "cpu-tiny-llama-live-calibrated" and "calibration replay" in prof.method
    assert (prof.ttft_slo_s, prof.tpot_slo_s) == (load_profile("cpu-tiny-llama").ttft_slo_s,
                                                  load_profile("cpu-tiny-llama").tpot_slo_s)


def test_path_latency_is_the_median_client_minus_simulated_ttft_over_requests_both_served():
    sim = run([(0.0, 100, 3), (1.0, 100, 3), (2.0, 100, 3)], scheduler="fairbatching").requests  # TTFT 0.11 each
    rec = lambda rid, status, first: LiveRecord(rid=rid, arrival_s=float(rid), prompt_tokens=100,  # noqa: E731
                                                output_tokens=3, status=status,
                                                token_times=[rid + first] if first else [])
    records = [rec(0, 200, 0.13), rec(1, 200, 0.17), rec(2, 429, None)]
    assert path_latency_s(_live_per_request(records), sim) == pytest.approx(0.04)  # median of 0.02, 0.06; not the 429
    assert path_latency_s(_live_per_request([rec(2, 429, None)]), sim) is None


def test_a_recorded_check_is_written_a_line_a_request_and_reads_back_whole():
    import json

    from cluster.bench.sim_vs_live import check_json

    doc = {"rows": [{"multiple": 1.5, "per_request": [[0, 100, 3, False, 0.25, ""], [1, 90, 2, True, None, "x"]],
                     "range": [0.1, 0.2], "empty": [], "nested": {}}], "name": "a [b]  c"}
    text = check_json(doc)
    assert json.loads(text) == doc
    assert '  [0, 100, 3, false, 0.25, ""],\n' in text and '"range": [0.1, 0.2]' in text


def test_the_drain_rate_is_the_prompt_tokens_a_second_of_the_steps_that_prefilled_at_least_half_a_step():
    """Live (``step_summary``) and simulated (``prefill_drain_tps``) alike: a queue drains at the prompt
    tokens of the large prefill steps over their cadence; decode-only and small steps do not count."""
    from dataclasses import replace

    from tests.test_sim_timeline import linear_profile

    steps = [EngineStep(StepSample(480, 32, 9000, 0.18), 0.02)] * 10 + [EngineStep(StepSample(0, 30, 9000, 0.05),
                                                                                    0.01)] * 20
    truth = {"a_s": 0.01, "b_s_per_token": 1e-4, "c_s_per_context_token": 1e-6, "host_s": 0.01,
             "attn_prefill_s_per_token_sq": 0.0}
    assert step_summary(steps, truth)["prefill_drain_tps"] == pytest.approx(480 / 0.2)
    assert step_summary(steps[10:], truth)["prefill_drain_tps"] is None
    # 300-token prompts every 0.2 s on a node that takes 256 tokens a step: every step a full prefill
    profile = replace(linear_profile(), max_num_batched_tokens=256)
    report = run([(0.2 * i, 300, 2) for i in range(40)], profile=profile, balancer="pab", nodes=1,
                 ttft_slo_s=30.0).report
    step_s = profile.a_s + 256 * profile.b_s_per_token  # (its context term is small here)
    assert report["prefill_drain_tps"] == pytest.approx(256 / step_s, rel=0.1)


def test_nodes_cap_their_budget_by_the_prefill_rate_they_delivered_under_a_queue(pab_calls):
    seen = pab_calls
    from dataclasses import replace

    from tests.test_sim_timeline import linear_profile

    # 300-token prompts every 0.2 s on a node that takes 256 tokens a step (0.27 s): prompts queue.
    profile = replace(linear_profile(), max_num_batched_tokens=256)
    rows = [(0.2 * i, 300, 2) for i in range(40)]
    run(rows, profile=profile, balancer="pab", nodes=1, ttft_slo_s=30.0, measured_prefill_rate=True,
        pab_horizon_fraction=0.6)
    rates = [kw["measured_prefill_rate_tps"] for kw in seen if kw["measured_prefill_rate_tps"] is not None]
    # What it delivered: 256 tokens per 0.266 s step (962 tokens/s), as counted over a 5 s window
    # of whole prompts (a prompt counts when its first token comes).
    assert rates and all(850 < r < 1100 for r in rates[len(rates) // 2:]), rates
    assert {(round(kw["horizon_s"], 9), kw["due_within_s"]) for kw in seen} == {(18.0, 30.0)}
    seen.clear()
    run(rows, profile=profile, balancer="pab", nodes=1, ttft_slo_s=30.0)
    assert {kw["measured_prefill_rate_tps"] for kw in seen} == {None}


def test_the_command_tabulates_each_live_run_beside_the_simulator_and_judges_the_medians(monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    import cluster.bench.sim_vs_live as svl
    from cluster.cli.main import app

    def report(att, ttft, rejected):
        return {"requests": 100, "attainment": att, "admitted_attainment": 1.0, "rejected": rejected,
                "ttft_p50": ttft, "ttft_p90": None, "ttft_p99": None, "tpot_p50": 0.02, "tpot_p99": None,
                "goodput_rps": 1.0, "offered_rps": 1.0}

    def fake_run(cfg, out_dir, progress, step_logs=None):  # the live part needs minutes on a real cluster: recorded runs only
        res = svl.SimLiveResult("test machine", svl.asdict(cfg), {})
        res.capacity = {"rate_scale": 2.0, "capacity_rps": 10.0, "window_rate_rps": 5.0}
        res.rows = [
            {"multiple": 0.5, "rate_scale": 1.0, "rate_rps": 5.0, "sim": report(1.0, 0.10, 0),
             "live": [report(1.0, 0.09, 0), report(1.0, 0.12, 0), report(0.99, 0.11, 1)]},
            {"multiple": 1.5, "rate_scale": 3.0, "rate_rps": 15.0, "sim": report(0.74, 0.38, 26),
             "live": [report(0.69, 0.35, 31), report(0.61, 0.72, 39), report(0.66, 0.41, 34)],
             "sim_with_truth": {"steps": report(0.68, 0.40, 30)}},  # the other truth's prediction
        ]
        return res

    monkeypatch.setattr(svl, "run_local", fake_run)
    out = CliRunner().invoke(app, ["bench", "sim-vs-live", "--repeats", "3", "--out-dir", str(tmp_path)],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "azure-conv-600-seed0.json").read_text())  # the default window
    v = data["verdict"]
    assert v["0.5x"]["holds"] and v["0.5x"]["live_ttft_p50_median_s"] == 0.11
    assert not v["1.5x"]["holds"] and v["1.5x"]["attainment_gap_pts"] == pytest.approx(8.0)  # 0.74 vs median 0.66
    assert v["1.5x"]["live_attainment_range"] == [0.61, 0.69]
    assert "1.5x median" in out.output and "8.0 pts" in out.output
    # the same live runs against the simulator on the other truth: judged alike, where it was run
    assert data["verdict_with_truth"]["steps"]["1.5x"]["holds"] and "0.5x" not in data["verdict_with_truth"]["steps"]
    assert "with the steps truth: 1.5x 2.0 pts, TTFT p50 2 % (holds)" in out.output
    bad = CliRunner().invoke(app, ["bench", "sim-vs-live", "--multiples", "0,1", "--out-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--multiples" in bad.output


def test_the_recorded_checks_tabulate_with_the_serving_paths_cpu_where_it_was_modelled():
    from pathlib import Path

    from typer.testing import CliRunner

    from cluster.cli.main import app

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    shared = CliRunner().invoke(app, ["bench", "sim-vs-live", "--summary-of", str(root)])
    own = CliRunner().invoke(app, ["bench", "sim-vs-live", "--summary-of", str(root / "own-host")])
    assert shared.exit_code == 0 and own.exit_code == 0, shared.output + own.output
    assert "serving path CPU ms/request" in shared.output
    rows = [line for line in shared.output.splitlines() if line.startswith("| seed")]
    own_rows = [line for line in own.output.splitlines() if line.startswith("| seed")]
    assert len(rows) == len(own_rows) == 3
    assert all(row.split("|")[2].strip().split("; ")[-1] != "-" for row in rows)  # the CPU per request, in ms
    assert all(row.split("|")[2].strip().endswith("; -") for row in own_rows)  # no shared host then


def test_a_recorded_check_resimulated_with_its_settings_reproduces_its_simulated_side(tmp_path):
    """--resimulate runs the simulator side of a recorded check again against its live runs: with the
    settings it was recorded with (seats counted by the plan's cap, before 2026-12-01; reports after every
    step, on time, and a serving path with no background or ceiling at half the host, before 2026-12-02)
    it gives the recorded simulated figures exactly; the command refuses to overwrite the recorded checks."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from cluster.bench.sim_vs_live import resimulate
    from cluster.cli.main import app

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    recorded = json.loads((root / "azure-code-600-seed1.json").read_text())
    again = resimulate(recorded, seats_as_vllm=False, pab_interval_s=0.0, pab_delay_s=0.0,
                       host_background_cores=0.0, host_max_share=0.9)
    for old, new in zip(recorded["rows"], again.rows):
        assert new["rate_scale"] == old["rate_scale"] and new["live"] == old["live"]
        for key in ("attainment", "ttft_p50", "rejected", "requests"):
            assert new["sim"][key] == pytest.approx(old["sim"][key], rel=1e-9), key
    for load, v in again.verdict().items():
        assert v["holds"] == recorded["verdict"][load]["holds"]
        assert v["attainment_gap_pts"] == pytest.approx(recorded["verdict"][load]["attainment_gap_pts"], rel=1e-9)
    with pytest.raises(ValueError, match="not a recorded sim-vs-live check"):
        resimulate({"rows": []})
    refused = CliRunner().invoke(app, ["bench", "sim-vs-live", "--resimulate", str(root), "--out-dir", str(root)])
    assert refused.exit_code == 2 and "overwrite" in refused.output


def test_each_live_run_is_judged_against_the_median_of_its_siblings():
    from cluster.bench.sim_vs_live import live_self_agreement

    def live(att, ttft):
        return {"attainment": att, "ttft_p50": ttft}

    rows = [{"multiple": 0.5, "live": [live(1.0, 0.10), live(1.0, 0.11)]},  # two runs: no siblings' median
            {"multiple": 1.5, "live": [live(0.70, 0.30), live(0.74, 0.60), live(0.80, 0.40)]}]
    out = live_self_agreement(rows)
    assert [(r["multiple"], r["run"]) for r in out] == [(1.5, 1), (1.5, 2), (1.5, 3)]
    # run 1 against the median of 0.74 / 0.80 (0.77) and of 0.60 / 0.40 (0.50): 7 points, 40 %
    assert out[0]["attainment_gap_pts"] == pytest.approx(7.0) and out[0]["ttft_p50_rel_err"] == pytest.approx(0.4)
    # run 3 against 0.72 and 0.45: 8 points off; run 2 against 0.75 and 0.35: 1 point, 71 % off
    assert [r["holds"] for r in out] == [False, False, False]
    assert [r["holds"] for r in live_self_agreement(rows, attainment_tol_pts=10, ttft_p50_rel_tol=0.5)] == [
        True, False, True]


def test_each_row_keeps_every_request_on_both_sides_by_id():
    from cluster.bench.sim_vs_live import PER_REQUEST, _live_per_request, _sim_per_request

    sim = run([(0.0, 100, 3), (1.0, 100, 3)], scheduler="fairbatching").requests
    sim[1].rejected = True
    sim[1].first_token_s = None
    records = [LiveRecord(rid=1, arrival_s=1.0, prompt_tokens=100, output_tokens=3, status=429, refusal="no-budget"),
               LiveRecord(rid=0, arrival_s=0.0, prompt_tokens=100, output_tokens=3, status=200,
                          token_times=[0.25, 0.3, 0.35])]
    assert PER_REQUEST == ("rid", "prompt_tokens", "output_tokens", "rejected", "ttft_s", "refusal")
    assert _live_per_request(records) == [[0, 100, 3, False, 0.25, ""], [1, 100, 3, True, None, "no-budget"]]
    rows = _sim_per_request(sim)
    assert [r[0] for r in rows] == [0, 1] and rows[1][3:] == [True, None, "pab"]
    assert rows[0][4] == pytest.approx(ttft_s(sim[0]), abs=1e-4)


def _step_line(step: int, t: float, forward_s: float, busy: bool, *, prefill: int = 0, decode: int = 4,
               context: int = 100) -> str:
    return json.dumps({"step": step, "t": t, "prefill_tokens": prefill, "decode_tokens": decode,
                       "context_tokens": context, "prefill_attention_pairs": 0.0, "measured_s": forward_s,
                       "busy_after": busy}) + "\n"


def test_engine_steps_time_the_host_only_between_back_to_back_steps_in_the_window(tmp_path):
    log = tmp_path / "engine-1.jsonl"
    log.write_text(
        _step_line(1, 100.0, 0.010, True)
        + _step_line(2, 100.013, 0.010, False)  # host 3 ms; then the engine idles
        + _step_line(3, 105.0, 0.010, True)  # after an idle gap: its own host time is known again
        + _step_line(4, 105.012, 0.010, True)
        + _step_line(6, 105.030, 0.010, True)  # step 5 scheduled no token: 4 -> 6 is two cadences
        + _step_line(7, 200.0, 0.010, True)  # outside the window
        + '{"step": 8, "t": 10')  # the line the engine is writing
    steps = engine_steps(tmp_path, 99.0, 150.0)
    assert [round(s.host_s, 4) if s.host_s is not None else None for s in steps] == [0.003, None, 0.002, None, None]
    assert all(s.sample.duration_s == 0.010 for s in steps)


def test_each_requests_front_delay_is_read_from_the_replicas_logs_beside_the_step_logs(tmp_path):
    """The replica of process 7 logs beside ``engine-{pid}.jsonl`` into ``front-engine-7.jsonl``; the check
    reads the requests received in a run's window, and the engines' steps stay apart."""
    from node.vllm.node_config import front_log_path

    path = front_log_path(str(tmp_path / "engine-{pid}.jsonl"), 7)
    assert path == str(tmp_path / "front-engine-7.jsonl")
    lines = [{"t": 100.0 + i, "front_delay_s": d} for i, d in enumerate([0.05, 0.10, 0.02, 0.60, 0.08])]
    lines.append({"t": 300.0, "front_delay_s": 9.0})  # outside the window
    with open(path, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in lines) + '{"t": 10')  # the line being written
    (tmp_path / "engine-8.jsonl").write_text(_step_line(1, 100.5, 0.010, True))
    got = front_delays(tmp_path, 99.0, 150.0)
    assert got["requests"] == 5 and got["p50_s"] == pytest.approx(0.08) and got["max_s"] == pytest.approx(0.60)
    assert got["mean_s"] == pytest.approx(0.17)
    assert got["stalls"] is None  # too few requests to fit stalls
    assert got["log"][0] == [0.0, 0.05] and got["log"][3] == [pytest.approx(3.0 - 0.6 + 0.05), 0.6]  # by arrival
    assert front_delays(tmp_path, 200.0, 250.0) is None
    # Enough requests: the base delay and the stalls of the window (one request held 0.6 s)
    with open(path, "a") as fh:
        fh.write("\n" + "".join(json.dumps({"t": 105.0 + 0.5 * i, "front_delay_s": 0.02}) + "\n" for i in range(30)))
    fit = front_delays(tmp_path, 99.0, 150.0)["stalls"]
    assert fit["stalls_per_s"] > 0 and fit["base_s"] == pytest.approx(0.02)
    assert len(engine_steps(tmp_path, 99.0, 150.0)) == 1  # the front log holds no step


def test_the_truth_is_the_mean_step_where_the_engines_refit_keeps_the_fast_ones():
    """A random fifth of the steps slowed 2.5x by other work on the host: the check's truth is their mean
    cost (1.3x the fast steps'), the engines' trimmed refit (the truth before) the fast steps'."""
    import random

    from node.core.step_time import StepTimeModel
    from node.fit.step_time_fit import predicted_forward_s, trimmed_fit

    true = StepTimeModel(a_s=0.004, b_s_per_token=40e-6, c_s_per_context_token=2e-6)
    rng = random.Random(0)
    steps = []
    for _ in range(600):
        n, ctx = rng.randint(1, 256), rng.randint(50, 2000)
        slowed = 2.5 if rng.random() < 0.2 else 1.0
        steps.append(EngineStep(StepSample(n // 2, n - n // 2, ctx, slowed * true.forward_s(n, ctx)), 0.001 * slowed))
    fast = sum(true.forward_s(s.sample.new_tokens, s.sample.context_tokens) for s in steps)
    truth = fit_step_truth(steps, prefill_attention=False)
    model = StepTimeModel(**{k: truth[k] for k in ("a_s", "b_s_per_token", "c_s_per_context_token")})
    assert sum(predicted_forward_s(model, s.sample) for s in steps) / fast == pytest.approx(1.3, abs=0.03)
    assert truth["host_s"] == pytest.approx(0.0013, abs=0.00005)
    trimmed, _ = trimmed_fit([s.sample for s in steps], prefill_attention=False)
    assert sum(predicted_forward_s(trimmed, s.sample) for s in steps) / fast < 1.1
    # The same steps against that truth: no slowdown; the same steps 1.5x slower: 1.5.
    assert step_summary(steps, truth)["slowdown"] == pytest.approx(1.0, abs=0.03)
    slower = [replace(s, sample=replace(s.sample, duration_s=1.5 * s.sample.duration_s), host_s=1.5 * s.host_s)
              for s in steps]
    assert step_summary(slower, truth)["slowdown"] == pytest.approx(1.5, abs=0.05)
    with pytest.raises(ValueError, match="back to back"):
        fit_step_truth([replace(s, host_s=None) for s in steps], prefill_attention=False)


def test_the_checks_truth_is_the_engines_refit_unless_told_otherwise():
    assert SimLiveConfig().truth == "refit"
    assert SimLiveConfig(truth="steps").truth == "steps"
    with pytest.raises(ValueError, match="truth must be one of"):
        SimLiveConfig(truth="client")


def test_a_calibration_that_ran_past_capacity_is_called_out(monkeypatch, tmp_path):
    """On a machine 3-5x slower than the days the fixed calibration rate was chosen, the calibration replay
    refused 19 % of its requests (2026-12-02): the check says so, in its JSON and at the end of its output."""
    from typer.testing import CliRunner

    import cluster.bench.sim_vs_live as svl
    from cluster.bench.sim_vs_live import calibration_past_capacity
    from cluster.cli.main import app

    cfg = SimLiveConfig()
    assert calibration_past_capacity({"rejected": 226, "requests": 1209}, cfg)
    assert not calibration_past_capacity({"rejected": 2, "requests": 1209}, cfg)
    assert not calibration_past_capacity({"rejected": 0, "requests": 0}, cfg)
    with pytest.raises(ValueError, match="calibration_max_refused"):
        SimLiveConfig(calibration_max_refused=1.5)

    def fake_run(cfg, out_dir, progress, step_logs=None):  # the live part needs minutes on a real cluster
        res = svl.SimLiveResult("test machine", svl.asdict(cfg), {}, calibration={"past_capacity": True})
        res.capacity = {"rate_scale": 2.0, "capacity_rps": 10.0, "window_rate_rps": 5.0}
        row = {"requests": 10, "attainment": 1.0, "admitted_attainment": 1.0, "rejected": 0, "ttft_p50": 0.1,
               "ttft_p90": None, "ttft_p99": None, "tpot_p50": 0.02, "tpot_p99": None, "goodput_rps": 1.0,
               "offered_rps": 1.0}
        res.rows = [{"multiple": 0.5, "rate_scale": 1.0, "rate_rps": 5.0, "sim": row, "live": [row]}]
        return res

    monkeypatch.setattr(svl, "run_local", fake_run)
    out = CliRunner().invoke(app, ["bench", "sim-vs-live", "--out-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "ran past this machine's capacity" in out.output and "--calibration-rps" in out.output


def test_a_scaled_truth_is_the_same_engine_on_a_slower_machine():
    from cluster.bench.sim_vs_live import COEFFICIENTS, scaled_truth

    truth = {"a_s": 0.01, "b_s_per_token": 8e-5, "c_s_per_context_token": 4e-6, "host_s": 0.001}
    slow = scaled_truth(truth, 1.5)
    for k in COEFFICIENTS:
        assert slow[k] == pytest.approx(1.5 * truth.get(k, 0.0)), k
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="speed factor"):
            scaled_truth(truth, bad)


def test_the_simulator_at_the_live_runs_step_speed_predicts_the_recorded_stall_check():
    """The hindsight arm on the recorded seed-13 check (its calibration ran 1.38x slower than the truth, its
    1.5x runs 0.81-0.84x): at each phase's measured speed the simulator predicts the live medians within the
    criterion at both loads, where the check's own prediction missed by 26 points at 1.5x; a faster machine
    gives a shorter TTFT and no lower attainment; a check recorded without step speeds has no hindsight arm.
    Resimulated with its arms, a recorded arm that can no longer run (here one planted on the record) is
    dropped, not carried over."""
    from pathlib import Path

    from cluster.bench.sim_vs_live import (AT_LIVE_SPEED, AT_LIVE_STEPS, at_live_speed, at_live_steps, at_probe_speed,
                                           resimulate)

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    recorded = json.loads((root / "conv-240-stalls" / "azure-conv-600-seed13.json").read_text())
    assert not recorded["verdict"]["1.5x"]["holds"] and recorded["verdict"]["1.5x"]["attainment_gap_pts"] > 20
    planted = json.loads(json.dumps(recorded))
    planted["calibration"]["arms"] = {AT_LIVE_STEPS: {"client_path_s": 0.0}}
    for row in planted["rows"]:
        row.setdefault("sim_with_truth", {})[AT_LIVE_STEPS] = row["sim"]
        row["arm_judged"] = {AT_LIVE_STEPS: [0]}
    again = resimulate(planted, capacity=False)
    assert set(again.calibration["arms"]) == {AT_LIVE_SPEED}
    assert all(AT_LIVE_STEPS not in row["sim_with_truth"] and "arm_judged" not in row for row in again.rows)
    assert AT_LIVE_STEPS in planted["rows"][0]["sim_with_truth"]  # the record itself untouched
    hindsight = again.verdict(truth=AT_LIVE_SPEED)
    assert set(hindsight) == {"0.5x", "1.5x"} and all(v["holds"] for v in hindsight.values()), hindsight
    arm = again.calibration["arms"][AT_LIVE_SPEED]
    assert arm["client_path_s"] < recorded["calibration"]["client_path_s"]  # the slow calibration no longer in it
    assert arm["slowdowns"][1] == [x["engine_steps"]["slowdown"] for x in recorded["rows"][1]["live"]]
    runs = again.rows[1]["arm_runs"][AT_LIVE_SPEED]
    assert len(runs) == 3 and again.rows[1]["sim_with_truth"][AT_LIVE_SPEED]["attainment"] == pytest.approx(
        sorted(r["attainment"] for r in runs)[1])  # the row's figure: the median of its runs'

    # the same check on a machine 1.5x as slow in every 1.5x run: longer TTFT, no higher attainment
    slower = json.loads(json.dumps(recorded))
    for live in slower["rows"][1]["live"]:
        live["engine_steps"]["slowdown"] *= 1.5
    slow = at_live_speed(slower)["rows"][1]["sim"]
    fast = again.rows[1]["sim_with_truth"][AT_LIVE_SPEED]
    assert slow["ttft_p50"] > fast["ttft_p50"] and slow["attainment"] <= fast["attainment"]
    assert at_live_speed(json.loads((root / "azure-code-600-seed1.json").read_text())) is None
    assert at_probe_speed(recorded) is None and at_live_steps(recorded) is None  # recorded before they were kept


def test_the_probes_step_speeds_are_interpolated_in_each_rows_offered_rate():
    """The forward speed arm: the idle probe's, the calibration's and the stall probe's measured speeds, by
    their offered rates, give each row its speed by linear interpolation in the row's rate (flat outside)."""
    from pathlib import Path

    from cluster.bench.sim_vs_live import at_probe_speed, probe_speeds

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    check = json.loads((root / "conv-240-stalls" / "azure-conv-600-seed13.json").read_text())
    cal = check["calibration"]
    assert probe_speeds(cal) == [(pytest.approx(5.0), pytest.approx(1.3848, abs=1e-4))]  # the calibration only
    cal["idle_probe"]["engine_steps"] = {"slowdown": 1.0}
    cal["stall_probe"]["engine_steps"] = {"slowdown": 0.8}
    rates = [rate for rate, _ in probe_speeds(cal)]
    assert rates == sorted(rates) and rates[0] == pytest.approx(2.0) and rates[-1] == pytest.approx(21.82, abs=0.01)
    arm = at_probe_speed(check)
    low, high = arm["slowdowns"]
    rate_low = check["rows"][0]["rate_rps"]  # 7.27 req/s: between the calibration's 5 and the stall probe's 21.8
    expected = 1.3848 + (rate_low - 5.0) / (rates[-1] - 5.0) * (0.8 - 1.3848)
    assert low == [pytest.approx(expected, abs=1e-3)] and high == [pytest.approx(0.8, abs=1e-3)]
    assert arm["rows"][1]["sim"]["attainment"] > check["rows"][1]["sim"]["attainment"]  # faster than the calibration


def test_on_the_runs_own_steps_each_run_is_simulated_on_the_fit_of_its_steps():
    """The other hindsight arm reads each live run's own fitted truth (``step_truth``) and the calibration's:
    given each run's fit equal to the check's truth at that run's speed, it is the speed arm exactly; a run
    without a fit leaves the arm out."""
    from pathlib import Path

    from cluster.bench.sim_vs_live import at_live_speed, at_live_steps, check_truth, scaled_truth

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    check = json.loads((root / "conv-240-stalls" / "azure-conv-600-seed13.json").read_text())
    truth = check_truth(check)
    check["calibration"]["step_truth"] = scaled_truth(truth, check["calibration"]["engine_steps"]["slowdown"])
    for row in check["rows"]:
        for live in row["live"]:
            live["step_truth"] = scaled_truth(truth, live["engine_steps"]["slowdown"])
    steps, speed = at_live_steps(check), at_live_speed(check)
    assert steps["client_path_s"] == speed["client_path_s"]
    assert [row["runs"] for row in steps["rows"]] == [row["runs"] for row in speed["rows"]]
    check["rows"][0]["live"][1]["step_truth"] = None  # a run cut short: too few steps to fit
    assert at_live_steps(check) is None


def test_kept_step_logs_fill_in_what_a_check_recorded_before_it_was_kept(tmp_path):
    """--resimulate --step-logs: the probes' step speeds and each run's fit of its own steps are derived from
    the kept logs for the phases whose spans they cover, and left alone elsewhere."""
    from cluster.bench.sim_vs_live import fill_from_step_logs

    lines, t = [], 100.0
    for i in range(12):  # 5 ms + 100 us a token + 1 us a context token, back to back with 1 ms of host time
        prefill, decode, context = 16 * (i % 4), 4 + i % 3, 200 + 50 * i
        forward = 0.005 + 1e-4 * (prefill + decode) + 1e-6 * context
        lines.append(_step_line(i + 1, t, forward, True, prefill=prefill, decode=decode, context=context))
        t += forward + 0.001
    (tmp_path / "engine-1.jsonl").write_text("".join(lines))
    model = {"a_s": 0.005, "b_s_per_token": 1e-4, "c_s_per_context_token": 1e-6, "host_s": 0.001}
    check = {"config": {"truth": "refit"},
             "calibration": {"deployment_model": model, "idle_probe": {"live": {"wall_clock_s": [99.0, 150.0]}},
                             "stall_probe": {"live": {}}},
             "rows": [{"multiple": 0.5, "live": [{"wall_clock_s": [99.0, 150.0]}, {"wall_clock_s": [300.0, 400.0]}]}]}
    assert fill_from_step_logs(check, tmp_path) == 2
    assert check["calibration"]["idle_probe"]["engine_steps"]["slowdown"] == pytest.approx(1.0, abs=0.01)
    assert "engine_steps" not in check["calibration"]["stall_probe"]  # no span recorded
    fitted, empty = (live["step_truth"] for live in check["rows"][0]["live"])
    assert fitted["a_s"] == pytest.approx(0.005, rel=0.05) and fitted["host_s"] == pytest.approx(0.001, rel=0.05)
    assert empty is None  # no step of the logs in its span
    assert fill_from_step_logs(check, tmp_path) == 0  # what is there stays


def test_on_the_previous_phases_steps_each_run_is_predicted_from_the_phase_before_it():
    """The forward steps arm: a row's first run on the fit of the probe nearest its rate, every later run on
    the fit of the run before it; the last run's own fit is never read."""
    from pathlib import Path

    from cluster.bench.sim_vs_live import at_live_steps, at_previous_steps, check_truth, scaled_truth

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    check = json.loads((root / "conv-240-stalls" / "azure-conv-600-seed13.json").read_text())
    truth = check_truth(check)
    cal = check["calibration"]
    assert at_previous_steps(check) is None  # recorded before the fits were kept
    cal["step_truth"] = scaled_truth(truth, 1.3)
    cal["idle_probe"]["step_truth"] = scaled_truth(truth, 1.0)
    cal["stall_probe"]["step_truth"] = scaled_truth(truth, 0.8)
    for row in check["rows"]:
        for k, live in enumerate(row["live"]):
            live["step_truth"] = scaled_truth(truth, 0.9 + 0.05 * k)
    hindsight = at_live_steps(check)
    for row in check["rows"]:
        row["live"][-1]["step_truth"] = None  # never read
    forward = at_previous_steps(check)
    assert forward["client_path_s"] == hindsight["client_path_s"]
    for f, h in zip(forward["rows"], hindsight["rows"]):
        assert f["runs"][1:] == h["runs"][:-1]
    stall = at_live_steps({**check, "rows": [{**check["rows"][1], "live": [
        {**live, "step_truth": cal["stall_probe"]["step_truth"]} for live in check["rows"][1]["live"]]}]})
    assert forward["rows"][1]["runs"][0] == stall["rows"][0]["runs"][0]  # 1.5x, 21.8 req/s: the stall probe's


def test_on_the_rehearsals_steps_the_runs_after_it_are_judged_on_its_fit(monkeypatch):
    """The rehearsal arm: each row simulated once, on the fit of its rehearsal's steps, and judged against the
    runs after it only. Without a rehearsal (checks before it existed) a row's first run is the rehearsal
    and is left out of the verdict; with one, every run is judged and no run's own fit is read; the
    previous-steps arm starts each row from the rehearsal too."""
    from dataclasses import asdict
    from pathlib import Path

    from cluster.bench import sim_vs_live
    from cluster.bench.sim_vs_live import (AT_REHEARSAL_STEPS, SimLiveResult, at_live_steps, at_previous_steps,
                                           at_rehearsal_steps, check_truth, scaled_truth, with_arms)

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    check = json.loads((root / "conv-240-stalls" / "azure-conv-600-seed13.json").read_text())
    truth = check_truth(check)
    assert at_rehearsal_steps(check) is None  # recorded before the fits were kept
    check["calibration"]["step_truth"] = scaled_truth(truth, 1.3)
    for row in check["rows"]:
        for k, live in enumerate(row["live"]):
            live["step_truth"] = scaled_truth(truth, 0.9 + 0.05 * k)
    hindsight = at_live_steps(check)
    first = at_rehearsal_steps(check)
    assert first["judged_runs"] == [[1, 2], [1, 2]]
    assert [row["runs"] for row in first["rows"]] == [row["runs"][:1] for row in hindsight["rows"]]

    # judged on the later runs only: a first run far off the others moves the check's own verdict, not the arm's
    check["rows"][1]["live"][0]["attainment"] = 0.0
    result = SimLiveResult(**{k: check[k] for k in ("machine", "config", "serve_config", "calibration", "capacity",
                                                    "rows")})
    result.rows = [{k: v for k, v in row.items() if k not in ("sim_with_truth", "arm_runs", "arm_judged")}
                   for row in result.rows]
    monkeypatch.setattr(sim_vs_live, "ARMS", {AT_REHEARSAL_STEPS: at_rehearsal_steps})  # this arm only
    with_arms(result)
    verdict = result.verdict(truth=AT_REHEARSAL_STEPS)["1.5x"]
    later = [live["attainment"] for live in check["rows"][1]["live"][1:]]
    assert verdict["live_attainment_range"] == [min(later), max(later)]
    assert result.verdict()["1.5x"]["live_attainment_range"][0] == 0.0
    assert asdict(result)["rows"][1]["arm_judged"][AT_REHEARSAL_STEPS] == [1, 2]

    # with a rehearsal: its fit, every run judged, no run's own fit read
    for row in check["rows"]:
        row["rehearsal"] = {"step_truth": row["live"][0]["step_truth"]}
        for live in row["live"]:
            live["step_truth"] = None
    rehearsed = at_rehearsal_steps(check)
    assert rehearsed["judged_runs"] == [[0, 1, 2], [0, 1, 2]]
    assert [row["runs"] for row in rehearsed["rows"]] == [row["runs"] for row in first["rows"]]
    for row in check["rows"]:
        row["rehearsal"] = {"step_truth": None}  # a rehearsal cut short: no arm
    assert at_rehearsal_steps(check) is None
    for row in check["rows"]:  # previous steps: the first run on the rehearsal's fit, not the nearest probe's
        row["rehearsal"] = {"step_truth": scaled_truth(truth, 0.9)}
        row["live"][0]["step_truth"] = scaled_truth(truth, 0.9)
        row["live"][1]["step_truth"] = scaled_truth(truth, 0.95)
    check["calibration"]["stall_probe"]["step_truth"] = scaled_truth(truth, 0.5)
    previous = at_previous_steps(check)
    assert [row["runs"][0] for row in previous["rows"]] == [row["runs"][0] for row in hindsight["rows"]]


def test_the_fit_of_steps_measures_their_jitter_and_its_correlation_engine_by_engine():
    """``fit_step_truth`` keeps how the steps scatter about the fit: two engines whose forward passes carry
    AR(1) log noise (sigma 0.3, lag-1 correlation 0.5) give both back, with their steps listed interleaved
    (the correlation is taken within each engine's own sequence, so interleaving does not hide it);
    shuffled steps have none left."""
    import math
    import random

    from node.core.step_time import StepTimeModel

    true = StepTimeModel(a_s=0.004, b_s_per_token=40e-6, c_s_per_context_token=2e-6)
    rng = random.Random(3)
    engines = []
    for name in ("engine-0", "engine-1"):
        z, steps = 0.0, []
        for _ in range(3000):
            z = 0.5 * z + math.sqrt(1 - 0.25) * rng.gauss(0.0, 1.0)
            n, ctx = rng.randint(1, 256), rng.randint(50, 2000)
            forward = true.forward_s(n, ctx) * math.exp(0.3 * z - 0.045)
            steps.append(EngineStep(StepSample(n // 2, n - n // 2, ctx, forward), 0.001, name))
        engines.append(steps)
    interleaved = [s for pair in zip(*engines) for s in pair]
    truth = fit_step_truth(interleaved, prefill_attention=False)
    assert truth["noise_sigma"] == pytest.approx(0.3, abs=0.02)
    assert truth["noise_ar"] == pytest.approx(0.5, abs=0.05)
    shuffled = [replace(s, engine="") for s in interleaved]
    random.Random(4).shuffle(shuffled)
    assert abs(fit_step_truth(shuffled, prefill_attention=False)["noise_ar"]) < 0.05


def test_the_fit_of_steps_draws_the_host_time_as_a_line_in_the_requests_served(tmp_path):
    """``host_per_request``: the engines log each step's requests (its ``tokens``), and the fit of their steps
    gives the host time's line in them (2 ms + 0.2 ms a request here, with scatter), besides its mean; without
    requests logged (older logs) or with one request count only, the mean and no slope."""
    import random

    from cluster.bench.sim_vs_live import host_per_request

    rng = random.Random(5)
    steps = []
    for _ in range(4000):
        n = rng.randint(1, 64)
        steps.append(EngineStep(StepSample(0, n, 100 * n, 0.01), 0.002 + 0.0002 * n + rng.uniform(-0.001, 0.001),
                                "engine-0", n))
    line = fit_step_truth(steps, prefill_attention=False)
    assert line["host_fixed_s"] == pytest.approx(0.002, abs=2e-4)
    assert line["host_s_per_request"] == pytest.approx(0.0002, abs=1e-5)
    assert line["host_s"] == pytest.approx(sum(s.host_s for s in steps) / len(steps))
    unlogged = [replace(s, requests=0) for s in steps]
    assert host_per_request(unlogged) == {"host_fixed_s": pytest.approx(line["host_s"]), "host_s_per_request": 0.0}
    falling = [replace(s, host_s=0.02 - 0.0002 * s.requests) for s in steps]  # never a negative slope
    assert host_per_request(falling)["host_s_per_request"] == 0.0
    # engine_steps reads the requests a step served from its log line
    line_of = json.loads(_step_line(1, 100.0, 0.010, True))
    (tmp_path / "engine-1.jsonl").write_text(
        json.dumps({**line_of, "tokens": {"a": 1, "b": 1, "c": 30}}) + "\n" + _step_line(2, 100.013, 0.010, False))
    assert [s.requests for s in engine_steps(tmp_path, 99.0, 150.0)] == [3, 0]


def test_the_arms_simulate_the_host_line_only_when_told_and_old_fits_get_it_from_the_step_logs(tmp_path):
    """``step_fit_fields`` hands the simulator a fit's host line only with ``SimLiveConfig.host_per_request``
    (on by default), and nothing for a fit recorded without it (the recorded arms stay as they were); with the
    step logs a check kept, ``fill_from_step_logs`` adds the line to such a fit and keeps its other figures."""
    from cluster.bench.sim_vs_live import fill_from_step_logs, step_fit_fields

    fit = {"noise_sigma": 0.4, "noise_ar": 0.5, "host_s": 0.01}
    with_host = SimLiveConfig()
    assert step_fit_fields(fit, with_host) == {"noise": 0.4, "noise_ar": 0.5}
    fit |= {"host_fixed_s": 0.003, "host_s_per_request": 0.0002}
    assert step_fit_fields(fit, with_host) == {"noise": 0.4, "noise_ar": 0.5, "host_fixed_s": 0.003,
                                               "host_s_per_request": 0.0002}
    assert step_fit_fields(fit, replace(with_host, host_per_request=False)) == {"noise": 0.4, "noise_ar": 0.5}
    assert step_fit_fields(fit, replace(with_host, step_noise=False)) == {"host_fixed_s": 0.003,
                                                                         "host_s_per_request": 0.0002}
    # A recorded run's fit without the line, and the engines' log of its span: 1 ms + 0.5 ms a request
    t, log = 100.0, ""
    for i in range(40):
        n = 1 + i % 8  # requests served; the next step starts after this one's forward pass and host time
        log += json.dumps({**json.loads(_step_line(i + 1, t, 0.010, True)), "tokens": {str(k): 1 for k in range(n)}})
        log += "\n"
        t += 0.010 + 0.001 + 0.0005 * n
    (tmp_path / "engine-1.jsonl").write_text(log)
    recorded = {"a_s": 0.01, "noise_sigma": 0.3, "host_s": 0.003}
    check = {"config": {}, "calibration": {"deployment_model": {"a_s": 0.01, "b_s_per_token": 1e-4,
                                                                "c_s_per_context_token": 0.0, "host_s": 0.003}},
             "rows": [{"live": [{"wall_clock_s": [99.0, 150.0], "step_truth": dict(recorded)}]}]}
    assert fill_from_step_logs(check, tmp_path) == 1
    filled = check["rows"][0]["live"][0]["step_truth"]
    assert {k: filled[k] for k in recorded} == recorded
    assert filled["host_fixed_s"] == pytest.approx(0.001, abs=1e-6)
    assert filled["host_s_per_request"] == pytest.approx(0.0005, abs=1e-6)
    assert fill_from_step_logs(check, tmp_path) == 0  # nothing left to fill


def test_the_arms_on_fits_of_steps_simulate_the_fits_noise_unless_told_not_to():
    """An arm whose truth is a fit of steps simulates that fit's noise (``SimLiveConfig.step_noise``): the
    rehearsal arm on fits with sigma 0.4 and lag-1 correlation 0.5 predicts a longer TTFT tail at 1.5x than
    on the same fits without noise, and with ``step_noise`` off it is the noiseless arm exactly."""
    from pathlib import Path

    from cluster.bench.sim_vs_live import at_rehearsal_steps, check_truth, scaled_truth

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live"
    check = json.loads((root / "conv-240-stalls" / "azure-conv-600-seed13.json").read_text())
    truth = check_truth(check)
    check["calibration"]["step_truth"] = scaled_truth(truth, 1.0)
    for row in check["rows"]:
        row["rehearsal"] = {"step_truth": scaled_truth(truth, 1.0)}
    quiet = at_rehearsal_steps(check)
    for fit in [check["calibration"]["step_truth"], *(row["rehearsal"]["step_truth"] for row in check["rows"])]:
        fit.update(noise_sigma=0.4, noise_ar=0.5)
    noisy = at_rehearsal_steps(check)
    assert noisy["rows"][1]["sim"]["ttft_p90"] > 1.05 * quiet["rows"][1]["sim"]["ttft_p90"]
    check["config"]["step_noise"] = False
    assert at_rehearsal_steps(check)["rows"] == quiet["rows"]


def test_the_capacity_is_found_again_on_the_steps_of_live_probes_at_the_highest_multiple():
    """``probe_capacity``: each probe runs at the highest multiple of the capacity found so far and the capacity is
    found again on its steps' fit. A probe that ran below that new capacity (its steps a lighter load's) is
    followed by one at the new rate; one above it ends the search; a probe too short to fit, or a fit on which no
    rate meets the target, leaves the capacity found before it. The live runs and the simulator's capacity search
    are fakes here, named as such (``run_probe``, ``capacity_of``): what is tested is the search's order."""
    from cluster.bench.sim_vs_live import probe_capacity

    calibration = {"rate_scale": 2.0, "capacity_rps": 10.0, "window_rate_rps": 5.0, "lower_bound": False}

    def cap(scale: float) -> dict:
        return {"rate_scale": scale, "capacity_rps": 5.0 * scale, "window_rate_rps": 5.0, "lower_bound": False}

    def search(capacities: list, fitted: bool = True, probes: int = 2):
        ran: list[float] = []

        def run_probe(scale: float, k: int) -> dict:  # fake of a live run: the fit of its steps, by index
            assert k == len(ran)
            ran.append(scale)
            return {"attainment": 0.8, "step_truth": {"fit": k} if fitted else None}

        def capacity_of(fit: dict):  # fake of the simulator's capacity search on that fit
            c = capacities[fit["fit"]]
            return None if c is None else cap(c)

        found, done = probe_capacity(calibration, 1.5, probes, run_probe, capacity_of)
        assert [p["rate_scale"] for p in done] == ran and all(p["attainment"] == 0.8 for p in done)
        return found, ran, done

    # the first probe (at 3.0) ran below the capacity its steps give (4.0): again at 6.0, which ran above 3.5
    found, ran, done = search([4.0, 3.5])
    assert ran == [3.0, 6.0] and found == {**cap(3.5), "from": "capacity-probe"}
    assert [p["capacity"] for p in done] == [cap(4.0), cap(3.5)]
    # the first probe ran above the capacity its steps give: one probe, that capacity
    found, ran, _ = search([1.8, 9.9])
    assert ran == [3.0] and found["rate_scale"] == 1.8
    # never more probes than allowed, and the last capacity found stands
    found, ran, _ = search([4.0, 8.0, 20.0], probes=2)
    assert ran == [3.0, 6.0] and found["rate_scale"] == 8.0
    # no fit, or no capacity on the fit: the calibration's capacity, said so
    for found, ran, done in (search([4.0], fitted=False), search([None])):
        assert ran == [3.0] and found == {**calibration, "from": "calibration"} and done[0]["capacity"] is None
    found, ran, done = search([4.0], probes=0)
    assert ran == [] and done == [] and found["from"] == "calibration"
    with pytest.raises(ValueError, match="capacity_probes"):
        SimLiveConfig(capacity_probes=-1)


def test_on_a_probes_steps_the_capacity_puts_the_recorded_runs_on_the_side_they_fell():
    """``capacity_on_steps`` on the fits of recorded 1.5x rehearsals (runs of the window at the row's rate minutes
    before its repeats): seed 23's light-load calibration put the capacity at 15.2 req/s and its "1.5x" row ran at
    22.8, where the live runs refused 0-4 requests of 1,100; on the rehearsal's steps the capacity is above 22.8 (the
    row was below capacity). Seed 24's row (30.5 req/s) refused 285-394; on its rehearsal's steps the capacity is
    below 30.5. The same steps 1.5x slower give a lower capacity. A recorded check resimulated finds its capacity
    on its last capacity probe's fit where it made one."""
    from pathlib import Path

    from cluster.bench.sim_vs_live import _window, capacity_on_steps, resimulate, scaled_truth

    root = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live" / "conv-240-step-noise"

    def capacity(check: dict, fit: dict) -> float:
        cfg = SimLiveConfig(**check["config"])
        serve = ServeConfig.model_validate(check["serve_config"])
        return capacity_on_steps(serve, cfg, fit, _window(cfg, cfg.start_s, cfg.duration_s),
                                 client_path_s=check["calibration"]["client_path_s"],
                                 ingress=check["calibration"]["ingress_delay"])["capacity_rps"]

    below = json.loads((root / "azure-conv-600-seed23.json").read_text())
    above = json.loads((root / "azure-conv-600-seed24.json").read_text())
    assert max(r["rejected"] for r in below["rows"][1]["live"]) <= 4 < 285 <= min(
        r["rejected"] for r in above["rows"][1]["live"])
    assert below["capacity"]["capacity_rps"] < below["rows"][1]["rate_rps"]  # the calibration's: "above"
    fit = below["rows"][1]["rehearsal"]["step_truth"]
    on_probe = capacity(below, fit)
    assert on_probe > below["rows"][1]["rate_rps"]
    assert capacity(below, scaled_truth(fit, 1.5)) < 0.8 * on_probe
    assert capacity(above, above["rows"][1]["rehearsal"]["step_truth"]) < above["rows"][1]["rate_rps"]

    below["calibration"]["capacity_probes"] = {"capacity_before": below["capacity"],
                                               "probes": [{"rate_scale": 1.0, "step_truth": None, "capacity": None},
                                                          {"rate_scale": 1.0, "step_truth": fit, "capacity": None}]}
    again = resimulate(below, arms=False)
    assert again.capacity["from"] == "capacity-probe" and again.capacity["capacity_rps"] == pytest.approx(on_probe)
