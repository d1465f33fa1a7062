"""One model in memory for all of dreaming: the night's CMS plus two peft LoRA adapters on the same base, switched.

    dm = DreamModel.attach(cms, tokenizer, index, cfg, writer=None)   # writer: None (fresh), a folder, a WriterState
    with dm.use(None): ...                       # the model as it is: champion + tonight's expert (tau, selection)
    with dm.use("writer"), dm.novelty(gen): ...  # writing dreams: writer on, one random expert per CMS level
    with dm.use("trial"): ...                    # an isolated copy: its own LoRA, reset before every trial
    cms, writer = dm.detach()                    # peft removed, the CMS exactly as it came (plus free slots)

Nothing is ever copied. peft injects its LoRA layers into the base in place and wraps the projections the CMS hooks
sit on (the hook stays on the wrapped `base_layer`, so tonight's expert keeps acting under any adapter); `use`
switches which adapter is live (`None` = every LoRA layer disabled). The base weights and the CMS experts are frozen
throughout: the only tensors any optimizer here sees are the trial adapter's (train-and-test) or the writer's
(ReST-EM). `completion_nll` is the one loss every step uses: mean next-token NLL of a completion after a prompt.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.nn import functional as F

from lmsleep.cms import CMSConfig, CMSModel, LevelSpec, wrap_model
from lmsleep.ks.rollout import completion_logits

WRITER, TRIAL = "writer", "trial"


@dataclass
class WriterState:
    """The dream writer: a peft LoRA config and its tensors (peft's saved key names), and where it came from."""

    config: object  # peft.LoraConfig
    tensors: dict[str, torch.Tensor]
    source: str  # "fresh", the folder it was loaded from, or "carried in memory (first: <either>)"


CARRIED = "carried in memory"


def lora_config(rank: int, targets: Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0, bias="none")


def with_free_slot(cms: CMSModel) -> CMSModel:
    """`cms` itself when every level has a free slot for the random expert; else the same base rewrapped with one
    more slot in each full level, every active expert copied to the same index (outputs unchanged, bit for bit)."""
    full = [name for name, lv in cms.levels.items() if len(lv.active) >= lv.spec.pool_size]
    if not full:
        return cms
    saved = {name: {k: v.detach().clone() for k, v in lv.state_dict().items()} for name, lv in cms.levels.items()}
    specs = [LevelSpec(**{**vars(lv.spec), "pool_size": lv.spec.pool_size + (lv.spec.name in full)})
             for lv in cms.levels.values()]
    cfg = CMSConfig(levels=specs, period_unit=cms.cfg.period_unit, targets=cms.cfg.targets, router=cms.cfg.router,
                    top_k=cms.cfg.top_k)
    grown = wrap_model(cms.unwrap(), cfg)
    with torch.no_grad():
        for name, lv in grown.levels.items():
            own = lv.state_dict()  # shares storage with the level's parameters and buffers
            for key, tensor in saved[name].items():
                target = own[key][: len(tensor)] if key in ("mask", "fresh") else own[key]  # masks grew by one
                target.copy_(tensor)
            lv.refresh()
    return grown


def completion_nll(model, rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> torch.Tensor:
    """Per row, the mean next-token NLL of its completion after its prompt: [rows] (differentiable)."""
    logits = completion_logits(model, rows, pad_id)
    device = logits[0].device
    return torch.stack([F.cross_entropy(lg.to(torch.promote_types(lg.dtype, torch.float32)),  # half -> float32
                                        torch.tensor(list(y), device=device))
                        for lg, (_, y) in zip(logits, rows)])


@dataclass
class DreamModel:
    cms: CMSModel
    tokenizer: object
    level: str  # the CMS level of tonight's expert
    index: int  # tonight's expert: what rehearsal trains and what selection takes gradients on
    peft: object  # peft.PeftModel over cms.base, holding the WRITER and TRIAL adapters
    trial_init: dict[str, torch.Tensor]
    writer_source: str
    active: str | None = WRITER

    @classmethod
    def attach(cls, cms: CMSModel, tokenizer, level: str, index: int, cfg,
               writer: str | Path | WriterState | None = None) -> "DreamModel":
        from peft import PeftModel, get_peft_model, set_peft_model_state_dict

        cms = with_free_slot(cms)
        cms.freeze_experts()
        torch.manual_seed(cfg.seed)  # peft initialises A with torch's global generator
        if isinstance(writer, (str, Path)):
            peft_model = PeftModel.from_pretrained(cms.base, str(writer), adapter_name=WRITER, is_trainable=True)
            source = str(writer)
        elif isinstance(writer, WriterState):
            peft_model = get_peft_model(cms.base, writer.config, adapter_name=WRITER)
            set_peft_model_state_dict(peft_model, writer.tensors, adapter_name=WRITER)
            # a writer handed over in memory has been through earlier nights' ReST-EM: say so, not only its origin
            source = writer.source if writer.source.startswith(CARRIED) else f"{CARRIED} (first: {writer.source})"
        else:
            peft_model = get_peft_model(cms.base, lora_config(cfg.writer_rank, cfg.writer_target_modules),
                                        adapter_name=WRITER)
            source = "fresh"
        peft_model.add_adapter(TRIAL, lora_config(cfg.trial_rank, cfg.trial_target_modules))
        dm = cls(cms, tokenizer, level, index, peft_model, {}, source)
        dm.trial_init = {n: p.detach().clone() for n, p in dm.adapter_parameters(TRIAL).items()}
        dm._switch(None)
        return dm

    # ------------------------------------------------------------ which adapter is live

    def adapter_parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.peft.named_parameters() if "lora_" in n and f".{name}." in n}

    def _switch(self, name: str | None) -> None:
        lora = self.peft.base_model
        if name is None:
            lora.disable_adapter_layers()
        else:
            lora.enable_adapter_layers()
            lora.set_adapter(name)
        for p in self.peft.parameters():  # peft marks the live adapter trainable: training code opts in explicitly
            p.requires_grad_(False)
        self.active = name

    @contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Inside the block only adapter `name` acts (None: none; the model as it is); restored afterwards."""
        previous = self.active
        self._switch(name)
        try:
            yield
        finally:
            self._switch(previous)

    @contextmanager
    def novelty(self, enabled: bool, std: float, generator: torch.Generator) -> Iterator[None]:
        """Every CMS level runs one extra random expert inside the block (CMSModel.random_expert), then loses it."""
        with ExitStack() as stack:
            if enabled:
                for level in self.cms.levels:
                    stack.enter_context(self.cms.random_expert(level, std, generator))
            yield

    def reset_trial(self) -> None:
        """The isolated copy back to its initial LoRA (B = 0: the copy starts as the model itself)."""
        with torch.no_grad():
            for n, p in self.adapter_parameters(TRIAL).items():
                p.copy_(self.trial_init[n])

    # ------------------------------------------------------------ leaving

    def writer_state(self) -> WriterState:
        from peft import get_peft_model_state_dict

        tensors = get_peft_model_state_dict(self.peft, adapter_name=WRITER)
        return WriterState(self.peft.peft_config[WRITER], {k: v.detach().cpu().clone() for k, v in tensors.items()},
                           self.writer_source)

    def detach(self) -> tuple[CMSModel, WriterState]:
        """Remove both adapters from the base (it is left exactly as it came) and return the CMS and the writer."""
        writer = self.writer_state()
        self.peft.unload()
        self.peft = None
        return self.cms, writer

    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id
