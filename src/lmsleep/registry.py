"""The model registry: which lineage serves (the champion), with history and rollback.

One registry per base model: `models/registry/<model>/champion.json` holds the champion and the stack of earlier
champions, and is replaced atomically (readers see the old pointer or the new one, never a mix).
`history.jsonl` is the append-only log of every promotion and rollback.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from lmsleep.config import PrepareModelConfig, Workspace
from lmsleep.memory import atomic_write_bytes, read_json, read_jsonl, write_json
from lmsleep.models import base_lineage

POINTER = "champion.json"
HISTORY = "history.jsonl"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _state(ws: Workspace, cfg: PrepareModelConfig) -> dict[str, Any]:
    path = ws.registry(cfg.name) / POINTER
    if path.exists():
        return read_json(path)
    return {"champion": base_lineage(ws, cfg), "previous": [], "night": None}


def champion(ws: Workspace, cfg: PrepareModelConfig) -> dict[str, Any]:
    """The serving lineage: the base model until a night is promoted."""
    return _state(ws, cfg)["champion"]


def champion_night(ws: Workspace, cfg: PrepareModelConfig) -> str | None:
    return _state(ws, cfg)["night"]


def history(ws: Workspace, cfg: PrepareModelConfig) -> list[dict[str, Any]]:
    path = ws.registry(cfg.name) / HISTORY
    return read_jsonl(path) if path.exists() else []


def _append_history(ws: Workspace, cfg: PrepareModelConfig, event: dict[str, Any]) -> None:
    path = ws.registry(cfg.name) / HISTORY
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(event, sort_keys=True) + "\n").encode("utf-8"))


def promote(ws: Workspace, cfg: PrepareModelConfig, lineage: dict[str, Any], night: str,
            metrics: dict[str, Any]) -> None:
    state = _state(ws, cfg)
    new_state = {
        "champion": lineage,
        "night": night,
        "previous": state["previous"] + [{"champion": state["champion"], "night": state["night"]}],
    }
    write_json(ws.registry(cfg.name) / POINTER, new_state)
    _append_history(ws, cfg, {"time": _now(), "event": "promote", "night": night, "from_night": state["night"],
                              "metrics": metrics})


def rollback(ws: Workspace, cfg: PrepareModelConfig) -> dict[str, Any]:
    """Restore the previous champion; refuses (ValueError) when there is nothing to go back to."""
    state = _state(ws, cfg)
    if not state["previous"]:
        raise ValueError(f"no earlier champion of '{cfg.name}' to roll back to")
    restored = state["previous"][-1]
    write_json(ws.registry(cfg.name) / POINTER,
               {"champion": restored["champion"], "night": restored["night"], "previous": state["previous"][:-1]})
    _append_history(ws, cfg, {"time": _now(), "event": "rollback", "night": restored["night"],
                              "from_night": state["night"]})
    return restored
