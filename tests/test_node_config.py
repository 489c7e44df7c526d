"""Node configuration that travels to vLLM's engine core, and the profile fit's robustness (no engine)."""

from __future__ import annotations

import random

import pytest

from node.fit.step_time_fit import StepSample
from node.vllm.node_config import ENV_VAR, NodeConfig
from node.fit.step_time_fit import robust_fit


def test_the_config_round_trips_through_the_environment():
    cfg = NodeConfig(policy="sarathi", knobs={"token_budget": 256}, ttft_slo_s=0.5, tpot_slo_s=0.02,
                     apply_plan=False, step_log="/tmp/x.jsonl")
    assert NodeConfig.from_env(cfg.to_env()) == cfg
    assert NodeConfig.from_env({}) == NodeConfig()
    assert NodeConfig.from_env(NodeConfig(step_model="quadratic").to_env()).step_model == "quadratic"


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"polcy": "vllm"}', "unknown key"),
    ('{"tpot_slo_s": 0}', "tpot_slo_s"),
    ('{"step_model": "cubic"}', "step_model must be one of quadratic, linear"),
])
def test_a_bad_config_names_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message):
        NodeConfig.from_env({ENV_VAR: raw})


def test_the_profile_fit_sees_through_steps_slowed_by_other_work():
    rng = random.Random(0)
    a, b, c = 0.003, 2e-5, 1e-7
    samples = []
    for _ in range(3):
        for pre in (0, 16, 64, 256, 512):
            for dec in (0, 1, 4, 16):
                if pre + dec == 0:
                    continue
                ctx = pre + dec * 300
                t = a + b * (pre + dec) + c * ctx
                # A shared machine: a third of the steps stall for 20-300 ms.
                stall = rng.uniform(0.02, 0.3) if rng.random() < 0.33 else 0.0
                samples.append(StepSample(pre, dec, ctx, t * rng.uniform(1.0, 1.03) + stall))
    model, report, report_all, dropped = robust_fit(samples)
    assert model.a_s == pytest.approx(a, rel=0.2)
    assert model.b_s_per_token == pytest.approx(b, rel=0.2)
    assert report.overall.mape < 0.05 < report_all.overall.mape
    assert dropped > 0
