import base64

import pytest
from tinyworld import memory, tiny_params, write_day

from lmsleep.config import Workspace
from lmsleep.errors import NightStopped
from lmsleep.inbox import Inbox
from lmsleep.memory import read_json, read_jsonl, split_lines
from lmsleep.stages import collect, validate

MALFORMED = [
    b"{this is not json",
    b'{"id": "no-fields"}',
    b'{"id": 7, "time": "2026-11-26T10:00:00Z", "source": "s", "kind": "document", "text": ["not", "a", "string"]}',
    b'{"id": "huge", "text": "' + b"x" * 70000 + b'"}',
    b"\x89PNG\r\x1a\x00\x00\x00\rIHDR\xff\xfe binary bytes",
]


def _setup(tmp_path, night="n1"):
    params = tiny_params(night)
    ws = Workspace(tmp_path.resolve())
    return params, ws, tmp_path / "data" / "inbox"


def test_collect_moves_inbox_into_the_night_and_marks_files_consumed(tmp_path):
    params, ws, inbox = _setup(tmp_path)
    write_day(inbox, "day.jsonl", [memory(1), memory(2)])
    (inbox / "notes.txt").write_text("not matched by the pattern: stays in the inbox")
    summary = collect.run(params, ws)
    assert summary["collected"] == 2 and summary["noop"] is False
    assert len(read_jsonl(ws.night_data("n1") / "collected.jsonl")) == 2
    assert not (inbox / "day.jsonl").exists()
    assert (inbox / "consumed" / "n1" / "day.jsonl").exists()
    assert (inbox / "notes.txt").exists()
    assert Inbox(str(inbox)).pending("*.jsonl") == []


def test_rerun_of_a_collected_night_is_a_noop(tmp_path):
    params, ws, inbox = _setup(tmp_path)
    write_day(inbox, "day.jsonl", [memory(1)])
    collect.run(params, ws)
    before = (ws.night_data("n1") / "collected.jsonl").read_bytes()
    write_day(inbox, "late.jsonl", [memory(9)])  # arrives after the night was collected: belongs to the next night
    summary = collect.run(params, ws)
    assert summary["noop"] is True
    assert (ws.night_data("n1") / "collected.jsonl").read_bytes() == before
    assert (inbox / "late.jsonl").exists()


def test_duplicates_are_counted_once_within_and_across_nights(tmp_path):
    params, ws, inbox = _setup(tmp_path)
    write_day(inbox, "a.jsonl", [memory(1), memory(2)])
    write_day(inbox, "b.jsonl", [memory(2)])  # same record again tonight
    first = collect.run(params, ws)
    assert first["collected"] == 2 and first["duplicates"] == 1
    write_day(inbox, "c.jsonl", [memory(1), memory(3)])  # memory 1 re-delivered the next day
    second = collect.run(tiny_params("n2"), ws)
    assert second["collected"] == 1 and second["duplicates"] == 1
    manifest = read_json(ws.night_data("n2") / "collect_manifest.json")
    assert manifest["duplicates"][0]["duplicate_of"] == "n1"


def test_crash_before_consuming_is_finished_by_the_rerun(tmp_path, monkeypatch):
    params, ws, inbox = _setup(tmp_path)
    write_day(inbox, "day.jsonl", [memory(1)])

    def crash(self, path, night):
        raise OSError("power cut")

    monkeypatch.setattr(Inbox, "mark_consumed", crash)
    with pytest.raises(OSError):
        collect.run(params, ws)
    assert (inbox / "day.jsonl").exists()  # not consumed: the night's data may not be safe yet
    assert len(read_jsonl(ws.night_data("n1") / "collected.jsonl")) == 1
    monkeypatch.undo()
    summary = collect.run(params, ws)
    assert summary["noop"] is True and not (inbox / "day.jsonl").exists()
    assert read_json(ws.night_data("n1") / "collect_manifest.json")["consumed"]


def test_empty_inbox_stops_the_night_with_a_clear_message(tmp_path):
    params, ws, _ = _setup(tmp_path)
    with pytest.raises(NightStopped, match="no pending"):
        collect.run(params, ws)
    assert not ws.night_data("n1").exists()


def test_malformed_inbox_files_are_quarantined_with_reasons_and_nothing_is_lost(tmp_path):
    params, ws, inbox = _setup(tmp_path)
    params.validate.max_rejection_rate = 0.9
    good = [memory(i) for i in range(1, 4)]
    write_day(inbox, "mixed.jsonl", good, MALFORMED)
    (inbox / "blob.jsonl").write_bytes(bytes(range(256)) * 4)  # a wholly binary file, its "lines" repeat
    raw_lines = [raw for f in sorted(inbox.glob("*.jsonl")) for _, raw in split_lines(f.read_bytes())]
    duplicates = collect.run(params, ws)["duplicates"]
    summary = validate.run(params, ws)
    accepted = read_jsonl(ws.night_data("n1") / "accepted.jsonl")
    quarantine = read_jsonl(ws.night_data("n1") / "quarantine.jsonl")
    assert summary["accepted"] == 3 and len(accepted) == 3
    assert duplicates == 2  # the blob splits on its 0x0a bytes into 5 chunks, 3 of them equal: 2 repeats
    assert len(accepted) + len(quarantine) + duplicates == len(raw_lines)
    assert all(q["reasons"] for q in quarantine)
    reasons = " | ".join(r for q in quarantine for r in q["reasons"])
    for expected in ("invalid JSON", "not UTF-8", "record too large", "missing", "text"):
        assert expected in reasons
    # every unparsed line can be restored byte for byte from the quarantine
    restored = {base64.b64decode(q["raw_b64"]) for q in quarantine if "raw_b64" in q}
    assert {MALFORMED[0], MALFORMED[3], MALFORMED[4]} <= restored
