"""The CMS in a live model: expert pools, the optional router, and the hooks that add them to the MLP projections.

Layout of one level (a `CMSLevel`): for every covered decoder layer and every target projection an `ExpertPool`
(`pool_size` slots of A [r, in] and B [out, r], one nn.Parameter per slot), plus, with the top-k router, one
`Router` per covered layer. Expert `i` of a level is slot `i` in all of them: activating it adds capacity to every
covered MLP at once. A level-wide boolean `mask` says which slots are active.

Forward: a forward hook on each target projection returns `base_output + sum_i gate_i * (x A_i^T) B_i^T * alpha/r`
over the ACTIVE slots only, each expert computed on its own and added in slot order. Inactive slots are never
touched, so they change no output and get no gradient (their .grad stays None). Computing each expert separately
also makes activation bit-exact: a new expert with B = 0 adds an exact 0 and changes no other expert's arithmetic.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from lmsleep.cms.config import ARCH_TARGETS, CMSConfig, LevelSpec

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency, this only guards odd installs
    Conv1D = ()  # type: ignore[assignment]


def projection_shape(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, is_conv1d) of a target projection; GPT-2's Conv1D stores its weight as [in, out]."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if Conv1D and isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return n_in, n_out, True
    raise TypeError(f"CMS experts attach to nn.Linear or transformers Conv1D projections, not {type(module).__name__}")


def fill_with(tensor: torch.Tensor, generator: torch.Generator | None, fill) -> None:
    """fill(t, generator) in place on `tensor`, drawn on the generator's device: a seeded CPU generator then gives
    the same numbers whether the model sits on the CPU or a GPU (and torch refuses a CPU generator for a CUDA
    tensor, which crashed the first KS night on a GPU)."""
    if generator is None or generator.device == tensor.device:
        fill(tensor, generator)
        return
    drawn = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
    fill(drawn, generator)
    tensor.copy_(drawn)

class ExpertPool(nn.Module):
    """`pool_size` low-rank deltas for one projection: delta_i(x) = (x A_i^T) B_i^T. Slots start zero and frozen."""

    def __init__(self, in_features: int, out_features: int, pool_size: int, rank: int, like: torch.Tensor):
        super().__init__()
        opts = {"dtype": like.dtype, "device": like.device}
        self.A = nn.ParameterList(
            [nn.Parameter(torch.zeros(rank, in_features, **opts), requires_grad=False) for _ in range(pool_size)]
        )
        self.B = nn.ParameterList(
            [nn.Parameter(torch.zeros(out_features, rank, **opts), requires_grad=False) for _ in range(pool_size)]
        )

    def delta(self, x: torch.Tensor, active: list[int], scaling: float, gates: list | None) -> torch.Tensor:
        total = None
        for j, i in enumerate(active):
            h = F.linear(x, self.A[i])
            if gates is not None:
                h = h * gates[j]
            d = F.linear(h, self.B[i])
            total = d if total is None else total + d
        return total * scaling


class Router(nn.Module):
    """Top-k router of one layer of a level: gate_i(x) = sigmoid(w_i . x + b_i), one score per expert, no softmax.

    Sigmoid gates are independent of each other, so a new expert never re-weights the old ones. Only *settled*
    experts compete for the k places; *fresh* experts (activated since the last `settle_new_experts`) are always on,
    so activating one never pushes an old expert out of the top k. New gates start at w = 0, b = 0.
    """

    def __init__(self, hidden_size: int, pool_size: int, like: torch.Tensor):
        super().__init__()
        opts = {"dtype": like.dtype, "device": like.device}
        self.gate_w = nn.ParameterList(
            [nn.Parameter(torch.zeros(hidden_size, **opts), requires_grad=False) for _ in range(pool_size)]
        )
        self.gate_b = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, **opts), requires_grad=False) for _ in range(pool_size)]
        )
        self.current: list[torch.Tensor] | None = None  # gates of the MLP call in progress

    def gates(self, hidden: torch.Tensor, active: list[int], fresh: list[bool], k: int) -> list[torch.Tensor]:
        """One gate [..., 1] per active expert. Each is computed on its own tensor (a sigmoid over a wider tensor can
        round differently by position), which keeps activation bit-exact, like ExpertPool.delta."""
        logits = [F.linear(hidden, self.gate_w[i][None], self.gate_b[i]) for i in active]
        gates = [torch.sigmoid(logit) for logit in logits]
        settled = [j for j, is_fresh in enumerate(fresh) if not is_fresh]
        if len(settled) > k:
            top = torch.cat([logits[j] for j in settled], dim=-1).topk(k, dim=-1).indices
            keep = torch.zeros(top.shape[:-1] + (len(settled),), dtype=gates[0].dtype, device=top.device)
            keep.scatter_(-1, top, 1.0)
            for n, j in enumerate(settled):
                gates[j] = gates[j] * keep[..., n : n + 1]
        return gates


def _slot_key(layer: int, proj: str) -> str:
    return f"layer{layer}_{proj}"


class CMSLevel(nn.Module):
    """One MLP level: its pools, its routers (top-k only) and the mask of active slots (`fresh` marks new ones)."""

    def __init__(self, spec: LevelSpec, with_router: bool):
        super().__init__()
        self.spec = spec
        self.with_router = with_router
        self.register_buffer("mask", torch.zeros(spec.pool_size, dtype=torch.bool))
        self.register_buffer("fresh", torch.zeros(spec.pool_size, dtype=torch.bool))
        self.pools = nn.ModuleDict()
        self.routers = nn.ModuleDict()
        self.layers: list[int] = []  # covered decoder layers, set by CMSModel
        self.active: list[int] = []  # python mirror of `mask`, read by every forward (no device sync)
        self.fresh_of_active: list[bool] = []

    def refresh(self) -> None:
        self.active = [i for i, on in enumerate(self.mask.tolist()) if on]
        fresh = self.fresh.tolist()
        self.fresh_of_active = [fresh[i] for i in self.active]

    def slot_parameters(self, index: int) -> list[nn.Parameter]:
        params = [p for pool in self.pools.values() for p in (pool.A[index], pool.B[index])]
        params += [p for r in self.routers.values() for p in (r.gate_w[index], r.gate_b[index])]
        return params

    @torch.no_grad()
    def init_slot(self, index: int, generator: torch.Generator | None = None) -> None:
        for pool in self.pools.values():
            fill_with(pool.A[index], generator, lambda t, g: nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g))
            pool.B[index].zero_()  # B = 0: the new expert adds exactly nothing (function preservation)
        for router in self.routers.values():
            router.gate_w[index].zero_()
            router.gate_b[index].zero_()

    @torch.no_grad()
    def clear_slot(self, index: int) -> None:
        for p in self.slot_parameters(index):
            p.zero_()
            p.requires_grad_(False)
        self.mask[index] = False
        self.fresh[index] = False


class CMSModel(nn.Module):
    """An HF causal LM with CMS levels. Call it (or `.generate`) like the model; `.base` is the model itself.

    The base model's modules and weights are untouched (hooks only) and frozen; `unwrap()` removes the hooks.
    """

    def __init__(self, base: nn.Module, cfg: CMSConfig):
        super().__init__()
        if getattr(base, "_lmsleep_cms", False):
            raise ValueError("this model already carries CMS hooks: unwrap() the previous CMSModel first")
        self.base = base
        self.cfg = cfg
        self.architecture = getattr(base.config, "model_type", type(base).__name__)
        targets = cfg.targets or ARCH_TARGETS.get(self.architecture)
        if not targets:
            raise ValueError(f"no default CMS targets for architecture {self.architecture!r}: set CMSConfig.targets")
        self.targets = list(targets)
        layer_list = decoder_layers(base)
        names = {id(m): n for n, m in base.named_modules()}
        self.levels = nn.ModuleDict({spec.name: CMSLevel(spec, cfg.router == "topk") for spec in cfg.levels})
        self.module_names: dict[tuple[int, str], str] = {}  # (layer, proj) -> name inside base (peft keys)
        self.is_conv1d: dict[tuple[int, str], bool] = {}
        per_projection: dict[tuple[int, str], list] = {}
        per_mlp: dict[int, list] = {}
        for spec in cfg.levels:
            level = self.levels[spec.name]
            layers = level.layers = list(range(len(layer_list)) if spec.layers is None else spec.layers)
            if len(set(layers)) != len(layers):
                raise ValueError(f"level {spec.name!r} lists a layer twice: {layers}")
            for layer in layers:
                if not 0 <= layer < len(layer_list):
                    raise ValueError(f"level {spec.name!r} covers layer {layer}, the model has {len(layer_list)}")
                mlp = layer_list[layer].mlp
                router = None
                if level.with_router:
                    router = level.routers[f"layer{layer}"] = Router(base.config.hidden_size, spec.pool_size,
                                                                     getattr(mlp, self.targets[0]).weight)
                    per_mlp.setdefault(layer, []).append((level, router))
                for proj in self.targets:
                    module = getattr(mlp, proj, None)
                    if module is None:
                        raise ValueError(f"layer {layer} MLP has no projection {proj!r} ({type(mlp).__name__})")
                    n_in, n_out, conv = projection_shape(module)
                    pool = level.pools[_slot_key(layer, proj)] = ExpertPool(n_in, n_out, spec.pool_size, spec.rank,
                                                                             module.weight)
                    self.module_names[(layer, proj)] = names[id(module)]
                    self.is_conv1d[(layer, proj)] = conv
                    per_projection.setdefault((layer, proj), [module, []])[1].append((level, pool, router))
        for p in base.parameters():
            p.requires_grad_(False)
        self._hooks = [module.register_forward_hook(_projection_hook(entries))
                       for module, entries in per_projection.values()]
        for layer, entries in per_mlp.items():
            mlp = layer_list[layer].mlp
            self._hooks.append(mlp.register_forward_pre_hook(_router_hook(entries, cfg.top_k), with_kwargs=True))
            self._hooks.append(mlp.register_forward_hook(_router_clear_hook(entries)))
        base._lmsleep_cms = True

    # ------------------------------------------------------------ using it like the model

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)

    @property
    def config(self):
        return self.base.config

    def unwrap(self) -> nn.Module:
        """Remove the hooks and return the plain base model (the experts stay in this object, unused)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.base._lmsleep_cms = False
        return self.base

    # ------------------------------------------------------------ the expert lifecycle

    def level(self, name: str) -> CMSLevel:
        if name not in self.levels:
            raise KeyError(f"no CMS level named {name!r} (levels: {list(self.levels)})")
        return self.levels[name]

    def active_experts(self, level: str) -> list[int]:
        return list(self.level(level).active)

    def activate_expert(self, level: str, generator: torch.Generator | None = None) -> int:
        """Open the next free slot of `level` (A: kaiming uniform, B = 0, gate = 0): every output stays the same."""
        lv = self.level(level)
        free = [i for i in range(lv.spec.pool_size) if i not in lv.active]
        if not free:
            raise RuntimeError(f"level {level!r} is full ({lv.spec.pool_size} experts active): reset it or raise "
                               "pool_size")
        index = free[0]
        lv.init_slot(index, generator)
        lv.mask[index] = True
        lv.fresh[index] = lv.with_router
        lv.refresh()
        return index

    def freeze_experts(self) -> None:
        for lv in self.levels.values():
            for p in lv.parameters():
                p.requires_grad_(False)

    def trainable_expert(self, level: str, index: int) -> list[nn.Parameter]:
        """Make expert `index` of `level` the only trainable tensors (A, B, gate); returns them for the optimizer."""
        lv = self.level(level)
        if index not in lv.active:
            raise ValueError(f"expert {index} of level {level!r} is not active (active: {lv.active})")
        self.freeze_experts()
        params = lv.slot_parameters(index)
        for p in params:
            p.requires_grad_(True)
        return params

    def expert_up_parameters(self, level: str, index: int) -> list[nn.Parameter]:
        """Expert `index`'s B tensors (out x rank, zero at activation): the tensors seed.ks_lr_b_ratio gives a rate of their own."""
        return [pool.B[index] for pool in self.level(level).pools.values()]

    def expert_parameters(self, level: str, index: int) -> list[nn.Parameter]:
        return self.level(level).slot_parameters(index)

    def settle_new_experts(self, level: str) -> None:
        """Top-k router: fresh experts join the top-k competition (the one step that may change outputs; a no-op
        for dense routing). Do it in the Update step of the night, before evaluating."""
        lv = self.level(level)
        lv.fresh.zero_()
        lv.refresh()

    def reset_expert(self, level: str, index: int) -> None:
        lv = self.level(level)
        lv.clear_slot(index)
        lv.refresh()

    def reset_level(self, level: str) -> None:
        """The sender's reset ("prune"): every expert of `level` deactivated and zeroed."""
        lv = self.level(level)
        for i in range(lv.spec.pool_size):
            lv.clear_slot(i)
        lv.refresh()

    @contextmanager
    def experts_off(self, level: str, indices: list[int]) -> Iterator[None]:
        """Mask experts of `level` out of forward and backward inside the block (same tensors, no copy): e.g. the
        teacher is the model without tonight's expert, or without the sender's experts."""
        lv = self.level(level)
        saved = lv.mask.clone()
        for i in indices:
            lv.mask[i] = False
        lv.refresh()
        try:
            yield
        finally:
            lv.mask.copy_(saved)
            lv.refresh()

    @contextmanager
    def random_expert(self, level: str, std: float = 0.02, generator: torch.Generator | None = None) -> Iterator[int]:
        """Dreaming's novelty: a random extra expert (A kaiming, B ~ N(0, std)) active inside the block, then gone."""
        index = self.activate_expert(level, generator)
        with torch.no_grad():
            for pool in self.level(level).pools.values():
                fill_with(pool.B[index], generator, lambda t, g: t.normal_(0.0, std, generator=g))
        try:
            yield index
        finally:
            self.reset_expert(level, index)

    def describe(self) -> str:
        """One line per level: coverage, pool, rank, parameters per expert, active experts (printed at start-up)."""
        lines = [f"CMS on {self.architecture}: router={self.cfg.router}"
                 + (f" (k={self.cfg.top_k})" if self.cfg.router == "topk" else "") + f", targets={self.targets}"]
        for name, lv in self.levels.items():
            per_expert = sum(p.numel() for p in lv.slot_parameters(0))
            span = lv.layers if lv.layers != list(range(lv.layers[0], lv.layers[-1] + 1)) else \
                f"{lv.layers[0]}-{lv.layers[-1]}"
            lines.append(f"  level {name}: layers {span}, period "
                         f"{lv.spec.update_period} {self.cfg.period_unit}, pool {lv.spec.pool_size} x rank "
                         f"{lv.spec.rank}, {per_expert:,} params/expert, active {lv.active}")
        return "\n".join(lines)


def wrap_model(model: nn.Module, cfg: CMSConfig | None = None) -> CMSModel:
    """Attach a CMS (pre-allocated, all experts inactive) to an HF causal LM; the model's outputs are unchanged."""
    return CMSModel(model, cfg or CMSConfig())


# ---------------------------------------------------------------- hooks and model plumbing


def _projection_hook(entries: list):
    def hook(module, args, output):
        for level, pool, router in entries:
            if level.active:
                gates = router.current if router is not None else None
                output = output + pool.delta(args[0], level.active, level.spec.scaling, gates)
        return output

    return hook


def _router_hook(entries: list, k: int):
    def hook(module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        for level, router in entries:
            router.current = router.gates(hidden, level.active, level.fresh_of_active, k) if level.active else None

    return hook


def _router_clear_hook(entries: list):
    def hook(module, args, output):
        for _, router in entries:
            router.current = None

    return hook


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer list (model.model.layers for Llama/Qwen2, transformer.h for GPT-2), found by shape."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and all(hasattr(m, "mlp") for m in module):
            return module
    raise ValueError(f"cannot find {n} decoder layers with an `mlp` in {type(model).__name__}")
