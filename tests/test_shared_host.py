"""The serving path's CPU on the engines' cores: the simulator's shared host and its live calibration."""

from __future__ import annotations

import os

import pytest

from cluster.bench.sim_vs_live import (HostCPU, SimLiveConfig, cpu_rates, fit_host_cpu, fit_ingress_delay, host_cpu_s,
                                       sim_config_for)
from cluster.config import ServeConfig
from cluster.sim.config import SimConfig
from cluster.sim.shared_host import IngressDelay, SharedHost
from tests.test_sim_timeline import run


def test_steps_slow_by_the_share_the_serving_path_takes_relative_to_the_calibration_load():
    # 10 ms of CPU per request on 2 cores: at 20 req/s the path takes 10 % of the host, at 60 req/s 30 %.
    host = SharedHost(0.01, cores=2.0, reference_rps=20.0)
    for i in range(20):
        host.arrive(0.5 + 0.01 * i)  # 20 arrivals within the last second: the calibration's load
    assert host.slowdown(0.99) == pytest.approx(1.0)
    for i in range(40):
        host.arrive(0.99 + 0.001 * i)  # 60 within the last second
    assert host.slowdown(1.03) == pytest.approx(0.9 / 0.7)
    assert host.slowdown(5.0) == pytest.approx(0.9)  # nothing arriving: faster than when calibrated
    assert SharedHost(1.0, cores=1.0).share(1e6) == 0.9  # never the whole host
    # A reference load past the ceiling had the ceiling's share then too: no load is slower than it.
    past = SharedHost(0.1, cores=2.0, reference_rps=20.0)
    for i in range(40):
        past.arrive(0.5 + 0.01 * i)
    assert past.slowdown(0.99) == pytest.approx(1.0) and past.slowdown(5.0) == pytest.approx(0.1)
    for bad in (dict(cpu_s_per_request=-1.0), dict(cpu_s_per_request=0.1, cores=0.0),
                dict(cpu_s_per_request=0.1, window_s=0.0), dict(cpu_s_per_request=0.1, max_share=1.0),
                dict(cpu_s_per_request=0.1, background_cores=-0.1)):
        with pytest.raises(ValueError):
            SharedHost(**bad)


def test_the_serving_paths_background_counts_and_past_its_most_share_more_demand_waits_instead_of_slowing_steps():
    # 10 ms a request over 0.4 cores of background on 2 cores, at most half the host (the measured saturation).
    host = SharedHost(0.01, cores=2.0, reference_rps=20.0, background_cores=0.4, max_share=0.5)
    for i in range(20):
        host.arrive(0.5 + 0.01 * i)  # the reference load: (0.4 + 0.2) / 2 = 30 % of the host
    assert host.slowdown(0.99) == pytest.approx(1.0)
    for i in range(20):
        host.arrive(0.99 + 0.001 * i)  # 40 req/s: (0.4 + 0.4) / 2 = 40 %
    assert host.slowdown(1.03) == pytest.approx(0.7 / 0.6)
    for i in range(200):
        host.arrive(1.03 + 0.001 * i)  # 240 req/s would ask for 1.4 of the 2 cores: it gets half of them
    assert host.slowdown(1.3) == pytest.approx(0.7 / 0.5)
    assert host.slowdown(9.0) == pytest.approx(0.7 / 0.8)  # idle: only the background
    # The same demand without the ceiling at half would have slowed every step by (1 - 0.3) / (1 - 0.9).
    uncapped = SharedHost(0.01, cores=2.0, reference_rps=20.0, background_cores=0.4)
    for i in range(240):
        uncapped.arrive(1.03 + 0.001 * i)
    assert uncapped.slowdown(1.3) == pytest.approx(0.7 / 0.1)


def test_a_stream_on_a_shared_host_takes_longer_than_on_a_host_of_its_own_unless_calibrated_there():
    rows = [(0.05 * i, 10, 2) for i in range(60)]  # 20 req/s of one-step prompts, 0.02 s each
    own = run(rows, scheduler="fairbatching")
    # 20 ms of CPU per request on 2 cores at 20 req/s: the serving path takes 20 % of the host.
    shared = run(rows, scheduler="fairbatching", host_cpu_s_per_request=0.02, host_cores=2.0)
    assert shared.report["ttft_p50"] == pytest.approx(own.report["ttft_p50"] / 0.8)
    # A profile measured at that load already holds its slowdown.
    there = run(rows, scheduler="fairbatching", host_cpu_s_per_request=0.02, host_cores=2.0, host_reference_rps=20.0)
    assert there.report["ttft_p50"] == pytest.approx(own.report["ttft_p50"])
    with pytest.raises(ValueError, match="host_cpu_s_per_request"):
        SimConfig(host_cpu_s_per_request=-0.1)


def test_the_cost_per_request_is_the_slope_of_the_serving_paths_cores_against_the_request_rate():
    low = {"serving_path": 0.30, "requests_per_s": 2.0, "served_per_s": 2.0, "refused_per_s": 0.0}  # background 0.28
    high = {"serving_path": 0.48, "requests_per_s": 20.0, "served_per_s": 18.0, "refused_per_s": 2.0}
    host = fit_host_cpu([low, high], cores=2.0, reference_rps=20.0)
    assert host == HostCPU(pytest.approx(0.01), 2.0, 20.0, None, 0.0, pytest.approx(0.28))
    assert fit_host_cpu([{**low, "serving_path": 0.6}, high], cores=2.0, reference_rps=20.0).cpu_s_per_request == 0.0
    with pytest.raises(ValueError, match="do not differ"):
        fit_host_cpu([high, high], cores=2.0, reference_rps=20.0)
    with pytest.raises(ValueError, match="two loads"):
        fit_host_cpu([high], cores=2.0, reference_rps=20.0)
    # A third load, mostly refused: 12 ms per served request, 3 ms per refusal, background 0.2 cores.
    loads = [{"serving_path": 0.2 + 0.012 * s + 0.003 * r, "requests_per_s": s + r, "served_per_s": s,
              "refused_per_s": r} for s, r in ((2, 0), (18, 2), (25, 35))]
    three = fit_host_cpu(loads, cores=2.0, reference_rps=20.0, reference_refused_share=0.1)
    assert (three.cpu_s_per_request, three.cpu_s_per_refusal, three.background_cores) == (
        pytest.approx(0.012), pytest.approx(0.003), pytest.approx(0.2))
    # Measured on the 2-core machine (seed 0): the host saturated in the overload probe, and the free fit
    # gave a refusal a negative cost; it costs 0 then, and the served request's cost is refitted.
    measured = [{"serving_path": 0.342, "requests_per_s": 2.03, "served_per_s": 2.03, "refused_per_s": 0.0},
                {"serving_path": 0.606, "requests_per_s": 19.78, "served_per_s": 17.82, "refused_per_s": 1.97},
                {"serving_path": 0.825, "requests_per_s": 54.78, "served_per_s": 33.96, "refused_per_s": 20.82}]
    clamped = fit_host_cpu(measured, cores=2.0, reference_rps=20.0)
    assert clamped.cpu_s_per_refusal == 0.0 and 0.014 < clamped.cpu_s_per_request < 0.016
    sim = sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0, host=three)
    assert (sim.host_cpu_s_per_request, sim.host_cpu_s_per_refusal, sim.host_cores, sim.host_reference_rps,
            sim.host_reference_refused_share, sim.host_background_cores, sim.host_max_share) == (
        pytest.approx(0.012), pytest.approx(0.003), 2.0, 20.0, 0.1, pytest.approx(0.2), 0.5)
    assert sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0).host_cpu_s_per_request == 0


def test_a_refusal_costs_the_host_what_it_was_measured_to_cost():
    host = SharedHost(0.02, cpu_s_per_refusal=0.005, cores=1.0, reference_rps=10.0, reference_refused_share=0.5)
    for i in range(10):  # 10 arrivals in the last second, half refused: the reference load
        charge = host.arrive(0.5 + 0.01 * i)
        if i % 2 == 1:
            host.refuse(charge)
    assert host.cpu_s_per_s(0.99) == pytest.approx(0.125) and host.slowdown(0.99) == pytest.approx(1.0)
    for i in range(10):
        host.arrive(0.6 + 0.01 * i)  # ten more, all served
    assert host.slowdown(0.99) == pytest.approx(0.875 / 0.675)
    assert host.slowdown(3.0) == pytest.approx(0.875)  # the window emptied
    host.refuse(host.arrive(3.5))  # charged as served, then refused at once
    assert host.cpu_s_per_s(3.5) == pytest.approx(0.005)


def test_the_hosts_cpu_is_read_per_process_and_split_into_engines_and_serving_path():
    before = host_cpu_s()
    assert os.getpid() in before and before[os.getpid()][0] is False  # this process is not an engine
    sum(i * i for i in range(300_000))  # some CPU in this process
    after = host_cpu_s()
    rates = cpu_rates(before, after, wall_s=1.0)
    assert rates["serving_path"] > 0 and rates["engines"] >= 0
    # Engines by their processes' names; a process born between the samples counts whole.
    assert cpu_rates({1: (True, 2.0), 2: (False, 1.0)}, {1: (True, 3.0), 2: (False, 1.5), 3: (False, 0.5)},
                     wall_s=2.0) == {"engines": 0.5, "serving_path": 0.5}


def test_cheaper_refusals_leave_the_engines_more_of_the_host_under_overload():
    rows = [(0.01 * i, 100, 4) for i in range(300)]  # 100 req/s of 0.11 s prompts: most are refused
    knobs = dict(scheduler="fairbatching", balancer="pab", ttft_slo_s=1.0, tpot_slo_s=0.1,
                 host_cpu_s_per_request=0.01, host_cores=2.0)
    as_served = run(rows, **knobs).report
    cheap = run(rows, host_cpu_s_per_refusal=0.0, **knobs).report
    assert as_served["rejected"] > 200 and cheap["rejected"] > 200
    assert cheap["ttft_p50"] < as_served["ttft_p50"] and cheap["rejected"] < as_served["rejected"]


def test_bad_shared_host_and_queue_options_are_refused_by_their_flags():
    from typer.testing import CliRunner

    from cluster.cli.main import app

    base = ["sim", "run", "--trace", "sharegpt-poisson", "--num-requests", "20", "--nodes", "1"]
    for args, words in ((["--balancer-queue-order", "lifo"], "--balancer-queue-order must be one of edf"),
                        (["--balancer-queue-s", "inf"], "--balancer-queue-s must be a finite number"),
                        (["--host-cores", "inf"], "--host-cores must be a finite number > 0"),
                        (["--host-reference-rps", "inf"], "--host-reference-rps must be a finite number"),
                        (["--host-cpu-s-per-refusal", "-1"], "--host-cpu-s-per-refusal must be a finite number"),
                        (["--host-reference-refused-share", "1.5"], "--host-reference-refused-share must be in"),
                        (["--host-background-cores", "-1"], "--host-background-cores must be a finite number"),
                        (["--host-max-share", "1"], "--host-max-share must be in (0, 1)"),
                        (["--ingress-delay-s", "-1"], "--ingress-delay-s must be a finite number >= 0"),
                        (["--ingress-delay-s-per-rps", "inf"], "--ingress-delay-s-per-rps must be a finite number")):
        out = CliRunner().invoke(app, base + args, env={"COLUMNS": "300"})
        assert out.exit_code == 2, (args, out.output)
        assert words in " ".join(out.output.split()), (args, out.output)
        assert "pydantic" not in out.output and "ArgsKwargs" not in out.output


def test_a_check_recorded_before_the_background_was_kept_gets_it_from_its_calibration_loads():
    """Resimulating a check recorded without ``background_cores``: the intercept of its two calibration
    loads at the recorded cost (Nov 30, seed 1: 0.36 cores at 2 req/s, 0.61 at 19.8, 14.1 ms a request)."""
    import json
    from pathlib import Path

    from cluster.bench.sim_vs_live import _recorded_background_cores

    path = Path(__file__).resolve().parent.parent / "bench" / "results" / "sim-vs-live" / "azure-code-600-seed1.json"
    cal = json.loads(path.read_text())["calibration"]
    host = HostCPU(**cal["shared_host"])
    loads = [cal["idle_probe"]["live"]["host_cores_used"], cal["live"]["host_cores_used"]]
    expected = sum(x["serving_path"] - host.cpu_s_per_request * x["requests_per_s"] for x in loads) / 2
    assert 0.3 < expected < 0.4
    assert _recorded_background_cores(cal, host) == pytest.approx(expected)
    refit = fit_host_cpu(loads, cores=host.cores, reference_rps=host.reference_rps)
    assert refit.background_cores == pytest.approx(expected, rel=1e-6)  # what the check keeps now


def test_refusing_an_earlier_arrival_recharges_that_one_not_the_last():
    host = SharedHost(0.02, cpu_s_per_refusal=0.005, cores=1.0)
    first = host.arrive(0.1)
    host.arrive(0.2)  # a later arrival, still served
    host.refuse(first)  # the first one's routing came after the second's arrival (its time in front of the engines)
    assert host.cpu_s_per_s(0.5) == pytest.approx(0.025)
    host.refuse(first)  # twice the same refusal changes nothing
    assert host.cpu_s_per_s(0.5) == pytest.approx(0.025)
    late = host.arrive(0.6)
    assert host.cpu_s_per_s(1.25) == pytest.approx(0.02)  # the first two left the window
    host.refuse(first)  # out of the window: it no longer counts
    assert host.cpu_s_per_s(1.25) == pytest.approx(0.02)
    host.refuse(late)
    assert host.cpu_s_per_s(1.25) == pytest.approx(0.005)


def test_the_time_in_front_of_the_engines_grows_with_the_arrival_rate_over_the_last_second():
    ingress = IngressDelay(0.01, 0.005)
    assert ingress.delay_s(0.0) == pytest.approx(0.015)  # alone: base and itself
    for i in range(1, 10):
        last = ingress.delay_s(0.1 * i)
    assert last == pytest.approx(0.01 + 0.005 * 10)  # ten arrivals within the last second
    assert ingress.delay_s(5.0) == pytest.approx(0.015)  # the window emptied
    for bad in (dict(base_s=-0.1, s_per_rps=0.0), dict(base_s=0.0, s_per_rps=float("nan")),
                dict(base_s=0.0, s_per_rps=0.0, window_s=0.0)):
        with pytest.raises(ValueError):
            IngressDelay(**bad)


def test_the_ingress_line_goes_through_the_measured_loads_and_never_below_zero():
    # The 2-core machine on 2026-12-02: 31 ms of front delay at 2 req/s, 129 ms at 11 req/s (here 131).
    base, slope = IngressDelay.fit([(2.0, 0.031), (11.0, 0.131)])
    assert slope == pytest.approx(0.1 / 9) and base == pytest.approx(0.031 - 2 * 0.1 / 9)
    assert IngressDelay.fit([(2.0, 0.02), (11.0, 0.01)]) == (pytest.approx(0.015), 0.0)  # falling: flat at the mean
    base, slope = IngressDelay.fit([(2.0, 0.001), (11.0, 0.1)])  # the line would cross below zero: through 0
    assert base == 0.0 and slope == pytest.approx((2 * 0.001 + 11 * 0.1) / (4 + 121))
    for bad in ([(2.0, 0.01)], [(2.0, 0.01), (2.0, 0.02)]):
        with pytest.raises(ValueError):
            IngressDelay.fit(bad)
    # The check reads the engines' median front delay of each replay; a replay without one is left out.
    reports = [{"offered_rps": 2.0, "engines": {"front_delay_s": 0.031}},
               {"offered_rps": 11.0, "engines": {"front_delay_s": 0.131}}]
    fitted = fit_ingress_delay(reports)
    assert fitted == {"base_s": pytest.approx(0.031 - 2 * 0.1 / 9), "s_per_rps": pytest.approx(0.1 / 9), "stalls": []}
    assert fit_ingress_delay(reports[:1] + [{"offered_rps": 11.0, "engines": {"front_delay_s": None}}]) is None
    sim = sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0, ingress=fitted)
    assert (sim.ingress_delay_s, sim.ingress_delay_s_per_rps) == (fitted["base_s"], fitted["s_per_rps"])
    plain = sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0)
    assert plain.ingress_delay() is None


def test_a_request_reaches_its_node_after_the_ingress_delay_which_pab_takes_off_its_horizon():
    rows = [(0.0, 100, 3)]
    fast = run(rows, scheduler="fairbatching").requests[0]
    slow = run(rows, scheduler="fairbatching", ingress_delay_s=0.2).requests[0]
    assert slow.first_token_s == pytest.approx(fast.first_token_s + 0.2)  # the TTFT counts it from the arrival
    # Behind PAB with the closed loop's front delay, a node whose requests reach it 0.6 s late budgets for
    # the rest of the 1 s TTFT only: under the same load it refuses more.
    burst = [(0.02 * i, 400, 4) for i in range(200)]
    knobs = dict(scheduler="fairbatching", balancer="pab", ttft_slo_s=1.0, tpot_slo_s=0.1, feedback=True)
    on_time = run(burst, **knobs).report
    late = run(burst, ingress_delay_s=0.6, **knobs).report
    assert late["rejected"] > on_time["rejected"]
    assert late["ttft_p50"] > on_time["ttft_p50"] + 0.5


def test_a_stall_holds_every_request_arriving_in_it_until_its_end_and_its_rate_follows_the_load():
    # One stall point at 10 req/s: 1000 stalls a second (one starts at once), 0.3 s long.
    ingress = IngressDelay(0.01, 0.0, stalls=[(10.0, 1000.0, 0.3)], seed=1)
    assert ingress.delay_s(0.0) == pytest.approx(0.01)  # the first arrival: no time has passed for a stall
    held = ingress.delay_s(0.01)  # a stall started within the last 10 ms: held until it ends
    assert 0.01 + 0.29 <= held <= 0.01 + 0.3
    ends = 0.01 + held - 0.01
    assert ingress.delay_s(0.02) == pytest.approx(0.01 + ends - 0.02)  # released together with the first
    quiet = IngressDelay(0.01, 0.0, stalls=[(10.0, 0.0, 0.3)])
    assert all(quiet.delay_s(0.01 * i) == pytest.approx(0.01) for i in range(50))  # no stalls: base only
    # Interpolated in the arrival rate, flat past the measured loads.
    two = IngressDelay(0.0, 0.0, stalls=[(20.0, 1.0, 0.5), (2.0, 0.1, 0.1)])
    assert two._stall_at(1.0) == (0.1, 0.1) and two._stall_at(40.0) == (1.0, 0.5)
    assert two._stall_at(11.0) == (pytest.approx(0.55), pytest.approx(0.3))
    for bad in ([(0.0, 1.0, 0.1)], [(5.0, -1.0, 0.1)], [(5.0, 1.0, float("inf"))], [(5.0, 1.0)]):
        with pytest.raises(ValueError):
            IngressDelay(0.0, 0.0, stalls=bad)


def test_stalls_are_fitted_from_a_front_delay_log_as_runs_of_held_requests():
    # 100 requests 0.1 s apart, 10 ms each, but for two runs: 3 held from 2.0 s (the first 0.31 s, then
    # released with it) and 1 held at 7.0 s (0.21 s).
    arrivals = [0.1 * i for i in range(100)]
    delays = [0.01] * 100
    delays[20:23] = [0.31, 0.21, 0.11]
    delays[70] = 0.21
    fit = IngressDelay.fit_stalls(list(reversed(arrivals)), list(reversed(delays)))  # any order
    assert fit["rate_rps"] == pytest.approx(99 / 9.9) and fit["base_s"] == pytest.approx(0.01)
    assert fit["stalls_per_s"] == pytest.approx(2 / 9.9) and fit["stall_s"] == pytest.approx(0.25)
    assert fit["held_share"] == pytest.approx(0.04)
    calm = IngressDelay.fit_stalls(arrivals, [0.01 + 0.001 * (i % 3) for i in range(100)])
    assert calm["stalls_per_s"] == 0.0 and calm["stall_s"] == 0.0
    for bad in ((arrivals[:5], delays[:5]), ([0.0] * 30, [0.01] * 30), (arrivals, delays[:-1])):
        with pytest.raises(ValueError):
            IngressDelay.fit_stalls(*bad)
    # The check fits the base line through each load's base delay, and keeps each load's stalls.
    reports = [{"offered_rps": 2.0, "engines": {"front_delay_s": 0.05},
                "front_delays": {"stalls": {"base_s": 0.012, "stalls_per_s": 0.03, "stall_s": 0.06}}},
               {"offered_rps": 20.0, "engines": {"front_delay_s": 0.3},
                "front_delays": {"stalls": {"base_s": 0.030, "stalls_per_s": 0.6, "stall_s": 0.5}}}]
    fitted = fit_ingress_delay(reports)
    assert fitted["base_s"] == pytest.approx(0.01) and fitted["s_per_rps"] == pytest.approx(0.001)
    assert fitted["stalls"] == [[2.0, 0.03, 0.06], [20.0, 0.6, 0.5]]
    sim = sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0, ingress=fitted)
    assert sim.ingress_stalls == "2:0.03:0.06,20:0.6:0.5"
    assert sim.ingress_delay().stalls == [(2.0, 0.03, 0.06), (20.0, 0.6, 0.5)]
    with pytest.raises(ValueError, match="ingress_stalls"):
        SimConfig(ingress_stalls="2:0.03")
    with pytest.raises(ValueError, match="ingress_stalls"):
        SimConfig(ingress_stalls="2:-1:0.5")


def test_path_stalls_raise_the_nodes_front_delay_so_pab_admits_less_while_most_requests_pass_in_base_time():
    # Behind PAB with the closed loop: stalls of 0.5 s, two a second, hold a share of the requests; the
    # engines' front delay (a P90 over 3 s) rises with them and takes the horizon down, so more are refused
    # than with the base delay alone, while the median request still passes in base time.
    burst = [(0.02 * i, 400, 4) for i in range(300)]
    knobs = dict(scheduler="fairbatching", balancer="pab", ttft_slo_s=1.0, tpot_slo_s=0.1, feedback=True,
                 ingress_delay_s=0.01)
    plain = run(burst, **knobs).report
    stalled = run(burst, ingress_stalls="50:2:0.5", **knobs)
    assert stalled.report["rejected"] > plain["rejected"]
    waits = sorted(r.first_token_s - r.arrival_s for r in stalled.requests if r.first_token_s is not None)
    assert waits[0] < 0.01 + 0.41 + 0.05  # some pass in base time plus their prefill (a + b * 400)
