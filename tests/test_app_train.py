"""Char-LM training: it learns, it resumes exactly, it runs under DDP, and bad input fails cleanly."""

from __future__ import annotations

import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastrnn.apps import checkpoint
from fastrnn.apps.cli import main
from fastrnn.apps.data import load_text
from fastrnn.apps.errors import CheckpointError
from fastrnn.apps.metrics import read_log

#: a tiny, fast configuration (steps-only budget, so runs are repeatable); one fp32 layer whatever the CPU default
TINY = ["--layers", "1", "--hidden", "48", "--embed", "16", "--dropout", "0", "--batch-size", "8", "--seq-len", "32",
        "--dtype", "fp32", "--max-minutes", "0", "--log-every", "10", "--quiet"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--out", str(out), *TINY, *extra])


def _vals(out: Path) -> list[float]:
    return [float(r["val_loss"]) for r in read_log(out / "log.csv") if r["val_loss"]]


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastrnn.apps.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def small_text(tmp_path_factory) -> Path:
    """4,000 characters of Shakespeare: streams wrap around (state resets) within a short run."""
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(load_text()[:4000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A few hundred steps on the bundled corpus with a tiny model."""
    out = tmp_path_factory.mktemp("trained")
    assert _train(out, "--steps", "300", "--val-every", "50", "--lr", "1e-2", "--min-lr", "1e-3",
                  "--warmup", "20") == 0
    return out


def test_training_lowers_validation_loss(trained):
    vals = _vals(trained)
    assert len(vals) == 6
    # an untrained model scores ~ln(65) = 4.17 nats/char; 300 tiny steps must get far below it
    assert vals[-1] < math.log(65) - 1.4, vals
    assert vals[-1] < vals[0] - 0.3, vals
    for name in ("best.pt", "last.pt", "log.csv", "loss.png"):
        assert (trained / name).is_file(), name
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = checkpoint.load(trained / "last.pt")
    assert ckpt["step"] == 300 and ckpt["config"]["hidden"] == 48 and len(ckpt["vocab"]) == 65
    assert math.isclose(ckpt["best_val"], min(vals), rel_tol=1e-5)
    assert not list(trained.glob("*.tmp")), "temp files left behind"


def test_resume_continues_exactly(tmp_path, small_text):
    common = ["--data", str(small_text), "--batch-size", "4", "--seq-len", "16", "--steps", "80", "--val-every",
              "20", "--layers", "2", "--dropout", "0.1"]  # 2 layers + dropout: the RNG state must resume too
    assert _train(tmp_path / "whole", *common) == 0
    assert _train(tmp_path / "split", *common, "--stop-after", "30") == 0
    assert checkpoint.load(tmp_path / "split" / "last.pt")["step"] == 30
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--quiet"]) == 0
    a, b = (checkpoint.load(tmp_path / d / "last.pt") for d in ("whole", "split"))
    assert a["step"] == b["step"] == 80
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for sa, sb in zip(a["streams"][0]["state"], b["streams"][0]["state"], strict=True):
        assert torch.equal(sa, sb)
    assert _vals(tmp_path / "whole")[-1] == _vals(tmp_path / "split")[-1]
    steps = [int(r["step"]) for r in read_log(tmp_path / "split" / "log.csv") if r["train_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 80  # the log continues without duplicate rows


def test_torch_backend_checkpoint_loads_into_fastrnn(tmp_path, small_text):
    """--backend torch trains torch.nn's module; its checkpoint resumes on the fastrnn module."""
    args = ["--data", str(small_text), "--batch-size", "4", "--seq-len", "16", "--steps", "20", "--val-every", "10"]
    assert _train(tmp_path, *args, "--backend", "torch", "--stop-after", "10") == 0
    assert main(["train", "--out", str(tmp_path), "--resume", "--backend", "auto", "--quiet"]) == 0
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 20


# ----------------------------------------------------------------------------------------------- bad input


def test_refuses_to_overwrite_a_run(trained, capsys):
    assert _train(trained, "--steps", "10") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastrnn: error:") and "--resume" in err and "\n" not in err
    assert checkpoint.load(trained / "last.pt")["step"] == 300  # nothing lost


@pytest.mark.parametrize(
    "option, message",
    [(["--hidden", "64"], "--hidden 64 differs from the checkpoint's 48"),
     (["--cell", "gru"], "--cell gru differs"),
     (["--seq-len", "16"], "--seq-len 16 differs")],
)
def test_resume_with_another_architecture(trained, capsys, option, message):
    assert main(["train", "--out", str(trained), "--resume", "--quiet", *option]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_resume_with_another_vocabulary(trained, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("abcdefghij\n" * 2000, encoding="utf-8")
    assert main(["train", "--out", str(trained), "--resume", "--data", str(other), "--quiet"]) == 2
    assert "vocabulary" in capsys.readouterr().err


def test_corrupt_and_truncated_checkpoints(trained, tmp_path, capsys):
    good = (trained / "last.pt").read_bytes()
    cases = {"truncated.pt": good[: len(good) // 2], "garbage.pt": os.urandom(4096), "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            checkpoint.load(tmp_path / name)
        assert main(["train", "--out", str(tmp_path / "o"), "--resume", str(tmp_path / name), "--quiet"]) == 2
        assert "corrupt or truncated" in capsys.readouterr().err
    torch.save({"something": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fastrnn language-model checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "absent.pt")


class _Exploit:
    """Unpickling this would create a file; a code-free load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"format": "fastrnn-charlm", "version": 1, "x": _Exploit(marker)}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [(None, "data file not found"), (b"", "data file is empty"), (b"\x00\x01\x02\x03", "looks binary"),
     (b"\xff\xfe\x00a", "looks binary"), (b"na\xefve", "not valid UTF-8"), (b"short text\n", "too short")],
    ids=["missing", "empty", "binary", "utf16", "latin1", "short"],
)
def test_bad_data_exits_with_one_line(tmp_path, capsys, content, message):
    data = tmp_path / "d.txt"
    if content is not None:
        data.write_bytes(content)
    assert _train(tmp_path / "out", "--data", str(data), "--steps", "5") == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrnn: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "last.pt").exists()


def test_user_error_has_no_traceback(tmp_path):
    proc = _run_cli("train", "--out", str(tmp_path), "--data", str(tmp_path / "nope.txt"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"fastrnn: error: data file not found: {tmp_path / 'nope.txt'}"
    assert "Traceback" not in proc.stderr


def test_bf16_autocast_trains_on_cpu(tmp_path, small_text):
    """--dtype bf16 on the CPU: bf16 autocast in training and validation, fp32 weights and checkpoints."""
    from fastrnn.apps.sample import generate, load_model

    assert _train(tmp_path, "--data", str(small_text), "--batch-size", "4", "--seq-len", "16", "--steps", "40",
                  "--val-every", "20", "--lr", "1e-2", "--warmup", "5", "--dtype", "bf16", "--device", "cpu") == 0
    vals = _vals(tmp_path)
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals) and vals[-1] < math.log(65) - 0.5, vals
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert ckpt["config"]["dtype"] == "bf16"
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())
    model, vocab = load_model(tmp_path / "best.pt")
    assert len(generate(model, vocab, "ROMEO:", 30, seed=1)) == 30


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastrnn.apps.cli", "train", "--out", str(out), *TINY, "--steps", "1000000",
         "--val-every", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # wait until a few steps are logged
            log = out / "log.csv"
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    step = checkpoint.load(out / "last.pt")["step"]
    assert step >= 20
    assert not list(out.glob("*.tmp"))
    assert main(["train", "--out", str(out), "--resume", "--steps", str(step + 5), "--quiet"]) == 0
    assert checkpoint.load(out / "last.pt")["step"] == step + 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path, small_text):
    out = tmp_path / "ddp"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    for _ in range(3):  # loopback only; another job may grab the free port before torchrun binds it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "fastrnn.apps.cli", "train", "--out",
               str(out), "--data", str(small_text), *TINY, "--batch-size", "4", "--seq-len", "16", "--steps", "40",
               "--val-every", "20", "--log-every", "5", "--warmup", "5", "--overwrite"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("finished at step 40") == 1  # only rank 0 prints
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["streams"]) == 2 and ckpt["step"] == 40
    # each process carried its own streams' state
    assert not torch.equal(ckpt["streams"][0]["state"][0], ckpt["streams"][1]["state"][0])
    vals = _vals(out)
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals) and vals[-1] < math.log(65)


def test_thread_tuner_keeps_the_faster_count(monkeypatch):
    from fastrnn.apps.threads import ThreadTuner

    current = {"n": 2}
    monkeypatch.setattr(torch, "get_num_threads", lambda: current["n"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: current.update(n=n))
    tuner = ThreadTuner([1, 2], probe_steps=3, every_s=10.0)
    cost = {1: 0.2, 2: 0.6}  # a busy machine: all cores is slower
    now = 0.0
    for _ in range(6):  # probe both counts
        tuner.before_step(now)
        now += cost[current["n"]]
        tuner.after_step(cost[current["n"]], now)
    assert tuner.chosen == 1 and current["n"] == 1
    tuner.before_step(now + 1.0)
    assert current["n"] == 1  # no new probe before every_s has passed
    cost = {1: 0.2, 2: 0.1}  # the machine got quiet: the next probe switches back
    now += 20.0
    for _ in range(6):
        tuner.before_step(now)
        now += cost[current["n"]]
        tuner.after_step(cost[current["n"]], now)
    assert tuner.chosen == 2 and current["n"] == 2


def test_triton_backend_without_cuda_is_a_user_error(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: --backend triton is valid here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _train(tmp_path, "--backend", "triton", "--steps", "5") == 2
    err = capsys.readouterr().err
    assert "--backend triton needs a CUDA device" in err and err.count("\n") == 1


def test_an_interrupted_write_keeps_the_old_checkpoint(trained, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    path.write_bytes((trained / "last.pt").read_bytes())
    before = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"config": {}, "vocab": "ab", "model": {}, "step": 1}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ------------------------------------------------------------------------------------ accuracy and penalties


class _Rule(torch.nn.Module):
    """A fake model with fixed logits: after token 0 it favours 1, after 1 it favours 2, after 2 it ties 0 and 1."""

    def forward(self, x, state=None):
        table = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [3.0, 3.0, 0.0]])  # [V, V]: row = input token
        return table[x], state


def test_accuracy_against_a_hand_count():
    from fastrnn.apps.data import StreamBatches
    from fastrnn.apps.train import evaluate

    ids = torch.tensor([0, 1, 2, 0, 1, 1, 2, 1, 0, 2, 2])  # 11 tokens, one stream, chunks of 4
    batches = StreamBatches(ids, batch_size=1, seq_len=4)
    # input -> target, predicted (the first of tied logits wins, so after 2 the guess is 0):
    # 0->1 ok, 1->2 ok, 2->0 ok, 0->1 ok, 1->1 no, 1->2 ok, 2->1 no, 1->0 no, 0->2 no, 2->2 no
    loss, acc = evaluate(_Rule(), batches, torch.device("cpu"), amp=False)
    assert acc == pytest.approx(5 / 10)
    logits = _Rule()(ids[:-1])[0]
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, ids[1:]).item(), rel=1e-6)


def test_activation_penalty():
    from fastrnn.apps.model import activation_penalty

    h = torch.tensor([[[1.0, -1.0], [3.0, 1.0], [3.0, 2.0]]])  # [B=1, T=3, H=2]
    assert activation_penalty(h, 0.0, 0.0).item() == 0.0
    assert activation_penalty(h, 2.0, 0.0).item() == pytest.approx(2.0 * (1 + 1 + 9 + 1 + 9 + 4) / 6)
    assert activation_penalty(h, 0.0, 1.0).item() == pytest.approx((4 + 4 + 0 + 1) / 4)


def test_version_1_checkpoint_still_loads_and_resumes(trained, tmp_path, capsys):
    """A checkpoint from before word-level models (format version 1, no ``tokens``) is a char checkpoint."""
    from fastrnn.apps.sample import generate, load_model

    ckpt = torch.load(trained / "last.pt", weights_only=True)
    ckpt["version"] = 1
    del ckpt["config"]["tokens"]
    for key in ("embed_dropout", "tie_weights", "ar", "tar"):
        del ckpt["config"][key]
    out = tmp_path / "old"
    out.mkdir()
    torch.save(ckpt, out / "last.pt")
    model, vocab = load_model(out / "last.pt")
    assert vocab.kind == "char" and len(generate(model, vocab, "ROMEO:", 20, seed=1)) == 20
    assert main(["train", "--out", str(out), "--resume", "--steps", "310", "--quiet"]) == 0
    assert checkpoint.load(out / "last.pt")["step"] == 310


def test_accuracy_column_and_old_log_names(tmp_path, small_text):
    out = tmp_path / "run"
    common = ["--data", str(small_text), "--batch-size", "4", "--seq-len", "16", "--steps", "20", "--val-every", "10"]
    assert _train(out, *common, "--stop-after", "10") == 0
    rows = read_log(out / "log.csv")
    assert [r["val_acc"] != "" for r in rows].count(True) == 1 and 0 < float(rows[-1]["val_acc"]) < 1
    # a log written before the columns were renamed (chars, val_bpc, chars_per_s) keeps its values on resume
    text = (out / "log.csv").read_text().replace("tokens_per_s", "chars_per_s").replace("val_bits", "val_bpc")
    (out / "log.csv").write_text(text.replace("epoch,tokens,", "epoch,chars,"))
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    rows = read_log(out / "log.csv")
    assert rows[0]["tokens"] == str(10 * 4 * 16) and rows[0]["tokens_per_s"] and rows[-1]["step"] == "20"
    assert all(r["val_bits"] for r in rows if r["val_loss"])


def test_cpu_default_depends_on_native_bf16(monkeypatch):
    from fastrnn.apps import config

    monkeypatch.setattr(config, "cpu_has_bf16", lambda: True)
    assert config.defaults_for("cpu") == config.CPU_DEFAULTS and config.CPU_DEFAULTS.dtype == "bf16"
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: False)
    fallback = config.defaults_for("cpu")
    assert fallback == config.CPU_FP32_DEFAULTS and fallback.dtype == "fp32"
    assert config.defaults_for("cuda") == config.GPU_DEFAULTS  # the GPU default does not ask the CPU
