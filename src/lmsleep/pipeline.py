"""The night as a sequence of stages, and the one way a stage is run (CLI, DVC and Prefect all come through here).

`run_stage` imports the stage module, runs it, and logs its summary, loss curve and output files to W&B.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from lmsleep.config import Params, Workspace
from lmsleep.tracking import stage_run

STAGES = ("prepare_model", "collect", "validate", "seed", "dream", "evaluate", "promote")


def stage_outputs(stage: str, params: Params, ws: Workspace) -> list[Path]:
    """The files each stage writes (what W&B stores as the stage's artifact; dvc.yaml lists the same)."""
    night = params.night.id
    data, model, report = ws.night_data(night), ws.night_model(night), ws.night_report(night)
    return {
        "prepare_model": [],  # the base checkpoint is versioned by DVC, not copied into every W&B run
        "collect": [data / "collected.jsonl", data / "collect_manifest.json"],
        "validate": [data / "accepted.jsonl", data / "quarantine.jsonl", data / "validation.json"],
        "seed": [model / "lineage.json", model / "train_log.json", model / "adapter"],
        "dream": [ws.night_dream(night)],
        "evaluate": [report / "eval.json", report / "answers.jsonl"],
        "promote": [report / "metrics.json", report / "report.md"],
    }[stage]


def run_stage(stage: str, params: Params, ws: Workspace) -> dict[str, Any]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")
    module = importlib.import_module(f"lmsleep.stages.{stage}")
    with stage_run(params, ws, stage) as tracker:
        summary = module.run(params, ws)
        for step, loss in enumerate(summary.pop("loss_curve", []) or []):
            tracker.log({"train/loss": loss}, step=step)
        tracker.summary(summary)
        tracker.artifact(f"{params.night.id}-{stage}", stage, stage_outputs(stage, params, ws))
    return summary


def night_finished(params: Params, ws: Workspace) -> bool:
    """A night is finished once promote has written its metrics; rerunning it is then a no-op."""
    return (ws.night_report(params.night.id) / "metrics.json").exists()


def run_night(params: Params, ws: Workspace) -> dict[str, dict[str, Any]]:
    """All stages in order, in this process (the Prefect flow in flows/nightly.py runs the same list as tasks)."""
    if night_finished(params, ws):
        return {}
    return {stage: run_stage(stage, params, ws) for stage in STAGES}
