"""dream: after seed, the model dreams about tonight's memories and rehearses the dreams that help. Run:
`lmsleep dream --night <id>` (PAPER §5; the method in lmsleep.dream, the knobs in params.yaml's `dream` section).

Reads tonight's accepted memories and the seed stage's challenger (models/nights/<night>/lineage.json, whose last
adapter is tonight's). The model it dreams with is that challenger as a CMS with tonight's expert in slot 0 of level
"night" and a free slot for the random expert:
  seed.method ks   the champion + tonight's KS expert, read back from its adapter (exact): rehearsal continues it
  seed.method sft  the challenger with tonight's LoRA merged + one NEW expert (seed.ks_expert_rank / _level_layers,
                   B = 0): the dreams are rehearsed into it, through the same KS machinery
Writes models/nights/<night>/dream/ (the stage's DVC output):
  lineage.json       the challenger evaluate and promote read (Workspace.challenger_lineage): seed's, with tonight's
                     adapter replaced by the rehearsed one (ks) or followed by the dream expert (sft); seed's own
                     lineage when nothing was rehearsed or dreaming is off (`dream.enabled: false`: a recorded no-op)
  adapter/           the rehearsed expert as a peft adapter, same format as seed's (only when something was rehearsed)
  writer/            the dream writer after ReST-EM (peft LoRA + writer.json); the next night continues from it
  ledger.jsonl       one row per dream: made, scored, kept, tested, tau before/after, reward, taught, used
  tau.jsonl          the items of each memory's task measure (self-written questions; never probes)
  train_texts.jsonl  every text anything was trained on here (trial copies, writer, rehearsal): the probe-leak audit
  dream_log.json     summary, config, phase timings, losses
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmsleep.config import Params, Workspace
from lmsleep.errors import NightStopped
from lmsleep.ks.consolidate import LEVEL, expert_layers  # LEVEL: the CMS level of tonight's expert
from lmsleep.memory import read_json, read_jsonl, write_json, write_jsonl


def _challenger_as_cms(ws: Workspace, params: Params, seed_lineage: dict[str, Any]):
    """(cms, tokenizer, index of tonight's expert, the adapters the rehearsed expert comes after)."""
    from lmsleep.cms import CMSConfig, LevelSpec, import_peft_adapter, wrap_model
    from lmsleep.models import load_lineage

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = params.prepare_model.dtype
    if seed_lineage.get("method") == "ks":
        model, tokenizer = load_lineage(ws, seed_lineage["parent"], dtype)
        cms, index = import_peft_adapter(model.to(device), ws.root / seed_lineage["adapters"][-1], LEVEL, pool_size=2)
        return cms, tokenizer, index, seed_lineage["adapters"][:-1]
    model, tokenizer = load_lineage(ws, seed_lineage, dtype)
    rank, layers = params.seed.ks_expert_rank, expert_layers(params.seed, model)
    cms = wrap_model(model.to(device), CMSConfig(levels=[LevelSpec(name=LEVEL, layers=layers, pool_size=2, rank=rank,
                                                                   alpha=2.0 * rank)]))
    index = cms.activate_expert(LEVEL, torch.Generator(device=device).manual_seed(params.dream.seed))
    return cms, tokenizer, index, seed_lineage["adapters"]


def _passthrough(out_dir: Path, seed_lineage: dict[str, Any], reason: str) -> dict[str, Any]:
    lineage = {**seed_lineage, "dream": {"rehearsed": False, "reason": reason}}
    write_json(out_dir / "lineage.json", lineage)
    return lineage


def run(params: Params, ws: Workspace) -> dict[str, Any]:
    night, cfg = params.night.id, params.dream
    accepted, seed_lineage_path = ws.night_data(night) / "accepted.jsonl", ws.night_model(night) / "lineage.json"
    for path in (accepted, seed_lineage_path):
        if not path.exists():
            raise NightStopped(f"dream: {path} not found; run the earlier stages for night {night} first")
    memories, seed_lineage = read_jsonl(accepted), read_json(seed_lineage_path)
    out_dir = ws.night_dream(night)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a rerun starts clean: no adapter or writer of an earlier run may survive it
    out_dir.mkdir(parents=True)
    config = params.to_dict()["dream"]
    if not cfg.enabled:
        _passthrough(out_dir, seed_lineage, "dream.enabled is false")
        write_jsonl(out_dir / "ledger.jsonl", [])
        summary = {"night": night, "enabled": False, "rehearsed": False, "seconds": 0.0}
        write_json(out_dir / "dream_log.json", {"summary": summary, "config": config})
        print(f"dream: disabled (dream.enabled: false); night {night} passes seed's challenger through")
        return summary

    from lmsleep.cms import export_peft_adapter
    from lmsleep.dream import dream_and_rehearse, find_writer, save_writer
    from lmsleep.stages.seed import guard_inputs

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    cms, tokenizer, index, before = _challenger_as_cms(ws, params, seed_lineage)
    writer = find_writer(ws, seed_lineage["parent"]["nights"])
    seed_texts = ws.night_model(night) / "train_texts.jsonl"  # a KS night's prompts, for rehearsal_night_share
    mix = cfg.rehearsal_night_share > 0 and seed_lineage.get("method") == "ks" and seed_texts.exists()
    night_rows = read_jsonl(seed_texts) if mix else []
    drift_text, reading = guard_inputs(ws, params)  # rehearsal retrains the guarded expert: guard it again
    result = dream_and_rehearse(cms, tokenizer, memories, params.seed, cfg, expert_index=index, level=LEVEL,
                                writer=writer, night_rows=night_rows, drift_text=drift_text, reading=reading)
    rel = lambda p: str(Path(p).relative_to(ws.root))  # noqa: E731 - paths in lineages are relative to the root
    result.writer.source = rel(writer) if writer else "fresh"  # writer.json must not depend on where the root is
    save_writer(out_dir / "writer", result.writer, {"night": night, "rounds": result.stats["rounds"],
                                                    "trained": bool(result.stats["writer_losses"]),
                                                    "losses": result.stats["writer_losses"],
                                                    "config": config})
    if result.rehearsed:
        export_peft_adapter(result.cms, out_dir / "adapter")
        write_json(out_dir / "lineage.json", {**seed_lineage, "adapters": before + [rel(out_dir / "adapter")],
                                              "dream": {"rehearsed": True, "seed_adapter": seed_lineage["adapters"][-1],
                                                        "dreams_used": result.stats["used"]}})
    else:
        _passthrough(out_dir, seed_lineage, "no dream earned a reward: nothing to rehearse")
    write_jsonl(out_dir / "ledger.jsonl", [d.row() for d in result.dreams])
    write_jsonl(out_dir / "tau.jsonl", [it.row() for items in result.tasks.values() for it in items])
    write_jsonl(out_dir / "train_texts.jsonl", result.audit)
    stats = {k: v for k, v in result.stats.items() if k != "seconds"}
    summary = {"night": night, "enabled": True, "seed_method": seed_lineage.get("method"),
               **{k: stats[k] for k in ("made", "malformed", "kept", "tested", "rewarded", "used", "rounds")},
               "rehearsed": result.rehearsed, "writer_from": result.writer.source,
               "drift_guard_scale": (stats.get("drift_guard") or {}).get("scale"),
               "seconds": round(time.perf_counter() - started, 1)}
    write_json(out_dir / "dream_log.json", {"summary": summary, "config": config, "stats": stats,
                                            "rehearsal_losses": result.rehearsal_losses})
    return summary | {"loss_curve": result.rehearsal_losses}
