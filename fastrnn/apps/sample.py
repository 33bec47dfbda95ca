"""Streaming generation from a trained checkpoint, character- or word-level.

The token kind comes from the checkpoint. A word prompt is split on whitespace; generated words are joined by
spaces, and a word after "." starts a new line (:meth:`fastrnn.apps.data.Vocab.separator`), so the output
splits back into the same words.

The prompt is run through the network in one call to warm the recurrent state; every further token is
one single-step call (T = 1) of the recurrent module with the carried state, which on CUDA is fastrnn's fused
single-step path. Sampling itself (temperature, top-k, the seeded generator) runs on the CPU, so a seed gives
the same text on every device that computes the same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from fastrnn.apps import checkpoint
from fastrnn.apps.config import TrainConfig
from fastrnn.apps.data import LINE_END, Vocab
from fastrnn.apps.errors import AppError, ConfigMismatchError
from fastrnn.apps.model import LanguageModel, check_backend_device


def load_model(path: str | Path, device: torch.device | str = "cpu",
               backend: str = "auto") -> tuple[LanguageModel, Vocab]:
    """The network of a checkpoint, in eval mode on ``device``, and its vocabulary (characters or words).

    Raises:
        CheckpointError: missing, corrupt or truncated file, or weights that do not fit the stored config.
    """
    check_backend_device(backend, torch.device(device))
    ckpt = checkpoint.load(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    vocab = checkpoint.vocab_of(ckpt, path)
    if cfg.tie_weights and cfg.embed != cfg.hidden:
        raise ConfigMismatchError(f"checkpoint {path}: tied weights with embed {cfg.embed} != hidden {cfg.hidden}")
    model = LanguageModel(len(vocab), cfg.cell, cfg.hidden, cfg.layers, cfg.embed, 0.0, backend,
                          tie_weights=cfg.tie_weights)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        raise ConfigMismatchError(f"checkpoint {path}: weights do not fit its stored config ({e})") from None
    return model.to(device).eval(), vocab


def _pick(logits: Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    """One id from logits [V] (CPU, fp32): greedy for temperature 0, else top-k / temperature sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=0), 1, generator=gen))


def _start(vocab: Vocab) -> str:
    """The context of an empty prompt: the start of a line (a newline, or "." for words), else the first token."""
    mark = "\n" if vocab.kind == "char" else LINE_END
    return mark if mark in vocab.index else vocab.tokens[0]


@torch.no_grad()
def generate(model: LanguageModel, vocab: Vocab, prompt: str, length: int, temperature: float = 0.8,
             top_k: int = 0, seed: int | None = None, on_char: Callable[[str], None] | None = None) -> str:
    """Continue ``prompt`` by ``length`` tokens and return them as text (the prompt not included).

    Args:
        model, vocab: from :func:`load_model`.
        prompt: warms the state; empty (or only whitespace, for words) means "start of a line".
        length: tokens (characters or words) to generate.
        temperature: softmax temperature; 0 picks the most likely token.
        top_k: sample among the k most likely tokens only (0: all).
        seed: seeds the sampling generator; None draws a fresh seed.
        on_char: called with each token's text as soon as it is generated (streaming): the character, or for
            words the separator and the word (a space before it, a newline after "."; nothing after an empty
            prompt). The returned text is these pieces joined.

    Raises:
        VocabularyError: the prompt has tokens outside the vocabulary (named in the message).
    """
    if length < 0:
        raise AppError(f"--length must be >= 0, got {length}")
    words = vocab.split(prompt)
    previous = words[-1] if len(words) else None  # what the first generated token follows, when rendered
    if not len(words):
        prompt = _start(vocab)
    ids = vocab.encode(prompt, "prompt")
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    device = next(model.parameters()).device
    logits, state = model(ids[None].to(device))  # warm-up on the whole prompt: [1, len(prompt), V]
    out = []
    for i in range(length):
        nxt = _pick(logits[0, -1].float().cpu(), temperature, top_k, gen)
        tok = vocab.tokens[nxt]
        piece = vocab.separator(previous) + tok
        previous = tok
        out.append(piece)
        if on_char is not None:
            on_char(piece)
        if i + 1 < length:
            logits, state = model(torch.tensor([[nxt]], device=device), state)  # one step: [1, 1, V]
    return "".join(out)
