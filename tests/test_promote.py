import pytest

from lmsleep.config import PromoteConfig
from lmsleep.stages.promote import decide

CFG = PromoteConfig(min_acquisition_gain=0.05, max_retention_drop=0.05, max_perplexity_increase=0.10)


def _eval(**overrides):
    base = {"acquisition_before": 0.1, "acquisition_after": 0.5, "retention_before": 0.6, "retention_after": 0.6,
            "perplexity_before": 10.0, "perplexity_after": 10.5}
    return base | overrides


def test_learning_without_cost_is_promoted():
    decision = decide(_eval(), CFG)
    assert decision["promoted"] is True
    assert len(decision["reasons"]) == 3 and all("FAIL" not in r for r in decision["reasons"])


@pytest.mark.parametrize(
    "overrides, failing",
    [({"acquisition_after": 0.12}, "acquisition"),  # +0.02 < +0.05
     ({"retention_after": 0.5}, "retention"),  # dropped 0.10 > 0.05
     ({"perplexity_after": 11.5}, "perplexity"),  # +15% > +10%
     ({"acquisition_before": None, "acquisition_after": None}, "acquisition")],
)
def test_each_rule_can_block_promotion(overrides, failing):
    decision = decide(_eval(**overrides), CFG)
    assert decision["promoted"] is False
    assert any(r.startswith(failing) and ("FAIL" in r or "no probes" in r) for r in decision["reasons"])


def test_retention_is_skipped_on_the_first_night():
    decision = decide(_eval(retention_before=None, retention_after=None), CFG)
    assert decision["promoted"] is True
    assert any("not checked" in r for r in decision["reasons"])


def test_boundaries_are_inclusive():
    decision = decide(_eval(acquisition_before=0.0, acquisition_after=0.05, retention_after=0.55,
                            perplexity_after=11.0), CFG)
    assert decision["promoted"] is True
