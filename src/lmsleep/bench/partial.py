"""A long benchmark run keeps every finished seed, and `--resume` goes on from them.

After each finished seed (but the last) the harness writes, in its --out folder:
  <stem>.partial.json              the result over the finished seeds (complete: false), as <stem>.json would hold it
  <stem>_answers.partial.jsonl     every probe's prediction so far (the probe-level intervals need seed 0's)
  <stem>_train_texts.partial.jsonl everything trained on so far
and after each finished method of the seed under way:
  <stem>.seed.partial.json         that seed's finished methods and their records (one SmolLM2 night is 10-60 min)
and removes them all when the run completes.

`lmsleep bench ... --resume` reloads them and runs only the seeds, and the methods of the seed under way, not yet
done. With no partial run but a finished one (<stem>.json, <stem>_answers.jsonl, <stem>_train_texts.jsonl), `--resume
--seeds N` adds seeds to it. It refuses (and changes nothing) when the partial run was made with other settings: a
result must never mix two experiments. Keys that exist on one side only (params fields added to the code since) are
allowed and listed in the result's `resumed` record, together with the commit each part ran at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmsleep.memory import read_jsonl, write_json, write_jsonl

# What must be equal for two runs to be one experiment (the git commit may differ: it is recorded instead).
SAME = ("benchmark", "options", "model", "limit", "methods", "sequential", "tasks")
SAME_SECTIONS = ("seed_config", "evaluate_config")
RECORDS = ("answers", "train_texts")


def paths(out: Path, stem: str, finished: bool = False) -> dict[str, Path]:
    """The partial run's files (or, `finished`, the finished run's)."""
    tag = "" if finished else ".partial"
    return {"result": out / f"{stem}{tag}.json", **{kind: out / f"{stem}_{kind}{tag}.jsonl" for kind in RECORDS}}


def save(out: Path, stem: str, result: dict[str, Any], records: dict[str, list]) -> None:
    """The finished seeds' result and records; the JSON goes last, so a crash in between leaves the old pair."""
    where = paths(out, stem)
    for kind in RECORDS:
        write_jsonl(where[kind], [r for r in records[kind] if r["seed"] in result["seeds"]])
    write_json(where["result"], result | {"complete": False})
    seed_path(out, stem).unlink(missing_ok=True)  # its methods are in the finished seeds now


def remove(out: Path, stem: str) -> None:
    for path in [*paths(out, stem).values(), seed_path(out, stem)]:
        path.unlink(missing_ok=True)


def seed_path(out: Path, stem: str) -> Path:
    return out / f"{stem}.seed.partial.json"


def save_methods(out: Path, stem: str, meta: dict[str, Any], seed: int, methods: list[str], records: dict[str, list],
                 wall_s: float) -> None:
    """The seed under way: its finished `methods` and their records, with the settings that must match on resume."""
    rows = {kind: [r for r in rows if r["seed"] == seed and r["method"] in methods] for kind, rows in records.items()}
    settings = {key: meta.get(key) for key in (*SAME, *SAME_SECTIONS, "reference_perplexity_base", "git_commit")}
    under_way = {"seed": seed, "finished_methods": methods, "records": rows, "wall_s": wall_s}
    write_json(seed_path(out, stem), settings | under_way)


def load_methods(out: Path, stem: str, meta: dict[str, Any], seed: int) -> tuple[dict[str, list], list[str], float]:
    """(records, finished methods, wall seconds so far) of seed `seed` under way, if a stopped run left it; raises
    if it is not the same experiment as `meta`."""
    path = seed_path(out, stem)
    if not path.exists():
        return {}, [], 0.0
    old = json.loads(path.read_text(encoding="utf-8"))
    _same_experiment(old, meta, out)
    if old["seed"] != seed:  # left by a seed that finished later: its records are in the partial files
        return {}, [], 0.0
    return old["records"], old["finished_methods"], old["wall_s"]


def _same_experiment(old: dict[str, Any], meta: dict[str, Any], out: Path) -> list[str]:
    """Raise unless the stopped run `old` had this run's settings; returns the keys present on one side only."""
    differ, one_side = _differences(old, meta)
    if differ:
        raise ValueError(f"--resume: the stopped run in {out} used other settings ({', '.join(differ)}); run with "
                         "the same options, methods, model and params, or use another --out")
    return one_side


def _differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(keys whose values differ, keys present on one side only), over SAME and the params sections."""
    differ = [key for key in SAME if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True)]
    a, b = old.get("reference_perplexity_base"), new.get("reference_perplexity_base")
    if a is None or b is None or abs(a - b) > 1e-3 * abs(b):  # another base model (thread counts move the last bits)
        differ.append("reference_perplexity_base")
    one_side = []
    for section in SAME_SECTIONS:
        a, b = old.get(section) or {}, new.get(section) or {}
        differ += [f"{section}.{k}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
        one_side += [f"{section}.{k}" for k in sorted(a.keys() ^ b.keys())]
    return differ, one_side


def load(out: Path, stem: str, meta: dict[str, Any]) -> tuple[dict[str, list], int, dict[str, Any]]:
    """(records, number of finished seeds, the `resumed` record) of the partial run in `out`; raises if it is not
    the same experiment as `meta` (this run's settings)."""
    where = paths(out, stem)
    if not where["result"].exists():
        where = paths(out, stem, finished=True)
    if not where["result"].exists() and seed_path(out, stem).exists():  # stopped within seed 0
        commit = json.loads(seed_path(out, stem).read_text(encoding="utf-8")).get("git_commit")
        resumed = {"from_seeds": [], "from_git_commit": commit, "from_wall_s": 0.0, "params_keys_on_one_side": [],
                   "records_missing": []}
        return {"steps": [], "scores": [], **{kind: [] for kind in RECORDS}}, 0, resumed
    if not where["result"].exists():
        raise FileNotFoundError(f"--resume: neither {stem}.partial.json nor {stem}.json is in {out}: there is no "
                                "stopped run of this benchmark there (a run writes the partial file after each "
                                "finished seed)")
    old = json.loads(where["result"].read_text(encoding="utf-8"))
    one_side = _same_experiment(old, meta, out)
    missing = [where[kind].name for kind in RECORDS if not where[kind].exists()]
    records: dict[str, list] = {"steps": old["steps"], "scores": old["scores"],
                                **{kind: [] if where[kind].name in missing else read_jsonl(where[kind])
                                   for kind in RECORDS}}
    resumed = {"from_seeds": old["seeds"], "from_git_commit": old.get("git_commit"), "from_wall_s": old["wall_s"],
               "params_keys_on_one_side": one_side, "records_missing": missing}
    return records, len(old["seeds"]), resumed
