"""The offline tiny Llama model directory (node/vllm/tiny_model.py); no vLLM needed."""

import json

import pytest

tokenizers = pytest.importorskip(
    "tokenizers",
    reason="the `tokenizers` package is not installed in this environment "
    "(it comes with vLLM/transformers; run with the vLLM venv)",
)

from node.vllm.tiny_model import JSON_TOKENS, SPECIAL_TOKENS, word_token_id, write_tiny_model  # noqa: E402


def test_config_has_requested_sizes(tmp_path):
    out = write_tiny_model(
        tmp_path / "m",
        hidden_size=64,
        num_layers=3,
        num_heads=8,
        num_kv_heads=4,
        vocab_size=500,
        max_position_embeddings=1024,
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] == 64
    assert cfg["num_hidden_layers"] == 3
    assert cfg["num_attention_heads"] == 8
    assert cfg["num_key_value_heads"] == 4
    assert cfg["head_dim"] == 8
    assert cfg["vocab_size"] == 500
    assert cfg["max_position_embeddings"] == 1024
    assert cfg["intermediate_size"] == 256
    for name in ("generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file(), name
    # No weights: the engine is started with load_format="dummy".
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))


def test_tokenizer_round_trips_words(tmp_path):
    out = write_tiny_model(tmp_path / "m", vocab_size=1024)
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 1024
    enc = tok.encode("w1 w2 w3")
    assert enc.ids == [word_token_id(1), word_token_id(2), word_token_id(3)]
    assert tok.decode(enc.ids) == "w1 w2 w3"
    # Special tokens come first; unknown words map to <unk>.
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.encode("nonsense").ids == [0]
    # The vocabulary ends with JSON's tokens, which decode joined: a grammar can spell JSON.
    ids = [tok.token_to_id(t) for t in ('{', '"', "a", '"', ":", "true", "}")]
    assert tok.decode(ids) == '{"a":true}' and tok.id_to_token(1023) == JSON_TOKENS[-1]


def test_invalid_head_split_rejected(tmp_path):
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "m", hidden_size=130, num_heads=4)
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "m", num_heads=4, num_kv_heads=3)
