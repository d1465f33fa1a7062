"""Train and test (PAPER §5 step 3): each kept dream fine-tunes an isolated copy; reward 1 only if tau rose.

    tau_before = {mid: tau_value(dm, items, cfg) for mid, items in tasks.items()}   # the model without any dream
    train_and_test(dm, kept, tasks, tau_before, cfg)                                # d.tau_after, d.reward

The isolated copy is the peft adapter TRIAL on the shared base (lmsleep.dream.model): reset to its initial LoRA
(B = 0, so the copy starts as the model itself), trained `trial_steps` AdamW steps on the dream's SFT loss (its
completion after its student prompt, no memory in context), then tau of the dream's memory is measured with it
live. Only the trial adapter's tensors are in the optimizer: the base, tonight's expert and the writer never move
(tests/test_dream_trial.py checks them bit for bit). One base in memory, one adapter reset per trial, tau's items
scored in one batch: the cost of a trial is `trial_steps` small backward passes plus one forward (or, with
tau_metric 'accuracy', one greedy generation batch).
"""

from __future__ import annotations

import torch

from lmsleep.dream.ledger import Dream
from lmsleep.dream.model import TRIAL, completion_nll
from lmsleep.dream.task import TaskItem, tau_value


def reward(tau_before: float, tau_after: float, margin: float = 0.0) -> int:
    """1 when tau rose by more than `margin` (higher tau is better), else 0: no reward for standing still."""
    return int(tau_after > tau_before + margin)


def train_and_test(dm, dreams: list[Dream], tasks: dict[str, list[TaskItem]], tau_before: dict[str, float],
                   cfg) -> list[float]:
    """Run one trial per dream, in order; fills tested, tau_before, tau_after and reward. Returns final SFT losses."""
    params = list(dm.adapter_parameters(TRIAL).values())
    final_losses = []
    for d in dreams:
        dm.reset_trial()
        optimizer = torch.optim.AdamW(params, lr=cfg.trial_lr, weight_decay=0.0)
        with dm.use(TRIAL):
            for p in params:
                p.requires_grad_(True)
            loss = torch.zeros(())
            with torch.enable_grad():
                for _ in range(cfg.trial_steps):
                    loss = completion_nll(dm.cms, [(d.student_ids, d.completion_ids)], dm.pad_id())[0]
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            for p in params:
                p.requires_grad_(False)
            d.tau_after = tau_value(dm, tasks[d.memory_id], cfg)
        d.tau_before = tau_before[d.memory_id]
        d.reward = reward(d.tau_before, d.tau_after, cfg.reward_margin)
        d.tested = True
        final_losses.append(float(loss.detach()))
    dm.reset_trial()
    return final_losses
