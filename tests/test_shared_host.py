"""The serving path's CPU on the engines' cores: the simulator's shared host and its live calibration."""

from __future__ import annotations

import os

import pytest

from cluster.bench.sim_vs_live import HostCPU, SimLiveConfig, cpu_rates, fit_host_cpu, host_cpu_s, sim_config_for
from cluster.config import ServeConfig
from cluster.sim.config import SimConfig
from cluster.sim.shared_host import SharedHost
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
    for bad in (dict(cpu_s_per_request=-1.0), dict(cpu_s_per_request=0.1, cores=0.0),
                dict(cpu_s_per_request=0.1, window_s=0.0), dict(cpu_s_per_request=0.1, max_share=1.0)):
        with pytest.raises(ValueError):
            SharedHost(**bad)


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
    low = {"serving_path": 0.30, "engines": 0.2, "requests_per_s": 2.0}  # Ray's daemons: a constant background
    high = {"serving_path": 0.48, "engines": 1.5, "requests_per_s": 20.0}
    host = fit_host_cpu(low, high, cores=2.0, reference_rps=20.0)
    assert host == HostCPU(pytest.approx(0.01), 2.0, 20.0)
    assert fit_host_cpu({**low, "serving_path": 0.6}, high, cores=2.0, reference_rps=20.0).cpu_s_per_request == 0.0
    with pytest.raises(ValueError, match="higher"):
        fit_host_cpu(high, low, cores=2.0, reference_rps=20.0)
    sim = sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0, host=host)
    assert (sim.host_cpu_s_per_request, sim.host_cores, sim.host_reference_rps) == (pytest.approx(0.01), 2.0, 20.0)
    assert sim_config_for(ServeConfig(), SimLiveConfig(), "cpu-tiny-llama", start_s=0.0).host_cpu_s_per_request == 0


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
