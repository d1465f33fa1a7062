"""The GitHub Actions workflows under .github/workflows: structure checked offline (no GitHub, no runner).

retrain.yml retrains when params.yaml, dvc.lock or the inbox pointer change on main: light CPU job (collect,
validate) then a self-hosted GPU job (seed ... promote), dvc pull/repro/push, metrics diff posted, dvc.lock committed
back without retriggering itself. These tests pin that contract, and that every `make`/`dvc repro` it runs names
a Makefile target / dvc.yaml stage that exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
WORKFLOWS = PROJECT / ".github" / "workflows"
RETRAIN = WORKFLOWS / "retrain.yml"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load_workflow(path: Path) -> dict:
    """The workflow as a dict. YAML 1.1 (PyYAML) reads the key `on` as the boolean True: map it back to "on"."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(job: dict) -> list[dict]:
    return job.get("steps") or []


def run_lines(job: dict) -> list[str]:
    """Every shell line of a job's `run:` steps (continuations joined, comments dropped)."""
    lines = []
    for step in steps(job):
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def commands(job: dict, tool: str) -> list[list[str]]:
    """argv of each `<tool> ...` command in a job's run steps (also after `&&`, `;`, `|`, `then`)."""
    found = []
    for line in run_lines(job):
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                argv = shlex.split(part)
            except ValueError:
                continue
            while argv and argv[0] in {"then", "else", "do", "if", "!", "time"}:
                argv = argv[1:]
            if argv and argv[0] == tool:
                found.append(argv)
    return found


def makefile_targets() -> set[str]:
    targets = set()
    for line in (PROJECT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-/$() ]+?)\s*::?(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def dvc_stages() -> set[str]:
    return set(yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"])


@pytest.fixture(scope="module")
def wf() -> dict:
    assert RETRAIN.exists(), "missing .github/workflows/retrain.yml"
    return load_workflow(RETRAIN)


# ---------------------------------------------------------------- every workflow file


def test_there_are_workflows() -> None:
    assert WORKFLOW_FILES, "no workflow under .github/workflows"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_workflow_parses_and_every_job_has_runs_on_and_steps(path: Path) -> None:
    data = load_workflow(path)
    assert data.get("on"), f"{path.name}: no trigger (`on`)"
    jobs = data.get("jobs")
    assert isinstance(jobs, dict) and jobs, f"{path.name}: no jobs"
    for name, job in jobs.items():
        if "uses" in job:  # a reusable-workflow call has neither runs-on nor steps
            continue
        assert job.get("runs-on"), f"{path.name}: job {name} has no runs-on"
        assert steps(job), f"{path.name}: job {name} has no steps"
        for step in steps(job):
            assert ("run" in step) != ("uses" in step), f"{path.name}: {name}: a step needs exactly one of run/uses"
        for need in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            assert need in jobs, f"{path.name}: job {name} needs unknown job {need}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_actions_are_pinned_to_at_least_a_major_version(path: Path) -> None:
    for job in load_workflow(path)["jobs"].values():
        for step in steps(job):
            uses = step.get("uses")
            if uses and not uses.startswith(("./", "docker://")):
                assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", uses), f"unpinned action {uses}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_secrets_only_as_expressions_and_no_literal_keys(path: Path) -> None:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    for match in re.finditer(r"secrets\.\w+", text):
        before = text[:match.start()]
        assert before.rfind("${{") > before.rfind("}}"), f"secret outside ${{{{ }}}}: {match.group()}"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id is written in the workflow"
    assert not re.search(r"(?i)(secret|password|token)\s*:\s*['\"]?[A-Za-z0-9/+]{20,}", text), "literal secret"
    data = load_workflow(path)
    for job in data["jobs"].values():
        for step in steps(job):
            # Secrets and user input reach a shell only through env (no echo of secrets, no script injection).
            script = step.get("run", "")
            assert "secrets." not in script, f"secret interpolated into a run script: {step.get('name')}"
            assert not re.search(r"\$\{\{\s*(inputs|github\.event\.inputs)\.", script), \
                f"workflow input interpolated into a run script: {step.get('name')}"


def test_actionlint_if_available() -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (its PyPI wrapper downloads a binary at build time)")
    done = subprocess.run([actionlint, *map(str, WORKFLOW_FILES)], capture_output=True, text=True, cwd=PROJECT)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- retrain.yml


def test_retrain_triggers_on_params_lock_and_inbox_pointer_on_main(wf: dict) -> None:
    push = wf["on"]["push"]
    assert push["branches"] == ["main"]
    assert {"params.yaml", "dvc.lock", "data/inbox.dvc"} <= set(push["paths"])
    # The inbox pointer that params.yaml carries: night.inbox exists there and collect reads it.
    assert "inbox" in yaml.safe_load((PROJECT / "params.yaml").read_text())["night"]


def test_retrain_can_be_dispatched_with_a_night_id(wf: dict) -> None:
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert inputs["night"]["type"] == "string"
    assert inputs["night"].get("required", False) is False  # empty = params.yaml's night.id


def test_retrainings_never_overlap(wf: dict) -> None:
    concurrency = wf["concurrency"]
    assert concurrency["group"] and "github.ref" not in concurrency["group"]  # one group for the whole repo
    assert concurrency["cancel-in-progress"] is False  # a running training is never killed by the next push


def test_least_privilege_permissions(wf: dict) -> None:
    assert wf["permissions"] == {"contents": "read"}
    allowed = {"contents": "write", "pull-requests": "write", "issues": "write", "id-token": "write"}
    for name, job in wf["jobs"].items():
        for scope, level in (job.get("permissions") or {}).items():
            assert level in ("read", "none") or allowed.get(scope) == level, f"{name}: {scope}: {level}"
    assert wf["jobs"]["light"].get("permissions") is None  # inherits read-only
    assert wf["jobs"]["heavy"]["permissions"]["contents"] == "write"  # commits dvc.lock back


def test_light_job_on_hosted_runner_and_heavy_on_self_hosted_gpu_after_it(wf: dict) -> None:
    light, heavy = wf["jobs"]["light"], wf["jobs"]["heavy"]
    assert light["runs-on"] == "ubuntu-latest"
    labels = heavy["runs-on"] if isinstance(heavy["runs-on"], list) else [heavy["runs-on"]]
    assert "self-hosted" in labels and "gpu" in labels
    assert heavy["needs"] in ("light", ["light"])


def test_jobs_pull_repro_push_in_that_order(wf: dict) -> None:
    for name in ("light", "heavy"):
        verbs = [argv[1] for argv in commands(wf["jobs"][name], "dvc") if len(argv) > 1]
        for verb in ("pull", "repro", "push"):
            assert verb in verbs, f"{name} never runs dvc {verb}"
        assert verbs.index("pull") < verbs.index("repro") < verbs.index("push"), (name, verbs)
    light_repro = [a for a in commands(wf["jobs"]["light"], "dvc") if a[1] == "repro"]
    assert [t for a in light_repro for t in a[2:] if not t.startswith("-")] == ["collect", "validate"]


def test_heavy_posts_metrics_diff_to_summary_and_commit_comment(wf: dict) -> None:
    heavy = wf["jobs"]["heavy"]
    assert any(a[1:3] == ["metrics", "diff"] and "--md" in a for a in commands(heavy, "dvc"))
    assert "GITHUB_STEP_SUMMARY" in "\n".join(run_lines(heavy))
    comment = [s for s in steps(heavy) if s.get("uses", "").startswith("actions/github-script@")]
    assert comment and "createCommitComment" in comment[0]["with"]["script"]


def test_heavy_commits_lock_back_without_retriggering(wf: dict) -> None:
    script = "\n".join(run_lines(wf["jobs"]["heavy"]))
    assert "git add dvc.lock" in script
    assert re.search(r"git commit .*\[skip ci\]", script)
    assert "git push" in script and "HEAD:main" in script
    assert "github-actions[bot]" in wf["jobs"]["light"]["if"]  # and a bot push never starts the chain


def test_heavy_gets_light_jobs_lock(wf: dict) -> None:
    up = [s for s in steps(wf["jobs"]["light"]) if s.get("uses", "").startswith("actions/upload-artifact@")]
    down = [s for s in steps(wf["jobs"]["heavy"]) if s.get("uses", "").startswith("actions/download-artifact@")]
    assert up and down and up[0]["with"]["name"] == down[0]["with"]["name"]
    assert "dvc.lock" in up[0]["with"]["path"]


def test_aws_credentials_come_from_repository_secrets(wf: dict) -> None:
    for name in ("light", "heavy"):
        aws = [s for s in steps(wf["jobs"][name])
               if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
        assert aws, f"{name} configures no AWS credentials"
        assert aws[0]["with"]["aws-access-key-id"] == "${{ secrets.AWS_ACCESS_KEY_ID }}"
        assert aws[0]["with"]["aws-secret-access-key"] == "${{ secrets.AWS_SECRET_ACCESS_KEY }}"


def test_offline_safe_environment(wf: dict) -> None:
    env = wf["env"]
    assert env["WANDB_MODE"] in ("offline", "disabled")
    assert env["DVC_NO_ANALYTICS"] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["DO_NOT_TRACK"] == "1"


def test_make_and_dvc_commands_name_targets_and_stages_that_exist(wf: dict) -> None:
    targets, stages = makefile_targets(), dvc_stages()
    assert {"venv", "test", "sleep"} <= targets  # the parser reads this Makefile
    seen_make = False
    for name, job in wf["jobs"].items():
        for argv in commands(job, "make"):
            seen_make = True
            for target in [a for a in argv[1:] if not a.startswith("-") and "=" not in a]:
                assert target in targets, f"{name}: `make {target}`: no such Makefile target"
                if shutil.which("make"):  # the Makefile itself accepts it (dry run, nothing executed)
                    dry = subprocess.run(["make", "-n", target], cwd=PROJECT, capture_output=True, text=True)
                    assert dry.returncode == 0, dry.stderr
        for argv in commands(job, "dvc"):
            if len(argv) > 1 and argv[1] in ("repro", "pull", "push"):
                for target in [a for a in argv[2:] if not a.startswith("-")]:
                    assert target in stages, f"{name}: `{' '.join(argv)}`: no stage {target} in dvc.yaml"
    assert seen_make, "the workflow never builds the environment with make"
