"""A multi-turn conversation workload: prompts that resend a growing shared prefix on every turn.

Chat and agent traffic resend the whole conversation with each new message, so
most of a turn's prompt is the previous turn's prompt and reply, which the node
that served that turn may still hold in its prefix cache. This generator writes
such a trace with the prompt's KV block hashes (``hash_ids``), for the
simulator's prefix cache (``fairbatching sim run --trace F.csv --columns
timestamp:ms,input_length,output_length,hash_ids``).

The model (every parameter a field of ``MultiTurnModel``):

* **Conversations** start as a Poisson process at ``conversation_rate_rps``.
  Each has a number of turns drawn from a geometric distribution of mean
  ``mean_turns`` (at least 1, at most ``max_turns``).
* **System prompts**: each conversation opens with one of ``system_prompts``
  shared system prompts of ``system_prompt_tokens`` tokens, drawn uniformly (0
  system prompts: none). Conversations sharing one share its full blocks.
* **Lengths from ShareGPT**: each turn draws one (prompt, output) pair from the
  ShareGPT length statistics shipped with the traces
  (``sharegpt_8k_filtered_stats_llama2_tokenizer.csv``, Llama-2 tokenizer,
  from the Sarathi-Serve artifact; see ``shared/data/traces/SOURCE.md``). The
  turn's reply is the pair's output length. The pair's prompt length (mean 2,340
  tokens: ShareGPT prompts carry earlier turns of their conversation) is scaled
  by ``question_scale`` (default 0.25: mean 585, median 432 tokens) to give the
  turn's new user message.
* **Growth**: turn ``k``'s prompt is the system prompt, every earlier message
  and reply, and its own message: ``P_k = P_{k-1} + R_{k-1} + Q_k``. A
  conversation ends early when a turn's prompt plus its reply would pass
  ``max_context_tokens`` (default 8,192, the ShareGPT file's own filter); a
  first turn that alone would pass it has its message shortened to fit.
* **Arrivals**: turn ``k + 1`` arrives after turn ``k``'s reply has streamed
  (``R_k * reply_tpot_s``, default 50 ms a token, the paper's TPOT SLO) and the
  user has thought for an exponential time of mean ``think_time_s`` (default
  20 s).
* **Block hashes**: a conversation's tokens never change once written, so its
  ``b``-th block of ``block_tokens`` tokens is the same block in every turn
  that reaches it; a block inside the system prompt is shared by every
  conversation with that system prompt. Each distinct block gets a small
  integer id, so equal ids mean equal prefixes (a chained hash, as vLLM's).
  Only full blocks are named.

Deterministic: the same model and ShareGPT file give the same rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cluster.workload.traces import (SHAREGPT_FILE, SHAREGPT_OUTPUT, SHAREGPT_PROMPT, TraceError, _find,
                                     _iter_rows, _Lengths, default_trace_dir)

#: The ``--columns`` a generated file is read with.
MULTITURN_COLUMNS = "timestamp:ms,input_length,output_length,hash_ids"


@dataclass(frozen=True)
class MultiTurnModel:
    """Parameters of the multi-turn conversation workload (see the module docstring); times in seconds,
    lengths in tokens."""

    conversations: int = 1000
    conversation_rate_rps: float = 1.0
    mean_turns: float = 5.0
    max_turns: int = 20
    system_prompts: int = 8
    system_prompt_tokens: int = 512
    question_scale: float = 0.25
    max_context_tokens: int = 8192
    think_time_s: float = 20.0
    reply_tpot_s: float = 0.05
    block_tokens: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.conversations < 1 or self.max_turns < 1 or self.block_tokens < 1:
            raise TraceError("conversations, max_turns and block_tokens must be >= 1")
        if not self.conversation_rate_rps > 0 or not self.mean_turns >= 1 or not self.question_scale > 0:
            raise TraceError("conversation_rate_rps and question_scale must be > 0 and mean_turns >= 1")
        if self.system_prompts < 0 or self.system_prompt_tokens < 0 or self.think_time_s < 0 or self.reply_tpot_s < 0:
            raise TraceError("system prompts, their length, think time and reply TPOT must be >= 0")
        if self.max_context_tokens < self.system_prompt_tokens + 2:
            raise TraceError("max_context_tokens must leave room for a message and a reply after the system prompt")


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of the workload: its arrival (seconds), prompt and reply lengths, block hashes, and
    which conversation and turn (0-based) it is."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]
    conversation: int
    turn: int


def sharegpt_lengths(path: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (prompt, output) token counts of the ShareGPT statistics file, as two arrays."""
    path = Path(path) if path is not None else _find(default_trace_dir(), "sharegpt_stats", SHAREGPT_FILE)
    lengths = _Lengths(path, SHAREGPT_PROMPT, SHAREGPT_OUTPUT)
    for line, (p, o) in _iter_rows(path, (SHAREGPT_PROMPT, SHAREGPT_OUTPUT)):
        lengths.add(p, o, line)
    return np.asarray(lengths.prompts), np.asarray(lengths.outputs)


def generate(model: MultiTurnModel, sharegpt_path: Path | str | None = None) -> list[Turn]:
    """Every turn of every conversation of ``model``, in arrival order."""
    prompts, outputs = sharegpt_lengths(sharegpt_path)
    rng = np.random.default_rng(model.seed)
    starts = np.cumsum(rng.exponential(1.0 / model.conversation_rate_rps, size=model.conversations))
    starts -= starts[0]
    block_ids: dict[tuple[int, int, int], int] = {}  # (0, system prompt, b) or (1, conversation, b) -> id
    bt, system_tokens = model.block_tokens, model.system_prompt_tokens if model.system_prompts else 0
    system_blocks = system_tokens // bt  # full blocks made of the system prompt alone

    def block_id(key: tuple[int, int, int]) -> int:
        return block_ids.setdefault(key, len(block_ids))

    turns: list[Turn] = []
    for c in range(model.conversations):
        system = int(rng.integers(model.system_prompts)) if model.system_prompts else -1
        n_turns = min(int(rng.geometric(1.0 / model.mean_turns)), model.max_turns)
        picks = rng.integers(0, len(prompts), size=n_turns)
        thinks = rng.exponential(model.think_time_s, size=n_turns) if model.think_time_s > 0 else np.zeros(n_turns)
        history, t = system_tokens, float(starts[c])
        hashes: list[int] = []  # this conversation's full blocks so far
        for k in range(n_turns):
            question = max(1, round(model.question_scale * int(prompts[picks[k]])))
            reply = int(outputs[picks[k]])
            if history + question + reply > model.max_context_tokens:
                if k > 0:
                    break  # the conversation reached the context limit
                reply = min(reply, model.max_context_tokens - history - 1)
                question = model.max_context_tokens - history - reply
            prompt = history + question
            for b in range(len(hashes), prompt // bt):
                hashes.append(block_id((0, system, b) if b < system_blocks else (1, c, b)))
            turns.append(Turn(t, prompt, reply, tuple(hashes), c, k))
            history = prompt + reply
            t += reply * model.reply_tpot_s + float(thinks[k])
    turns.sort(key=lambda x: (x.arrival_s, x.conversation))
    return turns


def write_csv(turns: list[Turn], path: Path | str) -> None:
    """Write ``turns`` as ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids`` (a JSON
    list), ``conversation_id``, ``turn``: read back with ``--columns`` ``MULTITURN_COLUMNS``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "input_length", "output_length", "hash_ids", "conversation_id", "turn"])
        for x in turns:
            w.writerow([f"{x.arrival_s * 1000:.3f}", x.prompt_tokens, x.output_tokens,
                        json.dumps(list(x.hash_ids), separators=(",", ":")), x.conversation, x.turn])


def summary(turns: list[Turn], model: MultiTurnModel) -> dict:
    """Sizes of a generated workload: requests, rate, prompt and output lengths, and the share of
    prompt tokens that repeat an earlier request's full blocks (the hit rate of an unbounded cache
    that every request could use)."""
    seen: set[int] = set()
    repeated = 0
    for x in turns:
        for h in x.hash_ids:
            if h in seen:
                repeated += model.block_tokens
            else:
                seen.add(h)
    p = np.asarray([x.prompt_tokens for x in turns])
    o = np.asarray([x.output_tokens for x in turns])
    span = turns[-1].arrival_s - turns[0].arrival_s if len(turns) > 1 else 0.0
    return {
        "requests": len(turns),
        "conversations": model.conversations,
        "turns_per_conversation": len(turns) / model.conversations,
        "span_s": span,
        "rate_rps": (len(turns) - 1) / span if span > 0 else 0.0,
        "prompt_mean": float(p.mean()), "prompt_p50": float(np.median(p)), "prompt_max": int(p.max()),
        "output_mean": float(o.mean()),
        "repeated_prefix_fraction": repeated / float(p.sum()),
        "model": asdict(model),
    }
