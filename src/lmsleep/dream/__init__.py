"""Dreaming (PAPER §5): after consolidation, the model writes synthetic data about each memory, keeps what measurably
helps, rehearses it into tonight's expert, and trains its dream writer by ReST-EM. The stage: lmsleep.stages.dream.

    from lmsleep.dream import dream_and_rehearse
    result = dream_and_rehearse(cms, tokenizer, memories, seed_cfg, dream_cfg, expert_index=0)

    model.py       one base in memory: the CMS (tonight's expert, a free slot for the random expert) + the writer and
                   trial LoRA adapters (peft), switched in place; the loss every step uses (completion NLL)
    generation.py  m dreams per memory from the writer, memory in context, one random expert per dream slot
    task.py        tau per memory without probes: questions the model wrote and answered consistently in context
    select.py      gradient importance <grad SFT(dream), grad tau loss> on tonight's expert; top-k + b random
    trial.py       train and test each kept dream on an isolated LoRA copy; reward 1 only if tau rose
    rest_em.py     ReST-EM: SFT the writer on (memory -> rewarded dream); save / find the writer across nights
    rehearse.py    the accepted dreams as KS samples: distillation into tonight's expert (teacher: memory in context)
    ledger.py      the Dream record (made, scored, kept, tested, rewarded, taught, used) and the training audit
    night.py       dream_and_rehearse: the whole night of dreaming, in memory (the stage and the bench call it)
"""

from lmsleep.dream.ledger import Dream, ledger_summary
from lmsleep.dream.model import WriterState
from lmsleep.dream.night import DreamResult, dream_and_rehearse
from lmsleep.dream.rest_em import find_writer, save_writer

__all__ = ["Dream", "DreamResult", "WriterState", "dream_and_rehearse", "find_writer", "ledger_summary",
           "save_writer"]
