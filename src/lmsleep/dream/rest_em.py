"""ReST-EM on the dream writer (PAPER §5 step 4): SFT the writer on (C -> rewarded dream), round after round.

    losses = teach_writer(dm, dreams, cfg, rng)          # M-step on this round's reward-1 dreams; only the writer moves
    save_writer(folder, dm.writer_state(), info)         # models/nights/<night>/dream/writer/ (a peft LoRA folder)
    folder = find_writer(ws, champion_nights)            # tomorrow: the newest earlier night that saved one

The writer is the peft adapter WRITER on the current model (lmsleep.dream.model). E-step: the round's dreams, kept,
tested and rewarded (generation, select, trial). M-step: `writer_steps` AdamW steps of next-token loss on every
writer turn of the reward-1 dreams, exactly as the writer was prompted (memory in context + instruction -> its own
output; a qa dream has two turns: the question, then the answer). Within a night the writer continues from the
previous round (the paper restarts from the base each iteration; with one or two rounds a night, continuing is
cheaper and the writer of the previous night is the base). Only the writer's tensors are in the optimizer.

Versioning: the writer is saved every night dreaming runs (trained or not), as a standard peft adapter folder plus
writer.json (night, the folder it continued from, rounds, steps, losses), under the night's dream/ DVC output; the
next night loads the newest one among the champion's nights, so the writer's lineage follows the model's.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from lmsleep.config import Workspace
from lmsleep.dream.ledger import Dream
from lmsleep.dream.model import WRITER, WriterState, completion_nll
from lmsleep.memory import write_json

WRITER_BATCH = 4  # writer turns per step
WRITER_WEIGHTS = "adapter_model.safetensors"


def teach_writer(dm, dreams: list[Dream], cfg, rng: random.Random) -> list[float]:
    """SFT the writer on the writer turns of the reward-1 dreams; marks them taught_writer. Returns the losses."""
    taught = [d for d in dreams if d.reward == 1 and d.writer_ids]
    turns = [turn for d in taught for turn in d.writer_ids]
    if not turns or cfg.writer_steps == 0:
        return []
    params = list(dm.adapter_parameters(WRITER).values())
    optimizer = torch.optim.AdamW(params, lr=cfg.writer_lr, weight_decay=0.0)
    losses, order = [], []
    with dm.use(WRITER), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for _ in range(cfg.writer_steps):
            batch = []
            for _ in range(min(WRITER_BATCH, len(turns))):
                if not order:
                    order = turns[:]
                    rng.shuffle(order)
                batch.append(order.pop())
            loss = completion_nll(dm.cms, batch, dm.pad_id()).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        for p in params:
            p.requires_grad_(False)
    for d in taught:
        d.taught_writer = True
    return losses


def save_writer(directory: str | Path, writer: WriterState, info: dict[str, Any]) -> Path:
    """A peft adapter folder (adapter_config.json + adapter_model.safetensors) plus writer.json."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writer.config.save_pretrained(str(directory))
    save_file({k: v.contiguous() for k, v in writer.tensors.items()}, str(directory / WRITER_WEIGHTS),
              metadata={"format": "pt"})
    write_json(directory / "writer.json", {"continued_from": writer.source, **info})
    return directory


def find_writer(ws: Workspace, nights: list[str]) -> Path | None:
    """The writer folder of the newest of `nights` (in lineage order) that saved one; None: start a fresh writer."""
    for night in reversed(nights):
        folder = ws.night_dream(night) / "writer"
        if (folder / "adapter_config.json").exists() and (folder / WRITER_WEIGHTS).exists():
            return folder
    return None
