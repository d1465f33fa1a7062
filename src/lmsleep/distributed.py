"""Distributed training inside stages, on accelerate (torchrun underneath): one code path for 1 or N processes.

A stage whose params name an accelerate config file (e.g. `seed.accelerate_config: configs/accelerate/cpu_ddp.yaml`)
relaunches itself with `accelerate launch --config_file <it> -m lmsleep.cli <stage>`; the config decides DDP on CPU
(gloo) or GPU (nccl), or FSDP. (Single-node multi-CPU configs start through torchrun instead, since accelerate's own
multi-CPU launcher needs mpirun.) Without a config, the same training loop runs in this process (a world of size 1).

Exactness: every process tokenises the whole global batch, trains on its own rows, and scales its summed token loss by
world_size / tokens-in-the-global-batch; DDP averages gradients over the world, so each step's gradient equals the
single-process gradient of the token-mean loss over the same batch (tests/test_distributed.py checks this).

Knowledge Seeding (seed.method ks) runs under the same launch: its trainable tensors are one CMS expert, so instead of
a DDP wrapper each process sums its gradients with all_reduce (lmsleep.ks.consolidate.train_student); rank 0 writes
the teacher's side to the night's teacher cache and the other ranks read it back, so every rank trains on the same
prompts and targets.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
import torch.nn.functional as F

from lmsleep.config import Params, Workspace, render_params_yaml
from lmsleep.memory import atomic_write_bytes

WORKER_ENV = "LMSLEEP_DISTRIBUTED_WORKER"


def inside_launch() -> bool:
    """True in a process started by `launch_stage` (so it trains instead of launching again)."""
    return os.environ.get(WORKER_ENV) == "1"


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def launch_stage(stage: str, params: Params, ws: Workspace, config_file: str) -> None:
    """Run `lmsleep <stage>` under `accelerate launch` with a snapshot of these exact params; raise if it fails."""
    if not Path(config_file).exists():
        raise FileNotFoundError(f"accelerate config {config_file} not found")
    snapshot = ws.root / ".lmsleep" / f"{params.night.id}-{stage}-params.yaml"
    worker_params = copy.deepcopy(params)
    worker_params.tracking.wandb_mode = "disabled"  # the launching process already tracks this stage
    atomic_write_bytes(snapshot, render_params_yaml(worker_params).encode("utf-8"))
    stage_args = ["-m", "lmsleep.cli", stage.replace("_", "-"), "--root", str(ws.root), "--params", str(snapshot)]
    config = yaml.safe_load(Path(config_file).read_text())
    if config.get("distributed_type") == "MULTI_CPU" and config.get("num_machines", 1) == 1:
        # accelerate launches single-node multi-CPU jobs through mpirun only; torchrun (what accelerate uses for
        # GPUs) starts the same ranks with gloo, and Accelerator() picks them up from the environment.
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={config.get('num_processes', 1)}", *stage_args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), *stage_args]
    print("launching:", " ".join(command))
    subprocess.run(command, env={**os.environ, WORKER_ENV: "1", "WANDB_MODE": "disabled"}, check=True)


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group; (0, 1) in a plain process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def my_rows(n_rows: int, process_index: int, num_processes: int) -> list[int]:
    """The rows of a global batch this process trains on (strided, so every process gets a share)."""
    return list(range(process_index, n_rows, num_processes))


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy summed over the labelled positions (label -100 = ignored)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def labelled_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())
