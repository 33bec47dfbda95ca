"""fastrnn: drop-in torch.nn RNN / LSTM / GRU modules backed by fused Triton kernels.

    import fastrnn
    lstm = fastrnn.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)  # as torch.nn.LSTM

See :mod:`fastrnn.backend` for how the implementation is chosen (Triton on CUDA, PyTorch on CPU).
"""

from fastrnn import functional
from fastrnn.backend import BACKENDS
from fastrnn.modules import (
    GRU,
    LSTM,
    RNN,
    GRUCell,
    LSTMCell,
    RNNBase,
    RNNCell,
    RNNCellBase,
    from_torch,
    to_torch,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNBase",
    "RNNCell",
    "RNNCellBase",
    "from_torch",
    "functional",
    "to_torch",
    "__version__",
]
