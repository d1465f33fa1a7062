"""bAbI long horizon (issue 5): stories longer than the model's context, streamed window by window through the
multi-level consolidation chain (lmsleep.ks.chain), the question asked at the end WITHOUT the early windows.

    lmsleep bench babi --seeds 3                       # make bench-babi -> bench/results/babi.json, .md, .png
    lmsleep bench babi --seeds 1 --limit 4             # 4 stories per task and length: a quick look
    lmsleep bench babi --option lengths=1,2,4 --option tasks=qa1

Model: a tiny word-level Llama trained HERE on bAbI train (../shared/data/babi/en, qa1 single supporting fact and qa2
two supporting facts by default; read its SOURCE.md) to answer with the story in context, in two query forms:
the bAbI question ("| where is mary ? bathroom") and a statement cloze ("| mary is in the bathroom"), both from the
same train questions, the context being the question's head (see below). Loss on the answer word only. Every
example's people, places and objects are renamed by a random bijection within their kind (`rename`), so the model
must read the context: without it, it memorises the 1,000 train stories (99% train, ~50% test accuracy); with it,
1,000 steps reach 100% (qa1) and 87% (qa2) on test questions. Its context holds `window_tokens` story tokens plus
one query. Cached under models/bench/babi-<hash of every setting and of the train files>/ (git-ignored: /models/).

Test stories (test split only): for a test question, the head is its story from the earliest supporting fact up to
the question (it fits one window). The long story = head + filler sentences drawn (per seed) from OTHER test stories
of the same task that mention none of the head's supporting entities nor the question's, packed greedily into whole-
sentence windows until the story spans exactly L windows. So the supporting facts sit in window 1 and the answer is
unchanged by the filler. Stories are binned by L (`lengths`, in windows).

Methods, each asked with at most one window in context (greedy next word, graded by Benchmark.grade):
  last_window        no consolidation: window L in context (the early windows are gone)
  full_context       the whole story in context, only where it fits the model (L = 1); n/a beyond
  supporting_window  window 1 (the supporting facts) in context: the in-context ceiling of consolidation
  chain_<n>          windows 1..L-1 streamed through an n-level chain (context -> level 1 every window, level k
                     updated every 2^(k-1) windows from level k-1), then window L in context, as last_window
Chain consolidation prompts come from the window alone: one cloze per entity (person or object) of the window
("| mary is in the"); never the bAbI question form, so no probe text is trained on. They are written to
babi_train_texts.jsonl (the probe-leak audit); the base model trains only on *_train.txt stories.

Outputs (--out, default bench/results): babi.json (settings, per-seed and aggregated accuracy with 95% intervals over
seeds, lmsleep.bench.metrics.seed_interval; by length x method, by task, by number of levels), babi.md, babi.png,
babi_answers.jsonl, babi_train_texts.jsonl; a W&B run (offline by default: tracking.wandb_mode).
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from lmsleep.bench import metrics
from lmsleep.bench.babi_data import (BOS, LongStory, Vocab, build_stories, entity_prompts, read_questions, task_file,
                                     words)
from lmsleep.bench.report import _pct  # the harness tables' "mean [low, high]"
from lmsleep.bench.babi_model import ModelSettings, answer_logits, ensure_base, load_base
from lmsleep.bench.harness import Benchmark, _git_commit
from lmsleep.bench.squad import shared_data
from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
from lmsleep.ks.chain import ChainSettings, ConsolidationChain
from lmsleep.memory import write_json, write_jsonl

BASELINES = ("last_window", "full_context", "supporting_window")


# ---------------------------------------------------------------- the benchmark


def chain_config(levels: int, max_windows: int, rank: int) -> CMSConfig:
    """n levels over every layer: level 1 gets the context every window, level k every 2^(k-1) windows from level
    k-1; faster levels hold 2 experts, the last one enough for the longest story."""
    specs = [LevelSpec(name=f"l{k + 1}", update_period=2 ** k, pool_size=2 if k + 1 < levels else max(1, max_windows),
                       rank=rank, alpha=2.0 * rank) for k in range(levels)]
    return CMSConfig(levels=specs, period_unit="steps")


class BabiBenchmark(Benchmark):
    name = "babi"
    default_methods = ("last_window", "full_context", "supporting_window", "chain_1", "chain_2", "chain_3")

    def __init__(self, tasks: str = "qa1,qa2", lengths: str = "1,2,4,8", stories: int = 20, window_tokens: int = 48,
                 levels: str = "1,2,3", steps: int = 24, level_steps: int = 24, lr: float = 1e-2, rank: int = 8,
                 divergence: str = "forward_kl", train_steps: int = 1500, hidden: int = 64, layers: int = 4):
        """Every --option: see the module docstring (stories = per task and length; --limit overrides it)."""
        self.tasks = [t.strip() for t in str(tasks).split(",") if t.strip()]
        self.lengths = [int(x) for x in str(lengths).split(",")]
        self.levels = [int(x) for x in str(levels).split(",")]
        self.stories, self.window_tokens = int(stories), int(window_tokens)
        self.steps, self.level_steps, self.lr, self.rank = int(steps), int(level_steps), float(lr), int(rank)
        self.divergence, self.train_steps = divergence, int(train_steps)
        self.hidden, self.layers = int(hidden), int(layers)
        if min(self.lengths) < 1 or min(self.levels) < 1:
            raise ValueError("lengths and levels must be >= 1")

    def model_settings(self) -> ModelSettings:
        return ModelSettings(tasks=tuple(self.tasks), window_tokens=self.window_tokens, hidden=self.hidden,
                             layers=self.layers, train_steps=self.train_steps)

    # ------------------------------------------------------------ one seed

    def _ask(self, model, vocab: Vocab, context: list[int], question: str) -> str:
        with torch.no_grad():
            logits = answer_logits(model, [[BOS, *context, *vocab.encode(["|", *words(question)])]])
        return vocab.tokens[int(logits[0].argmax())]

    def _record(self, seed, method, story, prediction, params, **extra) -> dict[str, Any]:
        return {"seed": seed, "method": method, "task": story.task, "length": story.length, "source": story.source,
                "question": story.question, "answer": story.answer, "prediction": prediction,
                **self.grade(prediction, story.answer, params), **extra}

    def run_seed(self, model, vocab: Vocab, stories: list[LongStory], methods: list[str], seed: int, params,
                 train_texts: list) -> list[dict[str, Any]]:
        answers = []
        for story in stories:
            last, first = story.window_ids[-1], story.window_ids[0]
            if "last_window" in methods:
                answers.append(self._record(seed, "last_window", story, self._ask(model, vocab, last, story.question),
                                            params))
            if "supporting_window" in methods:
                answers.append(self._record(seed, "supporting_window", story,
                                            self._ask(model, vocab, first, story.question), params))
            if "full_context" in methods and story.length == 1:
                answers.append(self._record(seed, "full_context", story,
                                            self._ask(model, vocab, first, story.question), params))
        settings = ChainSettings(steps=self.steps, level_steps=self.level_steps, lr=self.lr,
                                 divergence=self.divergence)
        for levels in [n for n in self.levels if f"chain_{n}" in methods]:
            method = f"chain_{levels}"
            cms = wrap_model(model, chain_config(levels, max(self.lengths) - 1, self.rank))
            try:
                for n, story in enumerate(stories):
                    chain = ConsolidationChain(cms, settings, prefix_ids=[BOS], seed=seed * 100_003 + n)
                    started = time.perf_counter()
                    for sentences, ids in zip(story.windows[:-1], story.window_ids[:-1]):
                        prompts = entity_prompts(sentences)
                        chain.process_window(ids, [vocab.encode(p) for p in prompts])
                        train_texts += [{"seed": seed, "method": method, "source": story.source,
                                         "prompt": " ".join(p)} for p in prompts]
                    prediction = self._ask(cms, vocab, story.window_ids[-1], story.question)
                    experts = {name: len(cms.active_experts(name)) for name in cms.levels}
                    answers.append(self._record(seed, method, story, prediction, params,
                                                consolidations=len(chain.history), experts=experts,
                                                seconds=round(time.perf_counter() - started, 2)))
                    chain.reset()
            finally:
                cms.unwrap()
        return answers

    # ------------------------------------------------------------ the whole run

    def run_benchmark(self, params, ws, seeds, limit, methods, out_dir, command) -> dict[str, Any]:
        from lmsleep.tracking import stage_run

        started = time.perf_counter()
        methods = list(methods or self.default_methods)
        known = set(BASELINES) | {f"chain_{n}" for n in self.levels}
        if set(methods) - known:
            raise ValueError(f"babi: unknown methods {sorted(set(methods) - known)}; known: {sorted(known)}")
        per_bin = self.stories if limit is None else int(limit)
        data = shared_data()
        model_dir = ensure_base(ws.root, self.model_settings(), data)
        model, vocab = load_base(model_dir)
        training = json.loads((model_dir / "training.json").read_text())
        test = [q for t in self.tasks for q in read_questions(task_file(data, t, "test"), t)]
        print(f"bench babi: tasks {self.tasks}, lengths {self.lengths} windows of {self.window_tokens} tokens, "
              f"{per_bin} stories per task and length, methods {methods}, seeds {list(range(seeds))}; model "
              f"{training['parameters'] / 1e6:.2f}M parameters ({model_dir.name}), context "
              f"{model.config.max_position_embeddings} positions; chain steps {self.steps}/{self.level_steps}, "
              f"rank {self.rank}")
        answers, train_texts, story_counts = [], [], {}
        for seed in range(seeds):
            rng = random.Random(f"babi-stories-{seed}")
            stories = [s for task in self.tasks
                       for s in build_stories([q for q in test if q.task == task], vocab, self.lengths, per_bin,
                                              self.window_tokens, rng)]
            story_counts[seed] = len(stories)
            t0 = time.perf_counter()
            answers += self.run_seed(model, vocab, stories, methods, seed, params, train_texts)
            mine = [a for a in answers if a["seed"] == seed]
            summary = ", ".join(f"{m} {sum(a['correct'] for a in mine if a['method'] == m) / n:.0%}"
                                for m in methods if (n := sum(a["method"] == m for a in mine)))
            print(f"bench babi: seed {seed}: {len(stories)} stories in {time.perf_counter() - t0:.0f} s; {summary}")
            if seed + 1 < seeds:  # a long run stopped early keeps every finished seed
                write_json(Path(ws.resolve(str(out_dir))) / "babi.partial.json",
                           {"complete": False, "seeds": list(range(seed + 1)), "command": command,
                            "aggregate": aggregate(answers, methods, self.lengths, seed + 1)})
        result = {
            "benchmark": self.name, "command": command, "git_commit": _git_commit(), "options": dict(vars(self)),
            "limit": limit, "seeds": list(range(seeds)), "methods": methods, "model": "babi-tiny",
            "base_model": {"path": str(model_dir.relative_to(ws.root)), **training},
            "stories_per_seed": story_counts, "protocol": "stream windows 1..L-1 through the chain, ask with window "
            "L in context; baselines in the module docstring of lmsleep.bench.babi",
            "aggregate": aggregate(answers, methods, self.lengths, seeds),
            "by_task": {t: aggregate([a for a in answers if a["task"] == t], methods, self.lengths, seeds)
                        for t in self.tasks},
            "by_levels": by_levels(answers, methods, seeds),
            "wall_s": round(time.perf_counter() - started, 1),
        }
        out = Path(ws.resolve(str(out_dir)))
        write_jsonl(out / "babi_answers.jsonl", answers)
        write_jsonl(out / "babi_train_texts.jsonl", train_texts)
        write_json(out / "babi.json", result)
        result["plots"] = [write_plot(result, out)]
        (out / "babi.md").write_text(markdown(result), encoding="utf-8")
        write_json(out / "babi.json", result)
        (out / "babi.partial.json").unlink(missing_ok=True)
        tracked = copy.deepcopy(params)
        tracked.night.id = "bench-babi"
        with stage_run(tracked, ws, "bench") as tracker:
            tracker.summary({f"{length}/{m}": e["accuracy"]["mean"] for length, per in result["aggregate"].items()
                             for m, e in per.items()} | {"wall_s": result["wall_s"]})
            tracker.artifact("bench-babi", "bench", [out / "babi.json", out / "babi.md", out / "babi.png"])
        print(f"bench babi: {result['wall_s']} s; wrote {out / 'babi.json'}, babi.md, babi.png")
        return result


def _accuracy(rows: list[dict]) -> float | None:
    return sum(r["correct"] for r in rows) / len(rows) if rows else None


def aggregate(answers: list[dict], methods: list[str], lengths: list[int], seeds: int) -> dict[str, Any]:
    """{"<L>": {method: {"accuracy": seed_interval, "probes": n at seed 0}}} (full_context only where it fits)."""
    out: dict[str, Any] = {}
    for length in lengths:
        out[str(length)] = {}
        for m in methods:
            rows = [a for a in answers if a["length"] == length and a["method"] == m]
            if not rows:
                continue
            per_seed = [_accuracy([a for a in rows if a["seed"] == s]) for s in range(seeds)]
            seed0 = [a["correct"] for a in rows if a["seed"] == 0]
            out[str(length)][m] = {"accuracy": metrics.seed_interval(per_seed, seed0, metrics.UNIT), "probes": len(seed0)}
    return out


def by_levels(answers: list[dict], methods: list[str], seeds: int) -> dict[str, Any]:
    """Accuracy over every story of length >= 2 (where consolidation has something to do), per method."""
    out = {}
    for m in methods:
        rows = [a for a in answers if a["method"] == m and a["length"] >= 2]
        if rows:
            per_seed = [_accuracy([a for a in rows if a["seed"] == s]) for s in range(seeds)]
            out[m] = {"accuracy": metrics.seed_interval(per_seed, [a["correct"] for a in rows if a["seed"] == 0],
                                                    metrics.UNIT),
                      "probes": sum(a["seed"] == 0 for a in rows)}
    return out


def markdown(result: dict[str, Any]) -> str:
    methods, base = result["methods"], result["base_model"]
    lines = ["# Benchmark `babi`: long horizon through the consolidation chain", "",
             f"Model: a {base['parameters'] / 1e6:.2f}M-parameter word-level Llama trained here on bAbI train "
             f"({', '.join(base['settings']['tasks'])}; {base['settings']['train_steps']} steps, {base['seconds']} s), "
             f"context {base['settings']['window_tokens']} story tokens + the question. {len(result['seeds'])} "
             f"seed(s), limit {result['limit']}, {result['wall_s']} s. Command: `{result.get('command') or '?'}`.", "",
             "Accuracy (95% interval over seeds; one seed: Wilson over its stories) by story length in windows. "
             "The question is asked with one window in context: window L (last_window, chain_n), window 1 "
             "(supporting_window, the ceiling), the whole story (full_context, only where it fits).", "",
             "| length (windows) | " + " | ".join(methods) + " | stories |", "|---" * (len(methods) + 2) + "|"]
    for length, per in result["aggregate"].items():
        n = max((e["probes"] for e in per.values()), default=0)
        lines.append(f"| {length} | " + " | ".join(_pct(per.get(m, {}).get("accuracy")) for m in methods)
                     + f" | {n} |")
    lines += ["", "By number of levels (every story of length >= 2):", "", "| method | accuracy | stories |",
              "|---|---|---|"]
    for m, e in result["by_levels"].items():
        lines.append(f"| {m} | {_pct(e['accuracy'])} | {e['probes']} |")
    for task, agg in result["by_task"].items():
        lines += ["", f"Task {task}:", "", "| length | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1)
                  + "|"]
        for length, per in agg.items():
            lines.append(f"| {length} | " + " | ".join(_pct(per.get(m, {}).get("accuracy")) for m in methods) + " |")
    lines += ["", "Files: `babi.json` (everything), `babi_answers.jsonl` (every prediction), `babi_train_texts.jsonl` "
              "(every consolidation prompt).", ""] + [f"![{p[:-4]}]({p})" for p in result.get("plots", [])]
    return "\n".join(lines) + "\n"


def write_plot(result: dict[str, Any], out: Path) -> str:
    """babi.png: accuracy vs story length per method, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"last_window": "#9aa5b1", "full_context": "#c05030", "supporting_window": "#e0a030",
               "chain_1": "#8fb8de", "chain_2": "#4f8fc8", "chain_3": "#2f6fb0"}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, m in enumerate(result["methods"]):
        xs, ys, lo, hi = [], [], [], []
        for length, per in result["aggregate"].items():
            stat = per.get(m, {}).get("accuracy")
            if stat and stat["mean"] is not None:
                ci = stat["ci95"] or [stat["mean"], stat["mean"]]
                xs.append(int(length)); ys.append(stat["mean"])
                lo.append(max(0.0, stat["mean"] - ci[0])); hi.append(max(0.0, ci[1] - stat["mean"]))
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m, color=colours.get(m, f"C{k}"),
                        linestyle="--" if m in BASELINES else "-")
    ax.set_xscale("log", base=2)
    lengths = [int(x) for x in result["aggregate"]]
    ax.set_xticks(lengths, [str(x) for x in lengths])
    ax.minorticks_off()
    ax.set_xlabel("story length (windows of the model's context)")
    ax.set_ylabel("accuracy, 95% CI")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"babi: {len(result['seeds'])} seed(s)")
    ax.legend(fontsize=8, loc="center")
    fig.tight_layout()
    fig.savefig(out / "babi.png", dpi=120)
    plt.close(fig)
    return "babi.png"


BENCHMARK = BabiBenchmark()
