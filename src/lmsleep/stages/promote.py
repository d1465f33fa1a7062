"""promote: champion/challenger. Run: `lmsleep promote --night <id>`.

The challenger (tonight's lineage) replaces the champion only if it learned (no-context accuracy on tonight's probes
rose by at least `promote.min_acquisition_gain`) without paying for it elsewhere (accuracy on earlier nights' probes
fell by at most `max_retention_drop`; reference perplexity rose by at most `max_perplexity_increase`, relative).
Writes `reports/<night>/metrics.json` (the DVC metrics file: every evaluation metric plus `promoted`) and
`report.md`. The registry pointer changes atomically; `lmsleep rollback` undoes a promotion.
"""

from __future__ import annotations

from typing import Any

from lmsleep import registry
from lmsleep.config import Params, PromoteConfig, Workspace
from lmsleep.errors import NightStopped
from lmsleep.memory import atomic_write_bytes, read_json, read_jsonl, write_json
from lmsleep.report import render_report


# Budgets are inclusive; a rounding error of a float must not decide a promotion.
EPS = 1e-9


def decide(evaluation: dict[str, Any], cfg: PromoteConfig) -> dict[str, Any]:
    """Apply the promotion rules; returns {"promoted": bool, "reasons": [one line per rule]}."""
    reasons, passed = [], True
    before, after = evaluation.get("acquisition_before"), evaluation.get("acquisition_after")
    if before is None or after is None:
        passed = False
        reasons.append("acquisition: no probes tonight, so learning cannot be shown")
    else:
        gain = after - before
        ok = gain >= cfg.min_acquisition_gain - EPS
        passed &= ok
        reasons.append(f"acquisition: {before:.3f} -> {after:.3f} (gain {gain:+.3f}, need >= "
                       f"{cfg.min_acquisition_gain:+.3f}) {'ok' if ok else 'FAIL'}")
    r_before, r_after = evaluation.get("retention_before"), evaluation.get("retention_after")
    if r_before is None or r_after is None:
        reasons.append("retention: no earlier nights' probes yet (not checked)")
    else:
        drop = r_before - r_after
        ok = drop <= cfg.max_retention_drop + EPS
        passed &= ok
        reasons.append(f"retention: {r_before:.3f} -> {r_after:.3f} (drop {drop:+.3f}, budget "
                       f"{cfg.max_retention_drop:.3f}) {'ok' if ok else 'FAIL'}")
    p_before, p_after = evaluation["perplexity_before"], evaluation["perplexity_after"]
    rise = p_after / p_before - 1.0
    ok = rise <= cfg.max_perplexity_increase + EPS
    passed &= ok
    reasons.append(f"perplexity: {p_before:.2f} -> {p_after:.2f} ({rise:+.1%}, budget "
                   f"{cfg.max_perplexity_increase:+.1%}) {'ok' if ok else 'FAIL'}")
    return {"promoted": bool(passed), "reasons": reasons}


def run(params: Params, ws: Workspace) -> dict[str, Any]:
    night = params.night.id
    report_dir = ws.night_report(night)
    eval_path, lineage_path = report_dir / "eval.json", ws.challenger_lineage(night)
    for path in (eval_path, lineage_path):
        if not path.exists():
            raise NightStopped(f"{path} is missing: run seed and evaluate first")
    evaluation = read_json(eval_path)
    decision = decide(evaluation, params.promote)
    already = registry.champion_night(ws, params.prepare_model) == night
    if decision["promoted"] and not already:
        registry.promote(ws, params.prepare_model, read_json(lineage_path), night,
                         {k: v for k, v in evaluation.items() if isinstance(v, (int, float))})
    metrics = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) or v is None}
    metrics.update(night=night, promoted=decision["promoted"], promotion_reasons=decision["reasons"])
    write_json(report_dir / "metrics.json", metrics)
    answers = read_jsonl(report_dir / "answers.jsonl") if (report_dir / "answers.jsonl").exists() else None
    atomic_write_bytes(report_dir / "report.md", render_report(evaluation, decision, answers).encode("utf-8"))
    champion = registry.champion_night(ws, params.prepare_model)
    return {"night": night, "promoted": decision["promoted"], "champion": champion,
            "reasons": decision["reasons"], "report": str(report_dir / "report.md")}
