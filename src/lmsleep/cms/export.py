"""Exporting a CMS so that plain transformers/peft can serve it: a peft LoRA adapter, or a merged HF checkpoint.

Both are exact only when every expert is a linear delta summed densely (router = "dense"): then the active experts
of a projection are one LoRA of rank R = sum of their ranks (A's stacked, B's concatenated with alpha/r folded in,
lora_alpha = R so peft's scaling is 1), and W + sum B A (alpha/r) is one dense weight. A top-k router makes the
delta depend on the input, so it is refused with a ValueError, never approximated.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lmsleep.cms.experts import CMSModel

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def merged_deltas(cms: CMSModel) -> dict[str, tuple[torch.Tensor, torch.Tensor, bool]]:
    """{module name in the base: (A [R, in], B [out, R] with scaling folded in, is_conv1d)} in float32."""
    if cms.cfg.router != "dense":
        raise ValueError(
            f"this CMS (router={cms.cfg.router!r}) cannot be merged exactly: top-k routing depends on the input, so "
            "its experts are not one fixed weight delta. Export needs router='dense'; serve it with load_state instead."
        )
    out: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
    for (layer, proj), module_name in cms.module_names.items():
        a_parts, b_parts = [], []
        key = f"layer{layer}_{proj}"
        for lv in cms.levels.values():
            if key not in lv.pools:
                continue
            pool = lv.pools[key]
            for i in lv.active:
                a_parts.append(pool.A[i].detach().float())
                b_parts.append(pool.B[i].detach().float() * lv.spec.scaling)
        if a_parts:
            out[module_name] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1), cms.is_conv1d[(layer, proj)])
    return out


def export_peft_adapter(cms: CMSModel, directory: str | Path) -> Path:
    """Write a peft LoRA adapter dir that `PeftModel.from_pretrained(base, directory)` loads with the same logits."""
    from peft import LoraConfig

    deltas = merged_deltas(cms)
    if not deltas:
        raise ValueError("no active experts: there is nothing to export")
    dtype = next(cms.base.parameters()).dtype
    ranks = {name: a.shape[0] for name, (a, _, _) in deltas.items()}
    counts = Counter(ranks.values())
    common = max(counts, key=lambda r: (counts[r], -r))  # the most frequent rank (smallest on ties)
    # peft matches pattern keys as regexes against module names, so escape the dots.
    pattern = {_regex(name): r for name, r in ranks.items() if r != common}
    config = LoraConfig(
        r=common,
        lora_alpha=common,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),  # alpha = rank everywhere: scaling 1, the experts' alpha/r is folded into B
        target_modules=sorted(deltas),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=all(conv for _, _, conv in deltas.values()),  # GPT-2's Conv1D
        task_type="CAUSAL_LM",
        base_model_name_or_path=getattr(cms.base.config, "_name_or_path", None) or None,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b, _) in deltas.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(dtype).contiguous()
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return directory


def export_merged(cms: CMSModel, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write a plain HF checkpoint with W + sum of active deltas folded in (AutoModelForCausalLM loads it)."""
    deltas = merged_deltas(cms)
    state = dict(cms.base.state_dict())
    for name, (a, b, conv) in deltas.items():
        key = f"{name}.weight"
        delta = b @ a  # [out, in]
        weight = state[key]
        state[key] = (weight.float() + (delta.T if conv else delta)).to(weight.dtype)
    directory = Path(directory)
    cms.base.save_pretrained(str(directory), state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def _regex(name: str) -> str:
    return name.replace(".", r"\.")


def import_peft_adapter(model, directory: str | Path, level: str, pool_size: int = 1) -> tuple[CMSModel, int]:
    """The inverse of `export_peft_adapter` for ONE dense expert: wrap `model` with a level named `level` covering
    exactly the adapter's layers and holding its LoRA as expert `index` (returned); logits equal those of
    `PeftModel.from_pretrained(model, directory)`. The export folded alpha / r into B, so the level's scaling is 1.
    `pool_size` > 1 leaves free slots (e.g. for dreaming's random expert). An adapter whose modules have different
    ranks (several experts, or a LoRA that is not a CMS export) is refused."""
    import json

    from safetensors.torch import load_file

    from lmsleep.cms.config import CMSConfig, LevelSpec
    from lmsleep.cms.experts import wrap_model

    directory = Path(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("lora_alpha") != config.get("r"):
        raise ValueError(f"{directory}: not a single CMS expert export (rank_pattern or alpha != r)")
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    probe = wrap_model(model, CMSConfig(levels=[LevelSpec(name=level, pool_size=1, rank=1, alpha=1.0)]))
    where = {name: key for key, name in probe.module_names.items()}  # module name -> (layer, proj)
    targets = probe.targets
    probe.unwrap()
    prefix, deltas = "base_model.model.", {}
    for key, tensor in tensors.items():
        name, _, part = key[len(prefix):].rpartition(".lora_")
        if name not in where:
            raise ValueError(f"{directory}: {name} is not an MLP projection a CMS expert covers ({targets})")
        deltas.setdefault(where[name], {})[part.split(".")[0]] = tensor
    rank = int(config["r"])
    layers = sorted({layer for layer, _ in deltas})
    if {proj for _, proj in deltas} != set(targets) or len(deltas) != len(layers) * len(targets):
        raise ValueError(f"{directory}: the adapter does not cover every projection {targets} of its layers")
    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name=level, layers=layers, pool_size=pool_size, rank=rank,
                                                        alpha=float(rank))]))
    index = cms.activate_expert(level)
    pools = cms.level(level).pools
    with torch.no_grad():
        for (layer, proj), parts in deltas.items():
            pool = pools[f"layer{layer}_{proj}"]
            pool.A[index].copy_(parts["A"])
            pool.B[index].copy_(parts["B"])
    return cms, index
