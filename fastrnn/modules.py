"""Drop-in replacements for torch.nn.RNN / LSTM / GRU and RNNCell / LSTMCell / GRUCell.

Plain ``nn.Module``s (not subclasses of torch.nn's classes, which graph-break under torch.compile) with
torch.nn's constructor, parameter names, shapes, registration order and initialisation, so state dicts and
optimizer state dicts interchange both ways. Argument checking mirrors torch.nn: the same exception class
at the same point (construction or forward). The computation is in :mod:`fastrnn.functional`.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import functional
from fastrnn.backend import check_backend
from fastrnn.reference import GATES

_TORCH_MODE = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}


def _check_type(name: str, value, kind: type) -> None:
    # a plain isinstance, as torch.nn does: True is accepted where an int is expected
    if not isinstance(value, kind):
        raise TypeError(f"{name} should be of type {kind.__name__}, got: {type(value).__name__}")


def _reject_extra_kwargs(cls_name: str, kwargs: dict) -> None:
    """RNN and GRU take torch.nn's keywords only; proj_size gets torch.nn's own ValueError."""
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if kwargs:
        raise TypeError(f"{cls_name}.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")


def _packed_lstm_hx(hx, input: PackedSequence):
    """hx of an LSTM given a PackedSequence, checked the way torch.nn.LSTM treats it.

    torch.nn.LSTM runs none of its own argument checks on a PackedSequence: an unsorted one's permutation is
    applied to ``hx[0]`` and ``hx[1]`` (a third state is dropped, a single tensor is indexed along its first
    dimension), and the ATen operator's errors then decide the exception class. Where that class differs from
    the padded path's (a Tensor hx with sorted data: TypeError; a state of fewer than 3 dimensions: IndexError;
    mismatched data dtype: RuntimeError, in ``_check_input``), fastrnn raises the same class, with a message
    naming the argument; everything else reaches the shared checks.
    """
    if isinstance(hx, Tensor):
        if input.sorted_indices is None:
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) for a PackedSequence input, got a Tensor of "
                            f"shape {list(hx.shape)}")
        hx = tuple(hx)  # what torch.nn's hx[0], hx[1] read
    if input.sorted_indices is not None:
        hx = tuple(hx)[:2]  # torch.nn permutes hx[0] and hx[1] only
    if len(hx) != 2:
        return hx  # the shared count check raises torch.nn's class
    for i, state in enumerate(hx):
        if isinstance(state, Tensor) and state.dim() < 3:
            raise IndexError(
                f"LSTM: expected hidden[{i}] to be 3-D (num_layers * num_directions, batch, size) for a "
                f"PackedSequence input, got {state.dim()}-D of shape {list(state.shape)}"
            )
    return hx


class RNNBase(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU` (cell-agnostic)."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        try:  # torch.nn converts with float() first: None is a TypeError, "abc" a ValueError
            float(dropout)
        except (TypeError, ValueError) as e:
            raise type(e)(f"dropout should be a number in range [0, 1], got dropout={dropout!r}") from None
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element "
                f"being zeroed, got dropout={dropout!r}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        _check_type("bias", bias, bool)
        _check_type("batch_first", batch_first, bool)
        _check_type("input_size", input_size, int)
        if input_size <= 0:
            raise ValueError(f"input_size must be greater than zero, got input_size={input_size}")
        _check_type("hidden_size", hidden_size, int)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be greater than zero, got hidden_size={hidden_size}")
        try:
            nonpositive = num_layers <= 0
        except TypeError:
            raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}") from None
        if nonpositive:
            raise ValueError(f"num_layers must be greater than zero, got num_layers={num_layers}")
        if proj_size < 0:
            raise ValueError(
                f"proj_size should be a positive integer or zero to disable projections, got {proj_size}"
            )
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} >= "
                f"hidden_size={hidden_size}"
            )
        try:  # torch.nn fails here, in range(num_layers), for a float
            operator.index(num_layers)
        except TypeError:
            raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}") from None
        self._mode = mode  # fastrnn's name of the recurrence ("lstm", "gru", "rnn_tanh", "rnn_relu")
        self.mode = _TORCH_MODE[mode]  # torch.nn's ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = check_backend(backend)

        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        gate_size = GATES[mode] * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {"weight_ih": (gate_size, layer_input), "weight_hh": (gate_size, real_hidden)}
                if bias:
                    shapes |= {"bias_ih": (gate_size,), "bias_hh": (gate_size,)}
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                names = []
                for kind, shape in shapes.items():
                    setattr(self, kind + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(kind + suffix)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # -- torch.nn compatibility ---------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Kept for API compatibility: fastrnn needs no cuDNN flat weight buffer, so this does nothing."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    def layer_weights(self) -> list[functional.LayerWeights]:
        """Weights per (layer, direction) as ``(w_ih, w_hh, b_ih, b_hh, w_hr)``, the functional API's format."""
        out = []
        for names in self._all_weights:
            suffix = names[0][len("weight_ih"):]
            out.append(tuple(getattr(self, kind + suffix, None)
                             for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")))
        return out

    # -- forward ------------------------------------------------------------------------------------------
    @property
    def _num_states(self) -> int:
        return 2 if self._mode == "lstm" else 1

    def _state_sizes(self, batch: int) -> list[tuple[int, int, int]]:
        directions = 2 if self.bidirectional else 1
        h = (self.num_layers * directions, batch, self.proj_size or self.hidden_size)
        return [h, (self.num_layers * directions, batch, self.hidden_size)][: self._num_states]

    def _check_input(self, input: Tensor, packed: bool) -> None:
        weight = self.weight_ih_l0
        if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            if packed and self._mode == "lstm":  # torch.nn.LSTM leaves it to the ATen operator (see _packed_lstm_hx)
                raise RuntimeError(
                    f"LSTM: PackedSequence data dtype ({input.dtype}) does not match weight dtype "
                    f"({weight.dtype}); convert the data before packing, or the model: model.to({input.dtype})"
                )
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"
            )
        expected_dim = 2 if packed else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def _check_states(self, input: Tensor, states: list[Tensor], batch: int) -> None:
        for i, (state, expected) in enumerate(zip(states, self._state_sizes(batch), strict=True)):
            name = "hidden" if self._num_states == 1 else f"hidden[{i}]"
            if tuple(state.shape) != expected:
                raise RuntimeError(f"Expected {name} size {expected}, got {list(state.shape)}")
            if state.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
                raise RuntimeError(f"Expected {name} dtype {input.dtype} (the input's), got {state.dtype}")
            if state.device != input.device:
                raise RuntimeError(
                    f"Expected {name} on device {input.device} (the input's), got {state.device}"
                )

    def forward(self, input: Tensor | PackedSequence, hx=None):
        """Run the recurrent network; arguments and results exactly as torch.nn's module of the same name.

        Args:
            input: [T, B, I] ([B, T, I] with batch_first), unbatched [T, I], or a PackedSequence.
            hx: h0 [L*D, B, P] (unbatched [L*D, P]), or ``(h0, c0)`` for LSTM; zeros when None.

        Returns:
            ``(output, h_n)``, or ``(output, (h_n, c_n))`` for LSTM.
        """
        name = {"lstm": "LSTM", "gru": "GRU"}.get(self._mode, "RNN")
        lstm = self._mode == "lstm"
        packed = isinstance(input, PackedSequence)
        if lstm and packed and hx is not None:
            hx = _packed_lstm_hx(hx, input)
        states = None if hx is None else (list(hx) if lstm else [hx])
        if lstm and states is not None and len(states) != 2:
            if len(states) < 2:  # torch.nn indexes hx[1]
                raise IndexError(f"LSTM: hx must be a tuple (h_0, c_0), got {len(states)} tensor(s)")
            raise RuntimeError(f"LSTM expects two hidden states (h_0, c_0) in hx, got {len(states)}")
        batched = True
        if packed:
            data = input.data
            batch = int(input.batch_sizes[0])
            if states is not None and input.sorted_indices is not None:
                # torch.nn applies the sorting permutation to hx before checking its size, which keeps the
                # first `batch` rows of a larger hx: accept what it accepts
                states = [s.narrow(1, 0, batch) if s.dim() == 3 and s.size(1) > batch else s for s in states]
        else:
            data = input
            if input.dim() not in (2, 3):
                suffix = " tensor" if name == "RNN" else ""
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{suffix} instead")
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if states is not None:
                want = 3 if batched else 2
                if any(s.dim() != want for s in states):
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    dims = ", ".join(f"{s.dim()}-D" for s in states)
                    what = f"hx and cx should also be {want}-D but got ({dims}) tensors" if lstm else \
                        f"hx should also be {want}-D but got {dims} tensor"
                    raise RuntimeError(f"For {kind} input, {what}")
                if not batched:
                    states = [s.unsqueeze(1) for s in states]
            if not batched:
                data = input.unsqueeze(batch_dim)
            batch = data.size(batch_dim)
        if states is None:
            states = [torch.zeros(size, dtype=data.dtype, device=data.device) for size in self._state_sizes(batch)]
        self._check_input(data, packed)
        self._check_states(data, states, batch)

        out, hidden = functional.rnn(
            self._mode,
            input if packed else data,
            tuple(states) if lstm else states[0],
            self.layer_weights(),
            num_layers=self.num_layers,
            dropout=self.dropout,
            training=self.training,
            bidirectional=self.bidirectional,
            batch_first=self.batch_first,
            backend=self.backend,
        )
        if not batched:
            out = out.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
        return out, hidden


class RNN(RNNBase):
    """Elman RNN with tanh or ReLU non-linearity; a drop-in for :class:`torch.nn.RNN`.

    Args:
        input_size, hidden_size, num_layers, nonlinearity ('tanh' | 'relu'), bias, batch_first, dropout,
        bidirectional, device, dtype: as torch.nn.RNN.
        backend: ``auto | reference | triton | torch``, or None to read $FASTRNN_BACKEND per call.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        **kwargs,
    ) -> None:
        _reject_extra_kwargs("RNN", kwargs)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend)


class LSTM(RNNBase):
    """Long short-term memory RNN, optionally with projections; a drop-in for :class:`torch.nn.LSTM`.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device,
        dtype: as torch.nn.LSTM.
        backend: ``auto | reference | triton | torch``, or None to read $FASTRNN_BACKEND per call.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend)


class GRU(RNNBase):
    """Gated recurrent unit RNN; a drop-in for :class:`torch.nn.GRU`.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype:
        as torch.nn.GRU.
        backend: ``auto | reference | triton | torch``, or None to read $FASTRNN_BACKEND per call.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        **kwargs,
    ) -> None:
        _reject_extra_kwargs("GRU", kwargs)
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend)


class RNNCellBase(nn.Module):
    """Shared machinery of the single-step cells (cell-agnostic)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 backend: str | None = None) -> None:
        super().__init__()
        # fastrnn's name of the recurrence ("lstm", "gru"), or "rnn" for RNNCell, whose tanh/relu choice is read
        # from ``nonlinearity`` at each forward (_cell_mode). Private: torch.nn's cells have no ``mode``.
        self._mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = check_backend(backend)
        factory = {"device": device, "dtype": dtype}
        gates = GATES.get(mode, 1) * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((gates, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gates, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def _cell_mode(self) -> str:
        return self._mode

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def forward(self, input: Tensor, hx=None):
        """One step. input [B, I] or unbatched [I]; hx h [B, H] (or ``(h, c)`` for LSTMCell), zeros if None.

        Returns h' [B, H] (``(h', c')`` for LSTMCell), unbatched when the input was.
        """
        name = type(self).__name__
        lstm = self._mode == "lstm"
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None if hx is None else (list(hx) if lstm else [hx])
        if states is not None:
            for i, state in enumerate(states):
                if state.dim() not in (1, 2):
                    what = f"hx[{i}]" if lstm else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {state.dim()}D instead")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if states is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = [zeros] * (2 if lstm else 1)
        elif not batched:
            states = [states[0].unsqueeze(0), states[1].unsqueeze(0)] if lstm else [states[0].unsqueeze(0)]
        if any(s.dim() != 2 for s in states):
            raise RuntimeError(f"{name}: hidden state must be 2-D for a batched (2-D) input, "
                               f"got {[s.dim() for s in states]}-D")
        out = functional.cell(self._cell_mode(), input, tuple(states) if lstm else states[0], self.weight_ih,
                              self.weight_hh, self.bias_ih, self.bias_hh, backend=self.backend)
        if not batched:
            out = tuple(o.squeeze(0) for o in out) if lstm else out.squeeze(0)
        return out


class RNNCell(RNNCellBase):
    """Elman RNN cell (tanh or relu); a drop-in for :class:`torch.nn.RNNCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str | None = None) -> None:
        # like torch.nn.RNNCell, an unknown nonlinearity is only rejected when forward runs
        self.nonlinearity = nonlinearity
        super().__init__("rnn", input_size, hidden_size, bias, device, dtype, backend)

    def _cell_mode(self) -> str:
        # checked when forward runs (after the shape checks), like torch.nn.RNNCell
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity!r}, expected 'tanh' or 'relu'")
        return "rnn_" + self.nonlinearity


class LSTMCell(RNNCellBase):
    """LSTM cell; a drop-in for :class:`torch.nn.LSTMCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str | None = None) -> None:
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype, backend)


class GRUCell(RNNCellBase):
    """GRU cell; a drop-in for :class:`torch.nn.GRUCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str | None = None) -> None:
        super().__init__("gru", input_size, hidden_size, bias, device, dtype, backend)


_FROM_TORCH = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell,
               nn.RNNCell: RNNCell}
_TO_TORCH = {v: k for k, v in _FROM_TORCH.items()}


def _config(module: nn.Module) -> dict:
    if isinstance(module, (nn.RNNCellBase, RNNCellBase)):
        cfg = dict(input_size=module.input_size, hidden_size=module.hidden_size, bias=module.bias)
    else:
        cfg = dict(input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
                   bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                   bidirectional=module.bidirectional)
        if isinstance(module, (nn.LSTM, LSTM)):
            cfg["proj_size"] = module.proj_size
    if isinstance(module, (nn.RNN, nn.RNNCell, RNN, RNNCell)):
        cfg["nonlinearity"] = module.nonlinearity
    return cfg


def _convert(module: nn.Module, table: dict, **extra) -> nn.Module:
    cls = next((table[k] for k in table if type(module) is k), None)
    if cls is None:
        raise TypeError(f"cannot convert {type(module).__name__}: expected one of "
                        f"{sorted(k.__name__ for k in table)}")
    weight = next(module.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout-with-one-layer warning was already given for module
        new = cls(**_config(module), device=weight.device, dtype=weight.dtype, **extra)
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new


def from_torch(module: nn.Module, *, backend: str | None = None) -> nn.Module:
    """A fastrnn copy of a torch.nn RNN/LSTM/GRU or cell module: same configuration, weights copied."""
    return _convert(module, _FROM_TORCH, backend=backend)


def to_torch(module: nn.Module) -> nn.Module:
    """The torch.nn module equivalent to a fastrnn module, weights copied."""
    return _convert(module, _TO_TORCH)
