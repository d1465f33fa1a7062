"""Batched rollouts for Knowledge Seeding: padding, sampling completions, and the logits that predict them.

    ids, mask = pad_rows([[1, 2, 3], [4]], pad_id=0, left=True, device="cpu")
    ys = sample_completions(cms, tokenizer, prompts, temperature=0.7, max_new_tokens=32)   # no grad, KV cache
    scored = write_scored(cms, tokenizer, prompts, max_new_tokens=32, topk=64)   # greedy y + the log-probs it came from
    logits = completion_logits(cms, [(prompt, y) for prompt, y in zip(prompts, ys)], tokenizer.pad_token_id)

`completion_logits` runs the decoder body over prompt + y and applies the LM head ONLY at the positions that predict
y's tokens (len(prompt)-1 .. len(prompt)+len(y)-2). The prompt is most of every row (the teacher's prompt holds the
whole memory), and a 49k-vocabulary head over every prompt position would be most of the activation memory of a step
(and about a fifth of its compute on SmolLM2) for logits nobody reads.

`checkpointed_layers` keeps only each decoder layer's input for the backward pass and recomputes the rest: the
student's forward with grad holds every layer's activations otherwise (on SmolLM2, about 1.4 MB per token over 30
layers, the largest part of a KS step's memory; `bench/seed_vs_trl.py` measures it).
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from lmsleep.cms.experts import decoder_layers
from lmsleep.generation import stop_token_ids

# Sequences per generate call: decoding on CPU is per-token overhead, and wider batches amortise it, but the KV cache
# grows with sequences x tokens (SmolLM2: 46 KB per token), so a call also holds at most GENERATION_TOKENS tokens.
GENERATION_BATCH = 16
GENERATION_TOKENS = 4096
# A call that packs several groups materialises every row's prefix (one group's rows share a view of theirs): half
# the cap. On SmolLM2's bench-seed night (4 memories x 3 question samples) the question writing then peaks at about
# 1090 MB against 1220 MB with the full cap and 1010 MB unpacked, for most of the packing's time saving.
PACKED_TOKENS = 2048


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one padded batch (ids, attention mask); left padding for generation, right for scoring."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(list(r), dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def sample_completions(model, tokenizer, prompts: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                       n: int = 1, groups: Sequence[Hashable] | None = None,
                       stop_ids: Collection[int] = ()) -> list[list[int]]:
    """Sampled completions (token lists, cut after the first stop token), n per prompt in prompt order; no gradient
    anywhere. temperature 0 = greedy (n must then be 1). `stop_ids`: more tokens that end a completion (kept as its
    last), e.g. `text_stop_ids`: a row stops there, and a call ends when all its rows have, so a caller that reads
    only the text up to a character does not decode past it. Within a call each row's tokens up to its stop are
    those it would have had without (every step still samples every row); a later call starts from where the
    shorter one left the random state, so its rows are other samples of the same distribution.

    `groups` (one key per prompt, e.g. its memory's id): the prompts of a key, and the n samples of each, are
    generated after the keys and values of the token prefix they share (the chat header and the memory text),
    computed ONCE (`PrefixKV`; the model does not change within a call, so this is exact up to float rounding).
    Without it, every sequence runs the whole memory through the model again in its prefill. Rows of several small
    groups share one generate call, each after its own prefix (`_calls`, `stacked_cache`)."""
    return [y for y, _ in _decode(model, tokenizer, prompts, temperature, max_new_tokens, n, groups, stop_ids)]


def write_scored(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int, topk: int,
                 groups: Sequence[Hashable] | None = None) -> list[tuple[list[int], torch.Tensor, Any]]:
    """Greedy completions, each with the model's own next-token log-probs at every one of its tokens, recorded while
    decoding: (y, log-probs [len(y), k], their vocabulary ids [len(y), k]), or the full [len(y), vocab] log-probs
    with ids None at topk 0. These are the log-probs a scoring pass over prompt + y (`completion_logits`) gives, up
    to float rounding (tested), so a teacher that writes its y greedily need not read them again to score them.
    Batching, prefixes and packing as `sample_completions`."""
    return _decode(model, tokenizer, prompts, 0.0, max_new_tokens, 1, groups, (), topk)


class _TopK:
    """A logits processor that keeps each decoding step's log-probs (top-k, or all at k 0) of every row and changes
    nothing. It runs after generate's own processors; greedy decoding with our GenerationConfig has none, so it
    sees the model's raw next-token logits."""

    def __init__(self, k: int):
        self.k = k
        self.steps: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._host: tuple[torch.Tensor, torch.Tensor | None] | None = None  # [rows, steps, k] once decoding ends

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        if self.k:  # kept on the model's device: a copy to the host every step would sync a GPU every token
            self.steps.append(logprobs.topk(min(self.k, logprobs.shape[-1]), dim=-1))
        else:
            self.steps.append((logprobs, None))
        return scores

    def row(self, j: int, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row j's first `length` steps, as tensors of their own (no view of the whole call's). The call's steps go
        to the host in one copy, at the first row asked for."""
        if self._host is None:
            values = torch.stack([v for v, _ in self.steps], dim=1).cpu()
            ids = None if self.steps[0][1] is None else torch.stack([i for _, i in self.steps], dim=1).cpu()
            self._host, self.steps = (values, ids), []
        values, ids = self._host
        return values[j, :length].clone(), None if ids is None else ids[j, :length].clone()


def _decode(model, tokenizer, prompts, temperature: float, max_new_tokens: int, n: int, groups, stop_ids,
            record_topk: int | None = None) -> list:
    """[(y, None)] per sequence, or with `record_topk` (greedy only) [(y, log-probs, ids)]: see the two callers."""
    from transformers import GenerationConfig

    stops = stop_token_ids(model, tokenizer) + sorted(set(stop_ids))
    if temperature > 0:
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    elif n == 1:
        sampling = dict(do_sample=False)
    else:
        raise ValueError("greedy decoding (temperature 0) gives one completion per prompt, not n")
    if record_topk is not None and temperature > 0:
        raise ValueError("log-probs are recorded for greedy decoding only (a sampler's warped scores are not them)")
    gen = GenerationConfig(**sampling, use_cache=True, max_new_tokens=max_new_tokens, num_return_sequences=n,
                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    per_prompt: dict[int, list] = {}
    with torch.no_grad():
        for call in _calls(model, prompts, groups, n, max_new_tokens):
            recorder = _TopK(record_topk) if record_topk is not None else None
            new = _generate(model, [prompts[i] for i, _ in call], gen, tokenizer.pad_token_id, n,
                            [prefix for _, prefix in call], recorder)
            for j, row in enumerate(new.tolist()):  # rows come prompt-major: n samples of call[0], then ...
                cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                y = row[:cut] or [stops[0]]
                out = (y, None) if recorder is None else (y, *recorder.row(j, len(y)))
                per_prompt.setdefault(call[j // n][0], []).append(out)
    return [y for i in range(len(prompts)) for y in per_prompt[i]]


def text_stop_ids(tokenizer, chars: str) -> frozenset[int]:
    """Every token whose text holds one of `chars` (single characters such as "?" or a line break, which a byte-level
    BPE never splits): after one, the text up to the first of them is complete. Computed once per tokenizer (and
    forgotten with it: the cache holds the tokenizer weakly)."""
    cache = _TEXT_STOPS.setdefault(tokenizer, {})
    if chars not in cache:
        cache[chars] = frozenset(i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in chars))
    return cache[chars]


_TEXT_STOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {chars: stop ids}


MIN_SHARED_PREFIX = 16  # tokens: below this a separate prefix pass costs more than it saves


def _prefix_groups(model, prompts: Sequence[Sequence[int]], groups: Sequence[Hashable] | None):
    """(prompt indices, PrefixKV or None) per group, in order of first appearance; no groups: one plain group.
    Lazily: a group's prefix is computed when its turn comes (on SmolLM2 a 250-token memory's keys and values are
    11 MB), so only the prefixes of the rows of one generate call are alive at a time."""
    if groups is None:
        yield list(range(len(prompts))), None
        return
    if len(groups) != len(prompts):
        raise ValueError(f"sample_completions: {len(groups)} group keys for {len(prompts)} prompts")
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    for indices in members.values():
        shared = common_prefix([prompts[i] for i in indices])  # a lone prompt shares all but its last token
        yield indices, (PrefixKV(model, shared) if len(shared) >= MIN_SHARED_PREFIX else None)


def _calls(model, prompts: Sequence[Sequence[int]], groups: Sequence[Hashable] | None, n: int, max_new_tokens: int):
    """The generate calls: lists of (prompt index, its PrefixKV or None), filled group after group up to the caps
    (GENERATION_BATCH sequences, GENERATION_TOKENS tokens of KV cache, counted over the call's padded width). A call
    may hold rows of several groups: decoding on CPU costs about the same per token for 3 sequences as for 16 (it
    reads every weight either way), so a night of many small memories needs far fewer decoding passes than one call
    per memory would take. Rows with a prefix and rows without are not mixed: the prefill runs every row over the
    call's widest own part, and a row without a prefix brings its whole prompt."""
    call: list[tuple[int, PrefixKV | None]] = []
    for indices, prefix in _prefix_groups(model, prompts, groups):
        for i in indices:
            apart = call and (call[-1][1] is None) != (prefix is None)  # a whole prompt would widen every tail
            if apart or (call and not _fits(call + [(i, prefix)], prompts, n, max_new_tokens)):
                yield call
                call = []
            call.append((i, prefix))
    if call:
        yield call


def _fits(call: list[tuple[int, "PrefixKV | None"]], prompts: Sequence[Sequence[int]], n: int,
          max_new_tokens: int) -> bool:
    """Whether one generate call may hold these rows: their cache is (longest prefix + longest own part + new
    tokens) wide for every one of the rows x n sequences."""
    heads = [len(p.tokens) if p is not None else 0 for _, p in call]
    width = max(heads) + max(len(prompts[i]) - h for (i, _), h in zip(call, heads)) + max_new_tokens
    cap = GENERATION_TOKENS if len({id(p) for _, p in call}) == 1 else PACKED_TOKENS
    return len(call) * n <= GENERATION_BATCH and len(call) * n * width <= cap


def _generate(model, rows: Sequence[Sequence[int]], gen, pad_id: int, n: int, prefixes: Sequence["PrefixKV | None"],
              recorder: "_TopK | None" = None):
    """One generate call; returns the new tokens [len(rows) * n, new]. With prefixes (one per row, `_calls` never
    mixes rows with and without), each row is its prefix (keys and values given as the cache, left-padded to the
    call's longest prefix), then its own tokens, left-padded: the padding is masked, and the positions (from the
    attention mask) run on as if it were not there, so every row sees exactly what it would see unpadded and alone."""
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    extra = {} if recorder is None else {"logits_processor": LogitsProcessorList([recorder])}
    if prefixes[0] is None:
        ids, mask = pad_rows(rows, pad_id, True, device)
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, **extra)[:, ids.shape[1] :]
    heads = [p.tokens for p in prefixes]
    head_ids, head_mask = pad_rows(heads, pad_id, True, device)
    ids, mask = pad_rows([r[len(h):] for r, h in zip(rows, heads)], pad_id, True, device)
    ids, mask = torch.cat([head_ids, ids], dim=1), torch.cat([head_mask, mask], dim=1)
    cache = stacked_cache(prefixes, head_ids.shape[1], n)
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, cache=cache,
                          **extra)[:, ids.shape[1] :]


def _causal_lm(model):
    """The HF causal LM under a CMSModel (hooks stay attached: its experts act) or the model itself."""
    return getattr(model, "base", model)


def completion_logits(model, rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                      prefix: "PrefixKV | None" = None) -> list[torch.Tensor]:
    """One right-padded forward over prompt + y rows; per row the logits that predict y's tokens, [len(y), vocab].

    With `prefix` (a frozen model's keys and values over tokens every row's prompt starts with), the rows are run
    after it and only their remaining tokens are computed."""
    lm = _causal_lm(model)
    device = next(lm.parameters()).device
    skip = 0 if prefix is None else len(prefix.tokens)
    if prefix is not None and any(list(p[:skip]) != prefix.tokens or len(p) <= skip for p, _ in rows):
        raise ValueError("completion_logits: a row does not extend the cached prefix")
    ids, mask = pad_rows([list(p[skip:]) + list(y) for p, y in rows], pad_id, False, device)
    extra = {}
    if prefix is not None:
        mask = torch.cat([torch.ones((len(rows), skip), dtype=mask.dtype, device=device), mask], dim=1)
        extra = {"cache": prefix.expanded(len(rows)), "use_cache": True}
    # no KV cache without a prefix: nothing reads it, and a checkpointed layer would append to it twice
    hidden = lm.base_model(input_ids=ids, attention_mask=mask, **(extra or {"use_cache": False})).last_hidden_state
    at_row = torch.cat([torch.full((len(y),), i, dtype=torch.long) for i, (_, y) in enumerate(rows)])
    at_pos = torch.cat([torch.arange(len(p) - skip - 1, len(p) - skip + len(y) - 1) for p, y in rows])
    logits = lm.get_output_embeddings()(hidden[at_row.to(device), at_pos.to(device)])
    return list(logits.split([len(y) for _, y in rows]))


@contextmanager
def checkpointed_layers(model, enabled: bool = True) -> Iterator[None]:
    """Within: while grad is on, every decoder layer of `model` (a CMSModel or an HF causal LM) saves only its inputs
    and is recomputed in the backward pass (torch's non-reentrant checkpoint), expert hooks included; gradients are
    unchanged. Outside, or with grad off (sampling, the teacher), the layers run as usual.

    A layer must not write state that a second run would duplicate: the callers pass use_cache=False."""
    if not enabled:
        yield
        return
    layers = list(decoder_layers(_causal_lm(model)))
    saved = [layer.__dict__.get("forward") for layer in layers]  # an instance-level forward (a hook's) is kept

    def wrap(forward):
        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    for layer in layers:
        layer.forward = wrap(layer.forward)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


class PrefixKV:
    """Keys and values of a FROZEN model state over a token prefix, computed once and reused by every row that
    starts with it: the teacher's "<system>Text: <memory>" is most of each teacher prompt of that memory, and
    the teacher (tonight's expert off) does not change during the night, so its cache stays exact."""

    def __init__(self, model, tokens: Sequence[int]):
        lm = _causal_lm(model)
        device = next(lm.parameters()).device
        self.tokens = list(tokens)
        with torch.inference_mode():
            out = lm.base_model(input_ids=torch.tensor([self.tokens], device=device), use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        self.layers = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]

    def expanded(self, batch: int):
        from transformers import DynamicCache

        return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.layers])


def stacked_cache(prefixes: Sequence["PrefixKV"], width: int, n: int):
    """One DynamicCache for a generate call whose rows may have different prefixes: row j's n sequences (generate
    repeats rows n times, prompt-major) hold its prefix's keys and values at the right end of `width` positions,
    zeros (masked) before them. One prefix for every row: a view, nothing copied."""
    from transformers import DynamicCache

    if all(p is prefixes[0] for p in prefixes) and len(prefixes[0].tokens) == width:
        return prefixes[0].expanded(len(prefixes) * n)
    layers = []
    for layer, (k0, v0) in enumerate(prefixes[0].layers):
        keys = k0.new_zeros((len(prefixes) * n, k0.shape[1], width, k0.shape[3]))
        values = v0.new_zeros((len(prefixes) * n, v0.shape[1], width, v0.shape[3]))
        for j, p in enumerate(prefixes):
            k, v = p.layers[layer]
            keys[j * n : (j + 1) * n, :, width - k.shape[2] :] = k[0]
            values[j * n : (j + 1) * n, :, width - v.shape[2] :] = v[0]
        layers.append((keys, values))
    return DynamicCache(layers)


def common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix every row shares, one token short of the shortest row (each row keeps a token)."""
    shortest = min(len(r) for r in rows) - 1
    n = 0
    while n < shortest and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return list(rows[0][:n])
