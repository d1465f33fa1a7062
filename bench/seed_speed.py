"""Speed of the seed stage's training loop: tokens/s, step time, peak memory and model FLOPs utilisation (MFU).

Times the real loop, `lmsleep.stages.seed.train_sft_adapter` (LoRA on a frozen Llama, AdamW, accelerate), on a Llama
built from a config preset at random init (weights do not change the speed), with a byte-level BPE tokenizer trained
here (`lmsleep.models.train_byte_bpe`). Offline: nothing is downloaded.

    python bench/seed_speed.py --size tiny --device cpu --steps 2          # CPU smoke, seconds
    python bench/seed_speed.py --size auto --dtype bfloat16 --mixed-precision bf16   # the largest preset that fits
    python bench/seed_speed.py --hidden 1024 --layers 12 --heads 16 --batch-size 8 --seq-len 1024

Step timing: the loop iterates its batches through `tqdm`; this script swaps that for an iterator that stamps the
time at each step boundary (after a CUDA synchronize), so the steps are timed inside the unmodified loop. The first
`--warmup` steps (allocator, kernels' autotuning) are left out of every figure.

Exit codes: 0 ok, 2 bad request (no GPU for --device cuda, ...), 3 out of GPU memory (scripts/gpu_check.sh then
tries the next smaller preset).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = PROJECT / "bench" / "results" / "seed_speed_gpu_check.json"
EXIT_BAD_REQUEST, EXIT_OOM = 2, 3

# Llama shapes. 135m/360m: SmolLM2 (our production base); 1b/3b: Llama-3.2; 8b: Llama-3.1. batch/seq: per-step
# workload sized so the preset's estimate (below) stays well inside the GPU memory the preset is picked for.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=256, vocab=0, batch=4, seq=128),
    "135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152, batch=16, seq=1024),
    "360m": dict(hidden=960, layers=32, heads=15, kv_heads=5, intermediate=2560, vocab=49152, batch=16, seq=1024),
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256, batch=8, seq=1024),
    "3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vocab=128256, batch=4, seq=1024),
    "8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256, batch=4, seq=1024),
}
SIZES_LARGEST_FIRST = ["8b", "3b", "1b", "360m", "135m", "tiny"]

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in TFLOP/s; first match on the GPU name.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("L4", 121.0)]
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM, bf16 dense: the default when the GPU is not in the table
TOKENIZER_VOCAB = 2048  # byte-level BPE trained here; a preset's larger model vocabulary keeps the lm_head's real cost


# ---------------------------------------------------------------- sizing


def model_shape(args: argparse.Namespace) -> dict[str, int]:
    shape = dict(PRESETS[args.size])
    for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if args.hidden is not None and args.intermediate is None:
        shape["intermediate"] = 4 * shape["hidden"]
    if args.heads is not None and args.kv_heads is None:
        shape["kv_heads"] = shape["heads"]
    shape["batch"] = args.batch_size or shape["batch"]
    shape["seq"] = args.seq_len or shape["seq"]
    return shape


def matmul_params(shape: dict[str, int], vocab: int) -> int:
    """Weights every token multiplies through: attention, MLP and the lm_head (the embedding lookup is free)."""
    h, kv = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * shape["intermediate"]
    return shape["layers"] * per_layer + h * vocab


def estimate_gib(shape: dict[str, int], weight_bytes: int = 2) -> float:
    """Rough peak memory of one seed step: frozen weights + activations kept for backward + fp32 logits/loss."""
    vocab = shape["vocab"] or TOKENIZER_VOCAB
    weights = (matmul_params(shape, vocab) + shape["hidden"] * vocab) * weight_bytes
    tokens = shape["batch"] * shape["seq"]
    # ~ 34·h bytes per token per layer in 16-bit (Korthikanti et al. 2022, flash/SDPA attention) plus the MLP's
    # wider intermediate, and the LoRA inputs peft keeps; ×1.5 margin for the allocator.
    activations = tokens * shape["layers"] * (34 * shape["hidden"] + 6 * shape["intermediate"]) * 1.5
    logits = tokens * vocab * (2 + 4 + 4 + 4)  # logits, .float() copy, softmax grad, its cast back
    return (weights + activations + logits) / 2**30


FILL_FRACTION = 0.85  # of the free GPU memory that --size auto plans to use (the estimate is rough)


def fitting_sizes(free_gib: float, weight_bytes: int, fraction: float = FILL_FRACTION) -> list[str]:
    return [s for s in SIZES_LARGEST_FIRST if estimate_gib(PRESETS[s], weight_bytes) <= free_gib * fraction]


def filling_batch(shape: dict[str, int], free_gib: float, weight_bytes: int, fraction: float = FILL_FRACTION) -> int:
    """The largest batch whose estimate stays within `fraction` of the free memory (the estimate is linear in it)."""
    one, two = estimate_gib({**shape, "batch": 1}, weight_bytes), estimate_gib({**shape, "batch": 2}, weight_bytes)
    per_text = two - one
    return max(1, min(256, int((free_gib * fraction - (one - per_text)) // per_text)))


def resolve_peak_tflops(given: float | None, gpu_name: str | None) -> tuple[float, str]:
    """(peak TFLOP/s, where it came from): the flag, else the GPU's table entry or the H100 default; CPU: 0."""
    if given is not None:
        return given, "--peak-tflops"
    if gpu_name is None:
        return 0.0, "unknown (cpu)"
    return next(((v, f"table: {k}") for k, v in PEAK_BF16_TFLOPS if k in gpu_name),
                (DEFAULT_PEAK_TFLOPS, "default: H100 bf16 dense"))


# ---------------------------------------------------------------- data


def synthetic_texts(n: int, words_per_text: int, seed: int) -> list[str]:
    """Texts of pseudo-words from a fixed lexicon: each word is at least one token, so every text fills --seq-len."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    return [" ".join(rng.choice(lexicon) for _ in range(words_per_text)) for _ in range(n)]


def demo_texts(n: int) -> list[str]:
    """The bundled demo days' memory texts (short, as real nights are), cycled to `n`."""
    from lmsleep.memory import read_jsonl, training_text

    memories = [m for day in sorted((PROJECT / "data" / "demo").glob("day*.jsonl")) for m in read_jsonl(day)]
    texts = [training_text(m) for m in memories]
    return [texts[i % len(texts)] for i in range(n)]


# ---------------------------------------------------------------- timing the loop


class StepClock:
    """Stands in for the loop's tqdm: yields the batches and stamps the time at every step boundary."""

    def __init__(self, sync) -> None:
        self.sync, self.stamps = sync, []

    def __call__(self, iterable, *args: Any, **kwargs: Any):
        def timed():
            self.sync()
            self.stamps.append(time.perf_counter())
            for item in iterable:
                yield item
                self.sync()  # the step (forward, backward, optimizer, loss.item) is finished
                self.stamps.append(time.perf_counter())

        return timed()

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["auto", *PRESETS], help="model preset (auto: largest that fits)")
    p.add_argument("--hidden", type=int, help="override: hidden size")
    p.add_argument("--layers", type=int, help="override: decoder layers")
    p.add_argument("--heads", type=int, help="override: attention heads")
    p.add_argument("--kv-heads", type=int, help="override: key/value heads (GQA)")
    p.add_argument("--intermediate", type=int, help="override: MLP width (default 4 x hidden with --hidden)")
    p.add_argument("--vocab", type=int, help="override: model vocabulary (0 = the tokenizer's)")
    p.add_argument("--batch-size", type=int, help="texts per step (seed.batch_size)")
    p.add_argument("--seq-len", type=int, help="tokens per text (seed.max_length)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "demo"],
                   help="synthetic: every text fills --seq-len; demo: the bundled memories (short, padded)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                   help="accelerate autocast, as configs/accelerate/gpu_ddp.yaml (default: bf16 on cuda, no on cpu)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"peak FLOP/s of the device in TFLOP/s for MFU (default on cuda: by GPU name, else "
                        f"{DEFAULT_PEAK_TFLOPS:g} = H100 bf16 dense; on cpu 0 = unknown, MFU omitted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result (default {DEFAULT_OUT.relative_to(PROJECT)})")
    p.add_argument("--candidates", action="store_true",
                   help="print the presets that fit this GPU, largest first, and exit")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: the seed loop's accelerator then picks the CPU
    sys.path.insert(0, str(PROJECT / "src"))
    from lmsleep.env import set_offline_env

    set_offline_env()
    os.environ["WANDB_MODE"] = "disabled"
    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("seed_speed: --device cuda but torch sees no GPU", file=sys.stderr)
        return EXIT_BAD_REQUEST
    device = "cuda" if cuda else "cpu"
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    mixed = args.mixed_precision or ("bf16" if cuda else "no")
    weight_bytes = 4 if dtype_name == "float32" else 2
    gpu_name = torch.cuda.get_device_name(0) if cuda else None
    free_gib = torch.cuda.mem_get_info()[0] / 2**30 if cuda else None

    if args.candidates or args.size == "auto":
        if not cuda:
            print("seed_speed: --size auto / --candidates need a GPU", file=sys.stderr)
            return EXIT_BAD_REQUEST
        fits = fitting_sizes(free_gib, weight_bytes)
        if args.candidates:
            print(" ".join(fits))
            return 0
        args.size = fits[0]
        if args.batch_size is None:  # fill the GPU: the preset's shape, as many texts per step as fit
            args.batch_size = filling_batch(model_shape(args), free_gib, weight_bytes)
        print(f"seed_speed: --size auto -> {args.size}, batch {args.batch_size} ({free_gib:.1f} GiB free, estimate "
              f"{estimate_gib(model_shape(args), weight_bytes):.1f} GiB)")

    # accelerate's Accelerator() (inside the seed loop) reads the autocast mode from here, as `accelerate launch`
    # sets it from configs/accelerate/*.yaml.
    os.environ["ACCELERATE_MIXED_PRECISION"] = mixed
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmsleep.config import SeedConfig
    from lmsleep.models import count_parameters, dtype_of, train_byte_bpe
    from lmsleep.stages import seed as seed_stage

    shape = model_shape(args)
    n_steps = args.warmup + args.steps
    n_texts = shape["batch"] * n_steps
    t0 = time.perf_counter()
    if args.data == "synthetic":
        texts = synthetic_texts(n_texts, shape["seq"] + 16, args.seed)
        corpus = texts[: max(8, min(len(texts), 64))]
    else:
        texts = demo_texts(n_texts)
        corpus = texts + [(PROJECT / "data" / "reference.txt").read_text()]
    tokenizer = train_byte_bpe(corpus, TOKENIZER_VOCAB)
    vocab = max(shape["vocab"], len(tokenizer))
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=max(2048, shape["seq"]), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype_of(dtype_name))
    try:
        with torch.device(device):  # built where it trains: an 8B model never detours through host memory
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    total_params = count_parameters(model)[0]
    n_matmul = matmul_params(shape, vocab)
    setup_s = time.perf_counter() - t0

    cfg = SeedConfig(lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank, epochs=1, batch_size=shape["batch"],
                     max_length=shape["seq"], seed=args.seed)
    # The exact batches the loop will see (same shuffle), to count their tokens the way the loop does.
    eos = tokenizer.eos_token or ""
    batch_tokens = []
    for batch in seed_stage._batches(texts, cfg.batch_size, cfg.epochs, cfg.seed):
        mask = tokenizer([t + eos for t in batch], return_tensors="pt", padding=True, truncation=True,
                         max_length=cfg.max_length)["attention_mask"]
        batch_tokens.append((int(mask.sum()), int(mask.numel())))
    assert len(batch_tokens) == n_steps, (len(batch_tokens), n_steps)

    clock = StepClock(torch.cuda.synchronize if cuda else (lambda: None))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    original_tqdm = seed_stage.tqdm
    seed_stage.tqdm = clock
    try:
        model, losses, accelerator, _ = seed_stage.train_sft_adapter(model, tokenizer, texts, cfg)
    finally:
        seed_stage.tqdm = original_tqdm
    trained_params = count_parameters(model)[1]

    times = clock.step_times()[args.warmup:]
    timed_tokens = batch_tokens[args.warmup:]
    elapsed = sum(times)
    tokens = sum(real for real, _ in timed_tokens)
    padded = sum(total for _, total in timed_tokens)
    tokens_per_s = tokens / elapsed
    # Model FLOPs per token, the 6·N convention (2N forward + 4N backward), N = matmul weights incl. the lm_head.
    # LoRA approximation: the frozen base computes no weight gradients, so the hardware does ~4·N (+ the small LoRA
    # terms) per token; 6·N keeps MFU comparable with full fine-tuning figures. `mfu_frozen_base` reports the 4·N view.
    # Attention's own s² FLOPs are left out (small next to 6·N at these lengths).
    flops_per_token = 6 * n_matmul
    achieved = tokens_per_s * flops_per_token
    peak_tflops, peak_source = resolve_peak_tflops(args.peak_tflops, gpu_name)
    mfu = achieved / (peak_tflops * 1e12) if peak_tflops > 0 else None
    if cuda:
        peak_mem, mem_kind = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        # ru_maxrss: KiB on Linux, bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mem, mem_kind = rss * (1 if sys.platform == "darwin" else 1024), "peak RSS (ru_maxrss)"

    result = {
        "benchmark": "seed_speed",
        "size": args.size,
        "config": {**{k: v for k, v in shape.items() if k not in ("batch", "seq", "vocab")}, "vocab": vocab,
                   "batch_size": shape["batch"], "seq_len": shape["seq"], "lora_rank": cfg.lora_rank,
                   "target_modules": list(cfg.target_modules), "dtype": dtype_name, "mixed_precision": mixed,
                   "data": args.data, "steps": args.steps, "warmup": args.warmup, "seed": args.seed},
        "device": device,
        "device_name": gpu_name or platform.processor() or platform.machine(),
        "num_processes": accelerator.num_processes,
        "mixed_precision_effective": str(accelerator.mixed_precision),
        "free_gpu_memory_gib_at_start": free_gib,
        "params_total": total_params,
        "params_trained": trained_params,
        "params_matmul": n_matmul,
        "tokens_per_step": tokens / len(times),
        "padded_tokens_per_step": padded / len(times),
        "step_time_s": {"mean": statistics.fmean(times), "median": statistics.median(times), "min": min(times),
                        "max": max(times)},
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak_tflops,
        "peak_tflops_source": peak_source,
        "mfu": mfu,
        "mfu_frozen_base": mfu * 4 / 6 if mfu is not None else None,
        "peak_memory_bytes": int(peak_mem),
        "peak_memory_kind": mem_kind,
        "estimated_peak_gib": estimate_gib(shape, weight_bytes),
        "setup_s": setup_s,
        "losses": losses,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, **_versions()},
    }
    if not all(math.isfinite(x) for x in losses):
        print("seed_speed: warning: non-finite loss", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    mfu_text = f"MFU {mfu:.1%} (6N, peak {peak_tflops:g} TFLOP/s)" if mfu is not None else "MFU n/a (peak unknown)"
    print(f"seed_speed: {args.size} on {result['device_name']} ({dtype_name}, autocast {mixed}): "
          f"{tokens_per_s:,.0f} tokens/s, {result['step_time_s']['median'] * 1e3:,.1f} ms/step "
          f"({shape['batch']}x{shape['seq']}), {mfu_text}, peak mem {peak_mem / 2**30:.2f} GiB -> {args.out}")
    return 0


def _versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # torch.cuda.OutOfMemoryError, while building the model or training it
        if type(exc).__name__ != "OutOfMemoryError":
            raise
        print(f"seed_speed: out of GPU memory: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(EXIT_OOM)
