"""Prompts, batched greedy generation and perplexity on a tiny Llama: `pytest tests/test_generation.py` (~8 s, CPU)."""

import math

import pytest
import torch

from lmsleep import models
from lmsleep.config import PrepareModelConfig
from lmsleep.generation import generate_answers, perplexity, stop_token_ids
from lmsleep.ks.rollout import common_prefix
from lmsleep.prompts import encode_prompts, question_messages

CORPUS = [
    models.TINY_FALLBACK_CORPUS,
    "Lily saw a big red dog in the park. The dog ran to the river and Tom laughed. " * 20,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model whose weights are drawn wide, so greedy decoding emits varied ordinary tokens.

    With the default 0.02 initialisation the untrained model repeats one whitespace token, and batched and unbatched
    answers would agree even if padding were broken.
    """
    path = tmp_path_factory.mktemp("tiny") / "base"
    models.build_tiny(path, PrepareModelConfig(name="tiny", tiny_vocab_size=400), CORPUS)
    model, tokenizer = models.load_base(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3, generator=generator)
    return model, tokenizer


def test_question_messages_with_and_without_context():
    bare = question_messages("Who runs the ferry?")
    given = question_messages("Who runs the ferry?", "Mira runs the ferry.")
    assert [m["role"] for m in bare] == ["user"] == [m["role"] for m in given]
    assert "Mira" not in bare[0]["content"]
    # the memory comes first, the question last; the rest of the prompt is identical
    assert given[0]["content"].index("Mira runs") < given[0]["content"].index("Who runs")
    assert given[0]["content"].endswith(bare[0]["content"])


def test_encode_prompts_pads_on_the_left(tiny):
    _, tokenizer = tiny
    batch = encode_prompts(tokenizer, [question_messages("Why?"), question_messages("Who " * 20 + "?")])
    mask = batch["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1]  # every prompt ends in the last column
    assert mask[0, 0] == 0 and mask[1].all()  # the short one is padded at the front
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id
    text = tokenizer.decode(batch["input_ids"][1], skip_special_tokens=False)
    assert text.rstrip().endswith("assistant")  # the generation prompt is there


def test_batched_generation_equals_unbatched(tiny):
    model, tokenizer = tiny
    questions = ["Who runs the ferry?", "Where?", "What colour was the big dog that Lily saw in the park?", "Why?"]
    messages = [question_messages(q) for q in questions]
    messages.append(question_messages("Who?", "Tom had a red ball. " * 5))
    batched = generate_answers(model, tokenizer, messages, max_new_tokens=12, batch_size=3)
    one_by_one = [generate_answers(model, tokenizer, [m], max_new_tokens=12, batch_size=1)[0] for m in messages]
    assert batched == one_by_one
    assert len(batched) == len(messages) and any(batched)  # not trivially equal because empty
    assert not any("Question:" in answer or "assistant" in answer for answer in batched)  # prompt stripped


def test_answers_after_a_shared_memory_prefix_equal_plain_answers(tiny):
    """generate_answers(groups=...) (the evaluate stage's and the benchmarks' in-context answers): every question of a
    memory is answered after that memory's keys and values, computed once, and the answers are the plain ones."""
    model, tokenizer = tiny
    memories = ["Tom had a red ball and Lily had a big dog. " * 4, "The dog ran to the river in the park. " * 3]
    questions = ["Who had the ball?", "Where?", "What did the big dog do after Lily saw it in the park?"]
    messages = [question_messages(q, m) for m in memories for q in questions] + [question_messages("Why?")]
    groups = [m for m in memories for _ in questions] + [None]
    embedded: list[int] = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda mod, args: embedded.append(args[0].numel()))
    plain = generate_answers(model, tokenizer, messages, max_new_tokens=12, batch_size=4)
    plain_tokens, embedded[:] = sum(embedded), []
    shared = generate_answers(model, tokenizer, messages, max_new_tokens=12, batch_size=4, groups=groups)
    hook.remove()
    assert shared == plain and any(shared)
    rendered = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)["input_ids"] for m in messages[:3]]
    assert embedded[0] == len(common_prefix(rendered))  # the first pass: memory 1's shared prefix alone, once
    assert embedded[0] > len(tokenizer(memories[0])["input_ids"])
    # the memories are most of each prompt: read once per memory, not once per question (the questions' own tokens
    # are padded to the widest of their generate call, which packs rows of several memories)
    assert sum(embedded) < plain_tokens * 0.6


def test_stop_tokens_include_turn_end(tiny):
    model, tokenizer = tiny
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tokenizer)


def test_perplexity_matches_the_loss_and_handles_windows(tiny):
    model, tokenizer = tiny
    text = CORPUS[1]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :50]
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert perplexity(model, tokenizer, text, max_tokens=50) == pytest.approx(expected, rel=1e-4)

    original = model.config.max_position_embeddings
    model.config.max_position_embeddings = 16  # force several windows
    try:
        windowed = perplexity(model, tokenizer, text, max_tokens=50)
    finally:
        model.config.max_position_embeddings = original
    assert math.isfinite(windowed) and windowed > 1
    with pytest.raises(ValueError):
        perplexity(model, tokenizer, "", max_tokens=50)
