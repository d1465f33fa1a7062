"""Run a benchmark's chains in parallel processes: one chain (a method's nights on one seed) per work item.

On a CPU box a small model's night uses one core well and a second one poorly, so N processes of one thread finish
N chains in about the time one process with N threads finishes one: on 2 cores the SmolLM2 benchmarks' defaults
(3 seeds) need two processes to fit in about an hour (docs/results.md, "Sizing").

    lmsleep bench languages --seeds 3 --model smollm2               # --workers auto: min(cores, 4) on a CPU, 1 on a GPU
    lmsleep bench squad --seeds 3 --workers 1                       # one process, as before
    LMSLEEP_BENCH_WORKERS=1 lmsleep bench ...                       # the default when --workers is not given

Every chain starts from a freshly loaded base model with its seed (harness.run_chain), so where a chain runs does not
change what it computes; only float summation order may differ with the thread count. The harness merges finished
chains in the order a single process would have run them, so outputs, partial files and --resume are the same.
Each worker gets cores // workers threads (at least one). Spawned, not forked: torch's thread pools do not survive
a fork.
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
    method: str
    chain: int  # index into the run's chains


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
    (one GPU serves one process's batches better than several's). None reads $LMSLEEP_BENCH_WORKERS first."""
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


def run_item(job: Job, item: Item) -> dict[str, list]:
    """One chain of one method on one seed; its records (steps, scores, answers, train_texts)."""
    from lmsleep.bench import harness  # at call time: tests replace harness.run_chain
    from lmsleep.bench.methods import resolve_methods

    records = empty_records()
    harness.run_chain(job.bench, resolve_methods([item.method])[0], job.chains[item.chain], item.seed, job.params,
                      job.model_dir, job.reference, records)
    return records


def _run_in_worker(item: Item) -> dict[str, list]:
    assert _JOB is not None, "worker started without its job"
    return run_item(_JOB, item)


def execute(job: Job, items: list[Item], workers: int) -> Iterator[tuple[Item, dict[str, list]]]:
    """Yield (item, records) as items finish: in order in this process when workers == 1, else from a pool of
    spawned processes. The first failure stops the pool (pending items are cancelled) and is raised here."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield item, run_item(job, item)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=get_context("spawn"),
                               initializer=_start_worker, initargs=(job, threads_per_worker(workers)))
    try:
        pending = {pool.submit(_run_in_worker, item): item for item in items}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
