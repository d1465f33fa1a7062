"""The teacher's side of Knowledge Seeding: completions, log-probs computed once per sample, and their disk cache.

    write_completions(cms, tokenizer, samples, cfg)   # y ~ teacher, for samples that have none yet (no grad);
                                                      # a greedy teacher keeps the log-probs it wrote y with
    prefixes = memory_prefixes(cms, samples)          # the teacher's keys/values over each memory's shared prefix
    score(cms, samples, pad_id, batch_size, topk, prefixes)   # teacher log-probs over y, once per sample
    score_per_memory(cms, samples, pad_id, batch_size, topk)  # the same, one memory's prefix alive at a time
    target = teacher_target(rows)                     # what generalized_distillation_loss takes as the teacher
    save_cache(folder, key, samples); load_cache(folder, key)           # reruns and sweeps skip the teacher

The caller decides what "teacher" means by the model state it passes in (for the context sender: the same network
with tonight's expert masked off, `CMSModel.experts_off`; the memory is in the teacher prompt).

Top-k (`seed.ks_teacher_topk`, 0 = the full distribution): a sample keeps the teacher's k largest next-token
log-probs and their ids per position, and the divergence compares on k + 1 outcomes (the kept ids plus one tail
bucket; `lmsleep.ks.divergence.TeacherTopK`). On SmolLM2 (49,152 tokens) k = 64 is 768 times less memory per token
than full fp32 logits, and the data-processing inequality makes it a lower bound on the full divergence.

The cache (`seed.ks_teacher_cache`): a folder of safetensors files, one per key, each holding every sample's prompts,
completion and teacher log-probs. The key covers everything that determines them (teacher weights, memories, replay
prompts, the seeds and knobs of prompt building and sampling). A rerun, or a sweep over ks_lr / ks_steps /
ks_divergence / ..., with the same key loads the file instead of writing questions, sampling and scoring again; a
sweep over a key field (say ks_prompts_per_memory) adds one file per value. The seed stage keeps the folder as a
DVC-tracked `persist` output (data/nights/<night>/teacher_cache/), so `dvc repro` and `dvc exp run` find it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lmsleep.ks.divergence import TeacherTopK
from lmsleep.ks.rollout import PrefixKV, common_prefix, completion_logits, sample_completions, write_scored
from lmsleep.ks.samples import Sample
from lmsleep.memory import atomic_write_bytes, training_text

CACHE_FORMAT = 1
# the SeedConfig fields that decide the prompts, the teacher completions and the cached log-probs
CACHE_FIELDS = ("seed", "ks_prompts_per_memory", "ks_question_share", "ks_cloze_share", "ks_phrasings_per_question",
                "ks_entity_questions", "ks_teacher_hint",
                "ks_on_topic_questions",
                "ks_temperature", "ks_teacher_temperature", "ks_max_new_tokens", "ks_teacher_topk", "ks_grounded_only",
                "ks_asked_sentence_only")


def write_completions(teacher, tokenizer, samples: list[Sample], cfg) -> int:
    """The teacher's y for every sample that has none (batched; no gradient): greedy at ks_teacher_temperature 0,
    so y is the answer the in-context ceiling is measured with; sampled above 0. Returns how many it also scored.

    A greedy teacher scores y while writing it (`write_scored`: the log-probs it decoded with, kept like `score`
    keeps them), so no second pass reads the memory, the prompt and y again; on bench-seed's λ 0 night that pass was
    5 of the teacher's 16 seconds. A sampled y is scored by `score` afterwards (a sampler's scores are warped)."""
    todo = [s for s in samples if not s.completion]
    if not todo:
        return 0
    prompts, groups = [s.teacher_prompt for s in todo], [(s.memory_id, s.source) for s in todo]
    if cfg.ks_teacher_temperature > 0:
        written = sample_completions(teacher, tokenizer, prompts, cfg.ks_teacher_temperature, cfg.ks_max_new_tokens,
                                     groups=groups)
        for s, y in zip(todo, written):  # each memory's text ran through the teacher once (its shared prefix)
            s.completion = y
        return 0
    for s, (y, logprobs, ids) in zip(todo, write_scored(teacher, tokenizer, prompts, cfg.ks_max_new_tokens,
                                                         cfg.ks_teacher_topk, groups=groups)):
        s.completion, s.teacher_logprobs, s.teacher_ids = y, logprobs, ids  # stacked per row: no views kept
    return len(todo)


def memory_prefixes(teacher, samples: list[Sample], min_tokens: int = 16) -> dict[tuple[str, str], PrefixKV]:
    """Per memory (and replay night), the teacher's keys/values over the prefix all its teacher prompts share (the
    chat header and the memory text): computed once, so scoring a sample runs only its own instruction and y."""
    groups: dict[tuple[str, str], list[list[int]]] = {}
    for s in samples:
        groups.setdefault((s.memory_id, s.source), []).append(s.teacher_prompt)
    out = {}
    for key, prompts in groups.items():
        tokens = common_prefix(prompts) if len(prompts) >= 2 else []  # one prompt alone shares nothing
        if len(tokens) >= min_tokens:
            out[key] = PrefixKV(teacher, tokens)
    return out


def score(teacher, samples: list[Sample], pad_id: int, batch_size: int, topk: int,
          prefixes: dict[tuple[str, str], PrefixKV] | None = None) -> int:
    """Teacher next-token log-probs over y for every unscored sample (once per sample); returns how many.

    `prefixes` (from `memory_prefixes`, same teacher state): rows of a group run after its cached prefix."""
    todo = [s for s in samples if not s.scored]
    groups: dict[tuple[str, str] | None, list[Sample]] = {}
    for s in todo:
        pk = (prefixes or {}).get((s.memory_id, s.source))
        fits = pk is not None and len(s.teacher_prompt) > len(pk.tokens) and \
            s.teacher_prompt[: len(pk.tokens)] == pk.tokens
        groups.setdefault((s.memory_id, s.source) if fits else None, []).append(s)
    with torch.inference_mode():
        for key, group in groups.items():
            prefix = None if key is None else prefixes[key]
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                logits = completion_logits(teacher, [(s.teacher_prompt, s.completion) for s in chunk], pad_id,
                                           prefix)
                for s, rows in zip(chunk, logits):
                    _keep(s, torch.log_softmax(rows.float(), dim=-1), topk)
    return len(todo)


def score_per_memory(teacher, samples: list[Sample], pad_id: int, batch_size: int, topk: int) -> int:
    """`score` one memory (and replay night) at a time, after its own prefix, which is freed before the next: the
    same log-probs as scoring after `memory_prefixes` of all samples, holding one memory's keys and values at a time
    instead of every memory's (11 MB for a 250-token memory on SmolLM2). For a loop that never scores again."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        if not s.scored:
            groups.setdefault((s.memory_id, s.source), []).append(s)
    return sum(score(teacher, rows, pad_id, batch_size, topk, memory_prefixes(teacher, rows))
               for rows in groups.values())


def _keep(s: Sample, logprobs: torch.Tensor, topk: int) -> None:
    if topk:
        values, ids = logprobs.topk(min(topk, logprobs.shape[-1]), dim=-1)
        s.teacher_logprobs, s.teacher_ids = values.cpu().clone(), ids.cpu().clone()
    else:
        s.teacher_logprobs, s.teacher_ids = logprobs.cpu().clone(), None


def teacher_target(rows: list[Sample], device) -> torch.Tensor | TeacherTopK:
    """The rows' teacher distributions as one [1, tokens, ...] target (log-probs are valid logits)."""
    logprobs = torch.cat([s.teacher_logprobs for s in rows]).to(device)[None]
    if rows[0].teacher_ids is None:
        return logprobs
    return TeacherTopK(logprobs=logprobs, indices=torch.cat([s.teacher_ids for s in rows]).to(device)[None],
                       temperature=1.0, tail="bucket")


# ---------------------------------------------------------------------------------------------- the disk cache


def cache_key(teacher_id: str, memories: list[dict[str, Any]], replay: list[dict[str, Any]] | None,
              anchors: list[str] | None, cfg) -> str:
    """SHA-256 over what determines the cached samples (the teacher's weights are named by `teacher_id`)."""
    payload = {"format": CACHE_FORMAT, "teacher": teacher_id,
               # what prompt building reads of a memory (not where it was collected from)
               "memories": [[str(m["id"]), training_text(m)] for m in memories], "replay": replay or [],
               "anchors": anchors or [],
               "config": {f: getattr(cfg, f) for f in CACHE_FIELDS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


_FIELDS = ("memory_id", "kind", "student_prompt", "teacher_prompt", "prompt_text", "completion", "source", "asked")


def cache_file(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key[:32]}.safetensors"


def save_cache(folder: Path, key: str, samples: list[Sample]) -> Path:
    """Every sample (prompts, completion, teacher log-probs) in one safetensors file, written atomically."""
    from safetensors.torch import save

    if not all(s.scored for s in samples):
        raise ValueError("save_cache: every sample must be scored by the teacher first")
    records = [{f: getattr(s, f) for f in _FIELDS} for s in samples]
    tensors = {"logprobs": torch.cat([s.teacher_logprobs for s in samples]).contiguous()}
    topk = samples[0].teacher_ids is not None
    if topk:
        tensors["ids"] = torch.cat([s.teacher_ids for s in samples]).contiguous()
    meta = {"key": key, "format": str(CACHE_FORMAT), "topk": str(topk), "samples": json.dumps(records)}
    path = cache_file(folder, key)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def load_cache(folder: Path, key: str) -> list[Sample] | None:
    """The cached samples of `key` when the folder holds them; None otherwise (then the teacher runs again)."""
    from safetensors import safe_open

    path = cache_file(folder, key)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("key") != key or meta.get("format") != str(CACHE_FORMAT):
            return None
        logprobs = f.get_tensor("logprobs")
        ids = f.get_tensor("ids") if meta.get("topk") == "True" else None
    samples, start = [], 0
    for record in json.loads(meta["samples"]):
        s = Sample(**record)
        n = len(s.completion)
        s.teacher_logprobs = logprobs[start : start + n].clone()
        s.teacher_ids = None if ids is None else ids[start : start + n].clone()
        samples.append(s)
        start += n
    return samples
