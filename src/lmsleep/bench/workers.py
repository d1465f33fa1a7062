"""Run a benchmark's chains in parallel processes: one chain (a method's nights on one seed) per work item.

Chains are independent, so N single-threaded processes keep N cores busy with no synchronisation between them: on
2 cores the SmolLM2 benchmarks' defaults (3 seeds) run as two processes (docs/results.md, "Benchmark sizing").

    lmsleep bench languages --seeds 3 --model smollm2               # --workers auto: min(cores, 4) on a CPU, 1 on a GPU
    lmsleep bench squad --seeds 3 --workers 1                       # one process, as before
    LMSLEEP_BENCH_WORKERS=1 lmsleep bench ...                       # the default when --workers is not given

Every chain starts from a freshly loaded base model with its seed (harness.run_chain), so where a chain runs does not
change what it computes; only float summation order may differ with the thread count. The harness merges finished
chains in the order a single process would have run them, so the outputs, the partial files and --resume work as
with one process. Each worker gets torch's thread count // workers threads (at least one). Spawned, not forked:
torch's thread pools do not survive a fork.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator

import torch

MAX_AUTO = 4  # more processes than this each hold a model copy for little gain on a CPU box's memory bandwidth
ENV = "LMSLEEP_BENCH_WORKERS"


@dataclass(frozen=True)
class Item:
    seed: int
    methods: tuple[str, ...]  # run one after another in one process (methods that share KS nights: bundle())
    chain: int  # index into the run's chains


def bundle(items: list[Item], shares_nights) -> list[Item]:
    """Join the items of one (seed, chain) whose methods share KS nights (shares_nights(name)) into one item, so a
    night two methods would train alike is trained once (bench.methods.KS_NIGHTS lives in one process)."""
    out: list[Item] = []
    joined: dict[tuple[int, int], int] = {}  # (seed, chain) -> index in out of its shared item
    for item in items:
        if not all(shares_nights(m) for m in item.methods):
            out.append(item)
            continue
        at = joined.setdefault((item.seed, item.chain), len(out))
        if at == len(out):
            out.append(item)
        else:
            out[at] = Item(item.seed, out[at].methods + item.methods, item.chain)
    return out


@dataclass
class Job:
    """What every work item shares (sent to each worker once)."""
    bench: Any
    chains: list
    params: Any
    model_dir: Path
    reference: str


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve(requested: str | int | None, items: int) -> int:
    """--workers: a positive number as given; "auto"/None/0 = min(cores, MAX_AUTO, items) on a CPU, 1 on a GPU
    (processes would share the one GPU: ask for that with a number). None reads $LMSLEEP_BENCH_WORKERS first."""
    if requested is None:
        requested = os.environ.get(ENV, "auto")
    if str(requested).strip().lower() in ("auto", "0", ""):
        if torch.cuda.is_available():
            return 1
        return max(1, min(cores(), MAX_AUTO, items))
    try:
        count = int(requested)
    except ValueError:
        raise ValueError(f"--workers must be a number or 'auto', got {requested!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be >= 1 (or auto), got {count}")
    return count


def threads_per_worker(workers: int) -> int:
    return max(1, torch.get_num_threads() // workers)


def empty_records() -> dict[str, list]:
    return {"steps": [], "scores": [], "answers": [], "train_texts": []}


_JOB: Job | None = None  # a worker's copy of the job


def exit_with_parent(interval_s: float = 5.0) -> None:
    """End this process when its parent is gone (a killed `lmsleep bench` must not leave its workers computing a
    night for half an hour): a daemon thread watches the parent's pid."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _start_worker(job: Job, threads: int) -> None:
    global _JOB
    _JOB = job
    torch.set_num_threads(threads)
    exit_with_parent()


def run_item(job: Job, item: Item) -> dict[str, dict[str, list]]:
    """One chain on one seed for each of the item's methods, in order; per method its records (steps, scores,
    answers, train_texts)."""
    from lmsleep.bench import harness  # at call time: tests replace harness.run_chain
    from lmsleep.bench.methods import resolve_methods

    out = {}
    for method in resolve_methods(list(item.methods)):
        out[method.name] = empty_records()
        harness.run_chain(job.bench, method, job.chains[item.chain], item.seed, job.params, job.model_dir,
                          job.reference, out[method.name])
    return out


def _run_in_worker(item: Item) -> dict[str, dict[str, list]]:
    assert _JOB is not None, "worker started without its job"
    return run_item(_JOB, item)


def execute(job: Job, items: list[Item], workers: int) -> Iterator[tuple[Item, dict[str, dict[str, list]]]]:
    """Yield (item, its records per method) as items finish: in order in this process when workers == 1, else from
    a pool of spawned processes. The first failure stops the pool (the others are stopped, pending items cancelled)
    and is raised here."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield item, run_item(job, item)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=get_context("spawn"),
                               initializer=_start_worker, initargs=(job, threads_per_worker(workers)))
    finished = False
    try:
        pending = {pool.submit(_run_in_worker, item): item for item in items}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                yield item, future.result()
        finished = True
    finally:
        if not finished:  # a failed (or interrupted) run: the other chains' nights are lost anyway, stop them now
            for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way to stop one
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)  # reaps them all
