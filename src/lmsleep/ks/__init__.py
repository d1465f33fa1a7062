"""Knowledge Seeding (PAPER §4): the objective that consolidates a night's memories into one new low-rank expert.

    divergence.py  token-level forward KL / reverse KL / generalized JSD(beta) between teacher and student, masks,
                   reduction over completion tokens, teacher top-k for the cache       -> D, the distillation term
    imitation.py   Learning to Imitate: character Levenshtein r_abs, judge-based r_sem, random prefixes,
                   group-normalised REINFORCE, and the combined loss alpha * D + (1 - alpha) * reinforce
    judge.py       the frozen semantic judge (all-MiniLM-L6-v2, cosine >= threshold; exact-match fallback)
    samples.py     the prompts: completions of memory sentences and self-written questions, replay prompts
    rollout.py     batched sampling (no grad, KV cache) and the logits that predict y (LM head at y only)
    teacher.py     the teacher pass once per sample (top-k), memory-prefix keys/values, the disk cache
    consolidate.py the night's loop (`seed.method: ks`): context sender -> one new expert
    senders.py     the fast-MLP-level sender and its online test-time updater

Sign convention: every function returns a quantity to MINIMISE; `combined_ks_objective` is -L_KS of the paper.
"""

from lmsleep.ks.divergence import (
    DIVERGENCES,
    TeacherTopK,
    forward_kl,
    generalized_distillation_loss,
    generalized_jsd,
    reduce_tokens,
    reverse_kl,
    teacher_topk_logprobs,
)
from lmsleep.ks.imitation import (
    absolute_reward,
    combined_ks_objective,
    completion_logprobs,
    group_normalised_advantages,
    imitation_reward,
    levenshtein,
    random_prefix_split,
    reinforce_loss,
)
from lmsleep.ks.judge import SemanticJudge, find_minilm_dir

__all__ = [
    "DIVERGENCES",
    "SemanticJudge",
    "TeacherTopK",
    "absolute_reward",
    "combined_ks_objective",
    "completion_logprobs",
    "find_minilm_dir",
    "forward_kl",
    "generalized_distillation_loss",
    "generalized_jsd",
    "group_normalised_advantages",
    "imitation_reward",
    "levenshtein",
    "random_prefix_split",
    "reduce_tokens",
    "reinforce_loss",
    "reverse_kl",
    "teacher_topk_logprobs",
]
