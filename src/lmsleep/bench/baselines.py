"""Baselines of the benchmarks that are not a night of ours (issue 5): the KS objective into a LoRA on the existing
weights (opsd, sleep_ks-expansion) and SEAL's recipe (seal_like). lmsleep.bench.methods registers them.

    peft_model, losses, stats = ks_into_lora(model, tokenizer, memories, cfg, replay=[], anchors=[])
    model, train_texts, losses, stats = seal_like(model, tokenizer, memories, seed_cfg, dream_cfg, writer=None)

KS into a LoRA (the "-expansion" ablation; OPSD is it with lambda 1, reverse KL, alpha 1). The Knowledge Seeding loop
itself (`lmsleep.ks.consolidate.train_student`: the same prompts from the memory text, the same teacher with the
memory in context scoring each y once, the same GKD + LTI step), but what it trains is a peft LoRA on the existing
weights (seed.lora_rank / lora_alpha / target_modules, the SFT baseline's adapter shape; initialised B = 0, so the
student starts as the model) instead of one new CMS expert: no capacity is added and no expert is created. The
teacher is the same network with the adapter disabled, i.e. the model as it was before the night. The learning rate
and the step count are the KS ones (seed.ks_lr, seed.ks_steps): only the receiver differs from sleep_ks.

SEAL-like (Zweiger et al. 2025, "Self-Adapting Language Models", knowledge incorporation), built from the dream
stage's own functions (lmsleep.dream) with none of our consolidation machinery (no new expert, no distillation):
  1. tau per memory: the dream stage's probe-free task measure (questions the model wrote and answered consistently
     with the memory in context; lmsleep.dream.task), measured without the memory;
  2. for each of dream.rest_em_rounds rounds: the writer (a LoRA, lmsleep.dream.model) writes dream.dreams_per_memory
     implications of each memory with the memory in context (SEAL's self-edits; no random expert), EVERY well-formed
     candidate is tried on an isolated LoRA copy by SFT and rewarded when tau rose (lmsleep.dream.trial: SEAL tries
     every self-edit; no gradient selection), and the writer is fine-tuned on its rewarded self-edits (ReST-EM,
     lmsleep.dream.rest_em);
  3. finally a LoRA (the SFT baseline's, lmsleep.stages.seed.train_sft_adapter, seed.lr / epochs) is fitted to the
     memory texts plus every rewarded self-edit, and merged into plain weights.
Probes are never read: every prompt comes from `training_text` of the memory or from the model's own output.
"""

from __future__ import annotations

import dataclasses
import random
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

LORA = "lora"  # the one "level" of a LoRA student: experts_off(LORA, [0]) disables the adapter
SEAL_LEVEL = "seal"  # the dream modules' substrate level for seal_like: allocated, never activated


def _ready(model, tokenizer):
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


# ---------------------------------------------------------------- the KS objective into a LoRA on existing weights


class LoraStudent:
    """A peft LoRA as the KS loop's student (what `train_student` asks of one): called and sampled like the model,
    `.base` is the HF causal LM with the LoRA layers in place, and `experts_off(LORA, [0])` disables the adapter,
    which makes it the teacher: the weights exactly as they were before training."""

    def __init__(self, peft_model):
        self.peft = peft_model
        self.base = peft_model.get_base_model()

    def __call__(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)

    def parameters(self):
        return self.base.parameters()

    def eval(self) -> "LoraStudent":
        self.peft.eval()
        return self

    @contextmanager
    def experts_off(self, level: str, indices: list[int]) -> Iterator[None]:
        if level != LORA or list(indices) != [0]:
            raise ValueError(f"a LoRA student has one adapter, ({LORA!r}, [0]); asked to switch off {level!r} "
                             f"{list(indices)}")
        with self.peft.disable_adapter():
            yield


def lora_targets(model, targets: list[str]) -> list[str]:
    """The module names of `model` peft would adapt for `targets` (by name suffix); an empty match is an error."""
    names = [n for n, _ in model.named_modules() if n.split(".")[-1] in set(targets)]
    if not names:
        raise ValueError(f"seed.target_modules {list(targets)} match no module of the model: the LoRA would be empty")
    return names


def ks_into_lora(model, tokenizer, memories: list[dict[str, Any]], cfg, replay: list[dict[str, Any]] | None = None,
                 anchors: list[str] | None = None):
    """The KS objective (cfg's ks_*) trained into a new peft LoRA on the existing weights. Returns (peft model,
    losses, stats as consolidate_memories gives them, plus "receiver" and "trainable")."""
    from peft import LoraConfig, get_peft_model

    from lmsleep.ks.consolidate import train_student

    started = time.perf_counter()
    model = _ready(model, tokenizer)
    targets = lora_targets(model, list(cfg.target_modules))
    torch.manual_seed(cfg.seed)  # peft initialises A with torch's global generator
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    student = LoraStudent(peft_model).eval()
    torch.manual_seed(cfg.seed)  # prompt building samples from the same generator state as consolidate_memories
    receiver = f"LoRA r={cfg.lora_rank} on {len(targets)} existing modules"
    up = [p for name, p in peft_model.named_parameters() if p.requires_grad and "lora_B" in name]
    _, losses, stats = train_student(student, LORA, 0, params, tokenizer, memories, cfg, replay=replay,
                                     anchors=anchors, receiver=receiver, started=started, up_params=up)
    stats |= {"receiver": receiver, "trainable": sum(p.numel() for p in params)}
    return peft_model, losses, stats


# ---------------------------------------------------------------- SEAL-like: self-edits, ReST-EM, SFT


def self_edit_text(dream) -> str:
    """The self-edit as SEAL trains on it: the writer's whole implication (not its "Continue:" split)."""
    return dream.writer_turns[0][1]


def seal_like(model, tokenizer, memories: list[dict[str, Any]], seed_cfg, dream_cfg, writer=None):
    """SEAL's knowledge-incorporation recipe with the dream stage's functions (module docstring). `dream_cfg` gives
    tau, the candidates per memory, the trials, the rounds and the writer; `writer`: None (fresh), a folder or the
    WriterState of an earlier night. Returns (merged plain model, train_texts, final SFT losses, stats), stats["writer"]
    being the writer after ReST-EM."""
    from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
    from lmsleep.dream.generation import write_dreams
    from lmsleep.dream.ledger import ledger_summary, training_audit
    from lmsleep.dream.model import DreamModel
    from lmsleep.dream.rest_em import teach_writer
    from lmsleep.dream.task import build_tasks, tau_value
    from lmsleep.dream.trial import train_and_test
    from lmsleep.memory import training_text
    from lmsleep.stages.seed import train_sft_adapter

    cfg = dataclasses.replace(dream_cfg, enabled=True, kinds=["implication"], random_expert=False, rest_em=True)
    model = _ready(model, tokenizer)
    # the dream modules run on a CMS; this one has a single one-slot level that is never activated (no expert, no
    # random expert: outputs are the model's own) and is unwrapped before the final SFT
    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name=SEAL_LEVEL, layers=[0], pool_size=1, rank=1,
                                                        alpha=1.0)]))
    dm = DreamModel.attach(cms, tokenizer, SEAL_LEVEL, 0, cfg, writer)
    print(f"seal_like: {len(memories)} memories x {cfg.dreams_per_memory} self-edits (implications) x "
          f"{cfg.rest_em_rounds} ReST-EM round(s), every candidate tried ({cfg.trial_steps} LoRA steps, tau "
          f"{cfg.tau_metric}), writer {dm.writer_source}; then SFT on memories + rewarded self-edits")
    rng = random.Random(f"seal-{cfg.seed}")
    tasks = build_tasks(dm, memories, cfg, rng)
    with dm.use(None):
        tau_before = {mid: tau_value(dm, items, cfg) for mid, items in tasks.items()}
    edits, writer_losses = [], []
    for round_no in range(cfg.rest_em_rounds):
        made = write_dreams(dm, memories, cfg, round_no, rng)
        candidates = [d for d in made if d.malformed is None]
        for d in candidates:
            d.kept = "all"
        train_and_test(dm, candidates, tasks, tau_before, cfg)
        writer_losses += teach_writer(dm, made, cfg, rng)
        edits += made
        print(f"seal_like: round {round_no}: {len(made)} self-edits, {len(candidates)} tried, "
              f"{sum(d.reward == 1 for d in made)} rewarded")
    cms, writer_state = dm.detach()
    base = cms.unwrap()

    kept = [d for d in edits if d.reward == 1]
    final = [{"memory_id": str(m["id"]), "use": "final", "source": "memory", "text": training_text(m)}
             for m in memories]
    final += [{"memory_id": d.memory_id, "use": "final", "source": f"self_edit:{d.id}", "text": self_edit_text(d)}
              for d in kept]
    peft_model, losses, _, _ = train_sft_adapter(base, tokenizer, [t["text"] for t in final], seed_cfg)
    for d in kept:
        d.used = True
    stats = {**{k: v for k, v in ledger_summary(edits).items() if not k.endswith("_by_kind")},
             "tau_items": sum(len(items) for items in tasks.values()), "writer_steps": len(writer_losses),
             "final_texts": len(final), "writer": writer_state}
    return peft_model.merge_and_unload().eval(), training_audit(edits) + final, losses, stats
