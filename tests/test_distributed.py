"""DDP on 2 CPU processes (accelerate launch, gloo) trains the same adapter as one process, within float tolerance."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinyworld import memory, tiny_workspace

from lmsleep.distributed import labelled_tokens, my_rows, summed_token_loss
from lmsleep.memory import read_json, write_jsonl
from lmsleep.stages import seed

CPU_DDP = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu_ddp.yaml"
# single-process runs on one thread, as torchrun's processes run (OMP_NUM_THREADS=1): the same float rounding
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_rows_are_split_without_overlap_or_loss():
    shards = [my_rows(5, rank, 2) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert my_rows(1, 1, 2) == []


def test_summed_token_loss_matches_the_mean_loss_of_transformers():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[1, 3:] = -100
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
    assert torch.allclose(summed_token_loss(logits, labels) / labelled_tokens(labels), expected)


def test_two_process_ddp_seed_equals_single_process(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "tiny-cache-ddp"
    results = {}
    for name, config in (("single", ""), ("ddp", str(CPU_DDP))):
        params, ws = tiny_workspace(tmp_path / name, cache)
        params.seed.method = "sft"  # the baseline under DDP (KS, the default since session 11: the tests below)
        params.seed.batch_size, params.seed.epochs, params.seed.accelerate_config = 3, 2, config
        # 5 memories in batches of 3: the last batch (2 rows) and odd shards exercise the uneven split
        write_jsonl(ws.night_data("n1") / "accepted.jsonl", [memory(i) for i in range(5)])
        summary = seed.run(params, ws)
        results[name] = (summary, load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors"),
                         read_json(ws.night_model("n1") / "train_log.json"))
    single, ddp = results["single"], results["ddp"]
    assert single[0]["processes"] == 1 and ddp[0]["processes"] == 2
    assert single[1].keys() == ddp[1].keys()
    for key in single[1]:
        assert torch.allclose(single[1][key], ddp[1][key], atol=1e-5, rtol=1e-4), key
    assert torch.allclose(torch.tensor(single[2]["losses"]), torch.tensor(ddp[2]["losses"]), atol=1e-5)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in ddp[1].items())
    shutil.rmtree(tmp_path)


def _ks_night(tmp_path, cache, name: str, config: str, **seed_params):
    params, ws = tiny_workspace(tmp_path / name, cache)
    params.seed.method, params.seed.accelerate_config = "ks", config
    for key, value in {"ks_steps": 3, "batch_size": 3, "ks_max_new_tokens": 5, "ks_expert_rank": 4,
                       "ks_prompts_per_memory": 2, "ks_question_share": 0.5, **seed_params}.items():
        setattr(params.seed, key, value)
    write_jsonl(ws.night_data("n1") / "accepted.jsonl", [memory(i) for i in range(3)])
    summary = seed.run(params, ws)
    return (summary, load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors"),
            read_json(ws.night_model("n1") / "train_log.json"), ws)


def test_two_process_ks_equals_single_process(tmp_path, tmp_path_factory):
    """Off-policy KS (lambda 0: no sampling in the loop) on 2 gloo processes trains the one-process expert: rank 0
    writes the teacher to the night's cache, rank 1 reads it, each takes half of every batch, gradients are summed."""
    cache = tmp_path_factory.getbasetemp() / "tiny-cache-ddp"
    single = _ks_night(tmp_path, cache, "single", "")
    ddp = _ks_night(tmp_path, cache, "ddp", str(CPU_DDP))
    assert single[0]["processes"] == 1 and ddp[0]["processes"] == 2
    assert ddp[0]["teacher_cache"] == "miss"  # rank 0 wrote it; rank 1 would have raised without a hit
    assert any(ddp[3].night_data("n1").joinpath("teacher_cache").iterdir())
    assert single[1].keys() == ddp[1].keys()
    for key in single[1]:
        assert torch.allclose(single[1][key], ddp[1][key], atol=1e-5, rtol=1e-4), key
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in ddp[1].items())
    assert torch.allclose(torch.tensor(single[2]["losses"]), torch.tensor(ddp[2]["losses"]), atol=1e-5)
    shutil.rmtree(tmp_path)


def test_two_process_on_policy_ks_runs_and_audits_every_sample(tmp_path, tmp_path_factory):
    """lambda 1: each process samples its own rows; the audit (train_texts) holds every process's samples."""
    cache = tmp_path_factory.getbasetemp() / "tiny-cache-ddp"
    summary, adapter, log, ws = _ks_night(tmp_path, cache, "ddp", str(CPU_DDP), ks_lambda=1.0)
    assert summary["processes"] == 2 and len(log["losses"]) == 3
    texts = [json.loads(line) for line in (ws.night_model("n1") / "train_texts.jsonl").read_text().splitlines()]
    assert sum(t.get("kind") == "on-policy" for t in texts) == 3 * 3  # 3 steps x batch 3, split over 2 processes
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    shutil.rmtree(tmp_path)
