import json
import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.core.step_time import StepTimeModel

from node.fit.step_time_fit import BatchKind, OnlineRefit, StepSample, evaluate, fit, lower_envelope, trimmed_fit
from node.fit.profile import Profile, ProfileError, load_profile, parse_profile, save_profile

from tests.conftest import models

TRUE = StepTimeModel(a_s=0.006, b_s_per_token=18e-6, c_s_per_context_token=0.08e-6)


def synthetic_steps(model: StepTimeModel, n: int, seed: int, noise: float = 0.02) -> list[StepSample]:
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        kind = rng.choice(["decode", "prefill", "mixed"])
        decodes = 0 if kind == "prefill" else rng.randint(1, 256)
        prefill = 0 if kind == "decode" else rng.randint(16, 4096)
        context = decodes * rng.randint(100, 4000) + prefill + rng.randint(0, 2000) * (prefill > 0)
        t = model.predict_s(prefill + decodes, context) * (1 + rng.gauss(0, noise))
        samples.append(StepSample(prefill, decodes, context, max(t, 1e-6)))
    return samples


def test_fit_recovers_known_coefficients_and_reports_error_per_batch_kind():
    model, report = fit(synthetic_steps(TRUE, 600, seed=1))
    assert model.a_s == pytest.approx(TRUE.a_s, rel=0.1)
    assert model.b_s_per_token == pytest.approx(TRUE.b_s_per_token, rel=0.05)
    assert model.c_s_per_context_token == pytest.approx(TRUE.c_s_per_context_token, rel=0.2)
    assert set(report.by_kind) == {BatchKind.DECODE_ONLY, BatchKind.PREFILL_ONLY, BatchKind.MIXED}
    assert 0.005 < report.overall.mape < 0.05  # about the 2 % noise, not zero, not large
    assert report.overall.p99_abs_error_s > 0
    assert sum(s.samples for s in report.by_kind.values()) == 600


def test_fit_never_returns_negative_coefficients():
    # Steps whose time falls with context would push c below zero: it is pinned at zero.
    samples = [StepSample(n, 0, 10_000 - n, 0.005 + 2e-5 * n) for n in range(10, 2000, 37)]
    model, _ = fit(samples)
    assert model.c_s_per_context_token >= 0 and model.a_s >= 0 and model.b_s_per_token > 0


def test_fit_needs_three_samples():
    with pytest.raises(ValueError, match="at least 3"):
        fit(synthetic_steps(TRUE, 2, seed=1))


def test_error_report_matches_hand_computation():
    model = StepTimeModel(0.01, 1e-5, 0.0)
    samples = [StepSample(0, 100, 0, 0.011), StepSample(1000, 0, 1000, 0.025)]  # predictions 0.011 and 0.020
    report = evaluate(model, samples)
    assert report.by_kind[BatchKind.DECODE_ONLY].mape == pytest.approx(0.0)
    assert report.by_kind[BatchKind.PREFILL_ONLY].mape == pytest.approx(0.2)
    assert report.overall.mape == pytest.approx(0.1)


@given(model=models, within=st.floats(0.0, 3.0), chunk=st.integers(1, 2048), limit=st.integers(0, 3000))
def test_largest_prompt_alone_is_the_last_prompt_that_fits(model, within, chunk, limit):
    """The slow start's first admission: the longest prompt an idle node prefills alone in time."""
    longest = model.largest_prompt_alone(within, chunk, limit)
    fits = [n for n in range(1, limit + 1) if model.prefill_alone_s(n, 0, chunk) <= within]
    assert longest == (max(fits) if fits else 0)


@given(
    model=models,
    budget=st.floats(0.0, 0.5),
    batch_new=st.integers(0, 4000),
    batch_ctx=st.integers(0, 200_000),
    computed=st.integers(0, 8000),
)
def test_largest_chunk_agrees_with_brute_force(model, budget, batch_new, batch_ctx, computed):
    q = model.largest_chunk(budget, batch_new, batch_ctx, computed)

    def fits(k: int) -> bool:
        return model.predict_s(batch_new + k, batch_ctx + computed + k) <= budget

    assert q >= 0
    if q > 0:
        assert fits(q)
    # the next chunk up must not fit (within float tolerance at the boundary)
    over = model.predict_s(batch_new + q + 1, batch_ctx + computed + q + 1)
    assert over > budget * (1 - 1e-9) or (q == 0 and not fits(1))


def test_online_refit_follows_a_changed_deployment():
    refit = OnlineRefit(TRUE, window=200, min_samples=50, refit_every=50)
    slower = StepTimeModel(0.010, 30e-6, 0.1e-6)
    for s in synthetic_steps(slower, 400, seed=3, noise=0.01):
        refit.observe(s)
    assert refit.refits >= 3
    assert refit.step_model.b_s_per_token == pytest.approx(30e-6, rel=0.05)
    assert refit.report is not None and refit.report.overall.mape < 0.03
    assert len(refit.samples) == 200  # the window keeps only recent steps


def test_online_refit_keeps_prior_until_enough_samples():
    refit = OnlineRefit(TRUE, min_samples=32, refit_every=8)
    for s in synthetic_steps(StepTimeModel(0.1, 1e-3, 0.0), 20, seed=4):
        refit.observe(s)
    assert refit.step_model == TRUE and refit.refits == 0


def test_profile_round_trip_and_fields(tmp_path):
    model, report = fit(synthetic_steps(TRUE, 100, seed=5))
    profile = Profile.from_fit(model, report, hardware="cpu", model_name="tiny", method="unit test", kv_cache_tokens=1000)
    path = save_profile(profile, tmp_path / "p.json")
    data = json.loads(path.read_text())
    for key in ("version", "a_s", "b_s_per_token", "c_s_per_context_token", "safety_factor", "mape",
                "p99_abs_error_s", "hardware", "model", "method"):
        assert key in data
    loaded = load_profile(path)
    assert loaded.step_model == model
    assert loaded.kv_cache_tokens == 1000
    assert loaded.extra["fit_report"]["overall"]["samples"] == 100


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("a_s"), "a_s"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(b_s_per_token="fast"), "b_s_per_token"),
        (lambda d: d.update(b_s_per_token=-1.0), "b_s_per_token"),
        (lambda d: d.update(hardware=None), "hardware"),
        (lambda d: d.update(kv_cache_tokens=-5), "kv_cache_tokens"),
        (lambda d: d.update(safety_factor=math.inf), "safety_factor"),
    ],
)
def test_malformed_profiles_fail_with_the_key_named(mutate, message):
    data = Profile(0.005, 2e-5, 0.0, 1.0, 0.0, 0.0, "hw", "m", "test").to_dict()
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        parse_profile(data, "x.json")


def test_profile_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="no profile file"):
        load_profile("no-such-profile")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ProfileError, match="JSON object"):
        load_profile(tmp_path / "list.json")


def test_online_refit_sees_through_steps_slowed_by_other_work():
    # A third of the steps ran beside another job and took 2-10x longer.
    rng = random.Random(9)
    steps = []
    for s in synthetic_steps(TRUE, 600, seed=8, noise=0.01):
        if rng.random() < 0.33:
            s = StepSample(s.prefill_tokens, s.decode_tokens, s.context_tokens, s.duration_s * rng.uniform(2, 10))
        steps.append(s)
    robust = OnlineRefit(TRUE, window=600, min_samples=100, refit_every=600)
    plain = OnlineRefit(TRUE, window=600, min_samples=100, refit_every=600, robust=False)
    for s in steps:
        robust.observe(s)
        plain.observe(s)
    assert robust.refits == plain.refits == 1
    assert robust.step_model.b_s_per_token == pytest.approx(TRUE.b_s_per_token, rel=0.15)
    assert robust.step_model.a_s < 2 * TRUE.a_s
    assert plain.step_model.a_s > 2 * TRUE.a_s or plain.step_model.b_s_per_token > 1.5 * TRUE.b_s_per_token


def _skewed_repeats(model: StepTimeModel, repeats: int, seed: int) -> list[StepSample]:
    """Each of a fixed set of batch shapes run ``repeats`` times; step times skewed up like a busy host's."""
    rng = random.Random(seed)
    shapes = [(p, d, d * 300 + p) for p in (0, 64, 256, 1024) for d in (1, 8, 32)]
    return [
        StepSample(p, d, c, model.predict_s(p + d, c) * (1 + rng.expovariate(1.0)))
        for p, d, c in shapes
        for _ in range(repeats)
    ]


def test_trimmed_fit_does_not_depend_on_how_often_shapes_were_seen():
    # Two identical nodes, one with 10x the traffic: their fits must agree on average, or PAB
    # placement would favour whichever node happened to be busier. The lower envelope does not:
    # the fastest of 30 repeats is faster than the fastest of 3. Averaged over 20 draws.
    def mean_b(fitter, repeats, seeds):
        return statistics.mean(fitter(_skewed_repeats(TRUE, repeats, s)).b_s_per_token for s in seeds)

    trimmed = lambda x: trimmed_fit(x)[0]  # noqa: E731
    envelope = lambda x: fit(lower_envelope(x))[0]  # noqa: E731
    quiet, busy = range(0, 40, 2), range(1, 40, 2)
    assert mean_b(trimmed, 3, quiet) == pytest.approx(mean_b(trimmed, 30, busy), rel=0.1)
    assert mean_b(envelope, 3, quiet) > 1.15 * mean_b(envelope, 30, busy)


def test_online_refit_waits_for_prefill_steps_before_trusting_the_per_token_cost():
    refit = OnlineRefit(TRUE, window=64, min_samples=8, refit_every=8, min_prefill_steps=4)
    slower = StepTimeModel(0.010, 30e-6, 0.0)
    decodes = [StepSample(0, d, 500 * d, slower.predict_s(d, 500 * d)) for d in range(1, 41)]
    for s in decodes:
        refit.observe(s)
    assert refit.refits == 0 and refit.step_model == TRUE  # decode steps alone: the prior stays
    for p in (128, 256, 512, 1024):
        refit.observe(StepSample(p, 0, p, slower.predict_s(p, p)))
    for s in decodes[:4]:
        refit.observe(s)
    assert refit.refits >= 1
    assert refit.step_model.b_s_per_token == pytest.approx(30e-6, rel=0.05)
    # Once the prefills have left the window, no refit happens until new ones arrive.
    for s in decodes + decodes[:24]:  # 64 steps: the window holds decodes only
        refit.observe(s)
    before = refit.refits
    for s in decodes:
        refit.observe(s)
    assert refit.refits == before
