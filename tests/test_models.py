import json

import pytest
import torch

from lmsleep.config import PrepareModelConfig, Workspace
from lmsleep.models import base_lineage, build_tiny, ensure_base_model, load_base, load_lineage, train_byte_bpe


@pytest.mark.parametrize("text", ["plain ascii", "Grüße, naïve café", "東京タワー 🚀🌙", "tab\tnull\x00 ctrl\x07",
                                  "Kalamang: ma se kor.", "\u202eright-to-left \U0001F9E0"])
def test_byte_level_bpe_tokenizes_any_utf8_losslessly(text):
    tokenizer = train_byte_bpe(["a small corpus about ferries and rivers"] * 3, vocab_size=300)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_tiny_model_builds_from_config_and_reloads_identically(tmp_path):
    cfg = PrepareModelConfig(name="tiny", tiny_hidden_size=32, tiny_layers=1, tiny_heads=2, tiny_vocab_size=300)
    build_tiny(tmp_path / "tiny", cfg, ["some text for the tokenizer"])
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 1
    model, tokenizer = load_base(tmp_path / "tiny")
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    again, _ = load_base(tmp_path / "tiny")
    with torch.no_grad():
        assert torch.equal(model(**prompt).logits, again(**prompt).logits)


def test_ensure_base_model_is_idempotent(tmp_path):
    ws = Workspace(tmp_path)
    cfg = PrepareModelConfig(name="tiny", tiny_hidden_size=32, tiny_layers=1, tiny_heads=2, tiny_vocab_size=300)
    path = ensure_base_model(ws, cfg)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_base_model(ws, cfg) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="neither"):
        ensure_base_model(ws, PrepareModelConfig(name="no-such-model"))


def test_lineage_merges_adapters_in_order(tmp_path):
    from peft import LoraConfig, get_peft_model

    ws = Workspace(tmp_path)
    cfg = PrepareModelConfig(name="tiny", tiny_hidden_size=32, tiny_layers=1, tiny_heads=2, tiny_vocab_size=300)
    ensure_base_model(ws, cfg)
    model, tokenizer = load_base(ws.base_model("tiny"))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    inputs = tokenizer("the ferry", return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    lineage = base_lineage(ws, cfg) | {"adapters": ["adapter"]}
    merged, _ = load_lineage(ws, lineage)
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, expected, atol=1e-5)
        plain, _ = load_lineage(ws, base_lineage(ws, cfg))
        assert not torch.allclose(plain(**inputs).logits, expected, atol=1e-5)


@pytest.mark.slow
def test_smollm2_converts_from_its_wheel_once(tmp_path):
    ws = Workspace(tmp_path)
    path = ensure_base_model(ws, PrepareModelConfig(name="smollm2"))
    model, tokenizer = load_base(path)
    assert model.config.model_type == "llama" and model.num_parameters() > 100_000_000
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]).lower()
