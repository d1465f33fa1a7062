"""Continuum memory system (CMS): MLP levels of pre-allocated low-rank experts around any HF causal LM.

    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name="slow", pool_size=8, rank=16)]))
    print(cms.describe())
    i = cms.activate_expert("slow")              # logits unchanged, bit for bit
    opt = torch.optim.AdamW(cms.trainable_expert("slow", i), lr=1e-3)
    ...                                          # train only expert i (the KS objective)
    save_state(cms, "models/nights/<id>/cms"); export_peft_adapter(cms, ...); export_merged(cms, ..., tokenizer)

Design (PAPER.md §2 leaves expert and router form open; these are our choices):
- Expert = a LoRA-style linear delta on the MLP projections of the covered layers: delta W = B A (alpha / r),
  A [r, in] kaiming-uniform, B [out, r] zero at activation, so activating an expert changes no output (function
  preservation). Llama/Qwen2/Mistral: gate_proj, up_proj, down_proj; GPT-2: c_fc, c_proj (Conv1D, weight stored
  [in, out]; the delta is the same, transposed only when merged). Expert i of a level = slot i in every covered
  projection (and router), so one activation adds one expert to every MLP of the level.
- Levels: each covers a set of decoder layers (all, or contiguous groups: `split_layers`) with its own update period
  C(level), pool size, rank and alpha. Levels may overlap; their deltas add.
- Pre-allocate and mask: each slot is its own nn.Parameter (the optimizer holds only the new expert's tensors);
  a boolean mask per level selects the active slots, and the forward hook computes only those, so inactive slots
  contribute nothing and get no gradient (not a multiply-by-mask). Each active expert is computed separately and
  added in slot order, which makes activation bit-exact.
- Base model: untouched (forward hooks, no module replacement, so its state-dict keys stay HF's) and frozen.
- Router: "dense" sums every active expert (mergeable). "topk": per layer and level a sigmoid gate per expert read
  from the MLP input (no softmax, so a new gate never re-weights old experts); only settled experts compete for the
  k places and fresh experts are always on until `settle_new_experts` (the Update step), so activation never
  displaces an old expert. Top-k is input-dependent, so export refuses it (ValueError), never approximates.
- State: `experts.safetensors` (active slots, masks, routers) + `manifest.json` (base name and SHA-256, config,
  active experts per level, architecture). Exports: a peft LoRA adapter (rank = sum of active ranks per
  projection) and a merged plain HF checkpoint, both exact for dense routing.
"""

from lmsleep.cms.config import ARCH_TARGETS, CMSConfig, LevelSpec, split_layers
from lmsleep.cms.experts import CMSLevel, CMSModel, ExpertPool, Router, wrap_model
from lmsleep.cms.export import export_merged, export_peft_adapter, import_peft_adapter, merged_deltas
from lmsleep.cms.state import base_fingerprint, load_state, read_manifest, save_state

__all__ = [
    "ARCH_TARGETS", "CMSConfig", "CMSLevel", "CMSModel", "ExpertPool", "LevelSpec", "Router", "base_fingerprint",
    "export_merged", "export_peft_adapter", "import_peft_adapter", "load_state", "merged_deltas", "read_manifest",
    "save_state", "split_layers", "wrap_model",
]
