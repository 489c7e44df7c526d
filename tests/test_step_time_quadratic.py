"""The step-time model's prefill-attention term ``e * sum q * (p + q / 2)`` (node/core/step_time.py).

* with ``e = 0`` every method gives exactly what the linear model gave before the term
  (a frozen copy of that code below);
* ``largest_chunk`` (closed form of the quadratic, checked both ways) agrees with brute force;
* ``largest_prompt_alone`` and ``prefill_alone_s`` honour the term;
* the planner's batch, PAB and the simulator carry the pairs; the fit finds ``e`` when the
  samples carry pairs and keeps the linear model otherwise; profiles give both forms.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.core.fairbatching import FairBatchingPolicy
from node.core.pab import estimate_pab, estimate_pab_edf, prefill_chunk_per_step
from node.core.plan import BatchBuilder, Limits
from node.core.request import SLO, RequestState
from node.core.step_time import StepTimeModel, prefill_attention_pairs
from node.fit.profile import ProfileError, load_profile, parse_profile
from node.fit.step_time_fit import (
    BatchKind, OnlineRefit, StepSample, Weighting, evaluate, fit, robust_fit, trimmed_fit,
)

from tests.conftest import NOW, models, snapshots

quadratic_models = st.builds(
    StepTimeModel,
    a_s=st.floats(0.0, 0.02),
    b_s_per_token=st.floats(1e-5, 1e-4),
    c_s_per_context_token=st.floats(0.0, 1e-6),
    safety_factor=st.floats(1.0, 1.5),
    host_s=st.floats(0.0, 0.002),
    attn_prefill_s_per_token_sq=st.floats(0.0, 1e-8),
)


# -- the linear model as it was (frozen copy), the reference for e = 0 -------------------------

def old_predict_s(m: StepTimeModel, new: int, ctx: int) -> float:
    return m.safety_factor * (m.fixed_s + m.b_s_per_token * new + m.c_s_per_context_token * ctx)


def old_largest_chunk(m: StepTimeModel, budget_s: float, batch_new: int, batch_ctx: int, computed: int) -> int:
    b, c = m.b_s_per_token, m.c_s_per_context_token
    room = budget_s / m.safety_factor - m.fixed_s - b * batch_new - c * (batch_ctx + computed)
    if room <= 0:
        return 0
    q = math.floor(room / (b + c))
    while q > 0 and old_predict_s(m, batch_new + q, batch_ctx + computed + q) > budget_s:
        q -= 1
    return q


def old_prefill_alone_s(m: StepTimeModel, remaining: int, computed: int, max_chunk: int) -> float:
    chunks = -(-remaining // max_chunk)
    return old_predict_s(m, remaining, computed + remaining) + (chunks - 1) * m.safety_factor * m.fixed_s


@given(model=models, budget=st.floats(0.0, 0.5), batch_new=st.integers(0, 4000),
       batch_ctx=st.integers(0, 200_000), computed=st.integers(0, 8000), chunk=st.integers(1, 4096),
       within=st.floats(0.0, 3.0), limit=st.integers(0, 3000))
def test_without_the_term_every_method_equals_the_linear_model_exactly(
        model, budget, batch_new, batch_ctx, computed, chunk, within, limit):
    assert model.attn_prefill_s_per_token_sq == 0.0 and model.is_linear
    assert model.predict_s(batch_new, batch_ctx) == old_predict_s(model, batch_new, batch_ctx)
    assert model.predict_s(batch_new, batch_ctx, 12345.5) == old_predict_s(model, batch_new, batch_ctx)
    assert (model.largest_chunk(budget, batch_new, batch_ctx, computed)
            == model.largest_chunk(budget, batch_new, batch_ctx, computed, 1e9)
            == old_largest_chunk(model, budget, batch_new, batch_ctx, computed))
    remaining = max(batch_new, 1)
    assert model.prefill_alone_s(remaining, computed, chunk) == old_prefill_alone_s(model, remaining, computed, chunk)
    fits = [n for n in range(1, limit + 1) if old_prefill_alone_s(model, n, 0, chunk) <= within]
    assert model.largest_prompt_alone(within, chunk, limit) == (max(fits) if fits else 0)


# -- largest_chunk against brute force ------------------------------------------------------------

@given(model=quadratic_models, budget=st.floats(0.0, 0.2), batch_new=st.integers(0, 2000),
       batch_ctx=st.integers(0, 100_000), batch_pairs=st.floats(0.0, 5e6), computed=st.integers(0, 16_000))
def test_largest_chunk_is_the_largest_chunk_that_fits_by_brute_force(
        model, budget, batch_new, batch_ctx, batch_pairs, computed):
    q = model.largest_chunk(budget, batch_new, batch_ctx, computed, batch_pairs)

    def fits(k: int) -> bool:
        return model.predict_s(batch_new + k, batch_ctx + computed + k,
                               batch_pairs + prefill_attention_pairs(k, computed)) <= budget

    # b >= 1e-5 s/token and a budget of at most 0.2 s: no chunk of 20,000 tokens fits.
    assert not fits(20_001)
    brute = max((k for k in range(1, 20_001) if fits(k)), default=0)
    if model.is_linear:  # the linear closed form may stop one short at the boundary (it always did)
        assert q in (brute, brute - 1) and (q == brute or not fits(q + 1) or
                                            model.predict_s(batch_new + q + 1, batch_ctx + computed + q + 1)
                                            > budget * (1 - 1e-9))
    else:
        assert q == brute


@given(model=quadratic_models, room=st.floats(0.0, 1.0), computed=st.floats(0, 50_000))
def test_chunk_for_room_is_the_root_of_the_quadratic(model, room, computed):
    q = model.chunk_for_room(room, computed)
    b, c, e = model.b_s_per_token, model.c_s_per_context_token, model.attn_prefill_s_per_token_sq
    assert q >= 0
    cost = (b + c + e * computed) * q + e * q * q / 2
    assert cost == pytest.approx(room, rel=1e-9, abs=1e-15)


def test_largest_chunk_hand_computed():
    # e = 1e-9 s/pair, b = 1e-5, c = 0, a = 0: q on p = 1000 within 0.05 s: 1e-5 q + 1e-9 q (1000 + q / 2) = 0.05
    m = StepTimeModel(0.0, 1e-5, 0.0, attn_prefill_s_per_token_sq=1e-9)
    B = 1e-5 + 1e-9 * 1000
    root = (-B + math.sqrt(B * B + 2 * 1e-9 * 0.05)) / 1e-9
    assert m.largest_chunk(0.05, 0, 0, 1000) == math.floor(root)
    # the linear model of the same b would give 5000 tokens; the attention term takes about 17 % of them
    assert m.largest_chunk(0.05, 0, 0, 1000) < StepTimeModel(0.0, 1e-5, 0.0).largest_chunk(0.05, 0, 0, 1000) == 5000


# -- prefill alone and the longest prompt ---------------------------------------------------------

@given(model=quadratic_models, within=st.floats(0.0, 3.0), chunk=st.integers(1, 2048), limit=st.integers(0, 3000))
def test_largest_prompt_alone_is_the_last_prompt_that_fits(model, within, chunk, limit):
    longest = model.largest_prompt_alone(within, chunk, limit)
    fits = [n for n in range(1, limit + 1) if model.prefill_alone_s(n, 0, chunk) <= within]
    assert longest == (max(fits) if fits else 0)


@given(model=quadratic_models, remaining=st.integers(1, 20_000), computed=st.integers(0, 20_000),
       chunk=st.integers(1, 8192))
def test_prefill_alone_charges_the_whole_causal_attention_once(model, remaining, computed, chunk):
    linear = dataclasses.replace(model, attn_prefill_s_per_token_sq=0.0)
    extra = model.prefill_alone_s(remaining, computed, chunk) - linear.prefill_alone_s(remaining, computed, chunk)
    pairs = remaining * (computed + remaining / 2)
    assert extra == pytest.approx(model.safety_factor * model.attn_prefill_s_per_token_sq * pairs, rel=1e-9, abs=1e-12)
    # the pairs of a prompt are the same whichever chunks it is prefilled in
    left, p, total = remaining, computed, 0.0
    while left:
        q = min(chunk, left)
        total += prefill_attention_pairs(q, p)
        p, left = p + q, left - q
    assert total == pytest.approx(pairs, rel=1e-12)


# -- the planner --------------------------------------------------------------------------------------

def test_batch_builder_sums_the_pairs_and_predicts_with_them():
    m = StepTimeModel(0.005, 2e-5, 5e-8, attn_prefill_s_per_token_sq=1e-9)
    slo = SLO(1.0, 0.05)
    builder = BatchBuilder(m, Limits())
    a = RequestState("a", NOW, 3000, slo, computed_tokens=1000)
    b = RequestState("b", NOW, 500, slo)
    assert builder.add_prefill(a, 0.1, token_cap=800) == 800
    assert builder.add_prefill(b, 0.1, token_cap=500) == 500
    assert builder.attention_pairs == 800 * (1000 + 400) + 500 * 250
    plan = builder.finish("test", budget_s=None)
    assert plan.attention_pairs == builder.attention_pairs
    assert plan.predicted_s == m.predict_s(1300, 1800 + 500, builder.attention_pairs)
    assert plan.to_dict()["attention_pairs"] == builder.attention_pairs


@given(snapshot=snapshots(), model=quadratic_models)
def test_fairbatching_plans_stay_within_budget_with_the_attention_term(snapshot, model):
    """Prefill chunks are sized by the quadratic: a step the policy built within its budget is
    predicted within it (urgent decodes aside, which are taken whatever the budget)."""
    plan = FairBatchingPolicy(model).plan(snapshot, Limits(), NOW)
    if plan.is_empty or plan.urgent_decodes:
        return
    assert plan.predicted_s <= plan.budget_s * (1 + 1e-9)
    predicted = model.predict_s(plan.new_tokens, plan.context_tokens, plan.attention_pairs)
    assert plan.predicted_s == predicted


# -- PAB ------------------------------------------------------------------------------------------------

@given(model=quadratic_models, tau=st.floats(0.01, 0.2), reservation=st.floats(0.0, 0.05),
       decodes=st.integers(0, 100))
def test_pab_chunk_per_step_fills_the_step_with_the_quadratic(model, tau, reservation, decodes):
    q, step_s = prefill_chunk_per_step(model, tau, reservation, decodes, None)
    if q > 0:
        assert step_s == pytest.approx(tau, rel=1e-9)
    linear = dataclasses.replace(model, attn_prefill_s_per_token_sq=0.0)
    q_lin, _ = prefill_chunk_per_step(linear, tau, reservation, decodes, None)
    assert q <= q_lin * (1 + 1e-12)
    if model.is_linear:
        sf = model.safety_factor
        per_token = sf * (model.b_s_per_token + model.c_s_per_context_token)
        assert q == max(0.0, (tau - sf * model.fixed_s - reservation) / per_token)


def test_pab_is_smaller_with_the_attention_term_and_equal_without():
    slo = SLO(1.0, 0.05)
    reqs = [RequestState(f"d{i}", NOW - 2, 1000, slo, computed_tokens=1000, output_tokens=1, first_token_s=NOW - 1)
            for i in range(8)] + [RequestState("q", NOW - 0.1, 3000, slo, computed_tokens=500)]
    kw = dict(horizon_s=1.0, kv_free_tokens=400_000, default_tpot_s=0.05, max_num_batched_tokens=8192)
    lin = StepTimeModel(0.006, 1.8e-5, 4.8e-8)
    quad = dataclasses.replace(lin, attn_prefill_s_per_token_sq=1.2e-9)
    for estimate in (estimate_pab, estimate_pab_edf):
        assert estimate(reqs, quad, NOW, **kw).pab_tokens < estimate(reqs, lin, NOW, **kw).pab_tokens
        zero = dataclasses.replace(quad, attn_prefill_s_per_token_sq=0.0)
        assert estimate(reqs, zero, NOW, **kw) == estimate(reqs, lin, NOW, **kw)


# -- the fit --------------------------------------------------------------------------------------------

QUAD = StepTimeModel(a_s=0.006, b_s_per_token=18e-6, c_s_per_context_token=0.05e-6, attn_prefill_s_per_token_sq=1.1e-9)


def quadratic_steps(model: StepTimeModel, n: int, seed: int, noise: float = 0.01, pairs: bool = True):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(["decode", "prefill", "mixed"])
        decodes = 0 if kind == "prefill" else rng.randint(1, 256)
        q = 0 if kind == "decode" else rng.randint(16, 4096)
        p = 0 if kind == "decode" else rng.choice([0, 512, 2048, 8192])
        ctx = decodes * rng.randint(100, 4000) + p + q
        pr = prefill_attention_pairs(q, p)
        t = model.predict_s(q + decodes, ctx, pr) * (1 + rng.gauss(0, noise))
        out.append(StepSample(q, decodes, ctx, max(t, 1e-6), pr if pairs else 0.0))
    return out


def test_fit_finds_the_attention_coefficient_when_the_samples_carry_pairs():
    samples = quadratic_steps(QUAD, 600, seed=1)
    model, report = fit(samples)
    assert model.attn_prefill_s_per_token_sq == pytest.approx(QUAD.attn_prefill_s_per_token_sq, rel=0.05)
    assert model.b_s_per_token == pytest.approx(QUAD.b_s_per_token, rel=0.05)
    linear, linear_report = fit(samples, prefill_attention=False)
    assert linear.is_linear
    for kind in (BatchKind.PREFILL_ONLY, BatchKind.MIXED):
        assert report.by_kind[kind].mape < linear_report.by_kind[kind].mape
        assert report.by_kind[kind].p99_ape < linear_report.by_kind[kind].p99_ape
    # relative weighting finds the same coefficients on data the model describes
    rel, _ = fit(samples, weighting=Weighting.RELATIVE)
    assert rel.attn_prefill_s_per_token_sq == pytest.approx(QUAD.attn_prefill_s_per_token_sq, rel=0.05)
    # the robust fits pass the choice through
    assert not trimmed_fit(samples)[0].is_linear and trimmed_fit(samples, prefill_attention=False)[0].is_linear
    assert not robust_fit(samples)[0].is_linear


def test_samples_without_pairs_fit_the_linear_model():
    model, _ = fit(quadratic_steps(QUAD, 300, seed=2, pairs=False))
    assert model.is_linear


def test_the_attention_coefficient_is_never_negative():
    # steps that get cheaper with more attention pairs would push e below zero: it is pinned at 0
    samples = [StepSample(q, 0, q, 0.005 + 2e-5 * q - 1e-10 * prefill_attention_pairs(q, 0),
                          prefill_attention_pairs(q, 0)) for q in range(16, 4000, 61)]
    model, _ = fit(samples, prefill_attention=True)
    assert model.attn_prefill_s_per_token_sq == 0.0 and model.b_s_per_token > 0


def test_evaluate_uses_the_pairs_and_reports_p99_percent_error():
    samples = [StepSample(1000, 0, 1000, QUAD.predict_s(1000, 1000, 5e5), 5e5),
               StepSample(0, 10, 10_000, QUAD.predict_s(10, 10_000))]
    report = evaluate(QUAD, samples)
    assert report.overall.mape == pytest.approx(0.0, abs=1e-12)
    assert report.overall.p99_ape == pytest.approx(0.0, abs=1e-12)
    assert "p99_ape" in report.to_dict()["overall"]
    with pytest.raises(ValueError, match="prefill_attention_pairs"):
        StepSample(10, 0, 10, 0.01, -1.0)


def test_online_refit_keeps_the_prior_form():
    samples = quadratic_steps(QUAD, 300, seed=3)
    linear_prior = StepTimeModel(0.006, 18e-6, 0.05e-6)
    for prior, expect_linear in ((linear_prior, True), (QUAD, False)):
        refit = OnlineRefit(prior, window=256, min_samples=64, refit_every=64)
        for s in samples:
            refit.observe(s)
        assert refit.refits >= 1 and refit.step_model.is_linear is expect_linear
    forced = OnlineRefit(linear_prior, window=256, min_samples=64, refit_every=64, prefill_attention=True)
    for s in samples:
        forced.observe(s)
    assert forced.step_model.attn_prefill_s_per_token_sq == pytest.approx(QUAD.attn_prefill_s_per_token_sq, rel=0.1)


# -- profiles and the simulator ------------------------------------------------------------------

def _doc(**over) -> dict:
    doc = {"version": 1, "a_s": 0.006, "b_s_per_token": 2e-5, "c_s_per_context_token": 5e-8, "safety_factor": 1.0,
           "mape": 0.0, "p99_abs_error_s": 0.0, "hardware": "h", "model": "m", "method": "x"}
    doc.update(over)
    return doc


def test_profile_forms_and_validation(tmp_path):
    linear = parse_profile(_doc())
    assert linear.step_model.is_linear and linear.step_model_as("linear") == linear.step_model_as("quadratic")
    quad = parse_profile(_doc(attn_prefill_s_per_token_sq=1e-9,
                              linear_fit={"a_s": 0.005, "b_s_per_token": 2.5e-5, "c_s_per_context_token": 4e-8}))
    assert quad.step_model.attn_prefill_s_per_token_sq == 1e-9
    assert quad.step_model_as("linear") == StepTimeModel(0.005, 2.5e-5, 4e-8)
    assert quad.to_dict()["attn_prefill_s_per_token_sq"] == 1e-9
    assert "attn_prefill_s_per_token_sq" not in linear.to_dict()
    no_linear_fit = parse_profile(_doc(attn_prefill_s_per_token_sq=1e-9))
    assert no_linear_fit.step_model_as("linear") == dataclasses.replace(no_linear_fit.step_model,
                                                                         attn_prefill_s_per_token_sq=0.0)
    with pytest.raises(ValueError, match="unknown step model"):
        quad.step_model_as("cubic")
    for bad in (-1e-9, float("nan"), True, "1e-9"):
        with pytest.raises(ProfileError, match="attn_prefill_s_per_token_sq"):
            parse_profile(_doc(attn_prefill_s_per_token_sq=bad))
    with pytest.raises(ProfileError, match="linear_fit.b_s_per_token"):
        parse_profile(_doc(linear_fit={"a_s": 0.005, "c_s_per_context_token": 4e-8}))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(quad.to_dict()))
    assert load_profile(path).step_model == quad.step_model


def test_simulator_plans_with_the_chosen_step_model():
    from cluster.sim.config import SimConfig
    from cluster.sim.simulator import simulate
    from cluster.workload.traces import TraceRequest, Workload

    rows = [TraceRequest(i, 0.05 * i, 1500 + 300 * (i % 5), 20) for i in range(40)]
    work = Workload(rows, name="mini")
    profile = load_profile("h100-llama3-8b")
    reports = {}
    for form in ("quadratic", "linear"):
        cfg = SimConfig(trace="mini", profile="h100-llama3-8b", step_model=form, balancer="round-robin")
        reports[form] = simulate(cfg, workload=work, profile=profile).report
        planned = reports[form]["planning_models"][0]
        want = profile.planning_model(form)
        assert (planned["a_s"], planned["b_s_per_token"], planned["attn_prefill_s_per_token_sq"],
                planned["safety_factor"]) == (want.a_s, want.b_s_per_token, want.attn_prefill_s_per_token_sq,
                                              1.1 if form == "quadratic" else 1.0)
    assert reports["quadratic"]["planning_models"][0]["attn_prefill_s_per_token_sq"] > 0
    assert reports["linear"]["planning_models"][0]["attn_prefill_s_per_token_sq"] == 0
    with pytest.raises(ValueError, match="step_model"):
        SimConfig(step_model="cubic")


def test_simulator_safety_factor_scales_the_planning_model_only():
    from cluster.sim.config import SimConfig
    from cluster.sim.simulator import idle_prefill_cap

    profile = load_profile("h100-llama3-8b")
    own = SimConfig(profile="h100-llama3-8b", step_model="quadratic", safety_factor=1.0)
    padded = dataclasses.replace(own, safety_factor=1.25)
    base, scaled = own.planning_model(profile), padded.planning_model(profile)
    assert base == profile.step_model_as("quadratic")
    assert scaled.safety_factor == 1.25
    for new, ctx in ((1, 500), (2048, 0), (8192, 40_000)):
        assert scaled.predict_s(new, ctx) == pytest.approx(base.predict_s(new, ctx) * 1.25)
    # The naive admission cap is the idle node's capacity without a margin: the factor leaves it alone.
    assert idle_prefill_cap(padded, profile) == idle_prefill_cap(own, profile)
    for bad in (0.9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="safety_factor"):
            SimConfig(safety_factor=bad)


def test_default_planning_model_is_the_quadratic_one_with_a_margin_where_it_has_attention():
    """The defaults that measured best (bench/results/STEPTIME.md 3b), one rule for the simulator and the
    engines: the profile's own model; 1.1 on a model with the prefill-attention term, else the profile's
    factor (so the CPU engine's profile, which has no such term, plans as before)."""
    from cluster.sim.config import SimConfig
    from node.fit.profile import ATTENTION_MODEL_SAFETY_FACTOR
    from node.vllm.node_config import NodeConfig

    assert ATTENTION_MODEL_SAFETY_FACTOR == 1.1
    h100 = load_profile("h100-llama3-8b")
    want = dataclasses.replace(h100.step_model, safety_factor=1.1)
    assert want.attn_prefill_s_per_token_sq > 0
    assert SimConfig().planning_model(h100) == want == h100.planning_model()
    node = NodeConfig()
    assert h100.planning_model(node.step_model, node.safety_factor) == want
    # A linear model keeps the profile's factor; a factor named is used as given.
    assert h100.planning_model("linear") == h100.step_model_as("linear")
    assert h100.planning_model("quadratic", 1.0) == h100.step_model
    assert SimConfig(step_model="linear").planning_model(h100).safety_factor == h100.safety_factor == 1.0
    # A profile with a larger factor of its own keeps it.
    wide = parse_profile(_doc(attn_prefill_s_per_token_sq=1e-9, safety_factor=1.3))
    assert wide.planning_model().safety_factor == 1.3
    # The CPU engine's profile has no attention term: its planning model is the profile's, as before.
    cpu = load_profile("cpu-tiny-llama")
    assert cpu.step_model.is_linear and SimConfig(profile="cpu-tiny-llama").planning_model(cpu) == cpu.step_model
    for bad in (0.9, float("inf")):
        with pytest.raises(ValueError, match="safety_factor"):
            h100.planning_model("quadratic", bad)
    for bad in (0.9, float("inf"), True, "1.2"):  # a boolean or a string is not read as a number
        with pytest.raises(ValueError, match="safety_factor"):
            NodeConfig(safety_factor=bad)
    assert NodeConfig(safety_factor=1).safety_factor == 1.0  # an integer is a number


def test_truth_without_ground_truth_is_the_profiles_own_model():
    from cluster.sim.true_step_time import TrueStepTime

    quad = parse_profile(_doc(attn_prefill_s_per_token_sq=1e-9, ground_truth=None))
    truth = TrueStepTime(quad)
    t = truth.step_s(1000, 5000, 3000, 2e6)
    assert t == pytest.approx(0.006 + 2e-5 * 1000 + 5e-8 * 8000 + 1e-9 * 2e6)


def test_naive_admission_cap_follows_the_planning_model():
    from balancer.core.placement import idle_prefill_tokens
    from cluster.sim.config import SimConfig
    from cluster.sim.simulator import idle_prefill_cap

    profile = load_profile("h100-llama3-8b")
    lin = profile.step_model_as("linear")
    cfg = SimConfig(profile="h100-llama3-8b", admission_cap=True, step_model="quadratic")
    assert idle_prefill_cap(dataclasses.replace(cfg, step_model="linear"), profile) == idle_prefill_tokens(
        1.0, lin.a_s, lin.b_s_per_token)
    m = profile.step_model
    cap = idle_prefill_cap(cfg, profile)

    def alone(n: int) -> float:
        return m.a_s + m.b_s_per_token * n + m.attn_prefill_s_per_token_sq * n * n / 2

    assert alone(cap) <= 1.0 < alone(cap + 1)


def test_engine_profile_keeps_its_linear_fit_and_reads_pairs_from_the_step_log():
    from node.vllm.profiling import ProfileRun, samples_from_log, to_profile

    records = [{"step": 1, "prefill_tokens": 100, "decode_tokens": 0, "context_tokens": 100, "measured_s": 0.01,
                "prefill_attention_pairs": 5000.0},
               {"step": 2, "prefill_tokens": 0, "decode_tokens": 4, "context_tokens": 400, "measured_s": 0.005}]
    got = samples_from_log(records)
    assert [s.prefill_attention_pairs for s in got] == [5000.0, 0.0]  # a record without pairs: 0
    samples = quadratic_steps(QUAD, 300, seed=5)
    model, report, report_all, dropped = robust_fit(samples)
    linear, linear_report, _, _ = robust_fit(samples, prefill_attention=False)
    run = ProfileRun(samples, model, report, report_all, dropped, {"max_num_seqs": 8}, 1.0, (linear, linear_report))
    profile = parse_profile(to_profile(run, name="t", hardware="h", model_name="m").to_dict())
    assert profile.step_model_as("quadratic").attn_prefill_s_per_token_sq == model.attn_prefill_s_per_token_sq > 0
    assert profile.step_model_as("linear") == dataclasses.replace(linear, safety_factor=profile.safety_factor)
