"""Checks on the committed step-time cost profiles in deploy/profiles/.

* every profile JSON has the required keys with sane values;
* the H100 Llama-3-8B linear fit is within 30 % of the published vLLM 0.8.4 fit
  (5.75 ms + 17.25 us/prefill token) at 512 and 2048 prefill tokens;
* re-running bench/derive_profiles.py reproduces the committed JSON (skipped when the
  Vidur data in ../shared/data is absent).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "deploy" / "profiles"
SCRIPT = REPO / "bench" / "derive_profiles.py"
DATA = REPO.parent / "shared" / "data" / "vidur_profiling"
EXPECTED = {"h100-llama3-8b", "a100-llama3-8b", "ref-linear-h100"}

REQUIRED = {
    "version": int, "name": str, "a_s": float, "b_s_per_token": float,
    "c_s_per_context_token": float, "safety_factor": float, "mape": float,
    "p99_abs_error_s": float, "hardware": str, "model": str, "method": str,
}
GT_KEYS = {"linear_ops_ms", "attn_decode_s_per_context_token",
           "attn_prefill_s_per_token_sq", "fixed_overhead_s"}


def _profiles() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json"))}


def test_expected_profiles_present():
    assert EXPECTED <= set(_profiles())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_required_keys_and_sane_values(name):
    prof = _profiles()[name]
    for key, typ in REQUIRED.items():
        assert key in prof, f"{name}: missing {key}"
        val = prof[key]
        if typ is float:
            assert isinstance(val, (int, float)) and not isinstance(val, bool), key
            assert math.isfinite(val), key
        else:
            assert isinstance(val, typ), key
    assert prof["version"] == 1
    assert prof["name"] == name
    assert 0 < prof["a_s"] < 0.1
    assert 0 < prof["b_s_per_token"] < 1e-3
    assert 0 <= prof["c_s_per_context_token"] < 1e-5
    assert prof["safety_factor"] >= 1.0
    assert 0 <= prof["mape"] < 0.5
    assert prof["p99_abs_error_s"] >= 0
    for key in ("kv_cache_tokens", "max_num_seqs", "max_num_batched_tokens", "block_size"):
        if key in prof:
            assert isinstance(prof[key], int) and prof[key] > 0, key
    gt = prof.get("ground_truth")
    if gt is not None:
        assert GT_KEYS <= set(gt)
        tab = gt["linear_ops_ms"]
        xs = [row[0] for row in tab]
        assert xs == sorted(xs) and len(set(xs)) == len(xs) and xs[0] >= 1
        assert all(row[1] > 0 for row in tab)
        assert xs[-1] >= prof.get("max_num_batched_tokens", 0)
        assert gt["attn_decode_s_per_context_token"] > 0
        assert gt["attn_prefill_s_per_token_sq"] > 0
        assert gt["fixed_overhead_s"] >= 0


def test_reference_profile_exact():
    p = _profiles()["ref-linear-h100"]
    assert p["a_s"] == pytest.approx(5.6e-3)
    assert p["b_s_per_token"] == pytest.approx(21e-6)
    assert p["c_s_per_context_token"] == pytest.approx(0.05e-6)
    assert p["kv_cache_tokens"] == 450000 and p["max_num_seqs"] == 256
    assert p["mape"] == 0 and p["p99_abs_error_s"] == 0
    assert p["ground_truth"] is None


@pytest.mark.parametrize("form", ["quadratic", "linear"])
@pytest.mark.parametrize("tokens", [512, 2048])
def test_h100_fit_near_published(tokens, form):
    p = _profiles()["h100-llama3-8b"]
    fit = p if form == "quadratic" else p["linear_fit"]
    # prefill-only step of `tokens` new tokens with no prefix: context = tokens, attention pairs tokens^2 / 2
    ours = (fit["a_s"] + fit["b_s_per_token"] * tokens + fit["c_s_per_context_token"] * tokens
            + fit.get("attn_prefill_s_per_token_sq", 0.0) * tokens * tokens / 2)
    published = 5.75e-3 + 17.25e-6 * tokens
    assert abs(ours / published - 1) <= 0.30, (tokens, ours, published)


@pytest.mark.parametrize("name", ["h100-llama3-8b", "a100-llama3-8b"])
def test_derived_profiles_carry_both_fits_and_the_quadratic_predicts_better(name):
    """The profile's model has the prefill-attention term; its linear fit is kept for comparison."""
    from node.fit.profile import load_profile

    p = _profiles()[name]
    assert p["attn_prefill_s_per_token_sq"] > 0
    lin = p["linear_fit"]
    assert p["mape"] < lin["mape"] and p["p99_abs_error_s"] < lin["p99_abs_error_s"]
    for kind, errors in p["errors_by_batch_class"].items():
        assert errors["mape"] < lin["errors_by_batch_class"][kind]["mape"], kind
    profile = load_profile(name)
    assert profile.step_model_as("quadratic").attn_prefill_s_per_token_sq == p["attn_prefill_s_per_token_sq"]
    linear = profile.step_model_as("linear")
    assert linear.is_linear and (linear.a_s, linear.b_s_per_token, linear.c_s_per_context_token) == (
        lin["a_s"], lin["b_s_per_token"], lin["c_s_per_context_token"])


def _close(a, b, path="$"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


def test_derivation_reproduces_committed_json(tmp_path):
    if not (DATA / "compute").is_dir():
        pytest.skip(f"Vidur profiling data not found at {DATA} (shared/data absent)")
    out = tmp_path / "profiles"
    subprocess.run([sys.executable, str(SCRIPT), "--data", str(DATA), "--out", str(out),
                    "--no-plot"], check=True, capture_output=True, text=True, timeout=300)
    for name in sorted(EXPECTED):
        fresh = json.loads((out / f"{name}.json").read_text())
        committed = json.loads((PROFILES / f"{name}.json").read_text())
        _close(committed, fresh, name)


@pytest.mark.parametrize("name, seats", [("h100-llama3-8b", 1024), ("a100-llama3-8b", 256)])
def test_derived_profiles_have_the_seats_vllm_ships_for_their_gpu(name, seats):
    """vLLM 0.32's OpenAI server defaults max_num_seqs to 1024 on 80 GB GPUs other than the A100 and
    to 256 on the A100 (``EngineArgs.get_batch_defaults`` in ``vllm/engine/arg_utils.py``)."""
    assert _profiles()[name]["max_num_seqs"] == seats
