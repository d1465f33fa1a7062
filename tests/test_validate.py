"""Tests of the validate stage: every kind of bad line lands in quarantine with the right reason, nothing is lost."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from lmsleep import memory  # noqa: E402
from lmsleep.config import Params, ValidateConfig, Workspace  # noqa: E402
from lmsleep.errors import NightStopped  # noqa: E402
from lmsleep.stages import validate  # noqa: E402

MAX_BYTES = 4096
TEXT = "Mira Kovalenko runs the Tallow Bridge ferry every morning."
PROBES = [{"question": "Who runs the Tallow Bridge ferry?", "answer": "Mira Kovalenko"}]


def good(mid: str, kind: str = "document", **extra) -> dict:
    record = {"id": mid, "time": "2026-11-26T09:14:00Z", "source": "chat:alice", "kind": kind, "text": TEXT}
    record.update(extra)
    return record


def envelopes_from(lines: list) -> list[dict]:
    """Reusable helper: raw lines (bytes, or dicts dumped as JSON) -> envelopes, exactly as collect builds them."""
    out = []
    for number, line in enumerate(lines, start=1):
        raw = line if isinstance(line, bytes) else json.dumps(line).encode("utf-8")
        out.append(memory.envelope_from_line(raw, "file:///inbox/day.jsonl", number, MAX_BYTES))
    return out


def by_line(rows: list[dict]) -> dict[int, dict]:
    return {row["line"]: row for row in rows}


# One line per case; `EXPECTED` maps line number -> a substring of the reason it must get.
CASES = [
    good("m-1", "document", probes=PROBES, meta={"lang": "en"}),  # 1
    good("m-2", "dialogue"),  # 2
    good("m-3", "demonstration"),  # 3
    good("m-4", "feedback", time="2026-11-26"),  # 4
    b'{"id": "m-5", "text": ',  # 5 bad JSON
    b"\xff\xfe\x00binary\x00",  # 6 binary
    json.dumps(good("m-7", text="x" * MAX_BYTES)).encode(),  # 7 too large
    b"[1, 2, 3]",  # 8 not an object
    {"id": "m-9", "time": "2026-11-26T09:14:00Z", "kind": "document"},  # 9 missing source, text
    good(42),  # 10 id int
    good("m-11", text=["a list", "of strings"]),  # 11 text list
    good("m-12", kind="poem"),  # 12 unknown kind
    good("m-13", text="too short"),  # 13
    good("m-1"),  # 14 duplicate of line 1
    good("m-15", time="yesterday-ish"),  # 15
    good("m-16", text=TEXT + " key AKIAABCDEFGHIJKLMNOP"),  # 16 AWS key
    good("m-17", text=TEXT + " write to mira@example.org"),  # 17 e-mail in text
    good("m-18", probes=[{"question": "Mira's mail?", "answer": "mira@example.org"}]),  # 18 e-mail in a probe
    good("m-19", probes=[{"question": "no answer"}]),  # 19 malformed probes
    good("m-20", probes="not a list"),  # 20 malformed probes
    good("m-21", meta=["not", "an object"]),  # 21 meta
    good("m" * 200),  # 22 id too long
]
EXPECTED = {
    5: "invalid JSON",
    6: "not UTF-8",
    7: "record too large",
    8: "not a JSON object",
    9: "missing required field(s): source, text",
    10: "field 'id' must be a string, got int",
    11: "field 'text' must be a string, got list",
    12: "kind 'poem' not in (document, dialogue, demonstration, feedback)",
    13: "text has 9 chars",
    14: "duplicate id 'm-1' (first seen at file:///inbox/day.jsonl:1)",
    15: "is not an ISO 8601 timestamp",
    16: "text matches secret/PII pattern #0 (AWS access key id)",
    17: "text matches secret/PII pattern #6 (e-mail address)",
    18: "probes matches secret/PII pattern #6 (e-mail address)",
    19: "probes[0].answer must be a non-empty string",
    20: "probes must be a list, got str",
    21: "field 'meta' must be an object, got list",
    22: "id has 200 chars",
}
LENIENT = ValidateConfig(max_rejection_rate=1.0)


def test_each_bad_line_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    envelopes = envelopes_from(CASES)
    with pytest.raises(NightStopped, match="rejection rate"):
        validate.validate_envelopes(envelopes, ValidateConfig(), tmp_path)  # 18/22 rejected > 0.5
    summary = validate.validate_envelopes(envelopes, LENIENT, tmp_path)

    accepted = by_line([r["provenance"] for r in memory.read_jsonl(tmp_path / "accepted.jsonl")])
    quarantine = by_line(memory.read_jsonl(tmp_path / "quarantine.jsonl"))
    assert sorted(accepted) == [1, 2, 3, 4]
    assert sorted(quarantine) == sorted(EXPECTED)
    for line, expected in EXPECTED.items():
        reasons = quarantine[line]["reasons"]
        assert any(expected in reason for reason in reasons), (line, reasons)
    # a row that did not parse gets collect's error only, not also "missing field"/"wrong type" noise
    for line in (5, 6, 7, 8):
        assert len(quarantine[line]["reasons"]) == 1, quarantine[line]["reasons"]
    assert quarantine[10]["reasons"] == ["field 'id' must be a string, got int"]
    assert summary == {
        "night": tmp_path.name,
        "records": 22,
        "accepted": 4,
        "quarantined": 18,
        "rejection_rate": round(18 / 22, 4),
        "reasons": summary["reasons"],
        "gx_success": False,
    }
    assert summary["reasons"]["parse error"] == 4
    assert summary["reasons"]["duplicate id"] == 1
    assert summary["reasons"]["secret/PII in probes"] == 1


def test_outputs_keep_everything_and_never_quote_secrets(tmp_path: Path) -> None:
    envelopes = envelopes_from(CASES)
    validate.validate_envelopes(envelopes, LENIENT, tmp_path)
    accepted = memory.read_jsonl(tmp_path / "accepted.jsonl")
    quarantine = memory.read_jsonl(tmp_path / "quarantine.jsonl")
    assert len(accepted) + len(quarantine) == len(envelopes)

    first = next(r for r in accepted if r["id"] == "m-1")
    assert first["probes"] == PROBES and first["meta"] == {"lang": "en"}
    assert first["provenance"] == {"sha256": envelopes[0]["sha256"], "source_uri": envelopes[0]["source_uri"], "line": 1}

    # quarantined envelopes are unchanged apart from "reasons": raw bytes of unparsed lines survive
    for row in quarantine:
        original = envelopes[row["line"] - 1]
        assert {k: v for k, v in row.items() if k != "reasons"} == original
    binary = by_line(quarantine)[6]
    assert base64.b64decode(binary["raw_b64"]) == CASES[5]

    all_reasons = json.dumps([r["reasons"] for r in quarantine])
    report = (tmp_path / "validation.json").read_text()
    for secret in ("AKIAABCDEFGHIJKLMNOP", "mira@example.org"):
        assert secret not in all_reasons
        assert secret not in report


def test_gx_result_is_saved(tmp_path: Path) -> None:
    validate.validate_envelopes(envelopes_from(CASES), LENIENT, tmp_path)
    result = memory.read_json(tmp_path / "validation.json")
    assert result["success"] is False
    types = {r["expectation_config"]["type"] for r in result["results"]}
    assert {
        "expect_column_values_to_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_value_lengths_to_be_between",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_not_match_regex",
    } <= types
    unique = next(r for r in result["results"] if r["expectation_config"]["type"] == "expect_column_values_to_be_unique")
    assert unique["success"] is False and unique["result"]["unexpected_index_list"] == [0, 13]  # GX flags both copies
    assert result["summary"]["accepted"] == 4


def test_clean_night_passes(tmp_path: Path) -> None:
    envelopes = envelopes_from([good(f"m-{i}", kind) for i, kind in enumerate(memory.MEMORY_KINDS * 25)])
    summary = validate.validate_envelopes(envelopes, ValidateConfig(), tmp_path)
    assert summary["accepted"] == 100 and summary["quarantined"] == 0 and summary["reasons"] == {}
    assert memory.read_json(tmp_path / "validation.json")["success"] is True
    assert memory.read_jsonl(tmp_path / "quarantine.jsonl") == []


def test_nothing_accepted_stops_the_night_after_writing(tmp_path: Path) -> None:
    envelopes = envelopes_from([b"not json", good("m-1", kind="poem")])
    with pytest.raises(NightStopped, match="no memory accepted.*quarantine.jsonl"):
        validate.validate_envelopes(envelopes, LENIENT, tmp_path)
    assert len(memory.read_jsonl(tmp_path / "quarantine.jsonl")) == 2
    assert memory.read_jsonl(tmp_path / "accepted.jsonl") == []
    assert memory.read_json(tmp_path / "validation.json")["summary"]["rejection_rate"] == 1.0


def test_rejection_rate_threshold(tmp_path: Path) -> None:
    envelopes = envelopes_from([good("m-1"), good("m-2"), b"{oops"])
    with pytest.raises(NightStopped, match=r"max_rejection_rate=0.3.*quarantine.jsonl"):
        validate.validate_envelopes(envelopes, ValidateConfig(max_rejection_rate=0.3), tmp_path)
    assert len(memory.read_jsonl(tmp_path / "accepted.jsonl")) == 2  # outputs are written before stopping
    summary = validate.validate_envelopes(envelopes, ValidateConfig(max_rejection_rate=0.5), tmp_path)
    assert summary["quarantined"] == 1


def test_empty_night_stops(tmp_path: Path) -> None:
    with pytest.raises(NightStopped, match="no memory accepted out of 0"):
        validate.validate_envelopes([], ValidateConfig(), tmp_path)
    assert memory.read_json(tmp_path / "validation.json")["summary"]["records"] == 0


def test_custom_patterns_and_bad_regex(tmp_path: Path) -> None:
    cfg = ValidateConfig(secret_patterns=[r"(?i)tallow"], max_rejection_rate=1.0)
    with pytest.raises(NightStopped):
        validate.validate_envelopes(envelopes_from([good("m-1")]), cfg, tmp_path)
    assert memory.read_jsonl(tmp_path / "quarantine.jsonl")[0]["reasons"] == ["text matches secret/PII pattern #0"]
    with pytest.raises(ValueError, match=r"secret_patterns\[0\]"):
        validate.validate_envelopes([], ValidateConfig(secret_patterns=["(unclosed"]), tmp_path)


def test_run_reads_the_night_folder(tmp_path: Path) -> None:
    params = Params()
    params.night.id = "n1"
    ws = Workspace(tmp_path)
    with pytest.raises(NightStopped, match="collect"):
        validate.run(params, ws)
    night = ws.night_data("n1")
    memory.write_jsonl(night / "collected.jsonl", envelopes_from([good("m-1"), good("m-2")]))
    summary = validate.run(params, ws)
    assert summary["night"] == "n1" and summary["accepted"] == 2
    assert len(memory.read_jsonl(night / "accepted.jsonl")) == 2
