"""Greedy batched answers and reference perplexity: the two measurements the `evaluate` stage takes of a model.

Run through the stage: `lmsleep evaluate --night <id>`. Both functions only read the model (torch.inference_mode).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from lmsleep.prompts import encode_prompts


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends an assistant turn: the tokenizer's EOS, the model's configured EOS(es) and <|im_end|>.

    A checkpoint converted from GGUF may name a different EOS than its chat template closes turns with; stopping on
    all of them keeps answers from running on into a fake next turn.
    """
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def generate_answers(
    model: Any,
    tokenizer: Any,
    message_lists: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "answering",
    groups: list[Any] | None = None,
) -> list[str]:
    """Greedy answers to chat conversations, `batch_size` at a time; returns only the new text of each, stripped.

    `groups` (one key per conversation, e.g. the memory text it carries; `model` a plain HF causal LM): the
    conversations of a key are answered after the keys and values of their shared token prefix, computed once
    (lmsleep.ks.rollout.sample_completions, whose own caps size the batches then; small groups share a call): the
    same greedy answers, without reading the memory once per question."""
    from transformers import GenerationConfig

    if groups is not None:
        return _answers_after_shared_prefixes(model, tokenizer, message_lists, max_new_tokens, groups, desc)

    # An explicit config, so sampling settings shipped with a checkpoint (temperature, top_p...) never apply.
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    device = next(model.parameters()).device
    answers: list[str] = []
    with torch.inference_mode(), tqdm(total=len(message_lists), desc=desc, unit="prompt") as progress:
        for start in range(0, len(message_lists), batch_size):
            batch = encode_prompts(tokenizer, message_lists[start : start + batch_size]).to(device)
            output = model.generate(**batch, generation_config=generation_config)
            # With left padding every prompt ends at the same column, so the new tokens are everything after it.
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            progress.update(len(new_tokens))
    return answers


def _answers_after_shared_prefixes(model: Any, tokenizer: Any, message_lists: list[list[dict[str, str]]],
                                   max_new_tokens: int, groups: list[Any], desc: str) -> list[str]:
    from lmsleep.ks.rollout import sample_completions  # the prefix-sharing generator lives with the KS rollouts
    from lmsleep.ks.samples import encode

    prompts = [encode(tokenizer, m) for m in message_lists]
    print(f"{desc}: {len(prompts)} prompts in {len(set(groups))} groups sharing their prefix")
    with torch.inference_mode():
        answers = sample_completions(model, tokenizer, prompts, 0.0, max_new_tokens, groups=groups)
    return [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]


def perplexity(model: Any, tokenizer: Any, text: str, max_tokens: int) -> float:
    """exp(mean next-token loss) over the first `max_tokens` tokens of `text`.

    The tokens are cut into consecutive windows no longer than the model's context; each window is scored on its own
    (no overlap), which is cheap and, the text and windows being fixed, comparable between the before/after models.
    """
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0][:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens of reference text, got {len(ids)}")
    window = min(max_tokens, getattr(model.config, "max_position_embeddings", None) or max_tokens)
    device = next(model.parameters()).device
    total_loss, total_predicted = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window].unsqueeze(0).to(device)
            if chunk.shape[1] < 2:
                break  # a lone trailing token predicts nothing
            loss = model(input_ids=chunk, labels=chunk).loss  # mean over the chunk's len-1 predicted tokens
            total_loss += float(loss) * (chunk.shape[1] - 1)
            total_predicted += chunk.shape[1] - 1
    return math.exp(total_loss / total_predicted)
