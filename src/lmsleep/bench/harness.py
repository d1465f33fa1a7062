"""The benchmark harness: seeds x methods x tasks, graded exactly as the evaluate stage grades.

    lmsleep bench quality --seeds 3                        # make bench-quality
    lmsleep bench languages --seeds 3 --workers 2          # chains in 2 processes (lmsleep.bench.workers; default auto)
    lmsleep bench squad --seeds 3 --limit 20 --methods base,icl,sft,sleep_ks
    lmsleep bench squad --seeds 1 --limit 2 --model tiny --set seed.ks_steps=2

A benchmark (one small module per benchmark, behind `Benchmark`) loads tasks: named groups of memories whose probes
are held out. For every seed and method, each chain of tasks starts from a freshly loaded base model; a chain is one
task (independent nights) or, for a `sequential` benchmark, every task in order (night after night, the model
carried over, every task's probes asked after every night: the accuracy matrix R). Answers come from
`lmsleep.generation.generate_answers` with `lmsleep.prompts.question_messages` and are graded by
`lmsleep.grading.grade`, as in `lmsleep.stages.evaluate`; perplexity is the evaluate stage's, on its reference text.

Methods that train nothing (base, icl) are deterministic (greedy decoding): they run for the first seed only and
their records are reused for the others (marked `reused_from_seed`).

Outputs in --out (default bench/results), stem = the benchmark's result name:
  <stem>.json               settings, per-(seed, method, task) scores and training steps, aggregates per group
                            (mean and 95% interval over seeds; see lmsleep.bench.metrics), retention for sequential
                            runs, the benchmark's headline
  <stem>.md, <stem>*.png    a Markdown table and plots (lmsleep.bench.report)
  <stem>_answers.jsonl      every probe's prediction and grade; <stem>_train_texts.jsonl: everything trained on
In a sequential run, a trained method's step record also holds next_in_context_accuracy (and a few examples): the
carried model asked the next task's probes WITH their memory in context, i.e. what the next night's teacher reads.
and a W&B run (offline by default: tracking.wandb_mode) with the same numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import importlib
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmsleep.bench import metrics
from lmsleep.bench import workers as workers_mod
from lmsleep.bench.methods import METHODS, History, Method, resolve_methods
from lmsleep.config import Params, Workspace
from lmsleep.generation import generate_answers, perplexity
from lmsleep.grading import grade, mean_ci95
from lmsleep.memory import probes_of, write_json, write_jsonl
from lmsleep.models import count_parameters, ensure_base_model, load_base
from lmsleep.prompts import question_messages
from lmsleep.stages.evaluate import probe_rows, read_reference

REPO = Path(__file__).resolve().parents[3]
BENCHMARKS = {  # name -> module with BENCHMARK
    "quality": "lmsleep.bench.quality", "squad": "lmsleep.bench.squad", "nights": "lmsleep.bench.nights",
    "languages": "lmsleep.bench.languages", "babi": "lmsleep.bench.babi", "arc": "lmsleep.bench.arc",
    "math": "lmsleep.bench.math",
}


@dataclass
class Task:
    name: str  # unique within the benchmark; also the "night" of its probe rows
    group: str  # results are aggregated per group (e.g. "demo", "squad20", "single", "multi-5")
    memories: list[dict[str, Any]]


class Benchmark:
    """The common interface. A module sets BENCHMARK = a subclass instance (its __init__ takes the CLI --option's)."""

    name = ""
    result_name = ""  # file stem of the outputs; "" = name
    sequential = False
    default_methods: tuple[str, ...] = ("base", "icl", "sft", "sleep_ks")
    # memories per set when --limit is not given (None = all): a benchmark whose full data takes hours on 2 CPU cores
    # sets the size whose default run fits about an hour; --limit 0 asks for all of it
    default_limit: int | None = None
    grading_note = ""  # how `grade` decides, for the Markdown table; "" = the evaluate stage's contains-or-F1 rule

    def load(self, limit: int | None) -> list[Task]:
        """The benchmark's tasks (memories with probes), the first `limit` memories of each when limit is set.
        Every benchmark whose run_benchmark returns None (the harness runs it) overrides this."""
        raise TypeError(f"benchmark {self.name!r} defines neither load() nor run_benchmark()")

    def icl_context(self, row: dict[str, Any], seen: list[str]) -> str | None:
        """The text in context when `icl` is asked a probe: its own memory once its task has been seen, else none."""
        return row["context"] if row["night"] in seen else None

    def base_model(self, ws: Workspace, params: Params) -> Path | None:
        """The model every chain starts from; None = the params' prepare_model (--model). A benchmark that needs its own
        (e.g. a tiny model pretrained on a synthetic world) builds or finds it here."""
        return None

    def reference_text(self, ws: Workspace, params: Params) -> str | None:
        """The fixed text perplexity drift is measured on; None = the evaluate stage's reference."""
        return None

    def drift_text_file(self, ws: Workspace, params: Params) -> Path | None:
        """The drift guard's text for a benchmark with its own model and reference (seed.ks_drift_budget > 0 and no
        seed.ks_drift_text given); None = the bundled English text (lmsleep.ks.drift_guard)."""
        return None

    def reading_guard_file(self, ws: Workspace, params: Params) -> Path | None:
        """The same for the guard's reading items (seed.ks_reading_budget > 0 and no seed.ks_reading_file given);
        None = the bundled English items."""
        return None

    def grade(self, prediction: str, answer: str, params: Params) -> dict[str, Any]:
        """{"correct": bool, "f1": float in [0, 1], ...} for one probe; default: the evaluate stage's grading."""
        return grade(prediction, answer, params.evaluate.f1_threshold)

    def run_benchmark(self, params: Params, ws: Workspace, seeds: int, limit: int | None, methods: list[str] | None,
                      out_dir: str | Path, command: str | None) -> dict[str, Any] | None:
        """A benchmark whose protocol is not chains of nights (e.g. bAbI's streamed windows) runs itself here and
        returns its result; None = the harness's seeds x methods x chains (`run`)."""
        return None

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        """The benchmark's own summary of result["aggregate"] (e.g. issue 3's gap closed), stored as "headline"."""
        return {}

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        return []

    @property
    def stem(self) -> str:
        return self.result_name or self.name


def get_benchmark(name: str, **options: Any) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
    cls = type(importlib.import_module(BENCHMARKS[name]).BENCHMARK)
    try:
        return cls(**options)
    except TypeError as error:  # an --option the benchmark does not take
        raise ValueError(f"benchmark '{name}': bad --option {sorted(options)}: {error}") from None


# ---------------------------------------------------------------- one chain of tasks, one method, one seed


_READER = Method("reads", "the carried model asked with the memory in context (a measurement, not a method)",
                 in_context=True)


def _answer(bench: Benchmark, method: Method, model, tokenizer, rows, seen, params: Params, label: str):
    cfg = params.evaluate
    contexts = [bench.icl_context(r, seen) if method.in_context else None for r in rows]
    messages = [question_messages(r["question"], c) for r, c in zip(rows, contexts)]
    predictions = generate_answers(model, tokenizer, messages, cfg.max_new_tokens, cfg.batch_size, desc=label,
                                   groups=contexts if method.in_context else None)  # each memory read once
    return [{"task": r["night"], "memory_id": r["memory_id"], "question": r["question"], "answer": r["answer"],
             "in_context": c is not None, "prediction": p, **bench.grade(p, r["answer"], params)}
            for r, c, p in zip(rows, contexts, predictions)]


def _reads_next(bench: Benchmark, model, tokenizer, task: Task, params: Params, label: str) -> dict[str, Any]:
    """Accuracy of the carried model on the next task's probes WITH their memory in context: what tomorrow night's
    teacher (this model reading tomorrow's memory) can still read. A consolidator that damages in-context reading
    starves every later night (the nights benchmark's KS collapse was first suspected to be this)."""
    rows = probe_rows(task.name, task.memories, task.group)
    answers = _answer(bench, _READER, model, tokenizer, rows, [task.name], params, f"{label}: reads {task.name}")
    return {"next_in_context_accuracy": sum(a["correct"] for a in answers) / len(answers) if answers else None,
            "next_in_context_examples": [{k: a[k] for k in ("question", "answer", "prediction")} for a in answers[:4]]}


def run_chain(bench: Benchmark, method: Method, chain: list[Task], seed: int, params: Params, model_dir: Path,
              reference: str, records: dict[str, list]) -> None:
    """Fresh model; for each task: consolidate (if the method trains), answer every probe of the chain, perplexity."""
    cfg = dataclasses.replace(params.seed, seed=seed)
    model, tokenizer = load_base(model_dir, params.prepare_model.dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    rows = [row for task in chain for row in probe_rows(task.name, task.memories, task.group)]
    with tempfile.TemporaryDirectory(prefix="lmsleep-bench-") as tmp:
        history = History(workspace=Workspace(Path(tmp)), dream=dataclasses.replace(params.dream, seed=seed))
        for step, task in enumerate(chain):
            trained: dict[str, Any] = {}
            if method.trains:
                done = method.consolidate(model, tokenizer, task.memories, cfg, history)
                model = done.model
                write_jsonl(history.workspace.night_model(task.name) / "train_texts.jsonl", done.train_texts)
                write_jsonl(history.workspace.night_data(task.name) / "accepted.jsonl",  # what replay may read again
                            [{k: v for k, v in m.items() if k != "probes"} for m in task.memories])
                records["train_texts"] += [{"seed": seed, "method": method.name, "task": task.name, **t}
                                           for t in done.train_texts]
                trained = {"steps": len(done.losses), "loss_first": done.losses[0] if done.losses else None,
                           "loss_last": done.losses[-1] if done.losses else None, "seconds": done.seconds,
                           "train_texts": len(done.train_texts), **done.stats}
            history.nights.append(task.name)
            history.memories += task.memories
            label = f"seed {seed} {method.name} after {task.name}"
            if method.trains and step + 1 < len(chain):
                trained |= _reads_next(bench, model, tokenizer, chain[step + 1], params, label)
            answers = _answer(bench, method, model, tokenizer, rows, history.nights, params, label)
            ppl = perplexity(model, tokenizer, reference, params.evaluate.max_reference_tokens)
            base = {"seed": seed, "method": method.name, "after": task.name, "step": step}
            records["steps"].append(base | {"task": task.name, "group": task.group, "perplexity": ppl, **trained})
            records["answers"] += [base | a for a in answers]
            for scored in chain:
                mine = [a for a in answers if a["task"] == scored.name]
                records["scores"].append(base | {
                    "task": scored.name, "group": scored.group, "probes": len(mine),
                    "correct": sum(a["correct"] for a in mine),
                    "accuracy": sum(a["correct"] for a in mine) / len(mine) if mine else None,
                    "f1": sum(a["f1"] for a in mine) / len(mine) if mine else None})
            print(f"bench: {label}: " + ", ".join(f"{s['task']} {s['accuracy']:.0%}" for s in records["scores"][
                -len(chain):] if s["accuracy"] is not None) + f", perplexity {ppl:.2f}")
    del model, tokenizer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the whole run


def _git_commit() -> str | None:
    """HEAD, with "+dirty" when the tracked source (src/, bench/) differs from it: a run of uncommitted code must not
    read as the commit it started from."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "bench"], cwd=REPO,
                                 capture_output=True, timeout=10).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if head and changed else head


def resolve_limit(bench: Benchmark, limit: int | None) -> int | None:
    """--limit as the benchmark's loaders take it: not given = the benchmark's default_limit, 0 = all (None)."""
    if limit is None:
        return bench.default_limit
    if limit < 0:
        raise ValueError(f"--limit must be >= 0 (0 = all), got {limit}")
    return limit or None


# What `--memory fast` changes: the two seed knobs that trade CPU time for a lower peak RSS and nothing else (the
# same losses and answers bit for bit: docs/results.md "Benchmark sizing"). A benchmark measures accuracy, and its
# workers have room; a night in production keeps params' memory-first values (issue 3's target: 1.2x one model).
FAST_MEMORY = {"ks_activation_checkpointing": False, "ks_return_freed_memory_kb": 0}


def memory_mode(params: Params, mode: str, explicit: dict[str, Any] | None = None) -> Params:
    """params for a benchmark run: "lean" = as given; "fast" = FAST_MEMORY's values in the seed section, except
    those the user set explicitly (`explicit`: the --set overrides, {"seed.key": value})."""
    if mode == "lean":
        return params
    if mode != "fast":
        raise ValueError(f"--memory must be fast or lean, got {mode!r}")
    keep = {key.split(".", 1)[1] for key in (explicit or {}) if key.startswith("seed.")}
    return dataclasses.replace(params, seed=dataclasses.replace(
        params.seed, **{k: v for k, v in FAST_MEMORY.items() if k not in keep}))


def with_drift_text(bench: Benchmark, ws: Workspace, params: Params) -> Params:
    """params with the benchmark's own drift-guard text and reading items where the guard's check is on and the user
    named none (a world model measures its drift on world text, as its reference is world text)."""
    seed_cfg = params.seed
    if seed_cfg.ks_drift_budget > 0 and not seed_cfg.ks_drift_text:
        own = bench.drift_text_file(ws, params)
        seed_cfg = seed_cfg if own is None else dataclasses.replace(seed_cfg, ks_drift_text=str(own))
    if seed_cfg.ks_reading_budget > 0 and not seed_cfg.ks_reading_file:
        own = bench.reading_guard_file(ws, params)
        seed_cfg = seed_cfg if own is None else dataclasses.replace(seed_cfg, ks_reading_file=str(own))
    return params if seed_cfg is params.seed else dataclasses.replace(params, seed=seed_cfg)


def run(bench: Benchmark, params: Params, ws: Workspace, seeds: int, limit: int | None = None,
        methods: list[str] | None = None, out_dir: str | Path = "bench/results",
        command: str | None = None, resume: bool = False, workers: str | int | None = 1) -> dict[str, Any]:
    """Run every seed x method x chain, write the outputs, return the result dict (what <stem>.json holds).
    `resume`: go on from the seeds a stopped run of the same settings finished (lmsleep.bench.partial).
    `workers`: processes running chains side by side (lmsleep.bench.workers; None/"auto" = by the cores)."""
    from lmsleep.bench import partial, report
    from lmsleep.tracking import stage_run

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    limit = resolve_limit(bench, limit)
    own_protocol = type(bench).run_benchmark is not Benchmark.run_benchmark
    if resume and own_protocol:
        raise ValueError(f"--resume: benchmark {bench.name} runs its own protocol, which cannot resume; rerun it")
    if own_protocol and workers is not None and str(workers).strip().lower() not in ("auto", "0", "1"):
        raise ValueError(f"--workers: benchmark {bench.name} runs its own protocol in one process")
    custom = bench.run_benchmark(params, ws, seeds, limit, methods, out_dir, command)
    if custom is not None:
        return custom
    chosen = resolve_methods(list(methods or bench.default_methods))
    tasks = bench.load(limit)
    if not tasks or not any(probes_of(m) for t in tasks for m in t.memories):
        raise ValueError(f"benchmark {bench.name}: no tasks with probes (limit {limit})")
    own = bench.base_model(ws, params)  # a benchmark's own model (e.g. pretrained on its world) or --model
    model_dir = own or ensure_base_model(ws, params.prepare_model)
    model_name = params.prepare_model.name if own is None else f"{model_dir.parent.name}/{model_dir.name}"
    reference = bench.reference_text(ws, params) or read_reference(ws, params.evaluate)
    params = with_drift_text(bench, ws, params)
    chains = [tasks] if bench.sequential else [[t] for t in tasks]
    started = time.perf_counter()

    model, tokenizer = load_base(model_dir, params.prepare_model.dtype)
    total, _ = count_parameters(model)
    base_ppl = perplexity(model, tokenizer, reference, params.evaluate.max_reference_tokens)
    del model, tokenizer
    probes = {t.name: sum(len(probes_of(m)) for m in t.memories) for t in tasks}
    print(f"bench {bench.name}: {len(tasks)} task(s), {sum(len(t.memories) for t in tasks)} memories, "
          f"{sum(probes.values())} probes, {'sequential' if bench.sequential else 'independent'} nights; methods "
          f"{[m.name for m in chosen]}; seeds {list(range(seeds))}; model {model_name} "
          f"({total / 1e6:.1f}M parameters, reference perplexity {base_ppl:.2f}) on "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")

    records: dict[str, list] = workers_mod.empty_records()
    meta = {"benchmark": bench.name, "options": dict(vars(bench)), "command": command, "git_commit": _git_commit(),
            "model": model_name, "parameters": total, "limit": limit,
            "methods": [m.name for m in chosen], "sequential": bench.sequential,
            "tasks": [{"name": t.name, "group": t.group, "memories": len(t.memories), "probes": probes[t.name]}
                      for t in tasks],
            "seed_config": params.to_dict()["seed"], "evaluate_config": params.to_dict()["evaluate"],
            "reference_perplexity_base": base_ppl, "grading_note": bench.grading_note}
    out = Path(ws.resolve(str(out_dir)))
    first, finished = 0, []
    if resume:
        records, first, meta["resumed"] = partial.load(out, bench.stem, meta)
        if first >= seeds:
            raise ValueError(f"--resume: the stopped run already finished seeds 0..{first - 1}; ask for more --seeds")
        under_way, finished, wall = partial.load_methods(out, bench.stem, meta, first)
        for kind, rows in under_way.items():
            records[kind] += rows
        meta["resumed"]["from_methods_of_seed"] = {"seed": first, "methods": finished}
        started -= max(meta["resumed"]["from_wall_s"], wall)  # wall_s counts both parts
        print(f"bench {bench.name}: resuming after seeds 0..{first - 1} and {finished or 'no methods'} of seed "
              f"{first} (from commit {meta['resumed']['from_git_commit']}); missing: "
              f"{meta['resumed']['records_missing'] or 'nothing'}")
    job = workers_mod.Job(bench, chains, params, model_dir, reference)
    units = [(seed, method) for seed in range(first, seeds) for method in chosen
             if not (seed == first and method.name in finished)]  # (seed, method) in the order one process runs them
    items = [workers_mod.Item(seed, (method.name,), i) for seed, method in units if method.trains or seed == 0
             for i in range(len(chains))]
    n_workers = workers_mod.resolve(workers, len(items))
    if n_workers > 1:  # KS-night sharers together; the longest first, so the processes end together
        items = workers_mod.bundle(items, lambda name: METHODS[name].shares_ks_nights)
        items.sort(key=lambda item: -max(METHODS[m].cost for m in item.methods))  # one process keeps run order
    meta["workers"] = n_workers
    if n_workers > 1:
        print(f"bench {bench.name}: {sum(len(i.methods) for i in items)} chains in {len(items)} work items on "
              f"{n_workers} worker processes, {workers_mod.threads_per_worker(n_workers)} thread(s) each")
    finished_chains: dict[tuple[int, str, int], dict[str, list]] = {}  # (seed, method, chain) -> its records
    done_in_seed = list(finished)
    cursor = 0

    def merge_finished_units() -> None:
        """Append every unit whose chains are all done, in run order, saving partial files as one process would."""
        nonlocal cursor, done_in_seed
        while cursor < len(units):
            seed, method = units[cursor]
            if not method.trains and seed > 0:  # deterministic: seed 0's records stand for every seed
                for kind in ("steps", "scores", "answers"):
                    records[kind] += [r | {"seed": seed, "reused_from_seed": 0} for r in records[kind]
                                      if r["seed"] == 0 and r["method"] == method.name]
            else:
                keys = [(seed, method.name, i) for i in range(len(chains))]
                if not all(key in finished_chains for key in keys):
                    return
                for key in keys:
                    for kind, rows in finished_chains.pop(key).items():
                        records[kind] += rows
            cursor += 1
            done_in_seed.append(method.name)  # a run stopped within this seed keeps its finished methods
            partial.save_methods(out, bench.stem, meta, seed, done_in_seed, records,
                                 round(time.perf_counter() - started, 1))
            if cursor == len(units) or units[cursor][0] != seed:
                done_in_seed = []
                if seed + 1 < seeds:  # a long run stopped early keeps every finished seed
                    so_far = _result(bench, meta, tasks, chosen, seed + 1, records, base_ppl, started)
                    partial.save(out, bench.stem, so_far, records)
                    print(f"bench {bench.name}: seeds 0..{seed} done ({so_far['wall_s']} s); wrote "
                          f"{bench.stem}.partial.json")

    merge_finished_units()
    for item, per_method in workers_mod.execute(job, items, n_workers):
        for name, chain_records in per_method.items():
            finished_chains[(item.seed, name, item.chain)] = chain_records
        merge_finished_units()

    result = _result(bench, meta, tasks, chosen, seeds, records, base_ppl, started)
    stem = bench.stem
    write_jsonl(out / f"{stem}_answers.jsonl", records["answers"])
    write_jsonl(out / f"{stem}_train_texts.jsonl", records["train_texts"])
    write_json(out / f"{stem}.json", result)  # before the plots: a plotting failure must not lose the numbers
    result["plots"] = report.write_plots(result, out, stem)
    (out / f"{stem}.md").write_text(report.markdown(result, stem, bench.headline_markdown(result["headline"])),
                                    encoding="utf-8")
    write_json(out / f"{stem}.json", result)
    partial.remove(out, stem)

    tracked = copy.deepcopy(params)
    tracked.night.id = f"bench-{stem}"
    with stage_run(tracked, ws, "bench") as tracker:
        for step in records["steps"]:
            tracker.log({f"{step['method']}/{step['task']}/perplexity": step["perplexity"]})
        tracker.summary(report.flat_summary(result))
        tracker.artifact(f"bench-{stem}", "bench", [out / f"{stem}{suffix}" for suffix in (".json", ".md")]
                         + [out / p for p in result["plots"]])
    print(f"bench {bench.name}: {result['wall_s']} s; wrote {out / (stem + '.json')}, {stem}.md, "
          f"{', '.join(result['plots'])}")
    return result


def _result(bench: Benchmark, meta: dict[str, Any], tasks: list[Task], chosen: list[Method], seeds: int, records,
            base_ppl: float, started: float) -> dict[str, Any]:
    """What <stem>.json holds, over seeds 0..seeds-1 of `records`."""
    done = {kind: [r for r in records[kind] if r["seed"] < seeds] for kind in ("steps", "scores", "answers")}
    result: dict[str, Any] = {
        **meta, "seeds": list(range(seeds)), "wall_s": round(time.perf_counter() - started, 1),
        "aggregate": aggregate(tasks, chosen, seeds, done, base_ppl, bench.sequential),
        "retention": retention(tasks, chosen, seeds, done, base_ppl) if bench.sequential else None,
        "scores": done["scores"], "steps": done["steps"],
    }
    result["paired"] = paired(result, [m.name for m in chosen])
    result["headline"] = bench.headline(result)
    return result


def paired(result: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Seed-by-seed differences of the compared pairs (metrics.comparison_pairs): no-context accuracy and F1 per group
    (F1 is the graded score where accuracy sits at 0: languages' F1 is chrF / 100), and the final average accuracy
    (ACC) of a sequential run. Works on a saved <stem>.json too: paired(d, d["methods"])."""
    pairs = metrics.comparison_pairs(methods)

    def rows(stat_of) -> list[dict[str, Any]]:
        return [{"method": a, "reference": b,
                 **metrics.paired_difference(stat_of(a)["per_seed"], stat_of(b)["per_seed"])} for a, b in pairs]

    out: dict[str, Any] = {"pairs": [list(p) for p in pairs],
                           "accuracy": {group: rows(lambda m, g=per_method: g[m]["accuracy"])
                                        for group, per_method in result["aggregate"].items()},
                           "f1": {group: rows(lambda m, g=per_method: g[m]["f1"])
                                  for group, per_method in result["aggregate"].items()
                                  if all("f1" in g for g in per_method.values())}}
    if result.get("retention"):
        out["acc"] = rows(lambda m: result["retention"]["methods"][m]["acc"])
    return out


# ---------------------------------------------------------------- aggregation


def _final_scores(records, tasks: list[Task], sequential: bool) -> list[dict]:
    """Scores of the model after its chain's last night: after == task (independent) or the last task."""
    last = tasks[-1].name
    return [s for s in records["scores"] if s["after"] == (last if sequential else s["task"])]


def aggregate(tasks: list[Task], methods: list[Method], seeds: int, records, base_ppl: float,
              sequential: bool) -> dict[str, dict[str, Any]]:
    """Per group, per method: accuracy, F1, perplexity and its drift, gain over base, gap closed (seeds -> interval)."""
    final = _final_scores(records, tasks, sequential)
    groups = list(dict.fromkeys(t.group for t in tasks))
    out: dict[str, dict[str, Any]] = {}
    for group in groups:
        names = {t.name for t in tasks if t.group == group}
        per: dict[str, dict[str, list]] = {}
        for method in methods:
            acc, f1, ppl = [], [], []
            for seed in range(seeds):
                mine = [s for s in final if s["seed"] == seed and s["method"] == method.name and s["task"] in names]
                n = sum(s["probes"] for s in mine)
                acc.append(sum(s["correct"] for s in mine) / n if n else None)
                f1.append(sum(s["f1"] * s["probes"] for s in mine) / n if n else None)
                steps = [s["perplexity"] for s in records["steps"] if s["seed"] == seed and s["method"] == method.name
                         and s["task"] in names and (not sequential or s["after"] == tasks[-1].name)]
                ppl.append(sum(steps) / len(steps) if steps else None)
            per[method.name] = {"accuracy": acc, "f1": f1, "perplexity": ppl}
        out[group] = {}
        for method in methods:
            values = per[method.name]
            outcomes = [a["correct"] for a in records["answers"] if a["seed"] == 0 and a["method"] == method.name
                        and a["task"] in names and a["after"] == (tasks[-1].name if sequential else a["task"])]
            entry = {"accuracy": metrics.seed_interval(values["accuracy"], outcomes, metrics.UNIT),
                     # probe-sampling uncertainty, which seeds do not show (base and icl are the same every seed)
                     "accuracy_ci95_probes_seed0": list(mean_ci95(outcomes, proportion=True)[1:]) if outcomes else None,
                     "f1": metrics.seed_interval(values["f1"], bounds=metrics.UNIT),
                     "perplexity": metrics.seed_interval(values["perplexity"]),
                     "perplexity_drift": metrics.seed_interval(
                         [None if p is None else p / base_ppl - 1 for p in values["perplexity"]]),
                     "probes": sum(s["probes"] for s in final if s["seed"] == 0 and s["method"] == method.name
                                   and s["task"] in names)}
            if "base" in per:
                entry["gain_over_base"] = metrics.seed_interval(
                    [None if a is None or b is None else a - b
                     for a, b in zip(values["accuracy"], per["base"]["accuracy"])], bounds=metrics.SIGNED_UNIT)
            out[group][method.name] = entry
        for entry in out[group].values():
            base, icl = out[group].get("base"), out[group].get("icl")
            entry["gap_closed"] = metrics.gap_closed(entry["accuracy"]["mean"],
                                                     base and base["accuracy"]["mean"], icl and icl["accuracy"]["mean"])
    return out


def retention(tasks: list[Task], methods: list[Method], seeds: int, records, base_ppl: float) -> dict[str, Any]:
    """Sequential runs: per method, R per seed, its mean, ACC/BWT/FWT/forgetting and perplexity drift over seeds."""
    names = [t.name for t in tasks]

    def matrix(method: str, seed: int) -> list[list[float]]:
        cell = {(s["after"], s["task"]): s["accuracy"] for s in records["scores"]
                if s["method"] == method and s["seed"] == seed}
        return [[cell.get((a, b)) or 0.0 for b in names] for a in names]

    out: dict[str, Any] = {}
    for method in methods:
        per_seed = [matrix(method.name, seed) for seed in range(seeds)]
        baselines = [matrix("base", seed)[0] if any(m.name == "base" for m in methods) else None
                     for seed in range(seeds)]
        scored = [metrics.retention_metrics(R, b) for R, b in zip(per_seed, baselines)]
        drift = [s["perplexity"] / base_ppl - 1 for s in records["steps"]
                 if s["method"] == method.name and s["after"] == names[-1]]
        out[method.name] = {
            "R_per_seed": per_seed,
            "R_mean": [[sum(R[i][j] for R in per_seed) / seeds for j in range(len(names))] for i in range(len(names))],
            **{key: metrics.seed_interval([s[key] for s in scored], bounds=metrics.UNIT if key == "acc"
                                          else metrics.SIGNED_UNIT) for key in ("acc", "bwt", "fwt", "forgetting")},
            "perplexity_drift": metrics.seed_interval(drift),
        }
    return {"tasks": names, "methods": out}
