"""lmsleep.bench.metrics: continual-learning metrics of hand-computed accuracy matrices, and seed intervals."""

import pytest

from lmsleep.bench import metrics

# R[i][j]: accuracy on task j after training through task i
R3 = [[0.5, 0.1, 0.0],
      [0.7, 0.6, 0.2],
      [0.3, 0.5, 0.9]]
B3 = [0.1, 0.1, 0.1]


def test_acc_bwt_fwt_forgetting_of_a_three_task_matrix():
    # ACC = mean of the last row = (0.3 + 0.5 + 0.9) / 3
    assert metrics.average_accuracy(R3) == pytest.approx(1.7 / 3)
    # BWT = mean over j < 2 of R[2][j] - R[j][j] = ((0.3 - 0.5) + (0.5 - 0.6)) / 2
    assert metrics.backward_transfer(R3) == pytest.approx(-0.15)
    # FWT = mean over j >= 1 of R[j-1][j] - b[j] = ((0.1 - 0.1) + (0.2 - 0.1)) / 2
    assert metrics.forward_transfer(R3, B3) == pytest.approx(0.05)
    # forgetting: task 0 peaked at 0.7 (after task 1, not after itself) and ends at 0.3 -> 0.4; task 1: 0.6 -> 0.5
    assert metrics.forgetting(R3) == pytest.approx((0.4 + 0.1) / 2)
    assert metrics.retention_metrics(R3, B3) == pytest.approx(
        {"acc": 1.7 / 3, "bwt": -0.15, "fwt": 0.05, "forgetting": 0.25})


def test_no_forgetting_and_positive_backward_transfer():
    R = [[0.4, 0.0], [0.6, 0.8]]  # task 0 improved after learning task 1
    assert metrics.backward_transfer(R) == pytest.approx(0.2)
    assert metrics.forgetting(R) == pytest.approx(-0.2)  # max over l < T-1 is R[0][0] = 0.4; 0.4 - 0.6


def test_one_task_and_missing_baseline_give_none():
    assert metrics.retention_metrics([[0.7]], [0.2]) == {"acc": 0.7, "bwt": None, "fwt": None, "forgetting": None}
    assert metrics.forward_transfer(R3, None) is None


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        metrics.average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError):
        metrics.average_accuracy([])
    with pytest.raises(ValueError):
        metrics.forward_transfer(R3, [0.1, 0.1])


def test_t_quantiles():
    assert metrics.t_quantile_975(1) == pytest.approx(12.7062)
    assert metrics.t_quantile_975(2) == pytest.approx(4.3027)
    assert metrics.t_quantile_975(100) == pytest.approx(1.9840, abs=2e-4)  # the expansion beyond the table
    with pytest.raises(ValueError):
        metrics.t_quantile_975(0)


def test_seed_interval_is_a_t_interval_over_seeds():
    # mean 0.4, s = 0.2, half = t(2) * 0.2 / sqrt(3) = 4.3027 * 0.11547 = 0.49683
    out = metrics.seed_interval([0.2, 0.4, 0.6])
    assert out["mean"] == pytest.approx(0.4) and out["n_seeds"] == 3
    assert out["ci95"] == pytest.approx([0.4 - 0.49683, 0.4 + 0.49683], abs=1e-4)
    assert out["ci_method"] == "t over 3 seeds" and out["per_seed"] == [0.2, 0.4, 0.6]
    # two seeds: half = 12.7062 * s / sqrt(2) = 12.7062 * 0.1 = 1.27062 (s = 0.14142)
    assert metrics.seed_interval([0.5, 0.7])["ci95"] == pytest.approx([0.6 - 1.27062, 0.6 + 1.27062], abs=1e-4)
    # identical seeds (a deterministic method): a point
    assert metrics.seed_interval([0.3, 0.3, 0.3])["ci95"] == pytest.approx([0.3, 0.3])


def test_seed_interval_is_clipped_to_the_quantity_s_range():
    """babi's 83.3% [58.2, 108.4]: an accuracy's interval stops at 100%, a difference's at -100%."""
    values = [0.6, 1.0, 0.9]
    free = metrics.seed_interval(values)
    assert free["ci95"][1] > 1.0
    clipped = metrics.seed_interval(values, bounds=metrics.UNIT)
    assert clipped["ci95"] == pytest.approx([free["ci95"][0], 1.0])
    assert clipped["ci_method"] == "t over 3 seeds, clipped to [0, 1]"
    assert metrics.seed_interval([0.4, 0.41, 0.42], bounds=metrics.UNIT)["ci_method"] == "t over 3 seeds"  # inside: as is
    assert clipped["mean"] == free["mean"]
    low = metrics.seed_interval([-0.9, -1.0, -0.5], bounds=metrics.SIGNED_UNIT)["ci95"]
    assert low[0] == -1.0 and low[1] < 0


def test_seed_interval_with_one_seed_falls_back_to_wilson_over_probes_or_none():
    one = metrics.seed_interval([0.5], [True] * 5 + [False] * 5)
    assert one["ci95"] == pytest.approx([0.2366, 0.7634], abs=1e-4) and one["ci_method"].startswith("Wilson")
    assert metrics.seed_interval([0.5])["ci95"] is None
    # undefined per-seed values are left out of the mean but kept in per_seed
    skipped = metrics.seed_interval([None, 0.4, None])
    assert skipped["mean"] == 0.4 and skipped["n_seeds"] == 1 and skipped["per_seed"] == [None, 0.4, None]
    assert metrics.seed_interval([None])["mean"] is None


def test_beats_beyond_intervals_and_gap_closed():
    high, low = {"ci95": [0.5, 0.7]}, {"ci95": [0.2, 0.45]}
    assert metrics.beats_beyond_intervals(high, low) is True
    assert metrics.beats_beyond_intervals(high, {"ci95": [0.2, 0.55]}) is False  # overlapping
    assert metrics.beats_beyond_intervals(high, {"ci95": None}) is None
    assert metrics.gap_closed(0.5, 0.1, 0.9) == pytest.approx(0.5)
    assert metrics.gap_closed(0.5, 0.4, 0.4) is None  # no gap to close
    assert metrics.gap_closed(None, 0.1, 0.9) is None


def test_paired_difference_shares_the_seeds_noise_that_separate_intervals_do_not():
    # both methods swing together from seed to seed; one is 2 points above the other every time
    ks, dream = [0.10, 0.20, 0.30], [0.12, 0.22, 0.32]
    assert metrics.beats_beyond_intervals(metrics.seed_interval(dream), metrics.seed_interval(ks)) is False
    paired = metrics.paired_difference(dream, ks)
    assert paired["mean"] == pytest.approx(0.02) and paired["ci95"] == pytest.approx([0.02, 0.02])
    assert paired["per_seed"] == pytest.approx([0.02, 0.02, 0.02]) and paired["beyond_zero"] == "above"
    # differences 0.1, -0.1, 0.3: mean 0.1, s 0.2, half 4.3027 * 0.2 / sqrt(3) = 0.49683 -> straddles 0
    mixed = metrics.paired_difference([0.5, 0.3, 0.6], [0.4, 0.4, 0.3])
    assert mixed["ci95"] == pytest.approx([0.1 - 0.49683, 0.1 + 0.49683], abs=1e-4) and mixed["beyond_zero"] is None
    assert metrics.paired_difference([0.1, 0.1], [0.3, 0.4])["beyond_zero"] is None  # t(1) = 12.7: too wide
    assert metrics.paired_difference([0.1, 0.1, 0.1], [0.3, 0.4, 0.35])["beyond_zero"] == "below"
    # a seed missing on either side is left out; one seed left is no interval at all
    gap = metrics.paired_difference([0.5, None, 0.6], [0.4, 0.4, None])
    assert gap["n_seeds"] == 1 and gap["beyond_zero"] is None and gap["per_seed"] == [pytest.approx(0.1), None, None]
    with pytest.raises(ValueError, match="one per seed"):
        metrics.paired_difference([0.1, 0.2], [0.1])


def test_comparison_pairs_put_the_product_against_baselines_and_each_variant_against_its_parent():
    methods = ["base", "icl", "sft", "opsd", "sleep_ks", "sleep_ks-expansion", "sleep_ks_dream",
               "sleep_ks_dream-random_expert", "sleep_ks_dream+night_mix", "sleep_ks_fast_level", "seal_like"]
    assert metrics.comparison_pairs(methods) == [
        ("sleep_ks", "sft"), ("sleep_ks", "opsd"), ("sleep_ks", "seal_like"),
        ("sleep_ks-expansion", "sleep_ks"), ("sleep_ks_dream", "sleep_ks"),
        ("sleep_ks_dream-random_expert", "sleep_ks_dream"), ("sleep_ks_dream+night_mix", "sleep_ks_dream"),
        ("sleep_ks_fast_level", "sleep_ks")]
    # a variant whose parent did not run, and the product without baselines, compare with nothing
    assert metrics.comparison_pairs(["base", "sleep_ks_dream-grad_selection", "sleep_ks"]) == []
    assert metrics.comparison_pairs(["sft", "opsd"]) == []
