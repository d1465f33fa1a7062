"""The methods a benchmark compares, by name: each turns (model, a night's memories) into a model that answers probes.

    lmsleep bench quality --seeds 1 --limit 2 --methods base,icl,sft,sleep_ks

Every trained method calls the project's own consolidators, so a benchmark measures exactly what a night runs:

    base                       no sleep: the model as it is, no memory in context
    icl                        no sleep, the memory in context when the probe is asked (the ceiling while it lasts)
    sft                        lmsleep.stages.seed.train_sft_adapter: LoRA on the memory texts (seed.method=sft)
    sft_replay                 sft with earlier tasks' memory texts mixed in, 1:1 (= sft on a single night)
    context_distill_offpolicy  KS consolidator with ks_lambda=0, ks_divergence=forward_kl, ks_alpha=1: teacher
                               samples only, no on-policy turns, no LTI (classic off-policy context distillation)
    sleep_ks                   lmsleep.ks.consolidate.consolidate_memories with the params' seed section (ks_*);
                               with seed.ks_sender=fast_level, lmsleep.ks.awake.seed_through_fast_level, as the
                               seed stage dispatches
    sleep_ks_fast_level        sleep_ks with ks_sender=fast_level whatever the params say: the memories read awake
                               by test-time training of a fast level, which the night consolidates into its expert
    sleep_ks+lti               sleep_ks with Learning to Imitate on: seed.ks_alpha when it is < 1, else 0.8 (the
                               params' default ks_alpha 1.0 has no LTI term, so sleep_ks itself is "without LTI")
    sleep_ks-lti               sleep_ks with the LTI term forced off (ks_alpha = 1); with the default params it IS
                               sleep_ks (compare it with sleep_ks+lti)
    sleep_ks-semantic_reward   sleep_ks+lti with the reward's semantic (judge) part removed: ks_gamma = 0, r = r_abs
                               (= sleep_ks+lti when the params' ks_gamma is already 0)
    sleep_ks-expansion         the KS objective (the params' ks_*) into a LoRA on the existing weights instead of one
                               new CMS expert (lmsleep.bench.baselines.ks_into_lora; no capacity added)
    opsd                       on-policy self-distillation: ks_into_lora with ks_lambda=1, reverse KL, ks_alpha=1 (no
                               LTI); teacher = the model with the memory in context, adapter disabled
    seal_like                  SEAL's recipe (lmsleep.bench.baselines.seal_like): implications written by a LoRA
                               writer, each tried by SFT of an isolated LoRA and rewarded when the dream stage's
                               probe-free tau rose, ReST-EM on the writer for dream.rest_em_rounds, then SFT of a LoRA
                               on the memory texts plus the rewarded self-edits, merged

    sleep_ks_dream             sleep_ks, then lmsleep.dream.dream_and_rehearse (the dream stage's own code) on tonight's
                               expert; ablations -random_expert, -grad_selection, -rest_em (dream.* switches);
                               the -dream ablation is sleep_ks itself; +night_mix: rehearsal batches also take
                               tonight's own KS prompts (dream.rehearsal_night_share, the params' or 0.5)

The KS methods' step records carry the objective they ran with (ks_lambda, ks_divergence, ks_alpha, ks_gamma, the
receiver, LTI steps and judge), so an ablation's switch is visible in <stem>.json.

A trained method returns its model folded into plain weights (LoRA merged, the new expert's delta added), which is
what `load_lineage` gives the evaluate stage after a real night, and what the next task of a sequential run builds on.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import hashlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmsleep.config import SeedConfig, Workspace


@dataclass
class History:
    """What the earlier tasks of a sequential run left behind (empty for a single night).

    `workspace` holds models/nights/<task>/train_texts.jsonl and data/nights/<task>/accepted.jsonl (its memories) of
    each earlier task, the layout the seed stage's replay reads (lmsleep.stages.seed.replay_prompts)."""

    nights: list[str] = field(default_factory=list)
    memories: list[dict[str, Any]] = field(default_factory=list)
    workspace: Workspace | None = None
    dream: Any = None  # the params' DreamConfig (seeded like the run) for the dreaming methods
    writer: Any = None  # the dream writer (ReST-EM) as the last night left it


@dataclass
class Consolidated:
    model: Any  # a plain HF causal LM (adapters folded in)
    train_texts: list[dict[str, Any]]  # everything trained on: the probe-leak audit reads this
    losses: list[float]
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    consolidate: Callable[..., Consolidated] | None = None  # None: nothing is trained (deterministic, greedy)
    in_context: bool = False  # probes are asked with the memory in context
    # How long a night takes, relatively: 1 one SFT pass, 2 a KS loop (teacher, samples, 96 steps), 3 KS plus
    # dreaming's trials or SEAL's. Only --workers reads it, to start the longest chains first.
    night_cost: int = 2
    # Trains through _ks_night, whose KS_NIGHTS cache restores a night another method already trained in this process
    # (e.g. sleep_ks = context_distill_offpolicy at the defaults): --workers runs such methods in one process.
    shares_ks_nights: bool = False

    @property
    def trains(self) -> bool:
        return self.consolidate is not None

    @property
    def cost(self) -> int:
        return self.night_cost if self.trains else 0


# ---------------------------------------------------------------- SFT


def _sft(model, tokenizer, texts: list[str], examples: list[dict], cfg: SeedConfig) -> Consolidated:
    from lmsleep.stages.seed import train_sft_adapter

    started = time.perf_counter()
    peft_model, losses, _, _ = train_sft_adapter(model, tokenizer, texts, cfg)
    return Consolidated(peft_model.merge_and_unload().eval(), examples, losses,
                        round(time.perf_counter() - started, 1))


def consolidate_sft(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    from lmsleep.stages.seed import training_examples

    examples = training_examples(memories)
    return _sft(model, tokenizer, [e["text"] for e in examples], examples, cfg)


def consolidate_sft_replay(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    """SFT on tonight's texts plus as many earlier texts (seeded sample): replay against forgetting."""
    from lmsleep.stages.seed import training_examples

    examples = training_examples(memories)
    earlier = training_examples(history.memories)
    rng = random.Random(f"sft-replay-{cfg.seed}")
    replayed = [e | {"source": "replay"} for e in rng.sample(earlier, min(len(examples), len(earlier)))]
    return _sft(model, tokenizer, [e["text"] for e in examples + replayed], examples + replayed, cfg)


# ---------------------------------------------------------------- Knowledge Seeding


def fold_cms(cms) -> Any:
    """The CMS's active experts added into the base weights (W += B A scaling, as export_merged does); hooks removed."""
    from lmsleep.cms import merged_deltas

    deltas = merged_deltas(cms)
    base = cms.unwrap()
    modules = dict(base.named_modules())
    with torch.no_grad():
        for name, (a, b, conv) in deltas.items():
            weight = modules[name].weight
            delta = (b @ a).to(weight.device)
            weight += (delta.T if conv else delta).to(weight.dtype)
    return base.eval()


def _ks_inputs(cfg: SeedConfig, history: History) -> tuple[list[dict[str, Any]], list[str]]:
    """What the seed stage gives a KS night besides the memories: replay of the chain's earlier nights, anchors."""
    from lmsleep.ks.samples import read_anchor_prompts
    from lmsleep.stages.seed import replay_prompts

    replay = []
    if history.nights and history.workspace is not None:
        replay = replay_prompts(history.workspace, history.nights, cfg.ks_replay_prompts, cfg.seed,
                                cfg.ks_replay_memory_share)
    return replay, read_anchor_prompts(cfg.ks_anchor_file, cfg.ks_anchor_prompts, cfg.seed)


class KSNights:
    """KS nights already trained in this process, by their exact inputs: sleep_ks, sleep_ks_dream and the dreaming
    ablations all start from the same KS night (same model, memories, settings and seed), so it is trained once and
    the others restore its CMS state (`lmsleep.cms.save_state` / `load_state`: identical logits) and the torch random
    state it left, which makes a restored night indistinguishable from a rerun for whatever follows (tested)."""

    def __init__(self):
        self._root: Path | None = None
        self._saved: dict[str, tuple[Path, list[float], dict[str, Any], torch.Tensor]] = {}

    @staticmethod
    def key(model, memories, cfg: SeedConfig, replay, anchors) -> str:
        from lmsleep.cms.state import base_fingerprint

        inputs = json.dumps([dataclasses.asdict(cfg), memories, replay, anchors], sort_keys=True, default=str)
        return hashlib.sha256(f"{inputs}|{base_fingerprint(model)}".encode()).hexdigest()

    def get(self, key: str, model):
        if key not in self._saved:
            return None
        from lmsleep.cms import load_state

        directory, losses, stats, rng = self._saved[key]
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        cms = load_state(model, directory, check_base=False)  # the key already holds the base's fingerprint
        for p in cms.parameters():
            p.requires_grad_(False)
        torch.set_rng_state(rng)
        return cms, list(losses), copy.deepcopy(stats)

    def put(self, key: str, cms, losses: list[float], stats: dict[str, Any]) -> None:
        from lmsleep.cms import save_state

        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="lmsleep-ks-nights-"))
            atexit.register(shutil.rmtree, self._root, True)
        directory = save_state(cms, self._root / key)
        self._saved[key] = (directory, list(losses), copy.deepcopy(stats), torch.get_rng_state())

    def clear(self) -> None:
        self._saved.clear()


KS_NIGHTS = KSNights()


def _ks_night(model, tokenizer, memories, cfg: SeedConfig, history: History):
    """One KS consolidation as the seed stage runs it: with replay of the chain's earlier nights and the anchors
    (trained once per distinct input in this process: KS_NIGHTS)."""
    from lmsleep.ks.awake import consolidate_by_sender

    replay, anchors = _ks_inputs(cfg, history)
    key = KS_NIGHTS.key(model, memories, cfg, replay, anchors)
    restored = KS_NIGHTS.get(key, model)
    if restored is not None:
        print("bench: this KS night was trained earlier in this run with the same inputs; its state is restored")
        return restored
    cms, losses, stats = consolidate_by_sender(model, tokenizer, memories, cfg, replay=replay, anchors=anchors)
    KS_NIGHTS.put(key, cms, losses, stats)
    return cms, losses, stats


def _ks_stats(stats: dict[str, Any], cfg: SeedConfig, receiver: str) -> dict[str, Any]:
    """What a KS method's step record keeps: counts, and the objective it ran with (so ablations can be checked)."""
    counts = ("prompts", "replay_prompts", "replay_read_prompts", "teacher_samples", "judge")
    keep = {k: stats[k] for k in counts if k in stats}
    dropped = stats.get("ungrounded_dropped", [])  # seed.ks_grounded_only / ks_asked_sentence_only, by reason
    keep["dropped"] = {"invented": sum(bool(d["ungrounded"]) for d in dropped),
                       "off_sentence": sum("off_sentence" in d for d in dropped)}
    if "drift_guard" in stats:  # seed.ks_drift_budget: what the night's expert was scaled by, and the rise it left
        keep["drift_guard"] = {k: v for k, v in stats["drift_guard"].items()
                               if k in ("scale", "rise_full", "rise_left", "reading_rise_full", "reading_rise_left")}
    return keep | {"receiver": receiver, "ks_lambda": cfg.ks_lambda, "ks_divergence": cfg.ks_divergence,
                   "ks_alpha": cfg.ks_alpha, "ks_gamma": cfg.ks_gamma, "lti_steps": len(stats.get("lti_rewards", []))}


def consolidate_ks(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    started = time.perf_counter()
    cms, losses, stats = _ks_night(model, tokenizer, memories, cfg, history)
    train_texts = stats.pop("train_texts")
    receiver = "new CMS expert" + (" from the fast level" if cfg.ks_sender == "fast_level" else "")
    extra = {k: stats[k] for k in ("awake_steps", "awake_tokens") if k in stats}
    return Consolidated(fold_cms(cms), train_texts, losses, round(time.perf_counter() - started, 1),
                        _ks_stats(stats, cfg, receiver) | {"sender": cfg.ks_sender, **extra})


def consolidate_ks_fast_level(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    cfg = dataclasses.replace(cfg, ks_sender="fast_level")
    return consolidate_ks(model, tokenizer, memories, cfg, history)


def consolidate_offpolicy_distill(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    cfg = dataclasses.replace(cfg, ks_lambda=0.0, ks_divergence="forward_kl", ks_alpha=1.0)
    return consolidate_ks(model, tokenizer, memories, cfg, history)


LTI_ALPHA = 0.8  # ks_alpha of the LTI methods when the params' own has no LTI term (config.py's suggested value)


def lti_alpha(cfg: SeedConfig) -> float:
    """The params' ks_alpha when it already weighs in LTI (< 1), else LTI_ALPHA."""
    return cfg.ks_alpha if cfg.ks_alpha < 1.0 else LTI_ALPHA


def consolidate_ks_lti(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    return consolidate_ks(model, tokenizer, memories, dataclasses.replace(cfg, ks_alpha=lti_alpha(cfg)), history)


def consolidate_ks_no_lti(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    return consolidate_ks(model, tokenizer, memories, dataclasses.replace(cfg, ks_alpha=1.0), history)


def consolidate_ks_no_semantic_reward(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    cfg = dataclasses.replace(cfg, ks_alpha=lti_alpha(cfg), ks_gamma=0.0)
    return consolidate_ks(model, tokenizer, memories, cfg, history)


def consolidate_ks_lora(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    """The KS objective into a LoRA on the existing weights (no new expert): sleep_ks-expansion, and opsd."""
    from lmsleep.bench.baselines import ks_into_lora

    started = time.perf_counter()
    replay, anchors = _ks_inputs(cfg, history)
    peft_model, losses, stats = ks_into_lora(model, tokenizer, memories, cfg, replay=replay, anchors=anchors)
    return Consolidated(peft_model.merge_and_unload().eval(), stats.pop("train_texts"), losses,
                        round(time.perf_counter() - started, 1),
                        _ks_stats(stats, cfg, stats["receiver"]) | {"trainable": stats["trainable"]})


def consolidate_opsd(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    cfg = dataclasses.replace(cfg, ks_lambda=1.0, ks_divergence="reverse_kl", ks_alpha=1.0)
    return consolidate_ks_lora(model, tokenizer, memories, cfg, history)


def consolidate_seal_like(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    """SEAL's recipe (lmsleep.bench.baselines.seal_like) with the params' dream section; the writer carries over
    the nights of a chain, as the dream stage's does."""
    from lmsleep.bench.baselines import seal_like
    from lmsleep.config import DreamConfig

    started = time.perf_counter()
    merged, train_texts, losses, stats = seal_like(model, tokenizer, memories, cfg, history.dream or DreamConfig(),
                                                   writer=history.writer)
    history.writer = stats.pop("writer")
    return Consolidated(merged, train_texts, losses, round(time.perf_counter() - started, 1), stats)


def consolidate_ks_dream(model, tokenizer, memories, cfg: SeedConfig, history: History,
                         **switches: bool) -> Consolidated:
    """sleep_ks, then the dream stage's own dream_and_rehearse on tonight's expert (`switches`: the ablations)."""
    from lmsleep.config import DreamConfig
    from lmsleep.dream import dream_and_rehearse

    dream_cfg = dataclasses.replace(history.dream or DreamConfig(), enabled=True, **switches)
    started = time.perf_counter()
    cms, losses, stats = _ks_night(model, tokenizer, memories, cfg, history)
    dreamt = dream_and_rehearse(cms, tokenizer, memories, cfg, dream_cfg, expert_index=stats["expert_index"],
                                writer=history.writer, night_rows=stats["train_texts"])
    history.writer = dreamt.writer
    keep = {k: dreamt.stats[k] for k in ("made", "kept", "tested", "rewarded", "used") if k in dreamt.stats}
    return Consolidated(fold_cms(dreamt.cms), stats["train_texts"] + dreamt.audit,
                        losses + dreamt.rehearsal_losses, round(time.perf_counter() - started, 1),
                        {"prompts": stats["prompts"], "dream_seconds": dreamt.stats.get("seconds"),
                         "rehearsal_night_share": dream_cfg.rehearsal_night_share, **keep})


def _ablation(**switches: bool):
    return lambda *args: consolidate_ks_dream(*args, **switches)


def consolidate_ks_dream_night_mix(model, tokenizer, memories, cfg: SeedConfig, history: History) -> Consolidated:
    """sleep_ks_dream with tonight's own KS prompts in every rehearsal batch (the params' share, or 0.5)."""
    share = (history.dream.rehearsal_night_share if history.dream else 0.0) or 0.5
    return consolidate_ks_dream(model, tokenizer, memories, cfg, history, rehearsal_night_share=share)


# ---------------------------------------------------------------- the registry

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("base", "no sleep, no memory in context"),
    Method("icl", "no sleep, memory in context (the ceiling while the context lasts)", in_context=True),
    Method("sft", "LoRA fine-tuning on the memory texts (seed.method=sft)", consolidate_sft, night_cost=1),
    Method("sft_replay", "sft plus earlier tasks' memory texts, 1:1", consolidate_sft_replay, night_cost=1),
    Method("context_distill_offpolicy", "KS loop, teacher samples only, forward KL, no LTI",
           consolidate_offpolicy_distill, shares_ks_nights=True),
    Method("sleep_ks", "Knowledge Seeding into one new expert (seed.method=ks); also the -dream ablation",
           consolidate_ks, shares_ks_nights=True),
    Method("sleep_ks_fast_level", "sleep_ks with the fast-level sender: the day read awake by test-time training "
           "of a fast level, then that level consolidated into the night's expert (seed.ks_sender=fast_level)",
           consolidate_ks_fast_level, shares_ks_nights=True),
    Method("sleep_ks+lti", "sleep_ks with Learning to Imitate on (ks_alpha < 1: the params' or 0.8)",
           consolidate_ks_lti, shares_ks_nights=True),
    Method("sleep_ks-lti", "sleep_ks with the LTI term off (ks_alpha=1; = sleep_ks with the default params)",
           consolidate_ks_no_lti, shares_ks_nights=True),
    Method("sleep_ks-semantic_reward", "sleep_ks+lti with the absolute (Levenshtein) reward only (ks_gamma=0)",
           consolidate_ks_no_semantic_reward, shares_ks_nights=True),
    Method("sleep_ks-expansion", "the KS objective into a LoRA on the existing weights, no new expert",
           consolidate_ks_lora),
    Method("opsd", "on-policy self-distillation: reverse KL, lambda 1, no LTI, into a LoRA on the existing weights",
           consolidate_opsd),
    Method("seal_like", "SEAL: self-edit implications, LoRA trials rewarded by tau, ReST-EM writer, SFT on kept edits",
           consolidate_seal_like, night_cost=3),
    Method("sleep_ks_dream", "sleep_ks, then dreaming (lmsleep.dream) rehearses tonight's expert",
           consolidate_ks_dream, night_cost=3, shares_ks_nights=True),
    Method("sleep_ks_dream-dream", "sleep_ks_dream without its dreaming: sleep_ks by another name (the night is "
           "restored when sleep_ks ran first), so the paper's ablation list reads the same here", consolidate_ks,
           shares_ks_nights=True),
    Method("sleep_ks_dream-random_expert", "sleep_ks_dream without the random novelty expert",
           _ablation(random_expert=False), night_cost=3, shares_ks_nights=True),
    Method("sleep_ks_dream-grad_selection", "sleep_ks_dream keeping random dreams, not gradient-selected ones",
           _ablation(grad_selection=False), night_cost=3, shares_ks_nights=True),
    Method("sleep_ks_dream-rest_em", "sleep_ks_dream without ReST-EM on the dream writer", _ablation(rest_em=False),
           night_cost=3, shares_ks_nights=True),
    Method("sleep_ks_dream+night_mix", "sleep_ks_dream whose rehearsal batches also take tonight's own KS prompts "
           "(dream.rehearsal_night_share: the params' or 0.5)", consolidate_ks_dream_night_mix, night_cost=3,
           shares_ks_nights=True),
)}


def resolve_methods(names: list[str]) -> list[Method]:
    """Methods by name, in the order given; an unknown name is a ValueError that lists the known ones."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice: {names}")
    return [METHODS[n] for n in names]
