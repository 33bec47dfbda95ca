"""Streaming generation from a trained char-LM checkpoint.

The prompt is run through the network in one call to warm the recurrent state; every further character is
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
from fastrnn.apps.data import Vocab
from fastrnn.apps.errors import AppError, ConfigMismatchError
from fastrnn.apps.model import CharLM, check_backend_device


def load_model(path: str | Path, device: torch.device | str = "cpu", backend: str = "auto") -> tuple[CharLM, Vocab]:
    """The network of a checkpoint, in eval mode on ``device``, and its vocabulary.

    Raises:
        CheckpointError: missing, corrupt or truncated file, or weights that do not fit the stored config.
    """
    check_backend_device(backend, torch.device(device))
    ckpt = checkpoint.load(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    vocab = Vocab(ckpt["vocab"])
    model = CharLM(len(vocab), cfg.cell, cfg.hidden, cfg.layers, cfg.embed, 0.0, backend)
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


@torch.no_grad()
def generate(model: CharLM, vocab: Vocab, prompt: str, length: int, temperature: float = 0.8, top_k: int = 0,
             seed: int | None = None, on_char: Callable[[str], None] | None = None) -> str:
    """Continue ``prompt`` by ``length`` characters and return them (the prompt not included).

    Args:
        model, vocab: from :func:`load_model`.
        prompt: warms the state; empty means "start of a line" (a newline if the vocabulary has one).
        length: characters to generate.
        temperature: softmax temperature; 0 picks the most likely character.
        top_k: sample among the k most likely characters only (0: all).
        seed: seeds the sampling generator; None draws a fresh seed.
        on_char: called with each character as soon as it is generated (streaming).

    Raises:
        VocabularyError: the prompt has characters outside the vocabulary (named in the message).
    """
    if length < 0:
        raise AppError(f"--length must be >= 0, got {length}")
    if not prompt:
        prompt = "\n" if "\n" in vocab.index else vocab.chars[0]
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
        ch = vocab.chars[nxt]
        out.append(ch)
        if on_char is not None:
            on_char(ch)
        if i + 1 < length:
            logits, state = model(torch.tensor([[nxt]], device=device), state)  # one step: [1, 1, V]
    return "".join(out)
