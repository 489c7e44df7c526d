"""Tests for cluster.workload.traces: loaders, transformations and error reporting."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.workload.traces import (
    ColumnSpec,
    TraceError,
    TraceRequest,
    Workload,
    clip_outputs,
    clip_prompts,
    default_trace_dir,
    load_azure,
    load_named,
    load_sharegpt,
    load_trace,
    parse_columns,
    prepare,
    scale_rate,
    slice_window,
)

TRACE_DIR = default_trace_dir()
AZURE_DIR = TRACE_DIR / "azure_llm_2023"
SHAREGPT = TRACE_DIR / "sharegpt_stats" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
VIDUR_CONV = TRACE_DIR.parent / "vidur_profiling" / "processed_traces" / "splitwise_conv.csv"

needs_azure = pytest.mark.skipif(
    not AZURE_DIR.is_dir(), reason=f"shared Azure traces not present at {AZURE_DIR}"
)
needs_sharegpt = pytest.mark.skipif(
    not SHAREGPT.is_file(), reason=f"shared ShareGPT stats not present at {SHAREGPT}"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def make_workload(arrivals, prompts=None, outputs=None) -> Workload:
    n = len(arrivals)
    prompts = prompts or [100] * n
    outputs = outputs or list(range(1, n + 1))
    reqs = [TraceRequest(i, float(a), p, o) for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs))]
    return Workload(reqs, name="synthetic")


def arrivals(w: Workload) -> list[float]:
    return [r.arrival_s for r in w.requests]


def assert_well_formed(w: Workload) -> None:
    assert [r.request_id for r in w.requests] == list(range(len(w)))
    a = arrivals(w)
    assert all(x <= y for x, y in zip(a, a[1:]))
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in w.requests)


# --------------------------------------------------------------------------
# Real shared data
# --------------------------------------------------------------------------


@needs_azure
@pytest.mark.parametrize(
    "kind, rows, mean_prompt, mean_output",
    [("conv", 19_366, 1155, 211), ("code", 8_819, 2048, 28)],
)
def test_real_azure_trace(kind, rows, mean_prompt, mean_output):
    w = load_azure(kind)  # (no timing here: wall time on a shared machine is noise)
    assert w.name == f"azure-{kind}"
    assert len(w) == rows
    assert w.requests[0].arrival_s == 0.0
    assert_well_formed(w)
    assert np.mean([r.prompt_tokens for r in w.requests]) == pytest.approx(mean_prompt, abs=1)
    assert np.mean([r.output_tokens for r in w.requests]) == pytest.approx(mean_output, abs=1)
    # ~57-58 minutes of trace (SOURCE.md).
    assert 55 * 60 < w.duration_s < 60 * 60
    assert w.clamped_outputs == 0


@needs_azure
def test_azure_seven_digit_fractions_kept():
    w = load_azure("code")
    # 18:17:03.9799600 -> 18:17:04.0319600 -> 18:17:04.0781490
    assert w.requests[1].arrival_s == pytest.approx(0.052, abs=1e-9)
    assert w.requests[2].arrival_s == pytest.approx(0.098189, abs=1e-9)


@needs_azure
def test_load_named_azure_and_data_dir_env(monkeypatch):
    monkeypatch.setenv("FAIRBATCHING_TRACE_DIR", str(TRACE_DIR))
    assert len(load_named("azure-code")) == 8_819
    # An Azure CSV given as a path needs no --columns: recognised by its header.
    by_path = load_named(str(AZURE_DIR / "AzureLLMInferenceTrace_code.csv"))
    assert len(by_path) == 8_819


@needs_azure
@pytest.mark.skipif(not VIDUR_CONV.is_file(), reason="Vidur processed traces not present")
def test_vidur_copy_matches_azure():
    vidur = load_named(str(VIDUR_CONV))
    azure = load_azure("conv")
    assert len(vidur) == len(azure)
    np.testing.assert_allclose(vidur.arrivals(), azure.arrivals(), atol=1e-6)


def test_azure_missing_directory_is_trace_error(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        load_azure("conv", tmp_path)
    with pytest.raises(TraceError, match="unknown Azure trace kind"):
        load_azure("chat", tmp_path)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Generic loader
# --------------------------------------------------------------------------


def test_iso_timestamps_with_seven_fraction_digits(tmp_path):
    path = write(
        tmp_path,
        "t.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,10,1\n"
        "2023-11-16 18:17:04.0319601,20,2\n"
        "2023-11-16T18:17:05Z,30,3",  # no trailing newline, 'T' and 'Z'
    )
    w = load_trace(path, "TIMESTAMP,ContextTokens,GeneratedTokens")
    assert arrivals(w) == pytest.approx([0.0, 0.0520001, 1.02004], abs=1e-9)
    assert [r.prompt_tokens for r in w.requests] == [10, 20, 30]


def test_timestamps_with_offsets_are_compared_in_utc(tmp_path):
    path = write(
        tmp_path,
        "t.csv",
        "ts,p,o\n2024-01-01T12:00:00+01:00,1,1\n2024-01-01T11:00:01.5+00:00,2,2\n",
    )
    assert arrivals(load_trace(path, "ts,p,o")) == pytest.approx([0.0, 1.5])


def test_units_seconds_and_milliseconds(tmp_path):
    path = write(tmp_path, "t.csv", "t,in,out\n1000,5,5\n1500,6,6\n4000,7,7\n")
    assert arrivals(load_trace(path, "t,in,out")) == [0.0, 500.0, 3000.0]
    assert arrivals(load_trace(path, "t:s,in,out")) == [0.0, 500.0, 3000.0]
    assert arrivals(load_trace(path, "t:ms,in,out")) == pytest.approx([0.0, 0.5, 3.0])


def test_unit_suffix_on_iso_timestamps_is_rejected(tmp_path):
    path = write(tmp_path, "t.csv", "t,in,out\n2024-01-01 00:00:00,5,5\n")
    with pytest.raises(TraceError, match=r"line 2.*unit suffix"):
        load_trace(path, "t:ms,in,out")


def test_jsonl(tmp_path):
    lines = [
        {"timestamp": 2000, "input_length": 10, "output_length": 3, "extra": "x"},
        {"timestamp": 2250.0, "input_length": "11", "output_length": 4.0},
        {"timestamp": "2500", "input_length": 12, "output_length": 5},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    for name in ("t.jsonl", "t.json-lines", "t.txt"):  # .txt: sniffed as JSON-lines
        w = load_trace(write(tmp_path, name, text), "timestamp:ms,input_length,output_length")
        assert arrivals(w) == pytest.approx([0.0, 0.25, 0.5])
        assert [r.output_tokens for r in w.requests] == [3, 4, 5]


def test_csv_sniffed_without_extension(tmp_path):
    w = load_trace(write(tmp_path, "trace", "a,b,c\n0,1,1\n1,2,2\n"), "a,b,c")
    assert len(w) == 2


def test_unsorted_rows_sorted_stably(tmp_path):
    path = write(tmp_path, "t.csv", "t,p,o\n5,1,1\n3,2,2\n5,3,3\n3,4,4\n9,5,5\n")
    w = load_trace(path, "t,p,o")
    assert arrivals(w) == [0.0, 0.0, 2.0, 2.0, 6.0]
    assert [r.prompt_tokens for r in w.requests] == [2, 4, 1, 3, 5]  # ties keep file order
    assert_well_formed(w)


def test_zero_output_is_clamped_and_counted(tmp_path):
    path = write(tmp_path, "t.csv", "t,p,o\n0,5,0\n1,5,7\n2,5,0\n")
    w = load_trace(path, "t,p,o")
    assert [r.output_tokens for r in w.requests] == [1, 7, 1]
    assert w.clamped_outputs == 2


def test_load_named_file_requires_columns_unless_known(tmp_path):
    path = write(tmp_path, "t.csv", "t,p,o\n0,5,1\n")
    with pytest.raises(TraceError, match="--columns"):
        load_named(str(path))
    assert len(load_named(str(path), columns="t,p,o")) == 1
    azure_like = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4,2\n")
    assert len(load_named(str(azure_like))) == 1
    with pytest.raises(TraceError, match="neither a known trace"):
        load_named("no-such-trace")


# --------------------------------------------------------------------------
# parse_columns
# --------------------------------------------------------------------------


def test_parse_columns():
    assert parse_columns("timestamp:ms, input_length ,output_length") == ColumnSpec(
        "timestamp", "ms", "input_length", "output_length"
    )
    assert parse_columns("t,p,o").unit is None
    assert parse_columns("t:s,p,o").unit == "s"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("t", "expected comma-separated column names"),
        ("t,p,o,h,x", "expected comma-separated column names"),
        ("t,p,o,h:ms", "only the arrival column takes a unit"),
        ("t,,o", "expected comma-separated column names"),
        ("t:min,p,o", "unknown time unit 'min'"),
        (":ms,p,o", "arrival column name is empty"),
        ("t,p:ms,o", "only the arrival column"),
    ],
)
def test_parse_columns_errors(spec, message):
    with pytest.raises(TraceError, match=message):
        parse_columns(spec)


# --------------------------------------------------------------------------
# Malformed files: every error names the file and the line
# --------------------------------------------------------------------------

HEADER = "t,p,o\n"


@pytest.mark.parametrize(
    "name, text, line, fragment",
    [
        ("missing_column.csv", "t,p,out\n0,1,1\n", 1, "available columns: t, p, out"),
        ("non_numeric_prompt.csv", HEADER + "0,1,1\n1,abc,1\n", 3, "expected an integer"),
        ("fractional_tokens.csv", HEADER + "0,1.5,1\n", 2, "not an integer"),
        ("zero_prompt.csv", HEADER + "0,1,1\n1,1,1\n2,0,1\n", 4, "must be >= 1"),
        ("negative_prompt.csv", HEADER + "0,-3,1\n", 2, "must be >= 1"),
        ("negative_output.csv", HEADER + "0,1,1\n1,1,-2\n", 3, "negative"),
        ("nan_arrival.csv", HEADER + "0,1,1\nnan,1,1\n", 3, "not finite"),
        ("inf_arrival.csv", HEADER + "0,1,1\n1,1,1\ninf,1,1\n", 4, "not finite"),
        ("nan_tokens.csv", HEADER + "0,nan,1\n", 2, "not finite"),
        ("bad_number.csv", HEADER + "0,1,1\n1x,1,1\n", 3, "expected a number"),
        ("bad_timestamp.csv", HEADER + "2024-01-01 00:00:00,1,1\n2024-13-45 99:00:00,1,1\n", 3, "ISO-8601"),
        ("not_a_time.csv", HEADER + "yesterday,1,1\n", 2, "ISO-8601"),
        ("short_row.csv", HEADER + "0,1,1\n1,2\n", 3, "fields"),
        ("empty.csv", "", 1, "empty"),
        ("header_only.csv", HEADER, 2, "no data rows"),
        ("bad_json.jsonl", '{"t": 0, "p": 1, "o": 1}\n{"t": 1, "p": \n', 2, "invalid JSON"),
        ("json_array.jsonl", '{"t": 0, "p": 1, "o": 1}\n\n[1, 2, 3]\n', 3, "JSON object"),
        ("json_missing_key.jsonl", '{"t": 0, "p": 1, "o": 1}\n{"t": 1, "p": 1}\n', 2, "available keys: t, p"),
        ("json_bool.jsonl", '{"t": 0, "p": true, "o": 1}\n', 1, "expected an integer"),
        ("empty.jsonl", "\n\n", 1, "empty"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, name, text, line, fragment):
    path = write(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        load_trace(path, "t,p,o")
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}" in message
    assert fragment in message


def test_error_names_the_column(tmp_path):
    path = write(tmp_path, "t.csv", HEADER + "0,1,x\n")
    with pytest.raises(TraceError, match=r"line 2, column 'o'"):
        load_trace(path, "t,p,o")


def test_invalid_utf8_is_trace_error(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"t,p,o\n0,1,1\n\xff\xfe,1,1\n")
    with pytest.raises(TraceError, match=r"line 3.*UTF-8"):
        load_trace(path, "t,p,o")
    path.write_bytes(b'{"t": 0, "p": 1, "o": 1}\n{"t": "\xff", "p": 1, "o": 1}\n')
    with pytest.raises(TraceError, match=r"line 2.*UTF-8"):
        load_trace(path.rename(tmp_path / "bin.jsonl"), "t,p,o")


# --------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------


def test_scale_rate_halves_duration_and_keeps_gap_ratios():
    w = make_workload([0.0, 1.0, 1.5, 4.0, 10.0])
    fast = scale_rate(w, 2.0)
    assert fast.duration_s == pytest.approx(w.duration_s / 2)
    assert fast.rate_rps == pytest.approx(2 * w.rate_rps)
    gaps, fast_gaps = np.diff(arrivals(w)), np.diff(arrivals(fast))
    np.testing.assert_allclose(fast_gaps / fast_gaps.sum(), gaps / gaps.sum())
    assert arrivals(w) == [0.0, 1.0, 1.5, 4.0, 10.0]  # input untouched
    assert arrivals(scale_rate(w, 0.5)) == [0.0, 2.0, 3.0, 8.0, 20.0]


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "x"])
def test_scale_rate_rejects_bad_factor(bad):
    with pytest.raises(TraceError, match="rate_scale"):
        scale_rate(make_workload([0.0, 1.0]), bad)
    with pytest.raises(TraceError, match="rate_scale"):
        prepare(make_workload([0.0, 1.0]), rate_scale=bad)


def test_slice_window_rebases_and_renumbers():
    w = make_workload([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    s = slice_window(w, 2.0, 2.5)
    assert arrivals(s) == [0.0, 1.0, 2.0]
    assert [r.output_tokens for r in s.requests] == [3, 4, 5]  # requests 2, 3, 4
    assert_well_formed(s)
    assert arrivals(slice_window(w, 4.0, None)) == [0.0, 1.0]
    assert arrivals(slice_window(w, 2.0, 1.0)) == [0.0]  # end is exclusive
    assert len(slice_window(w, 100.0, 5.0)) == 0


@pytest.mark.parametrize(
    "start, duration, message",
    [(-1.0, 1.0, "start_s"), (math.nan, 1.0, "start_s"), (0.0, 0.0, "duration_s"),
     (0.0, -5.0, "duration_s"), (0.0, math.nan, "duration_s"), (0.0, math.inf, "duration_s")],
)
def test_slice_window_rejects_bad_window(start, duration, message):
    with pytest.raises(TraceError, match=message):
        slice_window(make_workload([0.0, 1.0]), start, duration)


def test_clip_prompts_counts():
    w = make_workload([0, 1, 2, 3], prompts=[10, 5000, 4096, 9000])
    c = clip_prompts(w, 4096)
    assert [r.prompt_tokens for r in c.requests] == [10, 4096, 4096, 4096]
    assert c.clipped_prompts == 2
    assert clip_prompts(c, 100).clipped_prompts == 5  # counts accumulate
    for bad in (0, -1, 1.5, None):
        with pytest.raises(TraceError, match="max_prompt_tokens"):
            clip_prompts(w, bad)  # type: ignore[arg-type]


def test_clip_outputs_counts_as_a_clients_max_tokens_would_clip():
    w = make_workload([0, 1, 2], prompts=[10, 20, 30], outputs=[5, 40, 32])
    c = clip_outputs(w, 32)
    assert [r.output_tokens for r in c.requests] == [5, 32, 32] and c.clipped_outputs == 1
    assert [r.prompt_tokens for r in c.requests] == [10, 20, 30] and c.clipped_prompts == 0
    assert prepare(w, max_output_tokens=4).clipped_outputs == 3
    for bad in (0, 2.5, True):
        with pytest.raises(TraceError, match="max_output_tokens"):
            clip_outputs(w, bad)  # type: ignore[arg-type]


def test_prepare_order_slice_then_scale_then_clip():
    w = make_workload([0.0, 10.0, 20.0, 30.0, 40.0], prompts=[1, 2, 300, 400, 5])
    p = prepare(w, start_s=10.0, duration_s=25.0, rate_scale=2.0, max_prompt_tokens=100)
    # Window [10, 35) in original time -> arrivals 0, 10, 20 -> scaled by 2.
    assert arrivals(p) == [0.0, 5.0, 10.0]
    assert [r.prompt_tokens for r in p.requests] == [2, 100, 100]
    assert p.clipped_prompts == 2
    assert_well_formed(p)
    same = prepare(w)
    assert same is not w and same.requests == w.requests


# --------------------------------------------------------------------------
# ShareGPT
# --------------------------------------------------------------------------


@needs_sharegpt
def test_sharegpt_poisson_rate_and_determinism():
    w = load_sharegpt("poisson", rate_rps=20.0, num_requests=20_000, seed=7)
    assert len(w) == 20_000 and w.name == "sharegpt-poisson"
    assert w.requests[0].arrival_s == 0.0
    assert_well_formed(w)
    assert w.rate_rps == pytest.approx(20.0, rel=0.03)
    gaps = np.diff(w.arrivals())
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: cv 1
    again = load_sharegpt("poisson", rate_rps=20.0, num_requests=20_000, seed=7)
    assert again.requests == w.requests
    other = load_sharegpt("poisson", rate_rps=20.0, num_requests=20_000, seed=8)
    assert other.requests != w.requests


@needs_sharegpt
def test_sharegpt_gamma_cv():
    w = load_sharegpt("gamma", rate_rps=5.0, num_requests=30_000, seed=1, cv=2.0)
    gaps = np.diff(w.arrivals())
    assert w.rate_rps == pytest.approx(5.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.1)
    # Same seed, same lengths whatever the arrival process.
    p = load_sharegpt("poisson", rate_rps=5.0, num_requests=30_000, seed=1)
    assert [r.prompt_tokens for r in p.requests] == [r.prompt_tokens for r in w.requests]


@needs_sharegpt
def test_load_named_sharegpt():
    w = load_named("sharegpt-gamma", rate_rps=2.0, num_requests=50, seed=3, cv=3.0)
    assert len(w) == 50 and w.name == "sharegpt-gamma"
    with pytest.raises(TraceError, match="rate"):
        load_named("sharegpt-poisson")


def test_sharegpt_synthetic_file_and_argument_errors(tmp_path):
    path = write(
        tmp_path, "s.csv",
        "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n10,0,10,inf\n20,5,25,4\n",
    )
    w = load_sharegpt("poisson", 1.0, 100, seed=0, path=path)
    assert {r.prompt_tokens for r in w.requests} <= {10, 20}
    assert {r.output_tokens for r in w.requests} <= {1, 5}
    assert w.clamped_outputs == 1
    with pytest.raises(TraceError, match="rate_rps"):
        load_sharegpt("poisson", 0.0, 10, seed=0, path=path)
    with pytest.raises(TraceError, match="num_requests"):
        load_sharegpt("poisson", 1.0, 0, seed=0, path=path)
    with pytest.raises(TraceError, match="cv"):
        load_sharegpt("gamma", 1.0, 10, seed=0, cv=-1.0, path=path)
    with pytest.raises(TraceError, match="arrival process"):
        load_sharegpt("uniform", 1.0, 10, seed=0, path=path)  # type: ignore[arg-type]
    bad = write(tmp_path, "bad.csv", "num_prefill_tokens,num_decode_tokens\n10,5\nten,5\n")
    with pytest.raises(TraceError, match="line 3"):
        load_sharegpt("poisson", 1.0, 10, seed=0, path=bad)


# --------------------------------------------------------------------------
# Property: prepare() never reorders and keeps exactly the window's requests
# --------------------------------------------------------------------------

finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 50.0, **finite), min_size=0, max_size=60),
    start=st.floats(0.0, 500.0, **finite),
    duration=st.one_of(st.none(), st.floats(1e-3, 500.0, **finite)),
    rate_scale=st.floats(0.01, 100.0, **finite),
    max_prompt=st.one_of(st.none(), st.integers(1, 5000)),
    prompts=st.lists(st.integers(1, 10_000), min_size=60, max_size=60),
)
def test_prepare_keeps_order_and_window_count(gaps, start, duration, rate_scale, max_prompt, prompts):
    times = np.cumsum([0.0] + gaps).tolist()
    n = len(times)
    w = make_workload(times, prompts=prompts[:n], outputs=list(range(1, n + 1)))
    out = prepare(w, start_s=start, duration_s=duration, rate_scale=rate_scale,
                  max_prompt_tokens=max_prompt)

    end = math.inf if duration is None else start + duration
    expected = [r for r in w.requests if start <= r.arrival_s < end]
    assert len(out) == len(expected)
    assert_well_formed(out)
    # Output tokens are unique tags: same requests, same order.
    assert [r.output_tokens for r in out.requests] == [r.output_tokens for r in expected]
    assert all(r.arrival_s >= 0 for r in out.requests)
    if max_prompt is not None:
        assert all(r.prompt_tokens <= max_prompt for r in out.requests)
        assert out.clipped_prompts == sum(r.prompt_tokens > max_prompt for r in expected)


# --------------------------------------------------------------------------
# long-context (issue 10): Azure conv arrivals and outputs, prompts mapped onto 8k-16k
# --------------------------------------------------------------------------


@needs_azure
def test_long_context_lengths_lie_in_range_and_keep_the_conv_arrivals_and_outputs():
    from cluster.workload.traces import LONG_CONTEXT_PROMPTS, load_long_context

    conv = load_azure("conv")
    w = load_long_context()
    lo, hi = LONG_CONTEXT_PROMPTS
    prompts = np.array([r.prompt_tokens for r in w.requests])
    assert (lo, hi) == (8192, 16384) and len(w) == len(conv) == 19_366
    assert prompts.min() == lo and prompts.max() == hi
    assert arrivals(w) == arrivals(conv)
    assert [r.output_tokens for r in w.requests] == [r.output_tokens for r in conv.requests]
    # Affine: the order of prompt lengths is the conv trace's (ties aside), the mean as documented.
    conv_prompts = np.array([r.prompt_tokens for r in conv.requests])
    assert np.all(np.diff(prompts[np.argsort(conv_prompts, kind="stable")]) >= 0)
    assert 8_800 < prompts.mean() < 8_950
    assert w.name == "long-context" and "affinely" in w.source


@needs_azure
def test_long_context_is_deterministic_by_seed_and_a_seed_permutes_the_pairs():
    from cluster.workload.traces import load_long_context

    a, b = load_long_context(seed=3), load_named("long-context", seed=3)
    assert a.requests == b.requests
    base = load_long_context(seed=0)
    other = load_long_context(seed=4)
    assert arrivals(other) == arrivals(base)
    pairs = lambda w: [(r.prompt_tokens, r.output_tokens) for r in w.requests]  # noqa: E731
    assert pairs(other) != pairs(base) and sorted(pairs(other)) == sorted(pairs(base))
    with pytest.raises(TraceError, match="prompt_range"):
        load_long_context(prompt_range=(100, 50))


# --------------------------------------------------------------------------
# Coarse timestamps and files of lengths only (issue: a simulator without favours)
# --------------------------------------------------------------------------


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_spread_ties_spreads_each_group_over_the_resolution_and_prepare_warns(tmp_path):
    from cluster.workload.traces import TieWarning, prepare, spread_ties, tie_fraction

    rows = "t,p,o\n" + "".join(f"{t},{10 + i},5\n" for i, t in enumerate([0, 0, 0, 0, 1, 2, 2]))
    w = load_trace(_write(tmp_path, "coarse.csv", rows), "t,p,o")
    assert tie_fraction(w) == pytest.approx(4 / 7)
    spread = spread_ties(w)
    assert [r.arrival_s for r in spread.requests] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 2, 2.5])
    assert [r.prompt_tokens for r in spread.requests] == [10, 11, 12, 13, 14, 15, 16]  # file order kept
    with pytest.warns(TieWarning, match="57% of arrivals share a timestamp.*--spread-ties"):
        prepare(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tie_fraction(prepare(w, spread=True)) == 0.0


@pytest.mark.parametrize("arrivals,cv", [("poisson", 1.0), ("gamma:3", 3.0)])
def test_a_file_of_lengths_only_gets_seeded_synthetic_arrivals(tmp_path, arrivals, cv):
    path = _write(tmp_path, "lengths.csv", "in,out\n" + "".join(f"{100 + i},{1 + i % 7}\n" for i in range(4000)))
    w = load_trace(path, "in,out", arrivals=arrivals, arrival_rate_rps=20.0, seed=3)
    again = load_trace(path, "in,out", arrivals=arrivals, arrival_rate_rps=20.0, seed=3)
    assert [r.arrival_s for r in w.requests] == [r.arrival_s for r in again.requests]
    assert [r.prompt_tokens for r in w.requests] == list(range(100, 4100))  # file order, every row
    gaps = np.diff(w.arrivals())
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.1) and gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.15)
    first = load_trace(path, "in,out", arrivals=arrivals, arrival_rate_rps=20.0, num_requests=10)
    assert len(first) == 10 and first.requests[-1].prompt_tokens == 109


@pytest.mark.parametrize("kwargs,words", [
    (dict(columns="in,out"), "--arrivals poisson|gamma:CV and --arrival-rate-rps"),
    (dict(columns="in,out", arrivals="poisson"), "synthetic arrivals need --arrival-rate-rps R"),
    (dict(columns="in,out", arrival_rate_rps=2.0), "synthetic arrivals need --arrivals poisson|gamma:CV"),
    (dict(columns="in,out", arrivals="weibull", arrival_rate_rps=1.0), "expected poisson or gamma:CV"),
    (dict(columns="in,out", arrivals="gamma:0", arrival_rate_rps=1.0), "CV must be a positive"),
    (dict(columns="in,out", arrivals="poisson", arrival_rate_rps=-1.0), "arrival_rate_rps must be a positive"),
    (dict(columns="t,in,out", arrivals="poisson", arrival_rate_rps=1.0), "has an arrival column"),
    (dict(columns="in,out", arrivals="poisson", arrival_rate_rps=1.0, num_requests=0), "num_requests"),
    (dict(columns="in:ms,out", arrivals="poisson", arrival_rate_rps=1.0), "only an arrival column takes a unit"),
])
def test_synthetic_arrival_mistakes_are_named(tmp_path, kwargs, words):
    path = _write(tmp_path, "l.csv", "t,in,out\n0,5,5\n1,6,6\n")
    columns = kwargs.pop("columns")
    with pytest.raises(TraceError, match=re.escape(words)):
        load_trace(path, columns, **kwargs)


def test_sim_runs_a_lengths_only_file_with_synthetic_arrivals(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli.sim import app

    path = _write(tmp_path, "lengths.csv", "in,out\n" + "".join(f"{50 + i % 300},{1 + i % 20}\n" for i in range(400)))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", "--trace", str(path), "--columns", "in,out", "--arrivals", "gamma:2",
                                      "--arrival-rate-rps", "5", "--num-requests", "120", "--profile",
                                      "ref-linear-h100", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["requests"] == 120 and report["offered_rps"] == pytest.approx(5.0, rel=0.4)
