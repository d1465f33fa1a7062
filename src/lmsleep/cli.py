"""The `lmsleep` command: one subcommand per stage, plus night, demo, ask, status and rollback.

    lmsleep night --night 2026-11-26 --inbox s3://bucket/inbox     # all stages, through the Prefect flow
    lmsleep seed --night demo-smollm2 --set seed.lr=5e-4            # one stage (what dvc.yaml calls)
    lmsleep ask "Who is the captain of the Esselmoor ferry?"        # the champion, no memory in context
    lmsleep status | lmsleep rollback
    lmsleep bench quality --seeds 3                                  # a benchmark -> bench/results/ (lmsleep.bench)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

from lmsleep.env import set_offline_env

set_offline_env()

from lmsleep.config import Params, Workspace, load_params, parse_overrides  # noqa: E402
from lmsleep.errors import NightStopped  # noqa: E402
from lmsleep.pipeline import STAGES, night_finished, run_stage  # noqa: E402


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml in --root)")
    parser.add_argument("--root", default=None, help="workspace root (default: $LMSLEEP_ROOT or .)")
    parser.add_argument("--night", default=None, help="night id (overrides night.id)")
    parser.add_argument("--inbox", default=None, help="inbox folder or s3:// prefix (overrides night.inbox)")
    parser.add_argument("--model", default=None, help="smollm2 | tiny | a local HF folder (prepare_model.name)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any params.yaml value, e.g. --set seed.lr=5e-4 (repeatable)")
    _threads(parser)


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (and OMP_NUM_THREADS for any child process); default: torch's "
                             "own, every core. On a box shared with other jobs, 1 or 2 keeps them from competing "
                             "(bench: the total, split between its --workers)")


def cap_threads(threads: int | None) -> None:
    """--threads: torch's intra-op threads for this process and, through the environment, its children."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def resolve(args: argparse.Namespace) -> tuple[Params, Workspace]:
    ws = Workspace.from_env(args.root)
    overrides = parse_overrides(args.set)
    for key, value in (("night.id", args.night), ("night.inbox", args.inbox), ("prepare_model.name", args.model)):
        if value is not None:
            overrides[key] = value
    params_path = Path(args.params) if Path(args.params).is_absolute() else ws.root / args.params
    return load_params(params_path, overrides), ws


# ---------------------------------------------------------------- printing


def print_before_after(params: Params, ws: Workspace) -> None:
    from lmsleep.memory import read_json, read_jsonl
    from lmsleep.report import before_after_table

    report = ws.night_report(params.night.id)
    if not (report / "answers.jsonl").exists():
        print(f"night '{params.night.id}' has no evaluation yet")
        return
    print(before_after_table([r for r in read_jsonl(report / "answers.jsonl") if r.get("night") == params.night.id]))
    if (report / "metrics.json").exists():
        metrics = read_json(report / "metrics.json")
        for key in ("acquisition_before", "acquisition_after", "in_context_accuracy", "retention_before",
                    "retention_after", "perplexity_before", "perplexity_after", "promoted"):
            print(f"  {key:22s} {metrics.get(key)}")
    print(f"report: {report / 'report.md'}")


# ---------------------------------------------------------------- commands


def cmd_stage(args: argparse.Namespace) -> None:
    params, ws = resolve(args)
    summary = run_stage(args.stage, params, ws)
    print(yaml.safe_dump({args.stage: summary}, sort_keys=False, allow_unicode=True).rstrip())


def cmd_night(args: argparse.Namespace) -> None:
    params, ws = resolve(args)
    if night_finished(params, ws):
        print(f"night '{params.night.id}' is already finished: nothing to do")
    elif args.local:
        from lmsleep.pipeline import run_night

        run_night(params, ws)
    else:
        from flows.nightly import nightly_sleep

        nightly_sleep(night=params.night.id, inbox=params.night.inbox, model=params.prepare_model.name,
                      root=str(ws.root), params_file=args.params, overrides=args.set)
    print_before_after(params, ws)


def cmd_demo(args: argparse.Namespace) -> None:
    """Stage the bundled day of memories into the inbox (once) and run a night on it."""
    params, ws = resolve(args)
    if args.night is None:
        params.night.id = f"demo-{Path(params.prepare_model.name).name}"
    if not (ws.night_data(params.night.id) / "collect_manifest.json").exists():
        inbox = Path(ws.resolve(params.night.inbox))
        inbox.mkdir(parents=True, exist_ok=True)
        for day in sorted(Path(ws.resolve("data/demo")).glob(args.days)):
            if not (inbox / day.name).exists():
                shutil.copy2(day, inbox / day.name)
                print(f"staged {day} -> {inbox / day.name}")
    args.night = params.night.id
    cmd_night(args)


def cmd_ask(args: argparse.Namespace) -> None:
    from lmsleep import registry
    from lmsleep.generation import generate_answers
    from lmsleep.models import ensure_base_model, load_lineage
    from lmsleep.prompts import question_messages

    params, ws = resolve(args)
    ensure_base_model(ws, params.prepare_model)
    lineage = registry.champion(ws, params.prepare_model)
    context = Path(args.memory_file).read_text(encoding="utf-8") if args.memory_file else args.memory
    model, tokenizer = load_lineage(ws, lineage, params.prepare_model.dtype)
    answer = generate_answers(model, tokenizer, [question_messages(args.question, context)],
                              max_new_tokens=args.max_new_tokens, batch_size=1)[0]
    print(f"[champion: {registry.champion_night(ws, params.prepare_model) or 'base'}; "
          f"memory in context: {'yes' if context else 'no'}]")
    print(answer)


def cmd_status(args: argparse.Namespace) -> None:
    from lmsleep import registry
    from lmsleep.inbox import Inbox

    params, ws = resolve(args)
    print(f"model:     {params.prepare_model.name}")
    print(f"champion:  {registry.champion_night(ws, params.prepare_model) or 'base (no night promoted yet)'}")
    pending = Inbox(ws.resolve(params.night.inbox)).pending(params.collect.pattern)
    print(f"inbox:     {params.night.inbox} ({len(pending)} pending file(s))")
    print("nights:")
    for night in ws.nights():
        done = [s for s, f in (("collect", ws.night_data(night) / "collect_manifest.json"),
                               ("validate", ws.night_data(night) / "accepted.jsonl"),
                               ("seed", ws.night_model(night) / "lineage.json"),
                               ("dream", ws.night_dream(night) / "dream_log.json"),
                               ("evaluate", ws.night_report(night) / "eval.json"),
                               ("promote", ws.night_report(night) / "metrics.json")) if f.exists()]
        print(f"  {night:24s} {' > '.join(done) or '-'}")
    for event in registry.history(ws, params.prepare_model)[-5:]:
        print(f"  history: {event['time']} {event['event']} {event['night']}")


def cmd_rollback(args: argparse.Namespace) -> None:
    from lmsleep import registry

    params, ws = resolve(args)
    restored = registry.rollback(ws, params.prepare_model)
    print(f"champion is now: {restored['night'] or 'base'}")


def cmd_params(args: argparse.Namespace) -> None:
    from lmsleep.config import render_params_yaml

    print(render_params_yaml(resolve(args)[0]), end="")


def cmd_bench(args: argparse.Namespace) -> None:
    from lmsleep.bench.harness import get_benchmark, memory_mode, run

    params, ws = resolve(args)
    params = memory_mode(params, args.memory, explicit=parse_overrides(args.set))
    options = {key: yaml.safe_load(value) for key, _, value in (o.partition("=") for o in args.option)}
    bench = get_benchmark(args.name, **options)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    run(bench, params, ws, seeds=args.seeds, limit=args.limit, methods=methods, out_dir=args.out,
        command=" ".join(["lmsleep", *args.argv]), resume=args.resume, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmsleep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage.replace("_", "-"), help=f"run the {stage} stage")
        _common(p)
        p.set_defaults(func=cmd_stage, stage=stage)
    for name, func, help_text in (("night", cmd_night, "run every stage of one night"),
                                  ("demo", cmd_demo, "stage the bundled demo day and run a night on it")):
        p = sub.add_parser(name, help=help_text)
        _common(p)
        p.add_argument("--local", action="store_true", help="run the stages in-process instead of via Prefect")
        p.set_defaults(func=func, days="day1.jsonl")
    p = sub.add_parser("ask", help="ask the champion a question")
    _common(p)
    p.add_argument("question")
    p.add_argument("--memory", default=None, help="a memory text to put in context")
    p.add_argument("--memory-file", default=None, help="a file whose text goes in context")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.set_defaults(func=cmd_ask)
    p = sub.add_parser("bench", help="run a benchmark: seeds x methods, results in bench/results/ (lmsleep.bench)")
    p.add_argument("name", help="benchmark: quality | squad | nights | languages | babi | arc | math")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most K memories/passages per set (default: the benchmark's own: all, but a subset for "
                        "squad; 0 = all)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the benchmark's own list)")
    p.add_argument("--out", default="bench/results", help="output folder (default: bench/results in --root)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a benchmark option, e.g. --option mode=single for squad (repeatable)")
    p.add_argument("--params", default="params.yaml", help="params file: the seed and evaluate sections are used")
    p.add_argument("--root", default=None, help="workspace root (default: $LMSLEEP_ROOT or .)")
    p.add_argument("--model", default=None, help="smollm2 | tiny | a local HF folder (prepare_model.name)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a params value, e.g. --set seed.ks_steps=60 (repeatable)")
    _threads(p)
    p.add_argument("--resume", action="store_true",
                   help="go on from the seeds a stopped run with the same settings finished in --out")
    p.add_argument("--workers", default=None,
                   help="processes running chains side by side: N or auto (default: $LMSLEEP_BENCH_WORKERS, else "
                        "auto = min(cores, 4) on a CPU, 1 on a GPU; lmsleep.bench.workers)")
    p.add_argument("--memory", choices=("fast", "lean"), default="fast",
                   help="fast (default): KS nights keep their activations and leave malloc as it is "
                        "(seed.ks_activation_checkpointing=false, seed.ks_return_freed_memory_kb=0 unless --set): "
                        "the same numbers bit for bit, about 2x faster steps on a CPU, a higher peak (up to about "
                        "4 GB a SmolLM2 worker); lean: params' memory-first values, as a night runs them")
    p.set_defaults(func=cmd_bench, night=None, inbox=None)
    for name, func, help_text in (("status", cmd_status, "nights, champion and pending inbox"),
                                  ("rollback", cmd_rollback, "restore the previous champion"),
                                  ("params", cmd_params, "print params.yaml with every field's help")):
        p = sub.add_parser(name, help=help_text)
        _common(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = list(argv)  # the command as typed, recorded by `bench` in its results
    try:
        cap_threads(args.threads)
        args.func(args)
    except NightStopped as stop:
        print(f"night stopped: {stop}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as error:  # bad input: a clear message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
