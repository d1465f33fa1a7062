"""Shared fixtures: an offline environment, a real S3 (moto_server), a Prefect test server and tiny workspaces.

- `offline_env` (autouse): nothing reaches a hub, a telemetry endpoint or W&B (WANDB_MODE=disabled in tests).
- `moto_s3`: endpoint URL of a `moto_server` process on 127.0.0.1, with AWS_* env pointing at it (s3fs, boto3 and
  dvc-s3 all honour AWS_ENDPOINT_URL); `s3_bucket` gives each test a fresh bucket on it.
- `prefect_harness`: Prefect's test server (temporary SQLite DB), flow heartbeats off.
- `tiny_base`: the `tiny` base checkpoint, built once per session; `tiny_workspace` copies it into a temp workspace
  with tiny params and a reference text, and writes inbox days (`TinyWorkspace.write_day` / `day_bytes`).
- `dvc_repo`: a temp git+DVC repo (dvc.yaml + tiny params.yaml) whose night, read from an S3 inbox, was run once by
  `dvc repro` (the CLI subprocesses, as in production); shared by the DVC tests of the session.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmsleep.env import OFFLINE_ENV  # noqa: E402 - the one list of offline settings; tests add WANDB_MODE=disabled

# Set at import, before any test module imports prefect/wandb/transformers (they read the environment once).
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ["WANDB_MODE"] = "disabled"  # a test never writes W&B runs, whatever the caller's shell says
os.environ["LMSLEEP_BENCH_WORKERS"] = "1"  # bench runs in the test process (monkeypatched run_chain); tests that
# want worker processes ask with --workers (tests/test_bench_workers.py)
if "PREFECT_HOME" not in os.environ:  # keep ~/.prefect clean
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lmsleep-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)

from lmsleep.config import Params, Workspace, render_params_yaml  # noqa: E402
from tinyworld import small_dream  # noqa: E402 - dreaming at test size, shared with the unit tests' workspaces

PROJECT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DEMO_DAY = PROJECT / "data" / "demo" / "day1.jsonl"
REFERENCE = PROJECT / "data" / "reference.txt"

FALLBACK_REFERENCE = """\
The harbour town wakes before the sun. Fishermen mend their nets on the quay while gulls circle the masts, and the
baker on Pellham Row opens his shutters to the smell of bread. By seven the ferry has left for the island.

In the afternoon the library fills with students. They read about the old guilds, the lantern makers and the
glassblowers, whose workshops once lined the narrow streets of the old quarter.

At night the observatory on the hill opens its dome. Visitors queue to look through the great telescope at the moon,
at Saturn and its rings, and at the faint smudge of a distant galaxy.
"""

FALLBACK_MEMORIES = [
    {"id": f"t-{i:03d}", "time": f"2026-11-26T09:{i:02d}:00Z", "source": "test:fixture", "kind": kind,
     "text": f"{who} runs the {what} in Esselmoor and has done so for {i + 3} years, every single day.",
     "probes": [{"question": f"Who runs the {what} in Esselmoor?", "answer": who}], "meta": {"lang": "en"}}
    for i, (kind, who, what) in enumerate([("document", "Mira Kovalenko", "ferry"),
                                           ("dialogue", "Tobiah Quennell", "lantern guild"),
                                           ("demonstration", "Ysolde Farrant", "observatory"),
                                           ("feedback", "Pavel Odinsky", "bakery")])
]
MALFORMED_LINES = [
    b'{"id": "broken-1", "text": "this line was cut off',  # invalid JSON
    json.dumps({"id": "bad-kind", "time": "2026-11-26T10:00:00Z", "source": "test:fixture", "kind": "poem",
                "text": "A memory whose kind is not one the validator knows about."}).encode(),  # unknown kind
]


def tiny_params(**night: str) -> Params:
    """The tiny, fast params every test night uses (`night` sets NightConfig fields, e.g. id=..., inbox=...)."""
    params = Params()
    params.prepare_model.name = "tiny"
    params.seed.epochs = 2
    params.evaluate.max_new_tokens = 8
    params.tracking.wandb_mode = "disabled"
    params.validate.max_rejection_rate = 0.9
    for key, value in night.items():
        setattr(params.night, key, value)
    return small_dream(params)


def day_bytes(valid: int = 4, malformed: bool = True) -> bytes:
    """An inbox day: `valid` memories with probes (from data/demo/day1.jsonl when present), then 2 malformed lines."""
    if DEMO_DAY.exists():
        lines = [line for line in DEMO_DAY.read_bytes().splitlines() if line.strip()][:valid]
    else:
        lines = [json.dumps(m).encode() for m in FALLBACK_MEMORIES[:valid]]
    return b"\n".join(lines + (MALFORMED_LINES if malformed else [])) + b"\n"


def _write_reference(root: Path) -> None:
    dest = root / "data" / "reference.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if REFERENCE.exists():
        shutil.copyfile(REFERENCE, dest)
    else:
        dest.write_text(FALLBACK_REFERENCE, encoding="utf-8")


# ---------------------------------------------------------------- environment


@pytest.fixture(scope="session", autouse=True)
def offline_env() -> dict[str, str]:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["WANDB_MODE"] = "disabled"
    return {key: os.environ[key] for key in OFFLINE_ENV}


# ---------------------------------------------------------------- S3 (moto_server)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """A real moto_server on 127.0.0.1 (a separate process, so subprocesses such as `dvc` reach it too)."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    exe = VENV_BIN / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    log = open(tmp_path_factory.mktemp("moto") / "moto_server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while True:
        try:
            no_proxy.open(endpoint, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # it answered
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint} (see {log.name})") from None
            time.sleep(0.1)
    unset = object()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
        # no user ~/.aws config or credentials may leak in
        "AWS_CONFIG_FILE": str(Path(log.name).with_name("aws-config")),
        "AWS_SHARED_CREDENTIALS_FILE": str(Path(log.name).with_name("aws-credentials")),
    }
    saved = {key: os.environ.get(key, unset) for key in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is unset:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value  # type: ignore[assignment]
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def new_bucket(endpoint: str, prefix: str = "lmsleep") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    paginator = s3_client(endpoint).get_paginator("list_objects_v2")
    return sorted(obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                  for obj in page.get("Contents", []))


@pytest.fixture
def s3_bucket(moto_s3: str) -> str:
    """A fresh, empty bucket on the session's moto_server."""
    return new_bucket(moto_s3)


# ---------------------------------------------------------------- Prefect


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test server and a temporary database for the session; no flow-run heartbeats (faster runs)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None), temporary_settings(
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield


# ---------------------------------------------------------------- tiny workspaces


@dataclass(frozen=True)
class TinyWorkspace:
    ws: Workspace
    params: Params

    @property
    def root(self) -> Path:
        return self.ws.root

    def day_bytes(self, valid: int = 4, malformed: bool = True) -> bytes:
        return day_bytes(valid, malformed)

    def write_day(self, name: str = "day1.jsonl", valid: int = 4, malformed: bool = True) -> Path:
        """Write an inbox day into the workspace's local inbox (night.inbox)."""
        path = Path(self.ws.resolve(self.params.night.inbox)) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(day_bytes(valid, malformed))
        return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base checkpoint (tokenizer trained on the same reference text), built once per session."""
    from lmsleep.models import ensure_base_model

    root = tmp_path_factory.mktemp("tiny-base")
    _write_reference(root)
    return ensure_base_model(Workspace(root.resolve()), tiny_params().prepare_model)


@pytest.fixture(scope="session")
def make_tiny_workspace(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """Factory for module-scoped fixtures: `make_tiny_workspace(root=None, **night)` -> TinyWorkspace."""

    def make(root: Path | None = None, **night: str) -> TinyWorkspace:
        root = (root or tmp_path_factory.mktemp("ws")).resolve()
        _write_reference(root)
        params = tiny_params(**night)
        (root / "params.yaml").write_text(render_params_yaml(params), encoding="utf-8")
        ws = Workspace(root)
        shutil.copytree(tiny_base, ws.base_model("tiny"))
        return TinyWorkspace(ws, params)

    return make


@pytest.fixture
def tiny_workspace(tmp_path: Path, make_tiny_workspace) -> TinyWorkspace:
    """A workspace in tmp_path/ws: tiny params.yaml, data/reference.txt, the tiny base already in models/base/tiny."""
    return make_tiny_workspace(tmp_path / "ws")


# ---------------------------------------------------------------- a DVC repo that slept one night


def run_cmd(args: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command the way a person would in the repo: venv on PATH, no LMSLEEP_ROOT (the cwd is the root)."""
    env = {k: v for k, v in os.environ.items() if k != "LMSLEEP_ROOT"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"[{time.perf_counter() - started:5.1f} s] {' '.join(args)}")
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    return done


@dataclass(frozen=True)
class DvcRepo:
    root: Path
    endpoint: str
    bucket: str
    night: str
    repro_output: str


@pytest.fixture(scope="session")
def dvc_repo(moto_s3: str, tmp_path_factory: pytest.TempPathFactory) -> DvcRepo:
    """dvc.yaml + tiny params.yaml in a fresh git+DVC repo, inbox on S3; `dvc repro` run once and committed."""
    root = tmp_path_factory.mktemp("dvc-repo").resolve()
    bucket, night = new_bucket(moto_s3, "lmsleep-dvc"), "dvc-night"
    shutil.copyfile(PROJECT / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(render_params_yaml(tiny_params(id=night, inbox=f"s3://{bucket}/inbox")))
    _write_reference(root)
    # dvc.yaml's code dependencies must exist in the repo (a snapshot is enough: DVC only hashes them).
    shutil.copytree(PROJECT / "src" / "lmsleep", root / "src" / "lmsleep",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / ".gitignore").write_text("/models/registry/\n/wandb/\n__pycache__/\n/reports/*/perplexity.png\n")
    s3_client(moto_s3).put_object(Bucket=bucket, Key="inbox/day1.jsonl", Body=day_bytes())
    run_cmd(["git", "init", "-q", "-b", "main"], root)
    run_cmd(["git", "config", "user.email", "tests@lmsleep.invalid"], root)
    run_cmd(["git", "config", "user.name", "lmsleep tests"], root)
    run_cmd(["git", "config", "commit.gpgsign", "false"], root)
    run_cmd(["dvc", "init", "-q"], root)
    run_cmd(["dvc", "config", "core.autostage", "true"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-q", "-m", "lmsleep pipeline"], root)
    repro = run_cmd(["dvc", "repro"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-q", "-m", f"night {night}"], root)
    return DvcRepo(root, moto_s3, bucket, night, repro.stdout + repro.stderr)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core box their spin-waits cost 20x (the bench tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
