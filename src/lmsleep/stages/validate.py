"""validate: gate one night's collected memories with a Great Expectations suite.

    lmsleep validate --night <id>

Reads `data/nights/<id>/collected.jsonl` (collect's envelopes, see `lmsleep.memory`) and writes, atomically, into the
same folder:

* `accepted.jsonl`   - the valid memory records, each with `"provenance": {sha256, source_uri, line}`;
* `quarantine.jsonl` - every rejected envelope unchanged (raw bytes included) plus `"reasons"`: readable strings;
* `validation.json`  - the GX validation result (`to_json_dict()`) with our `"summary"` added.

How: one DataFrame row per envelope with *helper columns* (`id_type`, `missing_fields`, `probes_problem`, `time_iso`,
`probe_text`...) computed in Python, so every rule is a plain GX column expectation and every GX failure (its
`unexpected_index_list`, from result_format COMPLETE) maps back to a row and to a human reason. Each expectation carries
`meta.check`, the index of its rule in `_checks()`; results are matched by that, never by position.

Choices:
* A row that did not parse gets only collect's error as reason: its helper columns are null, and GX column-map
  expectations skip nulls, so it cannot also fail "missing field" or "wrong type".
* Duplicate ids: `ExpectColumnValuesToBeUnique` runs on all rows and, as GX does, flags *every* copy (so
  validation.json honestly reports that the night's ids were not unique). We keep the FIRST occurrence in collect
  order and quarantine the later ones as "duplicate id"; if the first copy is itself rejected for another reason, the
  later copies are still quarantined (conflicting ids are suspect, and nothing is lost: all sit in quarantine).
* Text length is measured on the stripped text, i.e. what `memory.training_text()` would train on.
* Secrets/PII: one `ExpectColumnValuesToNotMatchRegex` per pattern and per column (`text`, `probe_text` = all strings
  inside `probes`), so the reason can name the pattern (#i indexes `validate.secret_patterns`, from 0) without ever
  quoting the match. GX's value lists (`unexpected_list`, `partial_unexpected_*`) are dropped from validation.json for
  the same reason: they would copy memory text, secrets included, into a report. Indexes and counts are kept.
"""

from __future__ import annotations

import re
import time
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from lmsleep import memory
from lmsleep.config import Params, ValidateConfig, Workspace
from lmsleep.env import set_offline_env
from lmsleep.errors import NightStopped

# Labels for the default patterns of ValidateConfig.secret_patterns; a custom pattern is reported by number only.
PATTERN_LABELS = {
    r"AKIA[0-9A-Z]{16}": "AWS access key id",
    r"(?i)\b(sk|pk|rk)[-_](live|test|proj)?[-_]?[A-Za-z0-9]{16,}": "API secret key",
    r"ghp_[A-Za-z0-9]{36}": "GitHub token",
    r"xox[baprs]-[A-Za-z0-9-]{10,}": "Slack token",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----": "private key",
    r"(?i)\b(api[_-]?key|secret|password|token)\s*[:=]\s*\S{8,}": "credential assignment",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}": "e-mail address",
}
REDACTED_RESULT_KEYS = ("unexpected_list", "partial_unexpected_list", "partial_unexpected_counts")

Row = dict[str, Any]
Reason = Callable[[Row], "str | None"]  # row of helper values -> reason (None: this failure quarantines nothing)


def _type_name(value: Any) -> str | None:
    return None if value is None else type(value).__name__


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value: probes are scanned for secrets even when malformed."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, list) else []


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)  # Python >= 3.11 reads ISO 8601, "Z" included
    except ValueError:
        return False
    return True


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(envelope: dict[str, Any]) -> Row:
    """The DataFrame row of one envelope: the string fields plus the helper columns the expectations check."""
    record = envelope.get("record")
    error = envelope.get("error")
    if error is None and not isinstance(record, dict):
        error = f"record is not an object: {_type_name(record)}"
    row: Row = {"parse_error": error}
    rec = record if error is None else {}
    missing = [f for f in memory.REQUIRED_FIELDS if rec.get(f) is None] if error is None else []
    row["missing_fields"] = ", ".join(missing) or None
    for name in memory.REQUIRED_FIELDS:
        value = rec.get(name)
        row[f"{name}_type"] = _type_name(value)  # null when missing: reported once, as "missing", not also as a type
        row[name] = value if isinstance(value, str) else None  # string-only view for length/set/regex checks
    if row["text"] is not None:
        row["text"] = row["text"].strip()
    row["time_iso"] = None if row["time"] is None else _is_iso(row["time"])
    row["meta_type"] = _type_name(rec.get("meta"))
    row["probes_problem"] = memory.probes_problem(rec.get("probes"))
    row["probe_text"] = "\n".join(_strings(rec.get("probes"))) or None
    return row


def _checks(cfg: ValidateConfig, gxe: Any, first_row_of_id: dict[str, int]) -> list[tuple[str, Any, Reason]]:
    """(reason category, GX expectation, reason for a failing row) for every rule of the suite."""
    kinds = ", ".join(memory.MEMORY_KINDS)
    checks: list[tuple[str, Any, Reason]] = [
        ("parse error", gxe.ExpectColumnValuesToBeNull(column="parse_error"), lambda r: r["parse_error"]),
        (
            "missing field",
            gxe.ExpectColumnValuesToBeNull(column="missing_fields"),
            lambda r: f"missing required field(s): {r['missing_fields']}",
        ),
    ]
    for name in memory.REQUIRED_FIELDS:
        checks.append(
            (
                "wrong type",
                gxe.ExpectColumnValuesToBeInSet(column=f"{name}_type", value_set=["str"]),
                lambda r, n=name: f"field '{n}' must be a string, got {r[f'{n}_type']}",
            )
        )
    checks += [
        (
            "wrong type",
            gxe.ExpectColumnValuesToBeInSet(column="meta_type", value_set=["dict"]),
            lambda r: f"field 'meta' must be an object, got {r['meta_type']}",
        ),
        ("malformed probes", gxe.ExpectColumnValuesToBeNull(column="probes_problem"), lambda r: r["probes_problem"]),
        (
            "unknown kind",
            gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(memory.MEMORY_KINDS)),
            lambda r: f"kind {_short(r['kind'])} not in ({kinds})",
        ),
        (
            "text length",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=cfg.min_text_chars, max_value=cfg.max_text_chars
            ),
            lambda r: f"text has {len(r['text'])} chars, outside [{cfg.min_text_chars}, {cfg.max_text_chars}]",
        ),
        (
            "id length",
            gxe.ExpectColumnValueLengthsToBeBetween(column="id", min_value=1, max_value=cfg.max_id_chars),
            lambda r: f"id has {len(r['id'])} chars, outside [1, {cfg.max_id_chars}]",
        ),
        (
            "bad time",
            gxe.ExpectColumnValuesToBeInSet(column="time_iso", value_set=[True]),
            lambda r: f"time {_short(r['time'])} is not an ISO 8601 timestamp",
        ),
        (
            "duplicate id",
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            lambda r: None
            if first_row_of_id[r["id"]] == r["_index"]
            else f"duplicate id {_short(r['id'])} (first seen at {r['_first_at']})",
        ),
    ]
    for column, where in (("text", "text"), ("probe_text", "probes")):
        for i, pattern in enumerate(cfg.secret_patterns):
            label = f" ({PATTERN_LABELS[pattern]})" if pattern in PATTERN_LABELS else ""
            checks.append(
                (
                    f"secret/PII in {where}",
                    gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=pattern),
                    lambda r, w=where, i=i, label=label: f"{w} matches secret/PII pattern #{i}{label}",
                )
            )
    return checks


def _run_suite(rows: list[Row], cfg: ValidateConfig, first_row_of_id: dict[str, int]) -> tuple[dict, list]:
    """Run the suite on an ephemeral GX context; returns (GX result as a JSON dict, checks)."""
    set_offline_env()  # before GX is imported: no analytics, no network
    # Imported here, not at module top: importing GX costs ~3 s, which `lmsleep --help` and other stages should not pay.
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    checks = _checks(cfg, gxe, first_row_of_id)
    columns = list(_row({"record": {}, "error": None}))
    # object dtype everywhere: pandas 3 would otherwise infer its "str" dtype and turn None into NaN.
    df = pd.DataFrame(rows, columns=columns, dtype=object)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm "Calculating Metrics" bars
    batch_definition = (
        context.data_sources.add_pandas("lmsleep")
        .add_dataframe_asset("envelopes")
        .add_batch_definition_whole_dataframe("night")
    )
    for number, (category, expectation, _) in enumerate(checks):
        expectation.meta = {"check": number, "category": category}
    # Expectations go in before the suite joins the context: suite.add_expectation() on a stored suite re-serialises
    # the whole suite into the store on every call (~20 ms each, quadratic).
    suite = context.suites.add(gx.ExpectationSuite(name="lmsleep-memories", expectations=[c[1] for c in checks]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="lmsleep-validate", data=batch_definition, suite=suite)
    )
    with warnings.catch_warnings():
        # pandas warns that a regex "has match groups" on str.contains; the default secret patterns do, harmlessly.
        warnings.filterwarnings("ignore", message="This pattern is interpreted as a regular expression")
        result = definition.run(batch_parameters={"dataframe": df}, result_format={"result_format": "COMPLETE"})
    return result.to_json_dict(), checks


def validate_envelopes(envelopes: list[dict], cfg: ValidateConfig, out_dir: Path) -> dict:
    """Split envelopes into accepted records and quarantined envelopes, write the outputs, return the summary.

    Raises NightStopped (after writing everything) when nothing is accepted or the rejection rate is too high.
    """
    out_dir = Path(out_dir)
    for i, pattern in enumerate(cfg.secret_patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"validate.secret_patterns[{i}] is not a valid regex: {exc}") from exc
    rows = [_row(envelope) for envelope in envelopes]
    first_row_of_id: dict[str, int] = {}
    for index, (row, envelope) in enumerate(zip(rows, envelopes)):
        row["_index"] = index  # not a DataFrame column: only the reason lambdas read these two
        if row["id"] is not None:
            first = first_row_of_id.setdefault(row["id"], index)
            row["_first_at"] = f"{envelopes[first].get('source_uri')}:{envelopes[first].get('line')}"

    started = time.perf_counter()
    gx_result, checks = _run_suite(rows, cfg, first_row_of_id)
    gx_seconds = round(time.perf_counter() - started, 3)

    reasons: list[list[tuple[str, str]]] = [[] for _ in envelopes]
    for result in gx_result["results"]:
        if (result.get("exception_info") or {}).get("raised_exception"):
            # GX does not raise: a crashing expectation becomes an unsuccessful result without indexes. Stop loudly.
            raise RuntimeError(f"GX expectation failed to run: {result['expectation_config']} {result['exception_info']}")
        category, _, reason_of = checks[result["expectation_config"]["meta"]["check"]]
        for index in result.get("result", {}).get("unexpected_index_list") or []:
            reason = reason_of(rows[index])
            if reason is not None:
                reasons[index].append((category, reason))
        for key in REDACTED_RESULT_KEYS:
            result.get("result", {}).pop(key, None)

    accepted, quarantined = [], []
    for envelope, row_reasons in zip(envelopes, reasons):
        if row_reasons:
            quarantined.append({**envelope, "reasons": [text for _, text in row_reasons]})
        else:
            provenance = {key: envelope.get(key) for key in ("sha256", "source_uri", "line")}
            accepted.append({**envelope["record"], "provenance": provenance})
    assert len(accepted) + len(quarantined) == len(envelopes), "validate lost or duplicated records"

    total = len(envelopes)
    summary = {
        "night": out_dir.name,
        "records": total,
        "accepted": len(accepted),
        "quarantined": len(quarantined),
        "rejection_rate": round(len(quarantined) / total, 4) if total else 0.0,
        "reasons": dict(sorted(Counter(c for row_reasons in reasons for c, _ in row_reasons).items())),
        "gx_success": bool(gx_result["success"]),
    }
    memory.write_jsonl(out_dir / "accepted.jsonl", accepted)
    memory.write_jsonl(out_dir / "quarantine.jsonl", quarantined)
    memory.write_json(out_dir / "validation.json", {**gx_result, "summary": summary, "gx_seconds": gx_seconds})

    where = out_dir / "quarantine.jsonl"
    if not accepted:
        raise NightStopped(f"validate: no memory accepted out of {total} record(s); see reasons in {where}")
    if total and len(quarantined) / total > cfg.max_rejection_rate:  # unrounded: 0.50004 is over 0.5
        raise NightStopped(
            f"validate: {len(quarantined)}/{total} records quarantined (rejection rate {summary['rejection_rate']:.0%}"
            f" > validate.max_rejection_rate={cfg.max_rejection_rate}); see reasons in {where}"
        )
    return summary


def run(params: Params, ws: Workspace) -> dict:
    """Stage entry: validate the night's collected.jsonl into accepted/quarantine/validation files beside it."""
    night_dir = ws.night_data(params.night.id)
    source = night_dir / "collected.jsonl"
    if not source.exists():
        raise NightStopped(f"validate: {source} not found; run `lmsleep collect --night {params.night.id}` first")
    return validate_envelopes(memory.read_jsonl(source), params.validate, night_dir)
