import base64
import json

import pytest

from lmsleep.memory import (atomic_write_bytes, content_hash, envelope_from_line, probes_problem, read_jsonl,
                            split_lines, training_text, write_jsonl)


def test_valid_line_parses_and_hashes_content_not_bytes():
    a = envelope_from_line(b'{"id": "x", "text": "hello"}', "file:///in/a.jsonl", 1, 1000)
    b = envelope_from_line(b'{"text":"hello","id":"x"}', "file:///in/b.jsonl", 7, 1000)
    assert a["record"] == {"id": "x", "text": "hello"} and a["error"] is None and "raw_b64" not in a
    assert a["sha256"] == b["sha256"] == content_hash({"text": "hello", "id": "x"})


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "invalid JSON"),
        (b"\x00\xff\xfe\x00binary", "not UTF-8"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (b'{"text": "' + b"a" * 200 + b'"}', "record too large"),
    ],
)
def test_unusable_lines_keep_raw_bytes_and_reason(raw, reason):
    envelope = envelope_from_line(raw, "s3://bucket/inbox/x.jsonl", 3, max_record_bytes=100)
    assert envelope["record"] is None
    assert reason in envelope["error"]
    assert base64.b64decode(envelope["raw_b64"]) == raw  # nothing lost


def test_split_lines_skips_blank_lines_and_accepts_crlf():
    assert list(split_lines(b'{"a":1}\r\n\n  \n{"b":2}')) == [(1, b'{"a":1}'), (4, b'{"b":2}')]


def test_training_text_never_reads_probes():
    memory = {"id": "m", "kind": "document", "text": " The ferry leaves at dawn. ",
              "probes": [{"question": "CANARY-Q?", "answer": "CANARY-A"}]}
    text = training_text(memory)
    assert text == "The ferry leaves at dawn."
    assert "CANARY" not in text


@pytest.mark.parametrize(
    "probes, problem",
    [(None, None), ([], None), ([{"question": "q?", "answer": "a"}], None), ("q", "must be a list"),
     ([1], "must be an object"), ([{"question": "q?"}], "answer must be a non-empty string"),
     ([{"question": " ", "answer": "a"}], "question must be a non-empty string")],
)
def test_probes_problem(probes, problem):
    found = probes_problem(probes)
    assert (found is None) if problem is None else (problem in found)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl(path, [{"a": 1}, {"b": "ü"}]) == 2
    assert read_jsonl(path) == [{"a": 1}, {"b": "ü"}]
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_bytes(path, json.dumps({"v": 1}).encode())

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("lmsleep.memory.os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"half")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
