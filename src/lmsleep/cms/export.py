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
