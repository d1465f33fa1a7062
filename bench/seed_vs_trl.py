"""One consolidation of the same memories: ours (`lmsleep.ks.consolidate`, method "ks") vs TRL's on-policy distillation.

    python bench/seed_vs_trl.py --model tiny --steps 8
    python bench/seed_vs_trl.py --model smollm2 --steps 8 --max-new-tokens 16
    python bench/seed_vs_trl.py --model smollm2 --trl-trainer distillation     # TRL's DistillationTrainer instead

Needs TRL (requirements/bench.txt; `make bench-seed` installs it). Offline: nothing is downloaded.

What runs, each method in its OWN subprocess, back to back (so each peak RSS is that method's alone):
- `load`:  the model loaded and run forward once (so every weight page is resident), nothing else:
  `one_model_rss_mb`, the floor any method that uses the model starts from. `model_weights_mb` is its parameters.
- `ours`:  `consolidate_memories(model, tokenizer, N memories, SeedConfig(method="ks", ks_lambda=1.0, ...))`: fully
  on-policy (every y sampled from the student), teacher = the same weights with the memory in context and the new
  expert switched off, so ONE copy of the model in memory; teacher top-k 64 with a tail bucket; no disk cache (a
  cold run: the cache only helps reruns).
- `trl`, default `--trl-trainer sdft`: TRL 1.16's context-distillation trainer, `trl.experimental.sdft.SDFTTrainer`
  (self-distillation with a privileged context): the SAME task as ours. Student prompt = ours' student instruction,
  privileged context = the memory text, teacher prompt template "Text:\n{privileged_context}\n\n{prompt}" (ours'
  teacher prompt, token for token), teacher_model_kind "base" (the student with its LoRA disabled: one copy of the
  weights, like ours), student = the model + a peft LoRA of the same rank (alpha 2 x rank, on the MLP projections,
  like ours' expert), one generation per prompt, top-k 64 logit distillation with a tail bucket, JSD 0.5.
  `--lambda 0`: ours at the product's default (seed.ks_lambda 0): the teacher writes every y once, batched, before
  the first step, and the loop only trains; with `--prompts-per-memory 4` (16 prompts for 8 steps of 2) each prompt
  is trained on once, so both methods generate the same number of tokens (TRL's student samples each y in its step).
  `--trl-trainer distillation`: `trl.DistillationTrainer` (GKD, lambda = 1), whose teacher is a SECOND copy of the
  model that sees the same prompt as the student (no memory): an easier task, kept for comparison.
  Both: the same prompts ours trained on (its stats["train_texts"]), the same max_new_tokens, temperature, steps,
  prompts per step and learning rate, fp32, bf16/fp16 off.

Tokens (same definition for both): on-policy completion tokens, i.e. tokens the student sampled that the teacher
then scored and the student was trained on. tokens/s = those tokens / wall seconds of the consolidation itself
(ours: the whole consolidate_memories call, prompt building included; TRL: trainer.train(); model loading excluded
from both). `ours_setup_s` is ours' time before its first step (writing its questions, and at lambda 0 the teacher
writing and scoring every y) and `ours_loop_tokens_per_s` the rate of its step loop alone. `ours_question_writing_s`
is the part of it spent writing its own questions (`lmsleep.ks.samples.write_questions`), which TRL is handed:
`speedup_given_prompts` compares the two on the same prompts with that part left out of ours' wall time (the
headline `speedup` keeps it in). Peak RSS: each subprocess's ru_maxrss (whole process, model load included).
Malloc: ours fixes glibc's mmap threshold from its train_student on (seed.ks_return_freed_memory_kb, default 256 KB,
lmsleep.allocator); the `load` and `trl` processes get the same setting from their start, so every peak is measured
under the same malloc. `--return-freed-memory-kb 0` runs all three on glibc's default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = PROJECT / "bench" / "results" / "seed_speed.json"
DEMO_DAY = PROJECT / "data" / "demo" / "day1.jsonl"
SMOLLM2 = PROJECT / "models" / "base" / "smollm2"
LR, TEMPERATURE, TOPK = 1e-3, 0.7, 64
TEACHER_TEMPLATE = "Text:\n{privileged_context}\n\n{prompt}"  # ours' teacher prompt (lmsleep.ks.samples.messages)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def mark_loop_start(ks) -> dict[str, float]:
    """Make lmsleep.ks.consolidate (`ks`) record in the returned dict, as "loop_start", when its step loop starts
    (its tqdm is the loop's iterator): what comes before is the night's set-up (prompts, teacher answers)."""
    real_tqdm, marks = ks.tqdm, {}

    def stamped_tqdm(iterable, *a, **kw):
        marks["loop_start"] = time.perf_counter()
        return real_tqdm(iterable, *a, **kw)

    ks.tqdm = stamped_tqdm
    return marks


def load_memories(n: int) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in DEMO_DAY.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:n]


def build_tiny_model(dest: Path) -> Path:
    from lmsleep.config import PrepareModelConfig
    from lmsleep.models import TINY_FALLBACK_CORPUS, build_tiny

    reference = PROJECT / "data" / "reference.txt"
    corpus = [reference.read_text(encoding="utf-8")] if reference.exists() else []
    build_tiny(dest, PrepareModelConfig(name="tiny"), corpus + [TINY_FALLBACK_CORPUS])
    return dest


# ---------------------------------------------------------------- the children (one method per process)


def child_load(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lmsleep.allocator import return_freed_memory
    from lmsleep.models import load_base

    return_freed_memory(args.return_freed_memory_kb)  # the same malloc as the methods: one model's floor under it
    model, tokenizer = load_base(Path(args.model_path))
    with torch.no_grad():  # touch every weight once: a loaded-but-unused safetensors mmap is not resident yet
        model(input_ids=torch.tensor([tokenizer("Hello there.")["input_ids"]]))
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"peak_rss_mb": peak_rss_mb(), "model_weights_mb": round(weights, 1)}


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import lmsleep.ks.consolidate as ks
    import lmsleep.ks.rollout as rollout
    import lmsleep.ks.samples as ks_samples
    import lmsleep.ks.teacher as teacher_side
    from lmsleep.config import SeedConfig
    from lmsleep.models import load_base

    if args.packed_tokens:  # the speed/memory trade-off of generate calls that pack several memories' rows
        rollout.PACKED_TOKENS = args.packed_tokens
    model, tokenizer = load_base(Path(args.model_path))
    cfg = SeedConfig(method="ks", ks_steps=args.steps, ks_lambda=args.on_policy_fraction, ks_alpha=1.0,
                     ks_max_new_tokens=args.max_new_tokens,
                     ks_expert_rank=args.rank, ks_prompts_per_memory=args.prompts_per_memory, ks_lr=LR,
                     ks_question_share=0.5,
                     batch_size=args.batch_size, ks_replay_prompts=0, seed=args.seed, ks_teacher_topk=TOPK,
                     ks_teacher_cache=False, ks_divergence="jsd", ks_beta=0.5, ks_temperature=TEMPERATURE,
                     ks_activation_checkpointing=args.activation_checkpointing == "on",
                     ks_return_freed_memory_kb=args.return_freed_memory_kb,  # applied where the product applies it
                     ks_expert_level_layers=args.expert_layers)
    counted = {"tokens": 0}
    real_score, real_write, real_drop = teacher_side.score, teacher_side.write_completions, ks.drop_ungrounded

    def counting_score(teacher, samples, *a, **kw):  # fresh y the writer did not score (on-policy ones): here
        counted["tokens"] += sum(len(s.completion) for s in samples if s.completion and not s.scored)
        return real_score(teacher, samples, *a, **kw)

    def counting_write(teacher, tokenizer, samples, cfg):  # a greedy teacher scores each y as it writes it
        todo = [s for s in samples if not s.completion]
        done = real_write(teacher, tokenizer, samples, cfg)
        counted["tokens"] += sum(len(s.completion) for s in todo if s.scored)
        return done

    def counting_drop(samples, *a, **kw):  # a dropped (ungrounded) y is not trained on: not counted
        kept, dropped = real_drop(samples, *a, **kw)
        counted["tokens"] -= sum(len(s.completion) for s in samples if s.scored and s not in kept)
        return kept, dropped

    teacher_side.score, teacher_side.write_completions = counting_score, counting_write
    ks.drop_ungrounded = counting_drop
    writing = {"s": 0.0}
    real_questions = ks_samples.write_questions

    def timed_write(*a, **kw):  # the prompts ours writes for itself; TRL is handed them (--prompts-file)
        began = time.perf_counter()
        try:
            return real_questions(*a, **kw)
        finally:
            writing["s"] += time.perf_counter() - began

    ks_samples.write_questions = timed_write
    marks = mark_loop_start(ks)
    memories = load_memories(args.memories)
    started = time.perf_counter()
    _, losses, stats = ks.consolidate_memories(model, tokenizer, memories, cfg)
    wall = time.perf_counter() - started
    texts = {str(m["id"]): m["text"] for m in memories}
    prompts = [{"prompt": t["prompt"], "memory_id": t["memory_id"], "kind": t["kind"], "memory": texts[t["memory_id"]]}
               for t in stats["train_texts"] if t["kind"] != "on-policy"]
    setup = marks.get("loop_start", started) - started
    return {"tokens": counted["tokens"], "wall_s": round(wall, 3), "setup_s": round(setup, 3),
            "question_writing_s": round(writing["s"], 3), "steps": len(losses),
            "trainable_parameters": stats["trainable_parameters"], "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(), "prompts": prompts, "final_loss": losses[-1] if losses else None}


def _student_text(prompt: dict[str, Any]) -> str:
    """Ours' student instruction as a user turn (a question is put in the evaluate stage's format)."""
    from lmsleep.prompts import question_messages

    return question_messages(prompt["prompt"])[0]["content"] if prompt["kind"] == "question" else prompt["prompt"]


def child_trl(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig

    from lmsleep.allocator import return_freed_memory
    from lmsleep.models import load_base

    return_freed_memory(args.return_freed_memory_kb)  # TRL runs under the same malloc setting as ours
    prompts = json.loads(Path(args.prompts_file).read_text(encoding="utf-8"))
    student, tokenizer = load_base(Path(args.model_path))
    tokenizer.padding_side = "left"
    rank = args.rank
    peft_config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                             target_modules=["gate_proj", "up_proj", "down_proj"],
                             layers_to_transform=args.expert_layers or None)  # the layers ours' expert covers
    common = dict(max_steps=args.steps, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                  learning_rate=LR, max_completion_length=args.max_new_tokens, temperature=TEMPERATURE, top_k=0,
                  top_p=1.0, bf16=False, fp16=False, use_cpu=True, report_to="none",
                  gradient_checkpointing=args.activation_checkpointing == "on",
                  logging_steps=max(1, args.steps), save_strategy="no", seed=args.seed, dataloader_num_workers=0,
                  disable_tqdm=True)
    rows = [{"prompt": [{"role": "user", "content": _student_text(p)}], "privileged_context": p["memory"]}
            for p in prompts]
    with tempfile.TemporaryDirectory() as out:
        if args.trl_trainer == "sdft":
            from trl.experimental.sdft import SDFTConfig, SDFTTrainer

            config = SDFTConfig(output_dir=out, num_generations=1, teacher_model_kind="base",
                                distillation_mode="topk_logits", distillation_topk=TOPK, distillation_add_tail=True,
                                distillation_alpha=0.5, teacher_prompt_template=TEACHER_TEMPLATE, **common)
            trainer = SDFTTrainer(model=student, args=config, train_dataset=Dataset.from_list(rows),
                                  processing_class=tokenizer, peft_config=peft_config)
            generate_name = "_generate"
        else:
            from trl import DistillationConfig, DistillationTrainer

            teacher, _ = load_base(Path(args.model_path))  # DistillationTrainer's teacher: a second copy
            config = DistillationConfig(output_dir=out, beta=0.5, **common)
            trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config,
                                          train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in rows]),
                                          processing_class=tokenizer, peft_config=peft_config)
            generate_name = "_generate_single_turn"
        counted = {"tokens": 0}
        real_generate = getattr(trainer, generate_name)

        def counting_generate(*a, **kw):
            out_ids = real_generate(*a, **kw)
            completion_ids = out_ids[1] if generate_name == "_generate" else (
                out_ids[0] if isinstance(out_ids, tuple) else out_ids)
            counted["tokens"] += sum(len(ids) for ids in completion_ids)
            return out_ids

        setattr(trainer, generate_name, counting_generate)
        started = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - started
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # the LoRA, as it trained
    return {"tokens": counted["tokens"], "wall_s": round(wall, 3), "steps": int(result.global_step),
            "trainable_parameters": trainable,
            "peak_rss_mb": peak_rss_mb(), "final_loss": float(result.training_loss)}


CHILDREN = {"load": child_load, "ours": child_ours, "trl": child_trl}


# ---------------------------------------------------------------- the parent


def run_child_process(script: Path, role: str, argv: list[str]) -> dict[str, Any]:
    """`script --child role --child-out <tmp> argv...` in its own process (offline, this checkout's src first), so
    its peak RSS is its own; returns the JSON the child wrote. bench/teacher_prefix.py runs its modes through it too."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    cmd = [sys.executable, str(script.resolve()), "--child", role, "--child-out", str(result_path), *argv]
    env = {**os.environ, **OFFLINE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT / "src"), env.get("PYTHONPATH")]))
    print(f"[{role}] " + " ".join(cmd[2:]), flush=True)
    try:
        subprocess.run(cmd, check=True, env=env, cwd=PROJECT)
        return json.loads(result_path.read_text(encoding="utf-8"))
    finally:
        result_path.unlink(missing_ok=True)


def run_child(role: str, args: argparse.Namespace, model_path: Path, extra: list[str]) -> dict[str, Any]:
    return run_child_process(Path(__file__), role, [
        "--model-path", str(model_path), "--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens),
        "--rank", str(args.rank), "--memories", str(args.memories), "--batch-size", str(args.batch_size),
        "--prompts-per-memory", str(args.prompts_per_memory), "--seed", str(args.seed),
        "--lambda", str(args.on_policy_fraction), "--trl-trainer", args.trl_trainer,
        "--activation-checkpointing", args.activation_checkpointing,
        "--return-freed-memory-kb", str(args.return_freed_memory_kb), "--packed-tokens", str(args.packed_tokens),
        *(["--expert-layers", f"{args.expert_layers[0]}-{args.expert_layers[-1]}"] if args.expert_layers else []),
        *extra])


def bench_model(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            model_path = build_tiny_model(Path(tmp) / "tiny")
        elif args.model == "smollm2":
            model_path = SMOLLM2
        else:
            model_path = Path(args.model)
        if not (model_path / "config.json").exists():
            raise SystemExit(f"no model at {model_path} (smollm2: run `make sleep` or `lmsleep demo` once to build it)")
        load = run_child("load", args, model_path, [])
        ours = run_child("ours", args, model_path, [])
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(ours.pop("prompts")), encoding="utf-8")
        trl = run_child("trl", args, model_path, ["--prompts-file", str(prompts_file)])
    ours_tps = ours["tokens"] / ours["wall_s"] if ours["wall_s"] else 0.0
    trl_tps = trl["tokens"] / trl["wall_s"] if trl["wall_s"] else 0.0
    import trl as trl_pkg

    given = ours["wall_s"] - ours["question_writing_s"]
    ours_given_tps = ours["tokens"] / given if given > 0 else 0.0
    return {
        "ours_tokens_per_s": round(ours_tps, 2), "trl_tokens_per_s": round(trl_tps, 2),
        "speedup": round(ours_tps / trl_tps, 3) if trl_tps else None,
        "ours_peak_rss_mb": ours["peak_rss_mb"], "trl_peak_rss_mb": trl["peak_rss_mb"],
        "one_model_rss_mb": load["peak_rss_mb"], "model_weights_mb": load["model_weights_mb"],
        "ours_rss_vs_one_model": round(ours["peak_rss_mb"] / load["peak_rss_mb"], 3),
        "trl_rss_vs_one_model": round(trl["peak_rss_mb"] / load["peak_rss_mb"], 3),
        "ours_steps": ours["steps"], "trl_steps": trl["steps"],
        "ours_trainable_parameters": ours["trainable_parameters"],
        "trl_trainable_parameters": trl["trainable_parameters"],
        "ours_tokens": ours["tokens"], "trl_tokens": trl["tokens"],
        "ours_wall_s": ours["wall_s"], "trl_wall_s": trl["wall_s"],
        "ours_setup_s": ours["setup_s"], "ours_question_writing_s": ours["question_writing_s"],
        "ours_tokens_per_s_given_prompts": round(ours_given_tps, 2),
        "speedup_given_prompts": round(ours_given_tps / trl_tps, 3) if trl_tps else None,
        "ours_loop_tokens_per_s": round(ours["tokens"] / (ours["wall_s"] - ours["setup_s"]), 2)
        if ours["wall_s"] > ours["setup_s"] else None,
        "ours_final_loss": ours["final_loss"], "trl_final_loss": trl["final_loss"],
        "settings": {"model": args.model, "steps": args.steps, "max_new_tokens": args.max_new_tokens,
                     "rank": args.rank, "memories": args.memories, "prompts_per_memory": args.prompts_per_memory,
                     "prompts_per_step": args.batch_size, "seed": args.seed, "lambda": args.on_policy_fraction,
                     "beta": 0.5,
                     "activation_checkpointing": args.activation_checkpointing,
                     "return_freed_memory_kb": args.return_freed_memory_kb,
                     "packed_tokens": args.packed_tokens or None,
                     "expert_layers": args.expert_layers or "all (both methods)",
                     "malloc": (f"glibc mmap threshold fixed at {args.return_freed_memory_kb} KB in all three "
                                "processes (lmsleep.allocator; ours from its train_student on, as the product does)"
                                if args.return_freed_memory_kb > 0 else "glibc's default (dynamic mmap threshold)"),
                     "temperature": TEMPERATURE, "learning_rate": LR, "teacher_topk": TOPK, "dtype": "float32", "device": "cpu",
                     "torch_threads": ours["torch_threads"],  # as the children ran (OMP_NUM_THREADS, else the cores)
                     "trl_version": trl_pkg.__version__,
                     "trl_trainer": {"sdft": "trl.experimental.sdft.SDFTTrainer",
                                     "distillation": "trl.DistillationTrainer"}[args.trl_trainer],
                     "trl_teacher": {"sdft": "the student with its LoRA disabled, memory in context (privileged "
                                             "context, ours' teacher prompt)",
                                     "distillation": "second copy of the model, same prompt as the student (no "
                                                     "memory in context)"}[args.trl_trainer],
                     "ours_teacher": "same weights, memory in context, new expert off",
                     "tokens": ("on-policy completion tokens (sampled by the student, scored by the teacher, trained on)"
                                if args.on_policy_fraction >= 1.0 else
                                "completion tokens written (ours: by the teacher, up front, for lambda 0; TRL: by the "
                                "student), scored by the teacher and trained on"),
                     "wall_s": "the consolidation call only (ours: consolidate_memories; TRL: trainer.train())"},
    }


def layer_range(text: str) -> list[int]:
    """'15-29' -> [15, ..., 29]: a contiguous block of decoder layers."""
    first, sep, last = text.partition("-")
    if not sep or not first.isdigit() or not last.isdigit() or int(first) > int(last):
        raise argparse.ArgumentTypeError(f"--expert-layers takes 'A-B' with A <= B, got {text!r}")
    return list(range(int(first), int(last) + 1))


def print_table(results: dict[str, dict[str, Any]]) -> None:
    head = (f"{'model':<26}{'ours tok/s':>11}{'trl tok/s':>11}{'speedup':>9}{'same prompts':>14}{'ours RSS MB':>13}"
            f"{'trl RSS MB':>12}{'1 model MB':>12}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        given = r.get("speedup_given_prompts")  # entries measured before session 21 lack it
        print(f"{name:<26}{r['ours_tokens_per_s']:>11.1f}{r['trl_tokens_per_s']:>11.1f}{r['speedup'] or 0:>9.2f}"
              f"{given if given is not None else float('nan'):>14.2f}{r['ours_peak_rss_mb']:>13.0f}"
              f"{r['trl_peak_rss_mb']:>12.0f}{r['one_model_rss_mb']:>12.0f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | smollm2 | a local HF checkpoint folder")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--memories", type=int, default=4)
    p.add_argument("--prompts-per-memory", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2, help="prompts per optimizer step (both methods)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda", dest="on_policy_fraction", type=float, default=1.0,
                   help="ours' seed.ks_lambda: 1 = every y sampled from the student (TRL's algorithm, the default); "
                        "0 = the product's default, every y written once by the teacher up front; stored under "
                        "'<model>-lambda<value>'")
    p.add_argument("--trl-trainer", choices=("sdft", "distillation"), default="sdft",
                   help="TRL's context-distillation SDFTTrainer (same task as ours) or its DistillationTrainer")
    p.add_argument("--activation-checkpointing", choices=("on", "off"), default="on",
                   help="both methods: ours' ks_activation_checkpointing (its default, on) and TRL's "
                        "gradient_checkpointing; results of 'off' are stored under '<model>-no-checkpointing'")
    p.add_argument("--return-freed-memory-kb", type=int, default=None,
                   help="all three processes: lmsleep.allocator's mmap threshold in KB (default: seed."
                        "ks_return_freed_memory_kb's default); 0 = glibc's default, stored under "
                        "'<model>-malloc-default'")
    p.add_argument("--packed-tokens", type=int, default=0,
                   help="ours: KV-cache tokens of a generate call that packs several memories' rows "
                        "(lmsleep.ks.rollout.PACKED_TOKENS; 0 = as shipped); stored under '<model>-packed<N>'")
    p.add_argument("--expert-layers", type=layer_range, default=[],
                   help="decoder layers 'A-B' (inclusive) that both learn in: ours' seed.ks_expert_level_layers and "
                        "TRL's LoRA layers_to_transform (default: every layer); stored under '<model>-layersA-B'")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; other models' entries are kept")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.return_freed_memory_kb is None:
        from lmsleep.config import SeedConfig

        args.return_freed_memory_kb = SeedConfig().ks_return_freed_memory_kb

    if args.child:
        os.environ.update(OFFLINE)
        result = CHILDREN[args.child](args)
        Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")
        return 0

    os.environ.update(OFFLINE)
    entry = bench_model(args)
    results: dict[str, Any] = {}
    if args.out.exists():
        try:
            results = json.loads(args.out.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            results = {}
    label = args.model if args.trl_trainer == "sdft" else f"{args.model}+{args.trl_trainer}"
    label += "-no-checkpointing" if args.activation_checkpointing == "off" else ""
    label += "-malloc-default" if args.return_freed_memory_kb <= 0 else ""
    label += f"-lambda{args.on_policy_fraction:g}" if args.on_policy_fraction != 1.0 else ""
    label += f"-packed{args.packed_tokens}" if args.packed_tokens else ""
    label += f"-layers{args.expert_layers[0]}-{args.expert_layers[-1]}" if args.expert_layers else ""
    results.setdefault("models", {})[label] = entry
    results["host"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_table(results["models"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
