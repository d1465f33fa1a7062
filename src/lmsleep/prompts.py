"""How a probe question is put to a model: chat messages, then one left-padded batch for generation.

Used by the `evaluate` stage (`lmsleep evaluate --night <id>`); try it alone with

    python -c "from lmsleep.prompts import question_messages as q; print(q('Who runs the ferry?', 'Mira runs it.'))"

The prompt with and without the memory differ only by the memory text, so the in-context score is a fair ceiling for
the no-context (consolidated) score.
"""

from __future__ import annotations

from typing import Any

INSTRUCTION = "Answer the question briefly, in a few words."


def question_messages(question: str, context: str | None = None) -> list[dict[str, str]]:
    """One user turn: [the memory text,] an instruction to answer briefly, and the question."""
    parts = [] if context is None else [f"Text:\n{context.strip()}", ""]
    parts += [INSTRUCTION, f"Question: {question.strip()}"]
    return [{"role": "user", "content": "\n".join(parts)}]


def encode_prompts(tokenizer: Any, message_lists: list[list[dict[str, str]]]) -> Any:
    """Render each conversation with the tokenizer's chat template and tokenize them as one LEFT-padded batch.

    Left padding puts every prompt's last token at the same (final) position, so the tokens `generate` appends line
    up across the batch; the attention mask tells the model (and its position ids) to ignore the pads.
    """
    texts = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in message_lists
    ]
    # The chat template already writes any BOS/role tokens it wants; adding special tokens again would double them.
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
