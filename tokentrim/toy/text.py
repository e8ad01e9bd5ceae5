"""The toy text encoder: a fixed word vocabulary, a learned word table and a learned position table.

Same output contract as the UMT5 encoder (docs/spec.md#text-encoder): `[B, text_len, text_dim]`, one row per word
in order, rows past each prompt's words zero. Words are lower-case letter runs (punctuation is ignored); a word
outside the vocabulary or a prompt longer than `text_len` words is a `UserError` (the model was only trained on
this language). Row i is word i's embedding plus position i's: cross-attention ignores order, and without
positions "a red circle ... over a green background" could not say which colour is the background's.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tokentrim.errors import UserError, shorten
from tokentrim.toy.world import COLORS, SHAPES, TEXTURES

# Order fixes the embedding rows: never reorder, only append (the checkpoint's rows follow it).
VOCAB: tuple[str, ...] = (
    ("a", "an", "and", "bounce", "over", "background") + tuple(COLORS) + SHAPES + TEXTURES + ("bounces",)
)
WORD_PATTERN = re.compile(r"[a-z]+")


def tokenize(prompt: str, text_len: int) -> list[int]:
    """Vocabulary indices of the prompt's words, in order."""
    index = {word: i for i, word in enumerate(VOCAB)}
    words = WORD_PATTERN.findall(prompt.lower())
    if not words:
        raise UserError(f"prompt {shorten(prompt)} has no words; describe a scene, e.g. 'a red circle'")
    unknown = sorted({w for w in words if w not in index})
    if unknown:
        listed = " ".join(unknown[:8]) + (f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise UserError(
            f"the toy text encoder does not know the word(s) {listed} in prompt {shorten(prompt)}; "
            f"use only: {' '.join(VOCAB)}"
        )
    if len(words) > text_len:
        raise UserError(
            f"prompt {shorten(prompt)} has {len(words)} words, the toy model takes at most {text_len}"
        )
    return [index[w] for w in words]


class ToyTextEncoder(nn.Module):
    """`encode(prompts) -> [B, text_len, text_dim]`: word embedding `[len(VOCAB), text_dim]` + position embedding
    `[text_len, text_dim]` (zero at initialisation) on the prompt's rows."""

    def __init__(self, text_len: int, text_dim: int):
        super().__init__()
        self.text_len = text_len
        self.embedding = nn.Embedding(len(VOCAB), text_dim)
        self.position = nn.Embedding(text_len, text_dim)
        nn.init.zeros_(self.position.weight)

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Differentiable encoding (training); rows past each prompt are zero."""
        weight = self.embedding.weight
        out = weight.new_zeros(len(prompts), self.text_len, weight.shape[1])
        for i, prompt in enumerate(prompts):
            ids = tokenize(prompt, self.text_len)
            out[i, : len(ids)] = (
                weight[torch.tensor(ids, device=weight.device)] + self.position.weight[: len(ids)]
            )
        return out

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings `[B, text_len, text_dim]` in the embedding's device and dtype."""
        if isinstance(prompts, str):
            raise UserError("ToyTextEncoder.encode takes a list of prompts, got a single string")
        return self(prompts)
