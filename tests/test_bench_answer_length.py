"""lmsleep.bench.answer_length: a run's answers graded again as if generation had stopped after K tokens."""

import json

import pytest

from lmsleep.bench.answer_length import accuracy_by_cap, main, token_truncator


def words(text, k):
    """A truncator whose tokens are words: the logic under test does not depend on the tokenizer."""
    parts = text.split()
    return " ".join(parts[:k]), len(parts)


def _answer(prediction, answer, correct, method="sleep_ks", seed=0, in_context=False):
    return {"method": method, "seed": seed, "prediction": prediction, "answer": answer, "correct": correct,
            "in_context": in_context, "question": "?"}


ANSWERS = [
    _answer("The captain of the ferry is Mira Kovalenko.", "Mira Kovalenko", True),  # 8 words: fact at words 7-8
    _answer("Mira Kovalenko.", "Mira Kovalenko", True),  # short: correct at every cap
    _answer("The festival is held in a town by a river called", "Dunmarrow", False),  # 11 words, cut at the cap
    _answer("Biscuit", "Biscuit", True, seed=1),
    _answer("Thallis Island.", "Thallis", True, method="icl", in_context=True),
]


def test_caps_regrade_the_first_k_tokens_and_count_answers_at_the_runs_cap():
    report = accuracy_by_cap(ANSWERS, words, [2, 8], run_cap=11, f1_threshold=0.5)
    ks = report["methods"]["sleep_ks"]
    seed0 = ks["seeds"]["0"]
    assert seed0["probes"] == 3 and seed0["correct"] == 2
    assert seed0["correct_at_2"] == 1  # only the short answer keeps its fact in two words
    assert seed0["correct_at_8"] == 2
    assert (seed0["at_run_cap"], seed0["wrong_at_run_cap"]) == (1, 1)
    assert ks["mean_accuracy"]["correct_at_2"] == pytest.approx((1 / 3 + 1) / 2)  # seeds weigh alike
    assert report["methods"]["icl (in context)"]["seeds"]["0"]["correct_at_2"] == 1
    assert all(c["hedged"] == 0 for m in report["methods"].values() for c in m["seeds"].values())


def test_a_correct_answer_naming_another_probes_answer_counts_as_hedged():
    rows = [{**_answer("Mira Kovalenko or Biscuit, maybe Dunmarrow", "Mira Kovalenko", True),
             "question": "Who is the captain?"},  # names two other probes' answers: a hedge
            {**_answer("The river through Dunmarrow is the Skelling.", "Skelling", True),
             "question": "Which river flows through Dunmarrow?"},  # Dunmarrow is in its question: not a hedge
            _answer("Biscuit", "Biscuit", False),
            _answer("Dunmarrow", "Dunmarrow", True)]
    seed = accuracy_by_cap(rows, words, [4], run_cap=20, f1_threshold=0.5)["methods"]["sleep_ks"]["seeds"]["0"]
    assert seed["hedged"] == 1


def test_a_cap_can_also_make_an_answer_correct_by_f1():
    # the whole answer is neither containing "otrar town" nor close in F1 (0.33); its first two words reach 0.5
    rows = [_answer("Otrar was the town and many other towns were later taken", "Otrar town", False)]
    report = accuracy_by_cap(rows, words, [2], run_cap=20, f1_threshold=0.5)
    assert report["methods"]["sleep_ks"]["seeds"]["0"]["correct_at_2"] == 1


class _Tokenizer:
    """Characters as tokens, enough to check token_truncator's contract."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_token_truncator_returns_the_prefix_and_the_full_length():
    assert token_truncator(_Tokenizer())("abc def", 4) == ("abc", 7)


def test_cli_reads_the_runs_cap_and_refuses_a_run_without_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "seed_quality_answers.jsonl").write_text("\n".join(json.dumps(a) for a in ANSWERS) + "\n")
    (tmp_path / "seed_quality.json").write_text(json.dumps({"evaluate_config": {}}))
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--model", str(tmp_path)])
    assert "max_new_tokens" in capsys.readouterr().err
    (tmp_path / "seed_quality.json").write_text(json.dumps({"evaluate_config": {"max_new_tokens": 11,
                                                                               "f1_threshold": 0.5}}))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda path: _WordTokenizer())
    out = tmp_path / "report.json"
    assert main([str(tmp_path), "--tokens", "8,2", "--model", str(tmp_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["caps"] == [2, 8] and report["run_cap"] == 11
    assert "| sleep_ks | 2 |" in capsys.readouterr().out


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(ids)
