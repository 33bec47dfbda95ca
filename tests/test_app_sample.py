"""Char-LM sampling: length, vocabulary, seeded repeatability, streaming, bad prompts and checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrnn.apps.cli import main
from fastrnn.apps.errors import CheckpointError, VocabularyError
from fastrnn.apps.sample import generate, load_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    argv = ["train", "--out", str(out), "--layers", "1", "--hidden", "32", "--embed", "16", "--dropout", "0",
            "--dtype", "fp32", "--batch-size", "8", "--seq-len", "32",
            "--steps", "60", "--val-every", "30", "--max-minutes", "0", "--lr", "1e-2", "--quiet"]
    assert main(argv) == 0
    return out / "best.pt"


def test_length_and_vocabulary(ckpt):
    model, vocab = load_model(ckpt)
    text = generate(model, vocab, "ROMEO:", 300, temperature=1.0, top_k=0, seed=1)
    assert len(text) == 300
    assert set(text) <= set(vocab.chars)


def test_fixed_seed_gives_identical_samples(ckpt):
    model, vocab = load_model(ckpt)
    a = generate(model, vocab, "ROMEO:", 200, temperature=0.8, top_k=40, seed=7)
    b = generate(model, vocab, "ROMEO:", 200, temperature=0.8, top_k=40, seed=7)
    c = generate(model, vocab, "ROMEO:", 200, temperature=0.8, top_k=40, seed=8)
    assert a == b and a != c


def test_single_step_path_matches_a_full_sequence(ckpt):
    """Greedy decoding step by step must agree with one forward pass over the finished text."""
    model, vocab = load_model(ckpt)
    prompt = "KING:"
    text = generate(model, vocab, prompt, 40, temperature=0)
    ids = vocab.encode(prompt + text)
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    assert logits[0, len(prompt) - 1:].argmax(-1).tolist() == ids[len(prompt):].tolist()


def test_top_k_one_is_greedy(ckpt):
    model, vocab = load_model(ckpt)
    assert generate(model, vocab, "A", 50, temperature=1.0, top_k=1, seed=3) == generate(
        model, vocab, "A", 50, temperature=0)


def test_streams_each_character(ckpt):
    model, vocab = load_model(ckpt)
    seen: list[str] = []
    text = generate(model, vocab, "", 25, seed=0, on_char=seen.append)
    assert seen == list(text)


def test_torch_backend_gives_the_same_sample(ckpt):
    model, vocab = load_model(ckpt, backend="auto")
    ref, _ = load_model(ckpt, backend="torch")
    assert type(ref.rnn).__module__.startswith("torch.nn")
    a = generate(model, vocab, "To be", 80, temperature=0)
    assert a == generate(ref, vocab, "To be", 80, temperature=0)


def test_cli_sample(ckpt, capsys):
    argv = ["sample", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--length", "120", "--temperature", "0.8",
            "--top-k", "40", "--seed", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and first.endswith("\n") and len(first) == len("ROMEO:") + 120 + 1
    assert main(argv) == 0
    assert capsys.readouterr().out == first


def test_prompt_outside_vocabulary(ckpt, capsys):
    model, vocab = load_model(ckpt)
    with pytest.raises(VocabularyError, match="'€'"):
        generate(model, vocab, "ROMEO€", 10)
    assert main(["sample", "--checkpoint", str(ckpt), "--prompt", "Hello ~€", "--length", "10"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed before the error
    assert captured.err.count("\n") == 1 and "'~', '€'" in captured.err and "vocabulary" in captured.err


def test_bad_checkpoints(ckpt, tmp_path, capsys):
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(truncated)
    assert main(["sample", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_console_script_streams_without_traceback(ckpt):
    proc = subprocess.run([sys.executable, "-m", "fastrnn.apps.cli", "sample", "--checkpoint", str(ckpt),
                           "--prompt", "ROMEO:", "--length", "30", "--seed", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout) == len("ROMEO:") + 30 + 1
    bad = subprocess.run([sys.executable, "-m", "fastrnn.apps.cli", "sample", "--checkpoint", str(ckpt),
                          "--prompt", "ROMEO€"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'€'" in bad.stderr
