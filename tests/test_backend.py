"""Backend selection: backend= argument, $FASTRNN_BACKEND, auto, and the errors of a bad choice."""

from __future__ import annotations

import pytest
import torch
from parity import has_triton_recurrence, one_thread

import fastrnn
from fastrnn import backend as B
from fastrnn import functional, reference


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(B.ENV_VAR, raising=False)


@pytest.fixture
def spies(monkeypatch):
    """Record which implementation runs: torch's native operators or fastrnn's reference loop."""
    calls: list[str] = []

    def wrap(name, fn):
        def spy(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return spy

    for op in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        monkeypatch.setattr(torch, op, wrap("torch", getattr(torch, op)))
    for mode, fn in list(functional._TORCH_CELLS.items()):
        monkeypatch.setitem(functional._TORCH_CELLS, mode, wrap("torch", fn))
    monkeypatch.setattr(reference, "recurrence", wrap("reference", reference.recurrence))
    return calls


def run_all(backend=None, dtype=torch.float32):
    """One forward of every module kind; returns nothing, the spies record what ran."""
    x = torch.randn(3, 2, 4, dtype=dtype)
    for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):
        cls(4, 5, dtype=dtype, backend=backend)(x)
    fastrnn.RNN(4, 5, nonlinearity="relu", dtype=dtype, backend=backend)(x)
    for cls in (fastrnn.LSTMCell, fastrnn.GRUCell, fastrnn.RNNCell):
        cls(4, 5, dtype=dtype, backend=backend)(x[0])


def test_resolve_table(monkeypatch):
    assert B.requested(None) == "auto"
    assert B.resolve(None, CPU, torch.float32) == "torch"
    assert B.resolve("auto", CPU, torch.float32) == "torch"
    assert B.resolve("reference", CPU, torch.float16) == "reference"
    assert B.resolve("torch", CPU, torch.float64) == "torch"
    monkeypatch.setenv(B.ENV_VAR, "reference")
    assert B.requested(None) == "reference"
    assert B.resolve(None, CPU, torch.float32) == "reference"
    assert B.resolve("torch", CPU, torch.float32) == "torch", "an explicit argument beats the environment"
    monkeypatch.setenv(B.ENV_VAR, "")
    assert B.resolve(None, CPU, torch.float32) == "torch", "an empty variable means auto"


def test_auto_on_cpu_runs_torch_native(spies):
    run_all("auto")
    assert spies == ["torch"] * 7


def test_default_is_auto(spies):
    run_all(None)
    assert spies == ["torch"] * 7


def test_reference_backend_runs_the_reference_loop(spies):
    run_all("reference")
    assert spies == ["reference"] * 7


def test_env_var_is_honoured_and_read_per_call(monkeypatch, spies):
    lstm = fastrnn.LSTM(4, 5)
    x = torch.randn(3, 2, 4)
    lstm(x)
    monkeypatch.setenv(B.ENV_VAR, "reference")
    lstm(x)
    run_all(None)
    assert spies == ["torch"] + ["reference"] * 8


def test_explicit_backend_beats_env_var(monkeypatch, spies):
    monkeypatch.setenv(B.ENV_VAR, "reference")
    run_all("torch")
    assert spies == ["torch"] * 7
    monkeypatch.setenv(B.ENV_VAR, "torch")
    spies.clear()
    run_all("reference")
    assert spies == ["reference"] * 7


@pytest.mark.parametrize("bad", ["cudnn", "Triton", "", 1])
def test_bad_backend_name_raises_value_error_at_construction(bad):
    for make in (lambda: fastrnn.LSTM(3, 4, backend=bad), lambda: fastrnn.GRUCell(3, 4, backend=bad),
                 lambda: fastrnn.from_torch(torch.nn.RNN(3, 4), backend=bad)):
        with pytest.raises(ValueError, match="backend"):
            make()


def test_bad_env_var_raises_value_error_at_forward(monkeypatch):
    lstm = fastrnn.LSTM(3, 4)  # construction does not read the environment
    monkeypatch.setenv(B.ENV_VAR, "cudnn")
    with pytest.raises(ValueError, match=B.ENV_VAR):
        lstm(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match=B.ENV_VAR):
        fastrnn.GRUCell(3, 4)(torch.randn(1, 3))


def test_triton_on_cpu_without_interpreter_raises_runtime_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lstm = fastrnn.LSTM(3, 4, backend="triton")  # fine to build: the device is only known at forward
    cell = fastrnn.GRUCell(3, 4, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        lstm(torch.randn(2, 1, 3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        cell(torch.randn(1, 3))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        lstm(torch.randn(2, 1, 3))


def test_triton_float64_runs_the_reference_loop(monkeypatch, spies):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert B.resolve("triton", CPU, torch.float64) == "reference"
    run_all("triton", dtype=torch.float64)
    assert spies == ["reference"] * 7


@pytest.mark.skipif(not has_triton_recurrence(), reason="fastrnn.ops.recurrence not written yet")
def test_triton_backend_calls_the_triton_recurrence(monkeypatch, spies):
    import fastrnn.ops

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    original = fastrnn.ops.recurrence
    monkeypatch.setattr(fastrnn.ops, "recurrence", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    fastrnn.GRU(3, 4, backend="triton")(torch.randn(2, 1, 3))
    fastrnn.LSTMCell(3, 4, backend="triton")(torch.randn(1, 3))
    assert calls == ["gru", "lstm"] and spies == []


def test_auto_while_compiling_uses_the_reference(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert B.resolve("auto", CPU, torch.float32) == "reference"
    assert B.resolve("torch", CPU, torch.float32) == "torch"


def test_module_keeps_backend_attribute():
    assert fastrnn.LSTM(3, 4).backend is None
    assert fastrnn.LSTM(3, 4, backend="reference").backend == "reference"
    assert fastrnn.RNNCell(3, 4, backend="torch").backend == "torch"
    assert set(fastrnn.BACKENDS) == {"auto", "reference", "triton", "torch"}
