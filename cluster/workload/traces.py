"""Request workloads: load real or synthetic traces and reshape them for replay.

A *workload* is an arrival-ordered list of requests, each with an arrival time
(seconds since the start of the trace) and prompt / output token counts. The
discrete-event simulator and the load generator both replay the same
:class:`Workload`, so everything that decides *which* requests arrive *when*
lives here, in pure Python + NumPy.

Sources
  * ``load_azure("conv" | "code")``: the Azure LLM inference trace 2023
    (Splitwise), wall-clock timestamps made relative to the first request.
  * ``load_sharegpt("poisson" | "gamma", ...)``: ShareGPT (prompt, output)
    length pairs sampled with a seeded generator, with synthetic arrivals.
  * ``load_long_context(seed)``: the Azure conv trace's arrivals and output
    lengths with its prompt lengths mapped affinely onto 8k-16k tokens (a
    long-context conversation workload; see the function's docstring).
  * ``load_trace(path, "ARRIVAL[:s|ms],PROMPT,OUTPUT[,HASHES]")``: any CSV or JSON-lines
    file with one request per row; the optional fourth column holds the
    prompt's KV block hashes (a JSON list of ints, one per block of the
    simulator's ``--prefix-block-tokens`` tokens, chained: equal hashes mean equal
    prefixes), as the multi-turn generator writes them (``cluster.workload.multiturn``).
  * ``load_named(name_or_path, ...)``: the entry point used by command lines.

Transformations (``slice_window``, ``scale_rate``, ``clip_prompts`` and
``prepare``, which applies them in that order) never mutate their input; they
return a new Workload whose request ids are renumbered 0..n-1 in arrival order.

Conventions shared by every loader
  * A prompt of 0 tokens (or fewer) is an error: a request without a prompt
    cannot be prefilled.
  * An output of 0 tokens is *clamped to 1* and counted in
    ``Workload.clamped_outputs``. Real traces record 0 generated tokens for
    requests that failed or were cancelled; they still arrived and still cost a
    prefill, so dropping them would distort the arrival process, while every
    served request produces at least one token. Negative outputs are errors.
  * Malformed input raises :class:`TraceError` (a ``ValueError``) whose message
    names the file, the 1-based line number (the CSV header is line 1) and the
    column.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple

import numpy as np

__all__ = [
    "TraceError",
    "TraceRequest",
    "Workload",
    "ColumnSpec",
    "parse_columns",
    "default_trace_dir",
    "load_azure",
    "load_sharegpt",
    "load_long_context",
    "load_trace",
    "load_named",
    "slice_window",
    "scale_rate",
    "clip_prompts",
    "prepare",
    "spread_ties",
    "tie_fraction",
    "parse_arrivals",
    "synthetic_arrivals",
    "NAMED_TRACES",
]

#: Environment variable that overrides where the shared traces live.
TRACE_DIR_ENV = "FAIRBATCHING_TRACE_DIR"

AZURE_FILES = {
    "conv": "AzureLLMInferenceTrace_conv.csv",
    "code": "AzureLLMInferenceTrace_code.csv",
}
AZURE_COLUMNS = "TIMESTAMP,ContextTokens,GeneratedTokens"
SHAREGPT_FILE = "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
SHAREGPT_DEFAULT_REQUESTS = 2000  # requests of a synthetic ShareGPT trace when none are asked for
SHAREGPT_PROMPT, SHAREGPT_OUTPUT = "num_prefill_tokens", "num_decode_tokens"

#: Headers recognised by ``load_named`` when a file is given without --columns.
#: Vidur's processed copies of the Azure traces use relative seconds.
KNOWN_HEADERS: dict[tuple[str, ...], str] = {
    ("TIMESTAMP", "ContextTokens", "GeneratedTokens"): AZURE_COLUMNS,
    ("arrived_at", "num_prefill_tokens", "num_decode_tokens"):
        "arrived_at:s,num_prefill_tokens,num_decode_tokens",
}

NAMED_TRACES = ("azure-conv", "azure-code", "sharegpt-poisson", "sharegpt-gamma", "long-context")

#: Prompt range of the ``long-context`` workload, in tokens.
LONG_CONTEXT_PROMPTS = (8192, 16384)

_JSONL_SUFFIXES = {".jsonl", ".json-lines", ".ndjson"}
_UNIT_SCALE = {"s": 1.0, "ms": 1e-3}


class TraceError(ValueError):
    """A trace file or a workload parameter is malformed.

    File errors carry the file path and the 1-based line number in the message.
    """


# --------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace."""

    request_id: int  # 0..n-1 in arrival order
    arrival_s: float  # seconds since the start of the (sliced) trace, non-decreasing
    prompt_tokens: int  # >= 1
    output_tokens: int  # >= 1
    hash_ids: tuple[int, ...] = ()  # the prompt's KV block hashes in order (empty: none known)


@dataclass
class Workload:
    """An arrival-ordered list of requests plus where it came from."""

    requests: list[TraceRequest]
    name: str  # e.g. "azure-conv"
    clipped_prompts: int = 0  # how many prompts were clipped by max_prompt_tokens
    clipped_outputs: int = 0  # how many outputs were clipped by max_output_tokens
    source: str = ""  # file path or generator description
    # Outputs of 0 tokens clamped to 1 when the source was loaded (counted over
    # the whole source, not re-counted after slicing).
    clamped_outputs: int = 0
    # Human-readable record of the transformations applied, in order.
    transforms: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        """Time from the trace origin (t=0) to the last arrival; 0 if empty."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate: 1 / (mean inter-arrival gap); 0 with < 2 arrivals
        or when all arrivals coincide."""
        if len(self.requests) < 2:
            return 0.0
        span = self.requests[-1].arrival_s - self.requests[0].arrival_s
        return (len(self.requests) - 1) / span if span > 0 else 0.0

    def arrivals(self) -> np.ndarray:
        """Arrival times as a float64 array (a copy)."""
        return np.fromiter((r.arrival_s for r in self.requests), float, len(self.requests))


def _renumbered(
    arrivals: list[float], prompts: list[int], outputs: list[int], hashes: list[tuple[int, ...]] | None = None,
) -> list[TraceRequest]:
    """Build requests numbered 0..n-1; inputs must already be in arrival order."""
    if hashes is None:
        return [
            TraceRequest(i, float(a), int(p), int(o))
            for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs))
        ]
    return [
        TraceRequest(i, float(a), int(p), int(o), h)
        for i, (a, p, o, h) in enumerate(zip(arrivals, prompts, outputs, hashes))
    ]


# --------------------------------------------------------------------------
# Column specification
# --------------------------------------------------------------------------


class ColumnSpec(NamedTuple):
    """Parsed ``[ARRIVAL[:unit],]PROMPT,OUTPUT[,HASHES]``; ``unit`` is None when omitted, ``arrival``
    None for a file of lengths only (its arrivals are synthetic: ``synthetic_arrivals``), ``hashes``
    None without a block-hash column."""

    arrival: str | None
    unit: str | None
    prompt: str
    output: str
    hashes: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        lengths = (self.prompt, self.output)
        names = lengths if self.arrival is None else (self.arrival, *lengths)
        return names if self.hashes is None else (*names, self.hashes)


def parse_columns(spec: str) -> ColumnSpec:
    """Parse ``"ARRIVAL[:s|ms],PROMPT,OUTPUT"`` (e.g. ``"ts:ms,in_len,out_len"``), the same with a
    fourth column of block hashes (``"ts:ms,in_len,out_len,hash_ids"``), or ``"PROMPT,OUTPUT"``
    for a file of lengths only.

    Names are stripped of surrounding whitespace. Raises TraceError if there are
    not two to four non-empty names, or the unit is not ``s`` or ``ms``.
    Only the arrival column may carry a unit.
    """
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (2, 3, 4) or not all(parts):
        raise TraceError(
            f"--columns {spec!r}: expected comma-separated column names "
            "ARRIVAL[:s|ms],PROMPT,OUTPUT[,HASHES] (e.g. 'timestamp:ms,input_length,output_length' "
            "or 'timestamp:ms,input_length,output_length,hash_ids'), "
            "or PROMPT,OUTPUT for a file of lengths only (with --arrivals)"
        )
    hashes = None
    if len(parts) == 4:
        hashes = parts.pop()
        if ":" in hashes:
            raise TraceError(f"--columns {spec!r}: only the arrival column takes a unit, not {hashes!r}")
    if len(parts) == 2:
        for name in parts:
            if ":" in name:
                raise TraceError(f"--columns {spec!r}: only an arrival column takes a unit, not {name!r}")
        return ColumnSpec(None, None, parts[0], parts[1])
    arrival, unit = parts[0], None
    if ":" in arrival:
        arrival, unit = (x.strip() for x in arrival.rsplit(":", 1))
        if unit not in _UNIT_SCALE:
            raise TraceError(
                f"--columns {spec!r}: unknown time unit {unit!r} for the arrival "
                f"column; use one of {', '.join(_UNIT_SCALE)}"
            )
        if not arrival:
            raise TraceError(f"--columns {spec!r}: the arrival column name is empty")
    for name in parts[1:]:
        if ":" in name:
            raise TraceError(
                f"--columns {spec!r}: only the arrival column takes a unit, not {name!r}"
            )
    return ColumnSpec(arrival, unit, parts[1], parts[2], hashes)


# --------------------------------------------------------------------------
# Reading rows (CSV / JSON-lines) with line numbers
# --------------------------------------------------------------------------


def _fail(path: Path, line: int, column: str | None, message: str) -> TraceError:
    where = f"{path}: line {line}"
    if column is not None:
        where += f", column {column!r}"
    return TraceError(f"{where}: {message}")


def _detect_format(path: Path) -> Literal["csv", "jsonl"]:
    """By extension (.csv / .jsonl / .json-lines / .ndjson), else sniff: a file
    whose first non-blank character is '{' is JSON-lines, anything else CSV."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    try:
        with _open(path) as f:
            for line in f:
                if line.strip():
                    return "jsonl" if line.lstrip().startswith("{") else "csv"
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    raise _fail(path, 1, None, "the file is empty")


def _open(path: Path):
    try:
        # newline="" lets the csv module handle quoted newlines itself.
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot open: {e.strerror}") from None


def _utf8_error(path: Path) -> TraceError:
    """The error for a file that is not UTF-8, naming the first bad line.

    The text decoder works on buffered chunks, so the line being parsed when it
    fails is not the culprit; re-scan the raw bytes line by line instead.
    """
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return _fail(path, line, None, f"not UTF-8 text (byte {e.start + 1} of the line)")
    return _fail(path, 1, None, "not UTF-8 text")


def _iter_csv(path: Path, names: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, [value per name]) for every non-blank data row."""
    with _open(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)  # skip leading blank lines
            if header is None:
                raise _fail(path, 1, None, "the file is empty (no header line)")
            header_line = reader.line_num
            header = [h.strip() for h in header]
            index = {}
            for name in names:
                if name not in header:
                    raise _fail(
                        path, header_line, name,
                        f"no such column; available columns: {', '.join(header)}",
                    )
                index[name] = header.index(name)
            cols = [index[n] for n in names]
            rows = 0
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                line = reader.line_num
                if len(row) <= max(cols):
                    missing = next(n for n, c in zip(names, cols) if c >= len(row))
                    raise _fail(
                        path, line, missing,
                        f"row has {len(row)} fields but the header has {len(header)}",
                    )
                rows += 1
                yield line, [row[c] for c in cols]
            if rows == 0:
                raise _fail(path, header_line + 1, None, "the file has no data rows")
        except csv.Error as e:
            raise _fail(path, reader.line_num, None, f"malformed CSV: {e}") from None
        except UnicodeDecodeError:
            raise _utf8_error(path) from None


def _iter_jsonl(path: Path, names: tuple[str, ...]) -> Iterator[tuple[int, list[Any]]]:
    """Yield (line number, [value per name]) for every non-blank JSON line."""
    with _open(path) as f:
        line = rows = 0
        try:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise _fail(path, line, None, f"invalid JSON: {e.msg}") from None
                if not isinstance(obj, dict):
                    raise _fail(path, line, None, "expected a JSON object per line")
                for name in names:
                    if name not in obj:
                        raise _fail(
                            path, line, name,
                            f"no such key; available keys: {', '.join(map(str, obj))}",
                        )
                rows += 1
                yield line, [obj[n] for n in names]
            if rows == 0:
                raise _fail(path, 1, None, "the file is empty (no JSON lines)")
        except UnicodeDecodeError:
            raise _utf8_error(path) from None


def _iter_rows(path: Path, names: tuple[str, ...]) -> Iterator[tuple[int, list[Any]]]:
    fmt = _detect_format(path)
    return _iter_csv(path, names) if fmt == "csv" else _iter_jsonl(path, names)


# --------------------------------------------------------------------------
# Value parsing
# --------------------------------------------------------------------------


def _parse_number(value: Any) -> float | None:
    """A finite or non-finite float, or None if the value is not numeric."""
    if isinstance(value, bool):
        return None  # JSON true/false are not counts or times
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _parse_tokens(value: Any, path: Path, line: int, column: str) -> int:
    """A token count: an integer (or an integral float such as '12.0')."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)  # fast path for the common case
        except ValueError:
            pass
    number = _parse_number(value)
    if number is None:
        raise _fail(path, line, column, f"expected an integer token count, got {value!r}")
    if not math.isfinite(number):
        raise _fail(path, line, column, f"token count is not finite: {value!r}")
    if not number.is_integer():
        raise _fail(path, line, column, f"token count is not an integer: {value!r}")
    return int(number)


# Split off the fractional seconds ourselves: Python < 3.11 rejects anything but
# 3 or 6 digits, and even 3.11+ drops the 7th digit of the Azure timestamps
# (``18:17:03.9799600``). Group 1: date+time, 2: fraction digits, 3: zone.
_FRACTION = re.compile(r"^(.*\d:\d\d)\.(\d+)(.*)$")


def _parse_timestamp(value: str) -> int | None:
    """ISO-8601 timestamp -> integer nanoseconds since the epoch, or None.

    Integer nanoseconds keep differences exact (digits past the 9th are
    truncated); a single epoch float (~1.7e9 s) would blur the 7th digit.
    Naive timestamps are taken as UTC (only differences matter, and UTC has no
    DST jumps).
    """
    text = value.strip()
    nanos = 0
    m = _FRACTION.match(text)
    if m:
        text = m.group(1) + m.group(3)
        nanos = int(m.group(2)[:9].ljust(9, "0"))
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # fromisoformat may itself have parsed a fraction (e.g. "03,5"): keep it.
    whole = int(dt.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + dt.microsecond * 1000 + nanos


class _Arrivals:
    """Turns raw arrival values into seconds relative to the earliest one.

    The first data row decides whether the column holds numbers or ISO
    timestamps; every later row must agree.
    """

    def __init__(self, path: Path, column: str, unit: str | None):
        self.path, self.column, self.unit = path, column, unit
        self.mode: Literal["number", "timestamp"] | None = None
        self.numbers: list[float] = []
        self.nanos: list[int] = []

    def add(self, value: Any, line: int) -> None:
        if self.mode is None:
            self.mode = "number" if _parse_number(value) is not None else "timestamp"
            if self.mode == "timestamp" and self.unit is not None:
                # A unit on ISO timestamps is a mistake in the spec; reject it
                # instead of silently ignoring it.
                raise _fail(
                    self.path, line, self.column,
                    f"holds ISO timestamps ({value!r}); the unit suffix ':{self.unit}' "
                    "only applies to numeric arrivals, drop it",
                )
        if self.mode == "number":
            number = _parse_number(value)
            if number is None:
                raise _fail(self.path, line, self.column, f"expected a number, got {value!r}")
            if not math.isfinite(number):
                raise _fail(self.path, line, self.column, f"arrival is not finite: {value!r}")
            self.numbers.append(number)
        else:
            stamp = _parse_timestamp(value) if isinstance(value, str) else None
            if stamp is None:
                raise _fail(
                    self.path, line, self.column,
                    f"expected an ISO-8601 timestamp (e.g. '2023-11-16 18:17:03.9799600'), "
                    f"got {value!r}",
                )
            self.nanos.append(stamp)

    def relative_seconds(self) -> np.ndarray:
        """Arrivals in seconds, shifted so the earliest is 0 (file order kept)."""
        if self.mode == "number":
            scale = _UNIT_SCALE[self.unit or "s"]
            t = np.asarray(self.numbers, dtype=float)
            return (t - t.min()) * scale
        ns = np.asarray(self.nanos, dtype=np.int64)
        return (ns - ns.min()) / 1e9


class _Lengths:
    """Collects validated (prompt, output) token counts.

    Prompts must be >= 1. Outputs of 0 are clamped to 1 and counted (see the
    module docstring for why); negative outputs are errors.
    """

    def __init__(self, path: Path, prompt_column: str, output_column: str):
        self.path, self.prompt_column, self.output_column = path, prompt_column, output_column
        self.prompts: list[int] = []
        self.outputs: list[int] = []
        self.clamped = 0

    def add(self, prompt: Any, output: Any, line: int) -> None:
        p = _parse_tokens(prompt, self.path, line, self.prompt_column)
        if p < 1:
            raise _fail(self.path, line, self.prompt_column, f"prompt token count {p} must be >= 1")
        o = _parse_tokens(output, self.path, line, self.output_column)
        if o < 0:
            raise _fail(self.path, line, self.output_column, f"output token count {o} is negative")
        if o == 0:
            o = 1
            self.clamped += 1
        self.prompts.append(p)
        self.outputs.append(o)


def _parse_hash_ids(value: Any, path: Path, line: int, column: str) -> tuple[int, ...]:
    """A prompt's block hashes: a JSON list of integers (a list already, from JSON-lines)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail(path, line, column, f"expected a JSON list of integer block hashes: {e.msg}") from None
    if not isinstance(value, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in value):
        raise _fail(path, line, column, f"expected a JSON list of integer block hashes, got {str(value)[:60]!r}")
    return tuple(value)


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------


def default_trace_dir() -> Path:
    """$FAIRBATCHING_TRACE_DIR, else ``shared/data/traces`` beside the repo root."""
    env = os.environ.get(TRACE_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "traces"


def _find(data_dir: Path, subdir: str, filename: str) -> Path:
    """``data_dir/subdir/filename`` if present, else ``data_dir/filename``."""
    nested = data_dir / subdir / filename
    return nested if nested.exists() else data_dir / filename


def load_trace(
    path: str | Path,
    columns: str | ColumnSpec,
    *,
    name: str | None = None,
    arrivals: str | None = None,
    arrival_rate_rps: float | None = None,
    num_requests: int | None = None,
    seed: int = 0,
) -> Workload:
    """Load a CSV or JSON-lines trace with one request per row.

    ``columns`` is ``"ARRIVAL[:s|ms],PROMPT,OUTPUT[,HASHES]"``. The arrival column holds
    either numbers (seconds, or milliseconds with ``:ms``) or ISO-8601
    timestamps (then no unit suffix is allowed: TraceError). The result has
    arrivals relative to the earliest one (so the first is 0.0), rows sorted
    stably by arrival, ids 0..n-1, prompts >= 1, and outputs >= 1 (zeros
    clamped and counted in ``clamped_outputs``). Raises TraceError, naming the
    file, line and column, on any malformed input.

    A file of lengths only (``columns`` ``"PROMPT,OUTPUT"``) gets synthetic arrivals in
    file order: ``arrivals`` (``poisson`` or ``gamma:CV``) at ``arrival_rate_rps``
    (``synthetic_arrivals``, seeded by ``seed``); both are required then and refused
    otherwise. ``num_requests`` keeps the first N rows of the file (any file). A HASHES
    column holds each prompt's block hashes as a JSON list of ints (``TraceRequest.hash_ids``).
    """
    path = Path(path)
    spec = columns if isinstance(columns, ColumnSpec) else parse_columns(columns)
    if num_requests is not None and (isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer))
                                     or num_requests < 1):
        raise TraceError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    if spec.arrival is None and (arrivals is None or arrival_rate_rps is None):
        missing = ("--arrivals poisson|gamma:CV and --arrival-rate-rps R" if arrivals is None and arrival_rate_rps is None
                   else "--arrivals poisson|gamma:CV" if arrivals is None else "--arrival-rate-rps R (their mean rate)")
        raise TraceError(f"{path}: --columns names no arrival column; synthetic arrivals need {missing}")
    if spec.arrival is not None and arrivals is not None:
        raise TraceError(f"{path}: --arrivals makes synthetic arrivals for a file of lengths only; "
                         f"this one has an arrival column ({spec.arrival!r})")
    stamps = _Arrivals(path, spec.arrival, spec.unit) if spec.arrival is not None else None
    lengths = _Lengths(path, spec.prompt, spec.output)
    hashes: list[tuple[int, ...]] | None = None if spec.hashes is None else []
    first_length = 0 if spec.arrival is None else 1
    for line, row in _iter_rows(path, spec.names):
        if num_requests is not None and len(lengths.prompts) >= num_requests:
            break
        if stamps is not None:
            stamps.add(row[0], line)
        lengths.add(row[first_length], row[first_length + 1], line)
        if hashes is not None:
            hashes.append(_parse_hash_ids(row[first_length + 2], path, line, spec.hashes))
    if not lengths.prompts:
        raise TraceError(f"{path}: no requests")

    if stamps is None:
        process, cv = parse_arrivals(arrivals)
        rate = _check_positive(arrival_rate_rps, "arrival_rate_rps")
        t = synthetic_arrivals(len(lengths.prompts), process, rate, np.random.default_rng(seed), cv)
        return Workload(
            requests=_renumbered(t.tolist(), lengths.prompts, lengths.outputs, hashes),
            name=name or path.stem,
            source=f"{path} lengths, {arrivals} arrivals at {rate:g}/s seed={seed}",
            clamped_outputs=lengths.clamped,
        )
    t = stamps.relative_seconds()
    order = np.argsort(t, kind="stable")  # stable: ties keep file order
    return Workload(
        requests=_renumbered(
            t[order].tolist(),
            [lengths.prompts[i] for i in order],
            [lengths.outputs[i] for i in order],
            None if hashes is None else [hashes[i] for i in order],
        ),
        name=name or path.stem,
        source=str(path),
        clamped_outputs=lengths.clamped,
    )


def load_azure(kind: Literal["conv", "code"], data_dir: Path | str | None = None) -> Workload:
    """Load the Azure LLM inference trace 2023 (``kind`` = "conv" or "code").

    Looks for ``AzureLLMInferenceTrace_{kind}.csv`` in ``data_dir/azure_llm_2023``
    or ``data_dir`` (default: :func:`default_trace_dir`). Arrivals start at 0 and
    are non-decreasing; 0-token outputs are clamped to 1 (none in the 2023 files).
    """
    if kind not in AZURE_FILES:
        raise TraceError(f"unknown Azure trace kind {kind!r}; use one of {', '.join(AZURE_FILES)}")
    base = Path(data_dir) if data_dir is not None else default_trace_dir()
    path = _find(base, "azure_llm_2023", AZURE_FILES[kind])
    return load_trace(path, AZURE_COLUMNS, name=f"azure-{kind}")


def _check_positive(value: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{what} must be a positive number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise TraceError(f"{what} must be a positive finite number, got {value!r}")
    return number


def parse_arrivals(spec: str) -> tuple[str, float]:
    """``--arrivals`` as ``(process, cv)``: ``poisson`` (cv 1) or ``gamma:CV`` (CV > 0, the
    coefficient of variation of the gaps; above 1 is burstier than Poisson). TraceError otherwise."""
    process, _, cv = spec.strip().partition(":")
    if process == "poisson" and not cv:
        return "poisson", 1.0
    if process == "gamma" and cv:
        return "gamma", _check_positive(cv, f"--arrivals {spec!r}: CV")
    raise TraceError(f"--arrivals {spec!r}: expected poisson or gamma:CV (e.g. gamma:2)")


def synthetic_arrivals(n: int, process: str, rate_rps: float, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """``n`` arrival times, seconds, the first at 0, with mean rate ``rate_rps``: exponential gaps
    (``poisson``) or Gamma gaps with coefficient of variation ``cv`` (shape ``1 / cv^2``, scale so
    the mean gap is ``1 / rate_rps``), the ``n - 1`` gaps drawn from ``rng``."""
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate_rps, size=n - 1)
    elif process == "gamma":
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), size=n - 1)
    else:
        raise TraceError(f"unknown arrival process {process!r}; use 'poisson' or 'gamma'")
    return np.concatenate(([0.0], np.cumsum(gaps)))


def load_sharegpt(
    arrival: Literal["poisson", "gamma"],
    rate_rps: float,
    num_requests: int,
    seed: int,
    cv: float = 2.0,
    path: Path | str | None = None,
) -> Workload:
    """ShareGPT length pairs with synthetic arrivals at mean rate ``rate_rps``.

    ``num_requests`` (prompt, output) pairs are drawn uniformly *with
    replacement* from the ShareGPT stats file using ``numpy.random.default_rng
    (seed)``, so the same arguments give the same workload. Inter-arrival gaps
    are exponential ("poisson") or Gamma with coefficient of variation ``cv``
    (shape 1/cv^2, scale chosen so the mean gap is 1/rate_rps). The first
    request arrives at 0; the n-1 following gaps are drawn.
    """
    if arrival not in ("poisson", "gamma"):
        raise TraceError(f"unknown arrival process {arrival!r}; use 'poisson' or 'gamma'")
    rate = _check_positive(rate_rps, "rate_rps")
    if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)) or num_requests < 1:
        raise TraceError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    if arrival == "gamma":
        cv = _check_positive(cv, "cv")
    path = Path(path) if path is not None else _find(default_trace_dir(), "sharegpt_stats", SHAREGPT_FILE)

    lengths = _Lengths(path, SHAREGPT_PROMPT, SHAREGPT_OUTPUT)
    for line, (p, o) in _iter_rows(path, (SHAREGPT_PROMPT, SHAREGPT_OUTPUT)):
        lengths.add(p, o, line)

    rng = np.random.default_rng(seed)
    # Draw lengths first, then gaps, so the lengths for a seed do not depend on
    # the arrival process chosen.
    picks = rng.integers(0, len(lengths.prompts), size=int(num_requests))
    t = synthetic_arrivals(int(num_requests), arrival, rate, rng, cv)
    desc = f"poisson rate={rate:g}/s" if arrival == "poisson" else f"gamma rate={rate:g}/s cv={cv:g}"
    return Workload(
        requests=_renumbered(
            t.tolist(),
            [lengths.prompts[i] for i in picks],
            [lengths.outputs[i] for i in picks],
        ),
        name=f"sharegpt-{arrival}",
        source=f"{path} sampled n={num_requests} seed={seed}, {desc}",
        clamped_outputs=lengths.clamped,
    )


def load_long_context(
    seed: int = 0,
    data_dir: Path | str | None = None,
    prompt_range: tuple[int, int] = LONG_CONTEXT_PROMPTS,
) -> Workload:
    """A long-context conversation workload built from the Azure conv trace 2023 (CC-BY 4.0).

    Construction (nothing is invented beyond the affine map; every number comes
    from the trace, Patel et al., "Splitwise", ISCA 2024, file
    ``AzureLLMInferenceTrace_conv.csv``):

    * **arrivals**: the conv trace's own timestamps (19,366 requests over
      about 58 min, 5.5 req/s; bursts kept), relative to the first request;
    * **outputs**: the conv trace's ``GeneratedTokens`` (mean 211, median 129,
      P95 451, max 1000: "a few hundred output tokens");
    * **prompts**: the conv trace's ``ContextTokens`` mapped affinely from the
      trace's [min, max] (2 .. 14,050) onto ``prompt_range`` (default
      8,192 .. 16,384): ``lo + round((p - min) * (hi - lo) / (max - min))``.
      The shape of the distribution is kept (right-skewed: mean about 8,860,
      median about 8,785, P95 about 10,570 tokens); only its location and scale change.
      Long-context serving of this kind (retrieval-augmented or multi-turn
      chat with a long history) is what the issue's 8-16k prompts describe.

    ``seed`` 0 keeps the trace's own (prompt, output) pairing at each arrival;
    any other seed reassigns the pairs to the arrivals by a permutation drawn
    from ``numpy.random.default_rng(seed)`` (same arrivals, same length pairs,
    a different draw of which long prompts land in which burst). The same seed
    always gives the same workload.
    """
    lo, hi = (int(x) for x in prompt_range)
    if not 1 <= lo < hi:
        raise TraceError(f"prompt_range must be two integers 1 <= lo < hi, got {prompt_range!r}")
    conv = load_azure("conv", data_dir)
    prompts = np.fromiter((r.prompt_tokens for r in conv.requests), np.int64, len(conv))
    outputs = np.fromiter((r.output_tokens for r in conv.requests), np.int64, len(conv))
    p_min, p_max = int(prompts.min()), int(prompts.max())
    span = max(p_max - p_min, 1)
    mapped = lo + np.rint((prompts - p_min) * ((hi - lo) / span)).astype(np.int64)
    if seed:
        order = np.random.default_rng(seed).permutation(len(conv))
        mapped, outputs = mapped[order], outputs[order]
    return Workload(
        requests=_renumbered([r.arrival_s for r in conv.requests], mapped.tolist(), outputs.tolist()),
        name="long-context",
        source=(f"{conv.source}: arrivals and outputs as recorded, prompts mapped affinely "
                f"[{p_min}, {p_max}] -> [{lo}, {hi}], "
                + (f"pairs permuted over arrivals with seed {seed}" if seed else "trace pairing")),
        clamped_outputs=conv.clamped_outputs,
    )


def _sniff_columns(path: Path) -> str | None:
    """Column spec for a file whose CSV header is a known trace format."""
    try:
        with _open(path) as f:
            first = f.readline()
    except UnicodeDecodeError:
        return None
    header = tuple(h.strip() for h in first.strip().split(","))
    return KNOWN_HEADERS.get(header)


def load_named(
    name: str,
    *,
    columns: str | None = None,
    data_dir: Path | str | None = None,
    rate_rps: float | None = None,
    num_requests: int | None = None,
    seed: int = 0,
    cv: float = 2.0,
    sharegpt_path: Path | str | None = None,
    arrivals: str | None = None,
    arrival_rate_rps: float | None = None,
) -> Workload:
    """Load a workload by name or file path (``--trace NAME_OR_FILE``).

    A file's ``columns`` may be ``PROMPT,OUTPUT`` (lengths only): then ``arrivals`` and
    ``arrival_rate_rps`` make its arrivals (``load_trace``); ``num_requests`` keeps a file's
    first N rows.

    Names: "azure-conv", "azure-code", "long-context" (use ``data_dir``; the
    last also ``seed``), "sharegpt-poisson",
    "sharegpt-gamma" (need ``rate_rps`` and ``num_requests``; use ``seed``,
    ``cv``, ``sharegpt_path``). Anything else is a file path, loaded with
    ``columns``; ``columns`` may be omitted for files whose header is the
    Azure 2023 or Vidur ``processed_traces`` header. Other options that do not apply
    to the chosen source are ignored.

    Raises ``TraceError`` for ``arrivals`` or ``arrival_rate_rps`` with a named trace (it has its
    own arrivals), and as ``load_trace`` does for a malformed file.
    """
    if name in NAMED_TRACES and (arrivals is not None or arrival_rate_rps is not None):
        raise TraceError(f"--trace {name!r} has its own arrivals; --arrivals and --arrival-rate-rps are for a trace "
                         "file of lengths only (--columns PROMPT,OUTPUT)")
    if name in ("azure-conv", "azure-code"):
        return load_azure(name.split("-", 1)[1], data_dir)  # type: ignore[arg-type]
    if name == "long-context":
        return load_long_context(seed, data_dir)
    if name in ("sharegpt-poisson", "sharegpt-gamma"):
        if rate_rps is None:
            raise TraceError(f"trace {name!r} needs a request rate")
        return load_sharegpt(
            name.split("-", 1)[1], rate_rps, num_requests or SHAREGPT_DEFAULT_REQUESTS, seed, cv,  # type: ignore[arg-type]
            sharegpt_path,
        )
    path = Path(name)
    if not path.is_file():
        raise TraceError(
            f"--trace {name!r} is neither a known trace ({', '.join(NAMED_TRACES)}) "
            "nor an existing file"
        )
    if columns is None:
        columns = _sniff_columns(path)
        if columns is None:
            raise TraceError(
                f"{path}: unrecognised trace format; pass --columns ARRIVAL[:s|ms],PROMPT,OUTPUT"
            )
    return load_trace(path, columns, arrivals=arrivals, arrival_rate_rps=arrival_rate_rps,
                      num_requests=num_requests, seed=seed)


# --------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------


def _rebuilt(w: Workload, requests: list[TraceRequest], note: str, **changes: Any) -> Workload:
    """A copy of ``w`` with new requests renumbered 0..n-1 and ``note`` recorded."""
    renumbered = [dataclasses.replace(r, request_id=i) for i, r in enumerate(requests)]
    return dataclasses.replace(
        w, requests=renumbered, transforms=w.transforms + (note,), **changes
    )


def slice_window(w: Workload, start_s: float, duration_s: float | None) -> Workload:
    """Requests arriving in ``[start_s, start_s + duration_s)`` (to the end when
    ``duration_s`` is None), with arrivals re-based so the window starts at 0.

    Order is kept. A window past the last arrival yields an empty workload.
    """
    try:
        start = float(start_s)
    except (TypeError, ValueError):
        raise TraceError(f"start_s must be a number, got {start_s!r}") from None
    if not math.isfinite(start) or start < 0:
        raise TraceError(f"start_s must be a finite number >= 0, got {start_s!r}")
    end = math.inf if duration_s is None else start + _check_positive(duration_s, "duration_s")
    kept = [
        dataclasses.replace(r, arrival_s=r.arrival_s - start)
        for r in w.requests
        if start <= r.arrival_s < end
    ]
    return _rebuilt(w, kept, f"slice[{start:g}s, {end:g}s)")


def scale_rate(w: Workload, rate_scale: float) -> Workload:
    """Multiply the arrival rate by ``rate_scale``: every arrival time (and so
    every inter-arrival gap) is divided by it, keeping the burst structure.

    Times are measured from the trace origin, so the duration shrinks by
    exactly ``rate_scale`` and gap ratios are unchanged.
    """
    scale = _check_positive(rate_scale, "rate_scale")
    if scale == 1.0:
        return _rebuilt(w, list(w.requests), "rate x1")
    scaled = [dataclasses.replace(r, arrival_s=r.arrival_s / scale) for r in w.requests]
    return _rebuilt(w, scaled, f"rate x{scale:g}")


def _limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TraceError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _clip(w: Workload, kind: str, value: object) -> Workload:
    """``w`` with every request's ``{kind}_tokens`` above ``value`` clipped to it, the number clipped
    added to ``clipped_{kind}s`` (``kind``: prompt or output)."""
    limit = _limit(f"max_{kind}_tokens", value)
    field = f"{kind}_tokens"
    out = [dataclasses.replace(r, **{field: limit}) if getattr(r, field) > limit else r for r in w.requests]
    clipped = sum(getattr(r, field) > limit for r in w.requests)
    counter = f"clipped_{kind}s"
    return _rebuilt(w, out, f"clip {kind}s to {limit}", **{counter: getattr(w, counter) + clipped})


def clip_prompts(w: Workload, max_prompt_tokens: int) -> Workload:
    """Clip prompts longer than ``max_prompt_tokens`` (e.g. the model's context
    limit) to that length; the number clipped is added to ``clipped_prompts``."""
    return _clip(w, "prompt", max_prompt_tokens)


def clip_outputs(w: Workload, max_output_tokens: int) -> Workload:
    """Clip outputs longer than ``max_output_tokens`` to that length (what a client's
    ``max_tokens`` does); the number clipped is added to ``clipped_outputs``."""
    return _clip(w, "output", max_output_tokens)


def tie_fraction(w: Workload) -> float:
    """Share of requests arriving at exactly the same time as the one before (0 for < 2 requests)."""
    t = w.arrivals()
    return float(np.count_nonzero(np.diff(t) == 0) / len(t)) if len(t) > 1 else 0.0


def time_resolution_s(w: Workload) -> float:
    """The trace's time resolution: the smallest positive gap between two arrivals, seconds
    (1.0 when every request arrives at once)."""
    gaps = np.diff(np.unique(w.arrivals()))
    return float(gaps.min()) if len(gaps) else 1.0


def spread_ties(w: Workload, resolution_s: float | None = None) -> Workload:
    """Spread each group of requests sharing one arrival time evenly over the trace's resolution:
    the ``k`` requests at ``t`` arrive at ``t + i * resolution / k``, ``i = 0..k-1``, in file
    order (``resolution_s`` None: ``time_resolution_s``). For traces whose timestamps are too
    coarse (seconds), where a tie is an artifact of the recording, not a burst."""
    res = time_resolution_s(w) if resolution_s is None else _check_positive(resolution_s, "resolution_s")
    out, i, reqs = [], 0, w.requests
    while i < len(reqs):
        j = i
        while j < len(reqs) and reqs[j].arrival_s == reqs[i].arrival_s:
            j += 1
        k = j - i
        out.extend(dataclasses.replace(r, arrival_s=r.arrival_s + n * res / k) for n, r in enumerate(reqs[i:j]))
        i = j
    return _rebuilt(w, out, f"spread ties over {res:g}s")


#: Above this share of tied arrivals ``prepare`` warns (``TieWarning``) unless asked to spread them.
TIE_WARNING_FRACTION = 0.05


class TieWarning(UserWarning):
    """Many arrivals share a timestamp: the trace's resolution makes bursts (``--spread-ties``)."""


def prepare(
    w: Workload,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate_scale: float = 1.0,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    spread: bool = False,
) -> Workload:
    """Spread tied arrivals (``spread``), slice, then rescale, then clip prompts and outputs (in
    that order), each only if requested.

    ``start_s`` / ``duration_s`` are in the *original* trace's time, before the
    rate scaling; so ``duration_s=600, rate_scale=2`` replays 10 minutes of the
    trace in 5. Request ids are 0..n-1 in arrival order. Warns (``TieWarning``) when more
    than ``TIE_WARNING_FRACTION`` of the arrivals tie and ``spread`` is off.
    """
    out = w
    ties = tie_fraction(w)
    if spread:
        out = spread_ties(out)
    elif ties > TIE_WARNING_FRACTION:
        warnings.warn(TieWarning(
            f"{w.name}: {ties:.0%} of arrivals share a timestamp with the one before (resolution "
            f"{time_resolution_s(w):g} s); --spread-ties spreads each group over the resolution"), stacklevel=2)
    if start_s != 0 or duration_s is not None:
        out = slice_window(out, start_s, duration_s)
    if rate_scale != 1.0:
        out = scale_rate(out, rate_scale)
    if max_prompt_tokens is not None:
        out = clip_prompts(out, max_prompt_tokens)
    if max_output_tokens is not None:
        out = clip_outputs(out, max_output_tokens)
    if out is w:  # always hand back a fresh, renumbered object
        out = _rebuilt(w, list(w.requests), "unchanged")
    return out
