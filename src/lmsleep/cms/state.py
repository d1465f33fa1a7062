"""Saving and restoring a CMS: `experts.safetensors` (active experts, masks, routers) + `manifest.json`.

The base weights are not saved: the manifest names the base (its `name_or_path`) and pins it with a SHA-256 of its
state dict, and `load_state` refuses a different base. Inactive slots are not saved (they are zero by definition).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmsleep.cms.config import CMSConfig
from lmsleep.cms.experts import CMSModel, wrap_model

FORMAT = "lmsleep-cms"
FORMAT_VERSION = 1
EXPERTS_FILE = "experts.safetensors"
MANIFEST_FILE = "manifest.json"


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the base model's parameter names, dtypes, shapes and bytes (hooks and experts excluded)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _slot_of(name: str) -> int | None:
    """The expert slot a level tensor belongs to ('pools.layer0_up_proj.A.3' -> 3); None for masks."""
    parts = name.split(".")
    return int(parts[-1]) if parts[-1].isdigit() else None


def save_state(cms: CMSModel, directory: str | Path) -> Path:
    """Write the CMS state (not the base weights) to `directory`; files are replaced atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    levels: dict[str, Any] = {}
    for level_name, lv in cms.levels.items():
        for name, tensor in lv.state_dict().items():
            slot = _slot_of(name)
            if slot is None or slot in lv.active:
                tensors[f"{level_name}.{name}"] = tensor.detach().cpu().contiguous().clone()
        levels[level_name] = {"active": list(lv.active), "fresh": [i for i in lv.active if bool(lv.fresh[i])]}
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": cms.architecture,
        "base": {"name_or_path": getattr(cms.base.config, "_name_or_path", ""), "sha256": base_fingerprint(cms.base)},
        "cms_config": cms.cfg.to_dict(),
        "targets": cms.targets,
        "levels": levels,
    }
    _atomic_write(directory / EXPERTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _atomic_write(directory / MANIFEST_FILE, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    manifest = json.loads((Path(directory) / MANIFEST_FILE).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{directory} is not an {FORMAT} v{FORMAT_VERSION} state")
    return manifest


def load_state(base_model: nn.Module, directory: str | Path, check_base: bool = True) -> CMSModel:
    """Wrap `base_model` with the saved CMS and restore its experts: the logits are those of the saved model."""
    manifest = read_manifest(directory)
    arch = getattr(base_model.config, "model_type", type(base_model).__name__)
    if arch != manifest["architecture"]:
        raise ValueError(f"state was saved on a {manifest['architecture']} model, not {arch}")
    if check_base and base_fingerprint(base_model) != manifest["base"]["sha256"]:
        raise ValueError(f"base model differs from the one the state was saved on "
                         f"({manifest['base']['name_or_path'] or 'unnamed'}); pass check_base=False to force")
    cms = wrap_model(base_model, CMSConfig.from_dict(manifest["cms_config"]))
    saved = load_file(str(Path(directory) / EXPERTS_FILE))
    for level_name, lv in cms.levels.items():
        prefix = f"{level_name}."
        own = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        active = manifest["levels"][level_name]["active"]
        expected = {n for n in lv.state_dict() if _slot_of(n) is None or _slot_of(n) in active}
        if set(own) != expected:
            missing, unexpected = sorted(expected - set(own))[:3], sorted(set(own) - expected)[:3]
            raise ValueError(f"level {level_name!r}: saved tensors do not match the manifest "
                             f"(missing {missing}, unexpected {unexpected})")
        lv.load_state_dict(own, strict=False)
        lv.refresh()
    return cms


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
