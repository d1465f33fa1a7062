"""What a continuum memory system (CMS) looks like: its MLP levels, their expert pools, the router.

`CMSConfig` is plain data (dataclasses with help text, like lmsleep.config), so it round-trips through params.yaml
and the manifest of a saved state (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lmsleep.config import _f

# The MLP projections that get experts, per architecture (`config.model_type`). The names are looked up inside each
# decoder layer's `mlp` module, so GPT-2's attention `c_proj` is never confused with its MLP `c_proj`.
ARCH_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("gate_proj", "up_proj", "down_proj"),
    "mistral": ("gate_proj", "up_proj", "down_proj"),
    "qwen2": ("gate_proj", "up_proj", "down_proj"),
    "qwen3": ("gate_proj", "up_proj", "down_proj"),
    "gemma": ("gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_fc", "c_proj"),
}
ROUTERS = ("dense", "topk")
PERIOD_UNITS = ("steps", "tokens", "nights")


@dataclass
class LevelSpec:
    name: str = _f("slow", "level name (an identifier: it names the level in saved states and logs)")
    layers: Any = _f(None, "decoder layers whose MLPs this level covers (a list of indices); null = all layers")
    update_period: int = _f(1, "C(level): updated every this many `period_unit`s (sleep fires just before)")
    pool_size: int = _f(8, "experts pre-allocated in the level (masked out until a sleep activates one)")
    rank: int = _f(16, "rank r of each low-rank expert")
    alpha: float = _f(32.0, "expert scaling numerator: delta W = B A (alpha / rank)")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def _default_levels() -> list[LevelSpec]:
    return [LevelSpec()]


@dataclass
class CMSConfig:
    levels: list = field(
        default_factory=_default_levels,
        metadata={"help": "MLP levels, fastest first (LevelSpec: name, layers, update_period, pool_size, rank, alpha)"},
    )
    period_unit: str = _f("nights", "unit of update_period: 'steps', 'tokens' or 'nights'")
    targets: Any = _f(None, "projections inside each layer's `mlp` that get experts; null = per architecture")
    router: str = _f("dense", "'dense': every active expert is summed (exactly mergeable); 'topk': sigmoid-gated top-k")
    top_k: int = _f(2, "topk router: settled experts kept per token (fresh experts are always on until settled)")

    def __post_init__(self) -> None:
        self.levels = [lv if isinstance(lv, LevelSpec) else LevelSpec(**lv) for lv in self.levels]
        names = [lv.name for lv in self.levels]
        if not self.levels:
            raise ValueError("a CMS needs at least one MLP level")
        if len(set(names)) != len(names):
            raise ValueError(f"level names must be unique, got {names}")
        for lv in self.levels:
            if not lv.name.isidentifier():
                raise ValueError(f"level name {lv.name!r} must be an identifier (letters, digits, underscores)")
            for key in ("update_period", "pool_size", "rank"):
                if int(getattr(lv, key)) < 1:
                    raise ValueError(f"level {lv.name!r}: {key} must be >= 1")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.period_unit not in PERIOD_UNITS:
            raise ValueError(f"period_unit must be one of {PERIOD_UNITS}, got {self.period_unit!r}")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")

    def level(self, name: str) -> LevelSpec:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"no CMS level named {name!r} (levels: {[lv.name for lv in self.levels]})")

    def levels_due(self, count: int) -> list[str]:
        """Levels whose scheduled update falls at `count` (in `period_unit`s): sleep fires just before these."""
        return [lv.name for lv in self.levels if count > 0 and count % lv.update_period == 0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CMSConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CMS config keys: {sorted(unknown)}")
        return cls(**data)


def split_layers(num_layers: int, groups: int) -> list[list[int]]:
    """Contiguous groups of decoder layers, as even as possible: split_layers(5, 2) == [[0, 1, 2], [3, 4]]."""
    if not 1 <= groups <= num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {groups} groups")
    size, extra = divmod(num_layers, groups)
    out, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(list(range(start, end)))
        start = end
    return out
