"""Word-level language models: the generated human_numbers corpus, word tokens and <unk>, training, sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrnn.apps import checkpoint
from fastrnn.apps.cli import default_out, main
from fastrnn.apps.config import defaults_for
from fastrnn.apps.data import (
    HUMAN_NUMBERS,
    UNK,
    Corpus,
    Vocab,
    encode_corpus,
    human_numbers_lines,
    human_numbers_text,
    load_corpus,
    number_words,
)
from fastrnn.apps.errors import VocabularyError
from fastrnn.apps.metrics import read_log
from fastrnn.apps.sample import generate, load_model

#: a tiny word-level run on human_numbers (steps-only budget, so it is repeatable)
TINY_WORDS = ["--data", HUMAN_NUMBERS, "--hidden", "32", "--batch-size", "16", "--seq-len", "16", "--steps", "120",
              "--val-every", "60", "--log-every", "20", "--max-minutes", "0", "--lr", "1e-2", "--warmup", "10",
              "--quiet"]

# ------------------------------------------------------------------------------------------- the generator


@pytest.mark.parametrize("n, words", [
    (1, "one"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"), (100, "one hundred"),
    (101, "one hundred one"), (119, "one hundred nineteen"), (1000, "one thousand"), (1001, "one thousand one"),
    (2040, "two thousand forty"), (7999, "seven thousand nine hundred ninety nine"),
    (9999, "nine thousand nine hundred ninety nine"),
])
def test_number_words(n, words):
    assert number_words(n) == words


def test_number_words_range():
    for bad in (0, 10_000):
        with pytest.raises(ValueError):
            number_words(bad)


def test_human_numbers_matches_fastai():
    lines = human_numbers_lines()
    assert len(lines) == 9_998
    assert lines[:3] == ["one", "two", "three"] and lines[7_998] == "seven thousand nine hundred ninety nine"
    assert lines[7_999] == "eight thousand one"  # valid.txt starts at 8,001: 8,000 is in neither file
    assert lines[-1] == "nine thousand nine hundred ninety nine"
    assert not any("and" in line.split() for line in lines)
    text = human_numbers_text()
    assert text.startswith("one . two . three . four")
    tokens = text.split(" ")  # the book's tokenisation; the separators " . " count as tokens
    assert len(tokens) == 63_095 == sum(len(line.split()) for line in lines) + len(lines) - 1
    assert len(set(tokens)) == 30 and "." in tokens and "zero" not in tokens
    assert tokens == text.split()  # single spaces only: whitespace tokenisation gives the same stream


def test_human_numbers_split_is_the_books():
    corpus = load_corpus(HUMAN_NUMBERS)
    assert corpus.train_fraction == 0.8
    enc = encode_corpus(corpus, "word")
    assert len(enc.train) == 50_476 and len(enc.val) == 12_619  # int(0.8 * 63,095), the rest
    assert len(enc.vocab) == 30 and UNK not in enc.vocab.index  # every validation word occurs in training
    words = corpus.text.split()
    assert enc.vocab.decode(enc.train[-6:]).split() == words[50_470:50_476]
    assert enc.vocab.decode(enc.val[:6]).split() == words[50_476:50_482]
    assert enc.unknown_val == 0


def test_human_numbers_as_characters():
    enc = encode_corpus(load_corpus(HUMAN_NUMBERS), "char")
    assert enc.vocab.kind == "char" and set(enc.vocab.chars) == set("adefghilnorstuvwxy .")
    assert len(enc.train) + len(enc.val) == len(human_numbers_text())


# --------------------------------------------------------------------------------------- words and <unk>


def test_word_vocabulary_comes_from_the_training_split():
    corpus = Corpus("test", "the cat sat on the mat the cat\nsat on the dog", train_fraction=0.75)
    enc = encode_corpus(corpus, "word")  # 12 words: 9 train ("... the cat sat"), 3 validation ("on the dog")
    assert enc.vocab.tokens == [UNK, "cat", "mat", "on", "sat", "the"]  # "dog" only in validation
    assert enc.vocab.unk == 0
    assert enc.vocab.decode(enc.val) == "on the <unk>" and enc.unknown_val == 1
    assert enc.train.tolist() == [5, 1, 4, 3, 5, 2, 5, 1, 4]


def test_no_unk_when_validation_is_covered():
    vocab = Vocab.from_words(["b", "a", "b"], ["a"])
    assert vocab.tokens == ["a", "b"] and vocab.unk is None
    with pytest.raises(VocabularyError, match="'z'"):
        vocab.encode_tokens(["a", "z"])


def test_word_encode_names_unknown_words():
    vocab = Vocab(["one", "two", "."], "word")
    assert vocab.encode("  one\ttwo .\n").tolist() == [0, 1, 2]
    with pytest.raises(VocabularyError, match=r"prompt has 2 word\(s\) outside the model's 3-word vocabulary: "
                                              r"'eleven', 'twelve'"):
        vocab.encode("one eleven twelve eleven", "prompt")


def test_word_rendering_splits_back():
    vocab = Vocab(["one", "two", "."], "word")
    text = vocab.decode([0, 1, 2, 1, 2, 0])
    assert text == "one two .\ntwo .\none"
    assert vocab.encode(text).tolist() == [0, 1, 2, 1, 2, 0]


def test_bad_word_vocabularies():
    with pytest.raises(ValueError, match="distinct"):
        Vocab(["a", "a"], "word")
    with pytest.raises(ValueError, match="whitespace"):
        Vocab(["a b"], "word")
    with pytest.raises(ValueError, match="single characters"):
        Vocab(["ab"], "char")


@pytest.mark.parametrize("content, message", [
    (" \n\t \n", "no words (only whitespace)"),
    ("hello\n", "one word ('hello')"),
])
def test_empty_or_one_word_corpus(tmp_path, capsys, content, message):
    data = tmp_path / "words.txt"
    data.write_text(content, encoding="utf-8")
    assert main(["train", "--out", str(tmp_path / "out"), "--data", str(data), "--tokens", "word", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrnn: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_short_word_corpus_counts_words(tmp_path, capsys):
    data = tmp_path / "words.txt"
    data.write_text("a b c d e f g h i j\n" * 5, encoding="utf-8")
    assert main(["train", "--out", str(tmp_path / "out"), "--data", str(data), "--tokens", "word", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train split has 45 words" in err and err.count("\n") == 1


# -------------------------------------------------------------------------------------- defaults and CLI


def test_human_numbers_picks_word_tokens_and_its_own_defaults():
    cfg = defaults_for("cpu", HUMAN_NUMBERS)
    assert cfg.tokens == "word" and cfg.data == HUMAN_NUMBERS
    assert cfg.max_minutes <= 3  # the word-level job's budget
    assert cfg != defaults_for("cpu", HUMAN_NUMBERS, "char")  # as characters: the char-LM defaults
    assert defaults_for("cpu", HUMAN_NUMBERS, "char").tokens == "char"
    assert defaults_for("cpu").tokens == "char" and defaults_for("cpu", "/some/file.txt").tokens == "char"
    assert default_out(None, HUMAN_NUMBERS) == Path("runs/wordlm")
    assert default_out("char", HUMAN_NUMBERS) == Path("runs/charlm")
    assert default_out(None, None) == Path("runs/charlm") and default_out("word", None) == Path("runs/wordlm")


# ------------------------------------------------------------------------------------ training and sampling


@pytest.fixture(scope="module")
def word_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("words")
    assert main(["train", "--out", str(out), *TINY_WORDS]) == 0
    return out


def test_word_training_logs_accuracy(word_run, capsys):
    ckpt = checkpoint.load(word_run / "last.pt")
    assert ckpt["version"] == 2 and ckpt["config"]["tokens"] == "word" and ckpt["config"]["data"] == HUMAN_NUMBERS
    assert ckpt["vocab"] == sorted(set(human_numbers_text().split()))
    rows = [r for r in read_log(word_run / "log.csv") if r["val_acc"]]
    assert [int(r["step"]) for r in rows] == [60, 120]
    accs = [float(r["val_acc"]) for r in rows]
    assert all(0 <= a <= 1 for a in accs) and accs[-1] > 0.3  # chance is 1/30; "." and "thousand" come easily
    assert (word_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_line_reports_accuracy(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), *TINY_WORDS, "--steps", "20", "--val-every", "20"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("finished at step 20") and " nats/word " in last
    acc = float(last.split(" acc ")[1].split(",")[0])
    row = [r for r in read_log(tmp_path / "log.csv") if r["val_acc"]][-1]
    assert acc == pytest.approx(float(row["val_acc"]), abs=1e-4)


def test_word_sampling(word_run):
    model, vocab = load_model(word_run / "best.pt")
    assert vocab.kind == "word" and len(vocab) == 30
    text = generate(model, vocab, "seven thousand", 60, temperature=1.0, seed=3)
    words = text.split()
    assert len(words) == 60 and set(words) <= set(vocab.tokens)
    assert text.startswith(" ")  # continues the prompt after a space
    assert vocab.encode("seven thousand" + text).shape == (62,)  # the rendered text splits back into its words
    assert generate(model, vocab, "seven thousand", 60, temperature=1.0, seed=3) == text
    assert generate(model, vocab, "seven thousand", 60, temperature=1.0, seed=4) != text
    assert generate(model, vocab, "one", 30, temperature=1.0, top_k=1, seed=5) == generate(
        model, vocab, "one", 30, temperature=0)


def test_word_separators_follow_the_previous_word(word_run):
    model, vocab = load_model(word_run / "best.pt")
    pieces: list[str] = []
    generate(model, vocab, "one .", 40, temperature=1.0, seed=1, on_char=pieces.append)
    previous = "."
    for piece in pieces:
        word = piece.lstrip(" \n")
        assert piece == ("\n" if previous == "." else " ") + word and word in vocab.index
        previous = word
    empty: list[str] = []
    generate(model, vocab, "", 5, seed=1, on_char=empty.append)
    assert not empty[0][0].isspace()  # nothing to separate from after an empty prompt


def test_word_greedy_matches_a_full_sequence(word_run):
    model, vocab = load_model(word_run / "best.pt")
    prompt = "two thousand one . two thousand"
    text = generate(model, vocab, prompt, 25, temperature=0)
    ids = vocab.encode(prompt + text)
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    n = len(prompt.split())
    assert logits[0, n - 1:].argmax(-1).tolist() == ids[n:].tolist()


def test_cli_word_sample_and_unknown_words(word_run, capsys):
    argv = ["sample", "--checkpoint", str(word_run / "best.pt"), "--prompt", "nine thousand", "--length", "12",
            "--seed", "1", "--top-k", "5", "--temperature", "0.8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("nine thousand ") and out.endswith("\n") and len(out.split()) == 2 + 12
    assert main(argv) == 0 and capsys.readouterr().out == out
    assert main(["sample", "--checkpoint", str(word_run / "best.pt"), "--prompt", "nine thousand and eleventy",
                 "--length", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "2 word(s)" in captured.err and "'and', 'eleventy'" in captured.err


def test_word_checkpoint_resumes_and_refuses_another_token_kind(word_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY_WORDS, "--steps", "30", "--stop-after", "10"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--tokens", "char", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--tokens char differs from the checkpoint's word" in err and err.count("\n") == 1
    other = tmp_path / "other.txt"
    other.write_text("red green blue " * 400, encoding="utf-8")
    assert main(["train", "--out", str(out), "--resume", "--data", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vocabulary (3 words) differs from the checkpoint's (30)" in err and err.count("\n") == 1
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert checkpoint.load(out / "last.pt")["step"] == 30


def test_tied_weights_round_trip(tmp_path):
    assert main(["train", "--out", str(tmp_path), *TINY_WORDS, "--steps", "20", "--val-every", "20",
                 "--tie-weights", "--embed-dropout", "0.1", "--ar", "1", "--tar", "1"]) == 0
    ckpt = checkpoint.load(tmp_path / "best.pt")
    assert ckpt["config"]["tie_weights"] and ckpt["config"]["embed"] == ckpt["config"]["hidden"] == 32
    model, _ = load_model(tmp_path / "best.pt")
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, ckpt["model"]["head.weight"])


def test_tied_weights_need_equal_widths(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), *TINY_WORDS, "--tie-weights", "--embed", "16"]) == 2
    err = capsys.readouterr().err
    assert "--tie-weights needs --embed equal to --hidden" in err and err.count("\n") == 1


def test_console_script_word_prompt_error_has_no_traceback(word_run):
    proc = subprocess.run([sys.executable, "-m", "fastrnn.apps.cli", "sample", "--checkpoint",
                           str(word_run / "best.pt"), "--prompt", "zero"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "'zero'" in proc.stderr


def test_data_error_for_missing_human_numbers_file_name(tmp_path, capsys):
    """A path that merely ends in human_numbers is a file path, not the generated corpus."""
    missing = tmp_path / "human_numbers"
    assert main(["train", "--out", str(tmp_path / "o"), "--data", str(missing), "--quiet"]) == 2
    assert f"data file not found: {missing}" in capsys.readouterr().err
