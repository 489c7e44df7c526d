"""Bad input gets a ValueError naming the field, never a wrong plan."""

import math

import pytest

from node.core.step_time import StepTimeModel

from node.fit.step_time_fit import StepSample
from node.core.pab import estimate_pab
from node.core.plan import Limits
from node.core.policies import make_policy
from node.core.request import SLO, RequestState
from node.core.baselines import SarathiConfig, TokenBudgetConfig, VllmDefaultConfig
from node.core.validation import check_at_least, check_finite, check_int, check_positive

from tests.conftest import REF_MODEL


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(prompt_tokens=-5), "prompt_tokens"),
        (dict(prompt_tokens=0), "prompt_tokens"),
        (dict(computed_tokens=-1), "computed_tokens"),
        (dict(output_tokens=-2), "output_tokens"),
        (dict(arrival_s=math.nan), "arrival_s"),
        (dict(arrival_s=math.inf), "arrival_s"),
        (dict(computed_tokens=200), "computed_tokens"),
        (dict(first_token_s=math.nan), "first_token_s"),
        (dict(max_output_tokens=0), "max_output_tokens"),
        (dict(prompt_tokens=10.5), "prompt_tokens"),
    ],
)
def test_bad_request_fields_are_named(kwargs, field):
    base = dict(request_id="r", arrival_s=0.0, prompt_tokens=100, slo=SLO(1.0, 0.05))
    with pytest.raises(ValueError, match=field):
        RequestState(**{**base, **kwargs})


@pytest.mark.parametrize("ttft, tpot, field", [(0.0, 0.05, "ttft_s"), (1.0, 0.0, "tpot_s"), (math.nan, 0.05, "ttft_s"), (1.0, -1.0, "tpot_s")])
def test_zero_or_nan_slos_are_rejected(ttft, tpot, field):
    with pytest.raises(ValueError, match=field):
        SLO(ttft, tpot)


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(max_num_seqs=0), "max_num_seqs"), (dict(max_num_batched_tokens=-1), "max_num_batched_tokens"),
     (dict(kv_blocks_free=-1), "kv_blocks_free"), (dict(block_size=0), "block_size")],
)
def test_bad_limits_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Limits(**kwargs)


@pytest.mark.parametrize("name", ["fairbatching", "vllm", "sarathi"])
def test_nan_clock_is_rejected_by_every_policy(name):
    with pytest.raises(ValueError, match="now_s"):
        make_policy(name, REF_MODEL).plan([], Limits(), math.nan)


def test_unknown_policy_and_knob_are_reported_with_the_choices():
    with pytest.raises(ValueError, match="fairbatching, vllm, vllm-priority, sarathi"):
        make_policy("fifo", REF_MODEL)
    with pytest.raises(ValueError, match="min_chunk_tokens"):
        make_policy("fairbatching", REF_MODEL, min_chunk=3)
    with pytest.raises(ValueError, match="min_chunk_tokens"):
        make_policy("fairbatching", REF_MODEL, min_chunk_tokens=0)
    with pytest.raises(ValueError):
        make_policy("fairbatching", REF_MODEL, anchor="departure")


def test_bad_model_and_samples_are_named():
    with pytest.raises(ValueError, match="b_s_per_token"):
        StepTimeModel(0.001, 0.0, 0.0)
    with pytest.raises(ValueError, match="safety_factor"):
        StepTimeModel(0.001, 1e-5, 0.0, safety_factor=0.5)
    with pytest.raises(ValueError, match="duration_s"):
        StepSample(10, 0, 10, math.nan)


def test_bad_pab_inputs_are_named():
    with pytest.raises(ValueError, match="horizon_s"):
        estimate_pab([], REF_MODEL, 0.0, horizon_s=0.0, kv_free_tokens=10, default_tpot_s=0.05)
    with pytest.raises(ValueError, match="kv_free_tokens"):
        estimate_pab([], REF_MODEL, 0.0, horizon_s=1.0, kv_free_tokens=-1, default_tpot_s=0.05)


def test_both_baselines_take_one_token_budget_knob():
    assert VllmDefaultConfig is SarathiConfig is TokenBudgetConfig
    assert TokenBudgetConfig().token_budget is None and TokenBudgetConfig(512).token_budget == 512
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="token_budget"):
            TokenBudgetConfig(bad)
        with pytest.raises(ValueError, match="token_budget"):
            make_policy("sarathi", REF_MODEL, token_budget=bad)


@pytest.mark.parametrize(
    "check, value",
    [(check_finite, math.nan), (check_finite, math.inf), (check_finite, "1.0"), (check_finite, True),
     (check_positive, 0.0), (check_positive, -1), (check_positive, math.nan),
     (lambda n, v: check_at_least(n, v, 1.0), 0.5), (lambda n, v: check_at_least(n, v, 0.0), -math.inf),
     (lambda n, v: check_int(n, v, minimum=0), -1), (lambda n, v: check_int(n, v, minimum=0), 2.0),
     (lambda n, v: check_int(n, v, minimum=1), False)],
)
def test_each_check_names_the_field(check, value):
    with pytest.raises(ValueError, match="the_field"):
        check("the_field", value)


def test_checks_pass_good_values():
    check_finite("x", -2.5)
    check_positive("x", 1)
    check_at_least("x", 1.0, 1.0)
    check_int("x", 0, minimum=0)


def test_an_engine_reads_each_slo_target_alone_and_the_ingress_refuses_a_bad_one():
    from node.core.extra_args import SLOValueError, slo_from_extra_args, slo_or_default
    from node.core.request import SLO

    default = SLO(2.0, 0.25)
    assert slo_or_default({"ttft_slo_s": 0.5, "tpot_slo_s": -1}, default) == (SLO(0.5, 0.25), ["tpot_slo_s"])
    assert slo_or_default({"ttft_slo_s": "0.5"}, default) == (SLO(0.5, 0.25), [])  # a numeric string
    assert slo_or_default(None, default) == (default, [])
    assert slo_from_extra_args({"tpot_slo_s": 0.05}, default) == SLO(2.0, 0.05)
    for bad in ({"ttft_slo_s": "0.5"}, {"tpot_slo_s": float("nan")}, {"ttft_slo_s": True}, {"ttft_slo_s": 0}):
        with pytest.raises(SLOValueError) as err:
            slo_from_extra_args(bad, default)
        assert err.value.key in bad
