"""Memories: the JSONL record a model meets while awake, the envelope `collect` wraps it in, and atomic JSONL I/O.

A memory (one line of an inbox `*.jsonl` file; see docs/memories.md):

    {"id": "m-001", "time": "2026-11-26T09:14:00Z", "source": "chat:alice", "kind": "document",
     "text": "Mira Kovalenko runs the Tallow Bridge ferry ...",
     "probes": [{"question": "Who runs the Tallow Bridge ferry?", "answer": "Mira Kovalenko"}],
     "meta": {"lang": "en"}}

`probes` are held-out question/answer pairs used **only** by `evaluate`; `training_text()` is the one door through which
memory content reaches training, and it never reads them.

`collect` stores every inbox line as an envelope, parsed or not, so that nothing is ever dropped:

    {"sha256": <hash of the canonical record, or of the raw line when it did not parse>, "source_uri": ..., "line": 3, "record": {...} | null,
     "raw_b64": <the raw bytes, only when they did not parse>, "error": "invalid JSON: ..." | null}
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MEMORY_KINDS = ("document", "dialogue", "demonstration", "feedback")
REQUIRED_FIELDS = ("id", "time", "source", "kind", "text")


# ---------------------------------------------------------------- envelopes (collect's output)


def envelope_from_line(raw: bytes, source_uri: str, line: int, max_record_bytes: int) -> dict[str, Any]:
    """Parse one raw inbox line into an envelope; a line that cannot be a record keeps its raw bytes and the reason."""
    envelope: dict[str, Any] = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "source_uri": source_uri,
        "line": line,
        "record": None,
        "error": None,
    }
    error = None
    if len(raw) > max_record_bytes:
        error = f"record too large: {len(raw)} bytes > max_record_bytes={max_record_bytes}"
    else:
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = f"not UTF-8 text (binary?): {exc.reason} at byte {exc.start}"
        else:
            try:
                parsed = json.loads(decoded)
            except json.JSONDecodeError as exc:
                error = f"invalid JSON: {exc.msg} at column {exc.colno}"
            else:
                if isinstance(parsed, dict):
                    envelope["record"] = parsed
                    # Dedupe on content, not bytes: the same record re-sent with other spacing is still the same.
                    envelope["sha256"] = content_hash(parsed)
                else:
                    error = f"not a JSON object: got {type(parsed).__name__}"
    if error is not None:
        envelope["error"] = error
        envelope["raw_b64"] = base64.b64encode(raw).decode("ascii")
    return envelope


def content_hash(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def split_lines(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes) for every non-blank line; CRLF endings are accepted."""
    for number, raw in enumerate(payload.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            yield number, raw


# ---------------------------------------------------------------- the record itself


def training_text(memory: dict[str, Any]) -> str:
    """The text a consolidator may train on. Reads `kind` and `text` only: probes never reach training."""
    return str(memory["text"]).strip()


def probes_of(memory: dict[str, Any]) -> list[dict[str, str]]:
    """The held-out evaluation probes of a memory (validated: a list of {question, answer} string pairs)."""
    return [{"question": p["question"], "answer": p["answer"]} for p in memory.get("probes") or []]


def probes_problem(probes: Any) -> str | None:
    """Why a `probes` value is malformed, or None when it is absent or well-formed."""
    if probes is None:
        return None
    if not isinstance(probes, list):
        return f"probes must be a list, got {type(probes).__name__}"
    for i, probe in enumerate(probes):
        if not isinstance(probe, dict):
            return f"probes[{i}] must be an object"
        for key in ("question", "answer"):
            value = probe.get(key)
            if not isinstance(value, str) or not value.strip():
                return f"probes[{i}].{key} must be a non-empty string"
    return None


# ---------------------------------------------------------------- atomic JSON / JSONL I/O


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write a file so that readers see either the old content or the whole new content, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows]
    atomic_write_bytes(path, ("".join(line + "\n" for line in lines)).encode("utf-8"))
    return len(lines)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
