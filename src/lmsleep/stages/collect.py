"""collect: move the day's inbox into data/nights/<night-id>/collected.jsonl. Run: `lmsleep collect --night <id>`.

Guarantees:
- nothing lost: every non-blank inbox line becomes an envelope (see memory.py), parsed or not; validate decides;
- nothing counted twice: records whose content hash was already collected (tonight or on an earlier night) are listed
  as duplicates in the manifest instead of being collected again;
- crash-safe order: collected.jsonl and the manifest are written atomically first, and only then are the source
  files moved to `<inbox>/consumed/<night>/`. A rerun of a collected night only finishes that move (a no-op
  otherwise), and files left behind by a crash are deduplicated by the next night.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lmsleep.config import Params, Workspace
from lmsleep.errors import NightStopped
from lmsleep.inbox import Inbox
from lmsleep.memory import envelope_from_line, read_json, read_jsonl, split_lines, write_json, write_jsonl

COLLECTED = "collected.jsonl"
MANIFEST = "collect_manifest.json"


def hashes_of_earlier_nights(ws: Workspace, night: str, model: str) -> dict[str, str]:
    """content hash -> night id, for everything this model collected before (so re-delivered memories count once).

    Scoped to one base model: two deployments (say tiny and smollm2) each learn the same memories once.
    """
    seen: dict[str, str] = {}
    for other in ws.nights():
        path, manifest = ws.night_data(other) / COLLECTED, ws.night_data(other) / MANIFEST
        if other != night and path.exists() and manifest.exists() and read_json(manifest).get("model") == model:
            for envelope in read_jsonl(path):
                seen.setdefault(envelope["sha256"], other)
    return seen


def collect_night(inbox: Inbox, night_dir: Path, night: str, pattern: str, max_record_bytes: int,
                  seen: dict[str, str], model: str = "") -> dict[str, Any]:
    """Read every pending inbox file into envelopes, write them atomically, then mark the files consumed."""
    manifest_path = night_dir / MANIFEST
    if manifest_path.exists():
        return _finish_consuming(inbox, manifest_path, night)

    files = inbox.pending(pattern)
    if not files:
        raise NightStopped(f"the inbox {inbox.url} has no pending '{pattern}' files: nothing to consolidate tonight")

    envelopes, duplicates, sources = [], [], []
    tonight: dict[str, str] = {}
    for path in files:
        payload = inbox.read(path)
        uri = inbox.uri(path)
        counts = {"lines": 0, "new": 0, "duplicates": 0}
        for line_number, raw in split_lines(payload):
            envelope = envelope_from_line(raw, uri, line_number, max_record_bytes)
            counts["lines"] += 1
            first_seen = tonight.get(envelope["sha256"]) or seen.get(envelope["sha256"])
            if first_seen:
                counts["duplicates"] += 1
                duplicates.append({"sha256": envelope["sha256"], "source_uri": uri, "line": line_number,
                                   "duplicate_of": first_seen})
                continue
            tonight[envelope["sha256"]] = f"{night}:{uri}:{line_number}"
            counts["new"] += 1
            envelopes.append(envelope)
        sources.append({"path": path, "uri": uri, "bytes": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest(), **counts})

    write_jsonl(night_dir / COLLECTED, envelopes)
    manifest = {
        "night": night,
        "model": model,
        "inbox": inbox.url,
        "sources": sources,
        "collected": len(envelopes),
        "unparsed": sum(1 for e in envelopes if e["error"]),
        "duplicates": duplicates,
        "consumed": [],
    }
    write_json(manifest_path, manifest)
    summary = _finish_consuming(inbox, manifest_path, night)
    summary["noop"] = False
    return summary


def _finish_consuming(inbox: Inbox, manifest_path: Path, night: str) -> dict[str, Any]:
    """Move every source of the manifest that is still in the inbox to consumed/<night>/ (idempotent)."""
    manifest = read_json(manifest_path)
    moved = 0
    still_pending = set(inbox.pending("*"))
    for source in manifest["sources"]:
        if source["path"] in still_pending:
            target = inbox.mark_consumed(source["path"], night)
            manifest["consumed"].append({"from": source["uri"], "to": inbox.uri(target)})
            moved += 1
    if moved:
        write_json(manifest_path, manifest)
    return {
        "night": night,
        "files": len(manifest["sources"]),
        "lines": sum(s["lines"] for s in manifest["sources"]),
        "collected": manifest["collected"],
        "unparsed": manifest["unparsed"],
        "duplicates": len(manifest["duplicates"]),
        "noop": True,
    }


def run(params: Params, ws: Workspace) -> dict[str, Any]:
    night = params.night.id
    return collect_night(
        Inbox(ws.resolve(params.night.inbox)),
        ws.night_data(night),
        night,
        params.collect.pattern,
        params.collect.max_record_bytes,
        hashes_of_earlier_nights(ws, night, params.prepare_model.name),
        params.prepare_model.name,
    )
