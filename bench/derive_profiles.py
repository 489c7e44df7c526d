#!/usr/bin/env python3
"""Derive the step-time cost profiles in ``deploy/profiles/`` from Vidur's profiling data.

What it writes (one JSON per profile, ``<out>/<name>.json``):

* ``h100-llama3-8b``  Llama-3-8B-class model on one H100 80GB SXM (TP=1).
* ``a100-llama3-8b``  the same model on one A100 80GB SXM (TP=1).
* ``ref-linear-h100`` the plain linear reference profile of DESIGN section 6
  (a = 5.6 ms, b = 21 us/token, c = 0.05 us/context token; no ground truth).

For the two derived profiles the script builds a *ground-truth* (nonlinear) step-time
model and then fits the scheduler's model to it, with and without its prefill-attention
term:

    T_true = fixed_overhead_s
           + interp(linear_ops_ms, total_new_tokens) / 1000
           + attn_decode_s_per_context_token * sum_{decodes} (kv_tokens + 1)
           + attn_prefill_s_per_token_sq     * sum_{prefill chunks} q * (p + q / 2)

    T_quad = a + b * total_new_tokens + c * sum_{requests} (kv_tokens + new_tokens)
           + e * sum_{prefill chunks} q * (p + q / 2)
    T_lin  = T_quad with e = 0, a, b, c fitted again

The profile's model is the quadratic fit (``attn_prefill_s_per_token_sq`` = e at the top
level); the linear fit is kept under ``linear_fit`` (``fairbatching sim --step-model linear``).

* ``linear_ops_ms``: whole-model non-attention GPU time against the number of tokens in
  the batch: Vidur's per-layer operator medians (TP=1) summed over the nine per-layer
  operators times 32 layers, plus the embedding lookup once.  A100 comes straight from
  ``compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv``.  Vidur has no Llama-3-8B on H100,
  so the H100 table is the H100 Llama-2-7b table with every operator scaled by the
  Llama-3-8B / Llama-2-7b ratio of its weight shape (= FLOP ratio = weight-byte ratio,
  because both models have d_model = 4096); the script checks that transfer on A100,
  where both models were measured.  Above 4096 tokens (the end of the H100 table) each
  H100 operator is continued with the shape of the A100 Llama-3-8B operator.
* decode attention: KV bytes per context token over HBM bandwidth x efficiency.
* prefill attention: causal attention FLOPs over bf16 dense peak x efficiency.
* fixed overhead: LM-head weight read (not in Vidur's per-layer operators) plus a
  per-step host/launch overhead (an assumption; see DERIVATION.md).

Both fits are ``node.fit.step_time_fit.fit`` (non-negative least squares) on relative
error (rows weighted by 1 / T_true, each batch class given equal total weight) over a
grid of decode-only, prefill-only and mixed batches; MAPE and P99 absolute error are
reported overall and per class.

Usage (from the repository root)::

    .venv/bin/python bench/derive_profiles.py                # writes deploy/profiles/*.json + PNG
    .venv/bin/python bench/derive_profiles.py --out /tmp/p --no-plot
    .venv/bin/python bench/derive_profiles.py --report       # also print the markdown tables

Numpy only (matplotlib only for the optional PNG).  Deterministic: re-running it
reproduces the committed JSON files.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import typer

from node.core.attainment import percentile
from node.fit.step_time_fit import StepSample, Weighting, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vidur_profiling"
DEFAULT_OUT = REPO_ROOT / "deploy" / "profiles"

VIDUR_SOURCE = ("microsoft/vidur @ 7d47513363ec447a741ac5e47241580b47724fbf "
                "(data/profiling/compute, TP=1 rows, per-op medians)")

# ----------------------------------------------------------------------------- hardware
# NVIDIA datasheets: H100 SXM 3.35 TB/s HBM3, 989 TFLOP/s dense BF16 (1979 with sparsity);
# A100 80GB SXM 2,039 GB/s HBM2e, 312 TFLOP/s dense BF16.  Memory as nvidia-smi reports it.
# max_num_seqs: vLLM 0.32's OpenAI-server default for the GPU (vllm/engine/arg_utils.py,
# EngineArgs.get_batch_defaults: 1024 at >= 70 GiB unless an A100, else 256).
HARDWARE = {
    "h100": {"name": "NVIDIA H100 80GB SXM", "hbm_bytes_per_s": 3.35e12,
             "bf16_flops": 989e12, "mem_bytes": 81559 * 2**20, "max_num_seqs": 1024},
    "a100": {"name": "NVIDIA A100 80GB SXM", "hbm_bytes_per_s": 2.039e12,
             "bf16_flops": 312e12, "mem_bytes": 81920 * 2**20, "max_num_seqs": 256},
}

# ----------------------------------------------------------------------------- models
LLAMA3_8B = {"layers": 32, "d_model": 4096, "n_head": 32, "n_kv_head": 8, "head_dim": 128,
             "ffn": 14336, "vocab": 128256, "params": 8_030_261_248, "dtype_bytes": 2}
LLAMA2_7B = {"layers": 32, "d_model": 4096, "n_head": 32, "n_kv_head": 32, "head_dim": 128,
             "ffn": 11008, "vocab": 32000}

OPS = ["emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
       "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add"]


def op_scale_l2_to_l3(src: dict = LLAMA2_7B, dst: dict = LLAMA3_8B) -> dict[str, float]:
    """Per-operator time ratio dst/src from weight/activation shapes (same d_model)."""
    hd = dst["head_dim"]
    qkv = lambda m: (m["n_head"] + 2 * m["n_kv_head"]) * hd  # noqa: E731
    rope = lambda m: m["n_head"] + m["n_kv_head"]              # noqa: E731 (q and k heads)
    r_ffn = dst["ffn"] / src["ffn"]
    return {"emb": 1.0, "input_layernorm": 1.0, "post_attention_layernorm": 1.0, "add": 1.0,
            "attn_pre_proj": qkv(dst) / qkv(src), "attn_rope": rope(dst) / rope(src),
            "attn_post_proj": 1.0, "mlp_up_proj": r_ffn, "mlp_act": r_ffn,
            "mlp_down_proj": r_ffn}


# ----------------------------------------------------------------------------- assumptions
DECODE_BW_EFFICIENCY = 0.80     # paged decode attention reaches ~80 % of HBM bandwidth
PREFILL_FLOP_EFFICIENCY = 0.50  # FlashAttention-2/3 class kernels on chunked, paged prefill
HOST_OVERHEAD_S = 0.30e-3       # per-step host / launch / sampling overhead (assumption)
GPU_MEM_UTIL = 0.90             # vLLM gpu_memory_utilization
ACTIVATION_RESERVE_BYTES = 1.5e9  # activations at 8192 batched tokens + CUDA graphs + misc
BLOCK_SIZE = 16
MAX_NUM_BATCHED_TOKENS = 8192


# ----------------------------------------------------------------------------- data
def load_ops(path: Path, tp: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-op median ms per layer vs num_tokens (duplicate num_tokens rows averaged)."""
    acc: dict[int, dict[str, list[float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["num_tensor_parallel_workers"]) != tp:
                continue
            d = acc.setdefault(int(row["num_tokens"]), {op: [] for op in OPS})
            for op in OPS:
                d[op].append(float(row[f"time_stats.{op}.median"]))
    n = np.array(sorted(acc), dtype=float)
    ops = {op: np.array([np.mean(acc[int(k)][op]) for k in n]) for op in OPS}
    return n, ops


def whole_model_ms(ops: dict[str, np.ndarray], layers: int, emb_once: bool = True) -> np.ndarray:
    """Non-attention time of the whole model: per-layer ops x layers (+ embedding once)."""
    tot = sum(ops[op] for op in OPS if op != "emb") * layers
    return tot + ops["emb"] * (1 if emb_once else layers)


def interp_ext(x, xp, fp):
    """Piecewise-linear interpolation; linear extrapolation past the last point."""
    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    hi = x > xp[-1]
    if np.any(hi):
        slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y = np.where(hi, fp[-1] + slope * (x - xp[-1]), y)
    return y


def h100_llama3_ops(data: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """H100 Llama-3-8B per-op table: H100 Llama-2-7b x shape ratio, extended past 4096
    tokens with the A100 Llama-3-8B per-op growth."""
    n_h, ops_h = load_ops(data / "compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv")
    n_a, ops_a = load_ops(data / "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv")
    scale = op_scale_l2_to_l3()
    last = n_h[-1]
    n_ext = n_a[n_a > last]
    n_out = np.concatenate([n_h, n_ext])
    out = {}
    for op in OPS:
        base = ops_h[op] * scale[op]
        a_last = np.interp(last, n_a, ops_a[op])
        ext = base[-1] * ops_a[op][n_a > last] / a_last
        out[op] = np.concatenate([base, ext])
    return n_out, out


# ----------------------------------------------------------------------------- ground truth
def kv_bytes_per_token(m: dict) -> int:
    return 2 * m["layers"] * m["n_kv_head"] * m["head_dim"] * m["dtype_bytes"]


def build_ground_truth(n_tok: np.ndarray, lin_ms: np.ndarray, hw: dict, m: dict) -> dict:
    kvb = kv_bytes_per_token(m)
    attn_flops_per_tok_sq = 4 * m["n_head"] * m["head_dim"] * m["layers"]
    lm_head_bytes = m["vocab"] * m["d_model"] * m["dtype_bytes"]
    bw = hw["hbm_bytes_per_s"] * DECODE_BW_EFFICIENCY
    lm_head_s = lm_head_bytes / bw
    return {
        "linear_ops_ms": [[int(n), round(float(t), 5)] for n, t in zip(n_tok, lin_ms)],
        "attn_decode_s_per_context_token": float(f"{kvb / bw:.6g}"),
        "attn_prefill_s_per_token_sq": float(
            f"{attn_flops_per_tok_sq / (hw['bf16_flops'] * PREFILL_FLOP_EFFICIENCY):.6g}"),
        "fixed_overhead_s": float(f"{lm_head_s + HOST_OVERHEAD_S:.6g}"),
        "formula": ("T_true = fixed_overhead_s + interp(linear_ops_ms, total_new_tokens)/1000"
                    " + attn_decode_s_per_context_token * sum_decodes(kv_tokens + 1)"
                    " + attn_prefill_s_per_token_sq * sum_prefill_chunks q*(p + q/2);"
                    " interp is piecewise linear, linearly extrapolated past the last point"),
        "notes": {
            "linear_ops": "Vidur per-layer op medians x 32 layers + embedding once, TP=1",
            "decode_attn": f"{kvb} B KV/token / ({hw['hbm_bytes_per_s']:.4g} B/s x "
                           f"{DECODE_BW_EFFICIENCY})",
            "prefill_attn": f"{attn_flops_per_tok_sq} FLOP/token^2 / ({hw['bf16_flops']:.4g} "
                            f"FLOP/s x {PREFILL_FLOP_EFFICIENCY})",
            "fixed_overhead": f"LM head {lm_head_bytes / 1e9:.3f} GB read = {lm_head_s * 1e3:.3f}"
                              f" ms + host {HOST_OVERHEAD_S * 1e3:.2f} ms",
        },
    }


def t_true(gt: dict, new_tokens, dec_ctx_sum, pre_q_p_sum):
    tab = np.asarray(gt["linear_ops_ms"], dtype=float)
    return (gt["fixed_overhead_s"] + interp_ext(new_tokens, tab[:, 0], tab[:, 1]) / 1000.0
            + gt["attn_decode_s_per_context_token"] * np.asarray(dec_ctx_sum, dtype=float)
            + gt["attn_prefill_s_per_token_sq"] * np.asarray(pre_q_p_sum, dtype=float))


# ----------------------------------------------------------------------------- grid
DEC_BATCH = [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256]
DEC_CTX = [128, 256, 512, 1024, 2048, 4096, 8192]
PRE_CHUNK = [16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
PRE_PREFIX = [0, 256, 1024, 2048, 4096, 8192]
MIX_CHUNK = [32, 128, 256, 512, 1024, 2048, 4096]
MIX_PREFIX = [0, 2048, 8192]
MIX_BATCH = [1, 4, 16, 64, 128, 255]
MIX_CTX = [256, 1024, 4096, 8192]


def build_grid() -> dict[str, np.ndarray]:
    """Rows: (class, new_tokens, context_sum, decode_ctx_sum, prefill q*(p+q/2) sum,
    prefill tokens, decodes); one column per key of the dict returned.

    Decode batches hold ``b`` requests all at one context.
    """
    rows = []
    for b in DEC_BATCH:
        for ctx in DEC_CTX:
            rows.append((0, b, b * (ctx + 1), b * (ctx + 1), 0.0, 0, b))
    for q in PRE_CHUNK:
        for p in PRE_PREFIX:
            rows.append((1, q, p + q, 0, q * (p + q / 2), q, 0))
    for q in MIX_CHUNK:
        for p in MIX_PREFIX:
            for b in MIX_BATCH:
                if q + b > MAX_NUM_BATCHED_TOKENS:
                    continue
                for ctx in MIX_CTX:
                    dec = b * (ctx + 1)
                    rows.append((2, q + b, p + q + dec, dec, q * (p + q / 2), q, b))
    arr = np.array(rows, dtype=float)
    return {"cls": arr[:, 0].astype(int), "new": arr[:, 1], "ctx": arr[:, 2],
            "dec": arr[:, 3], "pre": arr[:, 4], "prefill": arr[:, 5].astype(int),
            "decodes": arr[:, 6].astype(int)}


CLASSES = ["decode_only", "prefill_only", "mixed"]


def grid_samples(grid: dict, y: np.ndarray) -> list[StepSample]:
    """The grid's batches as measured steps of ``y`` seconds (the fit's and the report's input)."""
    return [StepSample(int(q), int(d), int(c), float(t), float(pairs))
            for q, d, c, t, pairs in zip(grid["prefill"], grid["decodes"], grid["ctx"], y, grid["pre"])]


def fit_model(grid: dict, y: np.ndarray, *, quadratic: bool) -> tuple[float, float, float, float]:
    """``(a, b, c, e)`` fitted on relative error, each batch class with equal total weight
    (``node.fit.step_time_fit.fit``, ``Weighting.RELATIVE``), rounded to 6 significant digits;
    ``e`` is 0 unless ``quadratic``."""
    model, _ = fit(grid_samples(grid, y), prefill_attention=quadratic, weighting=Weighting.RELATIVE)
    coefs = (model.a_s, model.b_s_per_token, model.c_s_per_context_token, model.attn_prefill_s_per_token_sq)
    return tuple(float(f"{v:.6g}") for v in coefs)


def predict(coefs: tuple[float, float, float, float], grid: dict) -> np.ndarray:
    a, b, c, e = coefs
    return a + b * grid["new"] + c * grid["ctx"] + e * grid["pre"]


def error_stats(pred: np.ndarray, y: np.ndarray) -> dict:
    abs_err = np.abs(pred - y)
    return {"n": int(y.size), "mape": float(f"{np.mean(abs_err / y):.4g}"),
            "p99_ape": float(f"{percentile(abs_err / y, 99):.4g}"),
            "p99_abs_error_s": float(f"{percentile(abs_err, 99):.4g}"),
            "max_abs_error_s": float(f"{abs_err.max():.4g}"),
            "mean_signed_rel_error": float(f"{np.mean((pred - y) / y):.4g}")}


def kv_cache_tokens(hw: dict, m: dict) -> tuple[int, dict]:
    usable = hw["mem_bytes"] * GPU_MEM_UTIL
    weights = m["params"] * m["dtype_bytes"]
    free = usable - weights - ACTIVATION_RESERVE_BYTES
    kvb = kv_bytes_per_token(m)
    tokens = int(free // kvb) // BLOCK_SIZE * BLOCK_SIZE
    return tokens, {"mem_bytes": hw["mem_bytes"], "usable_bytes": usable,
                    "weights_bytes": weights, "activation_reserve_bytes": ACTIVATION_RESERVE_BYTES,
                    "kv_bytes_per_token": kvb}


def derive(name: str, hw_key: str, n_tok: np.ndarray, ops: dict, method: str) -> tuple[dict, dict]:
    hw = HARDWARE[hw_key]
    lin = whole_model_ms(ops, LLAMA3_8B["layers"])
    gt = build_ground_truth(n_tok, lin, hw, LLAMA3_8B)
    grid = build_grid()
    y = t_true(gt, grid["new"], grid["dec"], grid["pre"])
    fits = {"quadratic": fit_model(grid, y, quadratic=True), "linear": fit_model(grid, y, quadratic=False)}
    preds = {form: predict(coefs, grid) for form, coefs in fits.items()}
    overall = {form: error_stats(pred, y) for form, pred in preds.items()}
    by_class = {form: {cl: error_stats(pred[grid["cls"] == k], y[grid["cls"] == k]) for k, cl in enumerate(CLASSES)}
                for form, pred in preds.items()}
    a, b, c, e = fits["quadratic"]
    la, lb, lc, _ = fits["linear"]
    kv, _ = kv_cache_tokens(hw, LLAMA3_8B)
    prof = {
        "version": 1, "name": name,
        "a_s": a, "b_s_per_token": b, "c_s_per_context_token": c,
        "attn_prefill_s_per_token_sq": e,
        "safety_factor": 1.0,
        "mape": overall["quadratic"]["mape"], "p99_abs_error_s": overall["quadratic"]["p99_abs_error_s"],
        "hardware": hw["name"],
        "model": "Llama-3-8B class (32 layers, d 4096, 32 q / 8 kv heads, ffn 14336, "
                 "vocab 128256, bf16, TP=1)",
        "method": method,
        "kv_cache_tokens": kv, "max_num_seqs": hw["max_num_seqs"],
        "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS, "block_size": BLOCK_SIZE,
        "errors_by_batch_class": by_class["quadratic"],
        "linear_fit": {
            "a_s": la, "b_s_per_token": lb, "c_s_per_context_token": lc,
            "mape": overall["linear"]["mape"], "p99_abs_error_s": overall["linear"]["p99_abs_error_s"],
            "errors_by_batch_class": by_class["linear"],
            "note": "best linear fit (e = 0) of the same grid: fairbatching sim --step-model linear",
        },
        "source": VIDUR_SOURCE,
        "ground_truth": gt,
    }
    debug = {"grid": grid, "y": y, "preds": preds, "overall": overall, "by_class": by_class}
    return prof, debug


def reference_profile() -> dict:
    return {
        "version": 1, "name": "ref-linear-h100",
        "a_s": 5.6e-3, "b_s_per_token": 21e-6, "c_s_per_context_token": 0.05e-6,
        "safety_factor": 1.0, "mape": 0.0, "p99_abs_error_s": 0.0,
        "hardware": "NVIDIA H100 80GB SXM",
        "model": "Llama-3-8B class (reference linear profile)",
        "method": "reference linear profile for cross-checks (DESIGN section 6)",
        "kv_cache_tokens": 450000, "max_num_seqs": 256,
        "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS, "block_size": BLOCK_SIZE,
        "ground_truth": None,
    }


# ----------------------------------------------------------------------------- report
def transfer_check(data: Path) -> list[tuple]:
    """Apply the L2->L3 shape scaling to A100 Llama-2-7b and compare with A100 Llama-3-8B."""
    n2, o2 = load_ops(data / "compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv")
    n3, o3 = load_ops(data / "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv")
    s = op_scale_l2_to_l3()
    scaled = {op: o2[op] * s[op] for op in OPS}
    out = []
    for n in [1, 64, 256, 512, 1024, 2048, 4096]:
        est = float(np.interp(n, n2, whole_model_ms(scaled, 32)))
        meas = float(np.interp(n, n3, whole_model_ms(o3, 32)))
        out.append((n, est, meas, est / meas - 1))
    return out


def error_row(name: str, form: str, cl: str, e: dict, *, signed: bool) -> str:
    """One row of a fit-error table (``e`` from ``error_stats``); ``signed`` adds the mean signed error."""
    row = (f"| {name} | {form} | {cl} | {e['n']} | {e['mape'] * 100:.1f} % | {e['p99_ape'] * 100:.1f} % | "
           f"{e['p99_abs_error_s'] * 1e3:.2f} | {e['max_abs_error_s'] * 1e3:.2f} |")
    return (row + f" {e['mean_signed_rel_error'] * 100:+.1f} % |") if signed else row


FORMS = ("linear", "quadratic")


def report(data: Path, profs: dict, dbg: dict) -> str:
    derived = [name for name, p in profs.items() if p.get("ground_truth") is not None]
    L = []
    L.append("### Fit errors (linear and quadratic fits vs ground truth)\n")
    L.append("| profile | model | class | n | MAPE | P99 abs % err | P99 abs err (ms) | max abs err (ms) "
             "| mean signed rel err |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name in derived:
        for form in FORMS:
            rows = [("all", dbg[name]["overall"][form])] + list(dbg[name]["by_class"][form].items())
            L.extend(error_row(name, form, cl, e, signed=True) for cl, e in rows)
    L.append("\n### Same fits restricted to steps of at most 2048 new tokens (typical chunk budgets)\n")
    L.append("| profile | model | class | n | MAPE | P99 abs % err | P99 abs err (ms) | max abs err (ms) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for name in derived:
        g, y = dbg[name]["grid"], dbg[name]["y"]
        small = g["new"] <= 2048
        for form in FORMS:
            pr = dbg[name]["preds"][form]
            for k, cl in [(-1, "all")] + list(enumerate(CLASSES)):
                s = small & ((g["cls"] == k) if k >= 0 else True)
                L.append(error_row(name, form, cl, error_stats(pr[s], y[s]), signed=False))
    L.append("\n### Fitted coefficients\n")
    L.append("| profile | model | a (ms) | b (us/token) | c (us/context token) | e (ns/pair) | kv_cache_tokens |")
    L.append("|---|---|---|---|---|---|---|")
    for name, p in profs.items():
        lin = p.get("linear_fit")
        if lin is not None:
            L.append(f"| {name} | linear | {lin['a_s'] * 1e3:.3f} | {lin['b_s_per_token'] * 1e6:.2f} | "
                     f"{lin['c_s_per_context_token'] * 1e6:.4f} | 0 | {p['kv_cache_tokens']} |")
        e = p.get("attn_prefill_s_per_token_sq", 0.0)
        L.append(f"| {name} | {'quadratic' if e else 'linear'} | {p['a_s'] * 1e3:.3f} | "
                 f"{p['b_s_per_token'] * 1e6:.2f} | {p['c_s_per_context_token'] * 1e6:.4f} | "
                 f"{e * 1e9:.4g} | {p['kv_cache_tokens']} |")

    h = profs["h100-llama3-8b"]
    gt = h["ground_truth"]
    hl = h["linear_fit"]
    lin = lambda n, ctx: hl["a_s"] + hl["b_s_per_token"] * n + hl["c_s_per_context_token"] * ctx  # noqa
    quad = lambda n, ctx, pairs: (h["a_s"] + h["b_s_per_token"] * n + h["c_s_per_context_token"] * ctx  # noqa
                                  + h["attn_prefill_s_per_token_sq"] * pairs)
    tab = np.asarray(gt["linear_ops_ms"], dtype=float)
    L.append("\n### Cross-check against published fits (H100)\n")
    L.append("| quantity | published | this work: linear fit / quadratic fit / truth | ratios |")
    L.append("|---|---|---|---|")
    for n in [512, 2048]:
        pub = 5.75e-3 + 17.25e-6 * n
        ours, ours_q = lin(n, n), quad(n, n, n * n / 2)
        tru = float(t_true(gt, n, 0, n * n / 2))
        L.append(f"| prefill-only step, {n} tokens, no prefix (vLLM 0.8.4 fit 5.75 ms + "
                 f"17.25 us/tok) | {pub * 1e3:.2f} ms | {ours * 1e3:.2f} / {ours_q * 1e3:.2f} / "
                 f"{tru * 1e3:.2f} ms | {ours / pub:.2f} / {ours_q / pub:.2f} / {tru / pub:.2f} |")
    for ctx in [512, 2048]:
        pub = 5.75e-3 + 6.0e-6 * 256
        ours, ours_q = lin(256, 256 * (ctx + 1)), quad(256, 256 * (ctx + 1), 0)
        tru = float(t_true(gt, 256, 256 * (ctx + 1), 0))
        L.append(f"| decode-only step, 256 decodes at context {ctx} (fit 5.75 ms + 6.00 us/decode)"
                 f" | {pub * 1e3:.2f} ms | {ours * 1e3:.2f} / {ours_q * 1e3:.2f} / {tru * 1e3:.2f} ms | "
                 f"{ours / pub:.2f} / {ours_q / pub:.2f} / {tru / pub:.2f} |")
    pub_slope = 17.25e-6
    slope, slope_q = hl["b_s_per_token"] + hl["c_s_per_context_token"], h["b_s_per_token"] + h["c_s_per_context_token"]
    L.append(f"| marginal prefill cost per token (no prefix, first token) | 17.25 us | "
             f"{slope * 1e6:.2f} / {slope_q * 1e6:.2f} us | {slope / pub_slope:.2f} / {slope_q / pub_slope:.2f} |")
    n2, o2 = load_ops(data / "compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv")
    l2 = whole_model_ms(o2, 32, emb_once=False) - o2["emb"] * 32  # SOURCE.md convention
    for n, pub in [(1, 5.6), (512, 12.0), (2048, 40.3)]:
        ours_l2 = float(np.interp(n, n2, l2))
        ours_l3 = float(interp_ext(n, tab[:, 0], tab[:, 1]))
        L.append(f"| Vidur H100 Llama-2-7B linear part at {n} tokens | {pub} ms | recomputed "
                 f"{ours_l2:.2f} ms; Llama-3-8B derived {ours_l3:.2f} ms | "
                 f"{ours_l2 / pub:.2f}; {ours_l3 / pub:.2f} |")
    L.append("\n### Transfer check on A100 (Llama-2-7b x shape ratio vs measured Llama-3-8B)\n")
    L.append("| tokens | scaled Llama-2-7b (ms) | measured Llama-3-8B (ms) | error |")
    L.append("|---|---|---|---|")
    for n, est, meas, err in transfer_check(data):
        L.append(f"| {n} | {est:.2f} | {meas:.2f} | {err * 100:+.1f} % |")
    return "\n".join(L)


def plot(path: Path, name: str, d: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g, y = d["grid"], d["y"] * 1e3
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for k, cl in enumerate(CLASSES):
        s = g["cls"] == k
        p = d["preds"]["quadratic"] * 1e3
        axes[0].scatter(y[s], p[s], s=9, alpha=0.7, label=cl)
        for ax, form in zip(axes[1:], FORMS):
            p = d["preds"][form] * 1e3
            ax.scatter(y[s], (p[s] - y[s]) / y[s] * 100, s=9, alpha=0.7, label=cl)
    lim = [0.9 * y.min(), 1.1 * y.max()]
    axes[0].plot(lim, lim, "k--", lw=0.8)
    axes[0].set(xscale="log", yscale="log", xlabel="ground-truth step time (ms)",
                ylabel="quadratic-model prediction (ms)", title=f"{name}: prediction vs truth")
    for ax, form in zip(axes[1:], FORMS):
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="ground-truth step time (ms)", ylabel="relative error (%)",
               title=f"relative error of the {form} fit", ylim=(-40, 40))
    axes[0].legend()
    fig.suptitle("profile derived from Vidur op medians + analytical attention "
                 "(bench/derive_profiles.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, obj: dict) -> None:
    """Indented JSON with each [num_tokens, ms] pair of the op table on one line."""
    text = json.dumps(obj, indent=1)
    text = re.sub(r"\[\s+(-?[\d.eE+-]+),\s+(-?[\d.eE+-]+)\s+\]", r"[\1, \2]", text)
    path.write_text(text + "\n")


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    data: Path = typer.Option(DEFAULT_DATA, help="Vidur profiling directory."),
    out: Path = typer.Option(DEFAULT_OUT, help="Output directory."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the PNG."),
    report_tables: bool = typer.Option(False, "--report", help="Print markdown tables."),
) -> None:
    if not (data / "compute").is_dir():
        print(f"no Vidur profiling data under {data}", file=sys.stderr)
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)

    profs, dbg = {}, {}
    n_h, ops_h = h100_llama3_ops(data)
    profs["h100-llama3-8b"], dbg["h100-llama3-8b"] = derive(
        "h100-llama3-8b", "h100", n_h, ops_h,
        "derived: vidur H100 Llama-2-7b linear ops x per-op Llama-3-8B/Llama-2-7b shape ratio "
        "(>4096 tokens: A100 Llama-3-8B growth) + analytical attention + LM head/host overhead; "
        "relative least-squares fit, with the prefill-attention term (linear fit in linear_fit)")
    n_a, ops_a = load_ops(data / "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv")
    profs["a100-llama3-8b"], dbg["a100-llama3-8b"] = derive(
        "a100-llama3-8b", "a100", n_a, ops_a,
        "derived: vidur A100 Meta-Llama-3-8B linear ops + analytical attention + LM head/host "
        "overhead; relative least-squares fit, with the prefill-attention term (linear fit in linear_fit)")
    profs["ref-linear-h100"] = reference_profile()

    for name, p in profs.items():
        write_json(out / f"{name}.json", p)
        print(f"{name}: a={p['a_s'] * 1e3:.3f} ms b={p['b_s_per_token'] * 1e6:.2f} us/tok "
              f"c={p['c_s_per_context_token'] * 1e6:.4f} us/ctx "
              f"e={p.get('attn_prefill_s_per_token_sq', 0.0) * 1e9:.4g} ns/pair mape={p['mape']:.3f} "
              f"p99={p['p99_abs_error_s'] * 1e3:.2f} ms kv={p['kv_cache_tokens']}")
    if not no_plot:
        try:
            plot(out / "fit_h100-llama3-8b.png", "h100-llama3-8b", dbg["h100-llama3-8b"])
        except ImportError:
            print("matplotlib not available: PNG skipped", file=sys.stderr)
    if report_tables:
        print(report(data, profs, dbg))


if __name__ == "__main__":
    app()
