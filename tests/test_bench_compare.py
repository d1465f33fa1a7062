"""lmsleep.bench.compare: two saved benchmark runs of one method, seed by seed."""

import gzip
import json

import pytest

from lmsleep.bench.compare import compare, main


def _run(correct, perplexities, seeds=(0, 1, 2), group="demo", method="sleep_ks", probes=24):
    """The fields of a saved <stem>.json that compare reads (the harness's aggregate, per seed)."""
    return {"seeds": list(seeds), "reference_perplexity_base": 20.0,
            "aggregate": {group: {method: {"accuracy": {"per_seed": [c / probes for c in correct]},
                                           "perplexity": {"per_seed": list(perplexities)},
                                           "perplexity_drift": {"per_seed": [p / 20.0 - 1 for p in perplexities]}},
                                  "icl": {"accuracy": {"per_seed": [0.8] * len(seeds)}}}}}


def test_the_paired_difference_is_taken_seed_by_seed_and_drift_against_the_gate():
    run = _run([10, 8, 11], [20.8, 22.04, 22.06])  # +4%, +10.2%, +10.3%
    reference = _run([7, 8, 8], [21.0, 20.8, 20.9])
    report = compare(run, reference, "sleep_ks", gate=0.10)
    g = report["groups"]["demo"]
    assert g["seeds"] == [0, 1, 2]
    assert g["paired"]["per_seed"] == pytest.approx([3 / 24, 0.0, 3 / 24])
    assert g["paired"]["mean"] == pytest.approx(2 / 24)
    low, high = g["paired"]["ci95"]  # t(2) = 4.303 over the three differences
    assert (low, high) == pytest.approx((2 / 24 - 4.303 * (3 / 24) / 3, 2 / 24 + 4.303 * (3 / 24) / 3), abs=1e-3)
    assert g["paired"]["beyond_zero"] is None
    assert g["run"]["mean"] == pytest.approx(29 / 72)
    assert g["run_drift"]["per_seed"][0] == pytest.approx(0.04)
    assert (g["run_drift"]["past_gate"], g["reference_drift"]["past_gate"]) == (2, 0)
    assert compare(run, reference, "sleep_ks", gate=0.11)["groups"]["demo"]["run_drift"]["past_gate"] == 0


def test_only_the_seeds_both_runs_have_are_paired():
    run = _run([10, 8], [21.0, 21.0], seeds=(0, 1))
    reference = _run([7, 8, 8], [21.0, 21.0, 21.0])
    g = compare(run, reference, "sleep_ks", gate=0.1)["groups"]["demo"]
    assert g["seeds"] == [0, 1] and g["reference"]["per_seed"] == pytest.approx([7 / 24, 8 / 24])


def test_runs_without_a_common_group_method_or_seed_are_refused():
    with pytest.raises(ValueError, match="no group where both runs scored 'sft'"):
        compare(_run([1], [20.0], seeds=(0,)), _run([1], [20.0], seeds=(0,)), "sft", 0.1)
    with pytest.raises(ValueError, match="no group"):
        compare(_run([1], [20.0], seeds=(0,), group="squad20"), _run([1], [20.0], seeds=(0,)), "sleep_ks", 0.1)
    with pytest.raises(ValueError, match="share no seed"):
        compare(_run([1], [20.0], seeds=(0,)), _run([1], [20.0], seeds=(1,)), "sleep_ks", 0.1)


def test_the_cli_prints_the_table_and_writes_the_report(tmp_path, capsys):
    for name, run in (("lr3e-3", _run([10, 8, 11], [20.8, 22.04, 22.06])), ("defaults", _run([7, 8, 8], [21] * 3))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "seed_quality.json").write_text(json.dumps(run))
    out = tmp_path / "report.json"
    assert main([str(tmp_path / "lr3e-3"), str(tmp_path / "defaults"), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| demo | lr3e-3 | 41.7, 33.3, 45.8 |" in table and "| demo | defaults | 29.2, 33.3, 33.3 |" in table
    assert "2 of 3 |" in table and "(includes 0)" in table
    assert json.loads(out.read_text())["groups"]["demo"]["paired"]["mean"] == pytest.approx(2 / 24)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "lr3e-3"), str(tmp_path / "missing")])
    assert "missing/seed_quality.json not found" in capsys.readouterr().err


def test_a_gzipped_result_is_read_like_a_plain_one(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "nights.json").write_text(json.dumps(_run([10, 8, 11], [21] * 3, group="nights")))
    (tmp_path / "kept").mkdir()
    with gzip.open(tmp_path / "kept" / "nights.json.gz", "wt") as f:
        json.dump(_run([7, 8, 8], [21] * 3, group="nights"), f)
    assert main([str(tmp_path / "run"), str(tmp_path / "kept"), "--stem", "nights"]) == 0
    assert "| nights | kept | 29.2, 33.3, 33.3 |" in capsys.readouterr().out
