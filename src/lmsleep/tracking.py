"""W&B tracking for every stage: params, metrics and artifacts, offline by default.

Offline runs land in `<root>/wandb/` and can be uploaded later with `wandb sync`. Unit tests pass mode 'disabled'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmsleep.config import Params, Workspace


class StageRun:
    """A thin handle so stages log without knowing whether W&B is on."""

    def __init__(self, run: Any):
        self._run = run

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._run.log(numeric, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self._run.summary[key] = value

    def artifact(self, name: str, kind: str, paths: list[Path]) -> None:
        import wandb

        existing = [p for p in paths if Path(p).exists()]
        if not existing or self._run.disabled:
            return
        artifact = wandb.Artifact(name=name, type=kind)
        for path in existing:
            if Path(path).is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
        self._run.log_artifact(artifact)


@contextlib.contextmanager
def stage_run(params: Params, ws: Workspace, stage: str) -> Iterator[StageRun]:
    import wandb

    run = wandb.init(
        project=params.tracking.project,
        mode=params.tracking.wandb_mode,
        dir=str(ws.root),
        group=params.night.id,
        job_type=stage,
        name=f"{params.night.id}-{stage}",
        config=params.to_dict(),
        reinit="finish_previous",
    )
    try:
        yield StageRun(run)
    finally:
        run.finish()
