"""A tiny Llama model directory that vLLM can serve with no downloads.

``write_tiny_model(out_dir)`` writes everything vLLM and ``transformers``
need to *load* a model, except weights:

* ``config.json`` -- a ``LlamaForCausalLM`` config with the requested sizes;
* ``generation_config.json`` -- greedy-friendly defaults and the special ids;
* ``tokenizer.json`` -- a word-level tokenizer built offline with the
  ``tokenizers`` library (vocabulary ``<unk> <s> </s> w0 w1 ...``, each word
  stored with its leading space as ``▁wN`` so words decode with spaces between
  them, then ``JSON_TOKENS``: JSON's punctuation, literals, lowercase letters
  and digits, which decode without spaces so a grammar can spell JSON with
  them: structured output and tool calls work on the tiny model), plus
  ``tokenizer_config.json`` and ``special_tokens_map.json`` so that
  ``transformers.AutoTokenizer.from_pretrained(out_dir)`` returns a
  ``PreTrainedTokenizerFast`` without touching the network.

There are no weight files: start the engine with ``load_format="dummy"`` and
vLLM fills the parameters with random values.  The output is therefore
meaningless text, but every code path that matters for scheduling -- prefill,
chunked prefill, decode, KV-cache allocation, preemption -- runs for real.

Everything works with ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1``.
The default dtype is ``float32``: the vLLM CPU build runs bfloat16 too, but
float32 needs no ISA support (AVX512-BF16/AMX) and is what the smoke runs
used.  The ``tokenizers`` import is lazy so this module imports without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from node.vllm.names import TINY_MODEL

__all__ = ["write_tiny_model", "tiny_model_dir", "resolve_model", "SPECIAL_TOKENS", "JSON_TOKENS", "word_token_id"]

#: Special tokens, in vocabulary order (ids 0, 1, 2).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
#: The last ids of the vocabulary: enough to spell JSON (no whitespace token, so a JSON grammar
#: leaves a random model no room to pad): structured output and tool calls on the tiny model.
JSON_TOKENS = (*'{}[]":,', "true", "false", "null", *"abcdefghijklmnopqrstuvwxyz", *"0123456789")
_SPACE = "\u2581"  # the Metaspace marker: "▁wN" decodes to " wN"


def word_token_id(i: int) -> int:
    """Token id of the word ``f"w{i}"`` in the tiny tokenizer."""
    return len(SPECIAL_TOKENS) + i


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    n_words = vocab_size - len(SPECIAL_TOKENS) - len(JSON_TOKENS)
    if n_words < 1:
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + len(JSON_TOKENS)}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for i in range(n_words):
        vocab[f"{_SPACE}w{i}"] = word_token_id(i)
    for j, t in enumerate(JSON_TOKENS):
        vocab[t] = word_token_id(n_words + j)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split on spaces and mark each word's space (sentencepiece's convention); decoding turns the
    # marks back into spaces, so words come out space-separated and JSON tokens joined.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def write_tiny_model(
    out_dir: Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 1024,
    max_position_embeddings: int = 4096,
    intermediate_size: int | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a loadable, weightless Llama model directory and return its path.

    ``hidden_size`` must be divisible by ``num_heads`` and ``num_heads`` by
    ``num_kv_heads`` (grouped-query attention).  ``intermediate_size``
    defaults to ``4 * hidden_size``.  Use the directory with
    ``vllm.LLM(model=str(path), load_format="dummy", ...)``.
    """
    out_dir = Path(out_dir)
    if hidden_size % num_heads:
        raise ValueError("hidden_size must be divisible by num_heads")
    if num_heads % num_kv_heads:
        raise ValueError("num_heads must be divisible by num_kv_heads")
    out_dir.mkdir(parents=True, exist_ok=True)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))

    generation_config = {
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "do_sample": False,
    }
    (out_dir / "generation_config.json").write_text(
        json.dumps(generation_config, indent=2)
    )

    tok = _build_tokenizer(vocab_size)
    tok.save(str(out_dir / "tokenizer.json"))

    special_map = {
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_position_embeddings,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # A trivial chat template so chat endpoints work too.
        "chat_template": (
            "{% for m in messages %}{{ m['content'] }} {% endfor %}"
        ),
        **special_map,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2)
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2)
    )
    return out_dir


def tiny_model_dir() -> Path:
    """Where the tiny model lives on this machine (``$FAIRBATCHING_CACHE``, else ``~/.cache/fairbatching``),
    written on first use."""
    path = Path(os.environ.get("FAIRBATCHING_CACHE", Path.home() / ".cache" / "fairbatching")) / "tiny-llama-v2"
    if not (path / "tokenizer.json").is_file():
        write_tiny_model(path)
    return path


def resolve_model(model: str) -> str:
    """What vLLM loads for a config's ``model``: the tiny model's directory for ``TINY_MODEL``, else ``model``."""
    return str(tiny_model_dir()) if model == TINY_MODEL else model
