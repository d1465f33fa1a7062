"""bench/seed_speed.py and scripts/gpu_check.sh: the CPU smoke run end to end, and the sizing arithmetic.

The GPU run itself (`make gpu-check`) needs a GPU; here the same code runs the tiny preset on CPU for 2 timed steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT / "scripts" / "gpu_check.sh"


def load_bench():
    spec = importlib.util.spec_from_file_location("seed_speed", PROJECT / "bench" / "seed_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """`scripts/gpu_check.sh --cpu-smoke` (tiny preset, CPU, 1 warm-up + 2 timed steps) -> its JSON and output."""
    out = tmp_path_factory.mktemp("seed-speed") / "smoke.json"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WANDB_MODE": "disabled"}
    # A made-up CPU peak (1 TFLOP/s) so the MFU arithmetic is checked in the same run.
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", "--peak-tflops", "1"], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def test_cpu_smoke_reports_speed_memory_and_config(smoke) -> None:
    result, stdout = smoke
    assert result["device"] == "cpu" and result["size"] == "tiny"
    assert result["tokens_per_s"] > 0
    assert result["peak_memory_bytes"] > 0 and "RSS" in result["peak_memory_kind"]
    config = result["config"]
    assert (config["hidden"], config["layers"], config["heads"]) == (64, 2, 4)
    assert (config["batch_size"], config["seq_len"], config["steps"], config["warmup"]) == (4, 128, 2, 1)
    assert config["lora_rank"] == 16 and "q_proj" in config["target_modules"]
    assert len(result["losses"]) == 3  # warm-up + timed steps: the seed loop ran every batch
    assert result["step_time_s"]["min"] > 0
    # Synthetic texts fill every row: the loop trained batch x seq tokens per step.
    assert result["tokens_per_step"] == result["padded_tokens_per_step"] == 4 * 128
    assert 0 < result["params_trained"] < result["params_total"]  # LoRA only
    assert result["flops_per_token"] == 6 * result["params_matmul"]
    assert result["peak_tflops"] == 1 and result["peak_tflops_source"] == "--peak-tflops"
    assert result["mfu"] == pytest.approx(result["tokens_per_s"] * result["flops_per_token"] / 1e12)
    assert result["mfu_frozen_base"] == pytest.approx(result["mfu"] * 4 / 6)
    assert "tokens/s=" in stdout and "MFU=" in stdout


def test_peak_flops_resolution(bench) -> None:
    assert bench.resolve_peak_tflops(None, None) == (0.0, "unknown (cpu)")  # CPU: MFU omitted
    assert bench.resolve_peak_tflops(None, "NVIDIA H100 80GB HBM3")[0] == 989.0
    assert bench.resolve_peak_tflops(None, "NVIDIA H100 PCIe")[0] == 756.0
    assert bench.resolve_peak_tflops(None, "NVIDIA L40S")[0] == 362.0
    assert bench.resolve_peak_tflops(None, "Some Future GPU") == (989.0, "default: H100 bf16 dense")
    assert bench.resolve_peak_tflops(5.0, "NVIDIA A100-SXM4-80GB") == (5.0, "--peak-tflops")


def test_matmul_params_match_the_built_model(bench) -> None:
    """6N's N: the model's own Linear weights (the tied lm_head counted as a matmul)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(bench.PRESETS["tiny"], kv_heads=2, vocab=300)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert bench.matmul_params(shape, 300) == linear


def test_presets_grow_and_auto_sizing_fills_but_fits(bench) -> None:
    order = bench.SIZES_LARGEST_FIRST[::-1]
    n = [bench.matmul_params(bench.PRESETS[s], bench.PRESETS[s]["vocab"] or 1024) for s in order]
    assert n == sorted(n)
    assert bench.fitting_sizes(80, 2)[0] == "8b" and bench.fitting_sizes(0.01, 2) == []
    shape = bench.PRESETS["8b"]
    for free in (80, 141):
        batch = bench.filling_batch(shape, free, 2)
        assert bench.estimate_gib({**shape, "batch": batch}, 2) <= free * bench.FILL_FRACTION
        assert bench.estimate_gib({**shape, "batch": batch + 1}, 2) > free * bench.FILL_FRACTION
    assert bench.filling_batch(shape, 141, 2) > bench.filling_batch(shape, 80, 2)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_so(tmp_path) -> None:
    done = subprocess.run(["bash", str(SCRIPT)], cwd=PROJECT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "x.json")})
    assert done.returncode == 2 and "nvidia-smi not found" in done.stderr


def test_make_gpu_check_runs_the_script() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_CHECK_SIZE=1b"], cwd=PROJECT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "scripts/gpu_check.sh 1b" in done.stdout
