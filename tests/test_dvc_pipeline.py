"""dvc.yaml as a pipeline: a second `dvc repro` does nothing, and `dvc exp run -S` sweeps a param without touching
the workspace. Runs in the session's `dvc_repo` (a temp git+DVC repo whose night `dvc repro` already ran once).
"""

from __future__ import annotations

import hashlib
import json

import yaml

from conftest import run_cmd
from lmsleep.pipeline import STAGES


def tracked_files(root) -> dict[str, str]:
    """sha256 of every workspace file outside .git/ and .dvc/ (what a rerun must leave alone)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(root).parts)}


def test_second_repro_reports_every_stage_unchanged(dvc_repo) -> None:
    before = tracked_files(dvc_repo.root)
    done = run_cmd(["dvc", "repro"], dvc_repo.root)
    out = done.stdout + done.stderr
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert "Running stage" not in out, out
    assert "Data and pipelines are up to date." in out
    assert json.loads(run_cmd(["dvc", "status", "--json"], dvc_repo.root).stdout or "{}") == {}
    assert tracked_files(dvc_repo.root) == before


def test_exp_run_sweeps_a_param_and_exp_show_lists_it(dvc_repo) -> None:
    params_before = (dvc_repo.root / "params.yaml").read_bytes()
    # The command dvc.yaml documents; --temp runs it in .dvc/tmp/exps, so the workspace keeps its params.
    done = run_cmd(["dvc", "exp", "run", "--temp", "-S", "seed.lr=5e-4", "-n", "lr-5e-4"], dvc_repo.root)
    out = done.stdout + done.stderr
    assert "Running stage 'seed'" in out and "Running stage 'promote'" in out, out
    for stage in ("prepare_model", "collect", "validate"):  # upstream of seed: untouched by seed.lr
        assert f"Running stage '{stage}'" not in out, out
    assert (dvc_repo.root / "params.yaml").read_bytes() == params_before
    assert yaml.safe_load(params_before)["seed"]["lr"] == 0.001

    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], dvc_repo.root).stdout)
    experiments = {rev["name"]: rev["data"] for branch in shown for exp in branch.get("experiments") or []
                   for rev in exp["revs"]}
    assert "lr-5e-4" in experiments, sorted(experiments)
    data = experiments["lr-5e-4"]
    assert data["params"]["params.yaml"]["data"]["seed"]["lr"] == 0.0005
    metrics = data["metrics"][f"reports/{dvc_repo.night}/metrics.json"]["data"]
    assert "promoted" in metrics and "acquisition_after" in metrics


def test_the_ks_teacher_cache_is_a_persistent_seed_output(tmp_path) -> None:
    """DVC deletes a stage's outputs before rerunning it unless they persist: the teacher cache must, or a rerun
    (or `dvc exp run -S seed.ks_lr=...` in the workspace) could never find what the last run wrote."""
    from pathlib import Path

    from lmsleep.config import Workspace
    from lmsleep.stages.seed import teacher_cache_dir

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    outs = {next(iter(o)) if isinstance(o, dict) else o: (o[next(iter(o))] if isinstance(o, dict) else {})
            for o in stages["seed"]["outs"]}
    declared = "data/nights/${night.id}/teacher_cache"
    assert outs[declared] == {"persist": True}
    ws = Workspace(tmp_path)
    assert teacher_cache_dir(ws, "n1") == tmp_path / declared.replace("${night.id}", "n1")
