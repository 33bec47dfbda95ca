"""The one place that decides which implementation runs a recurrence.

Backends:
    ``reference``  fastrnn's own pure-PyTorch step loop (:mod:`fastrnn.reference`), fp32/fp64 compute.
    ``triton``     fastrnn's fused Triton kernels (:mod:`fastrnn.ops`). CUDA tensors, or CPU tensors when
                   ``TRITON_INTERPRET=1`` is set (the Triton interpreter, for testing).
    ``torch``      PyTorch's native RNN operators (what torch.nn runs: cuDNN on CUDA, ATen on CPU).
    ``auto``       ``triton`` on CUDA tensors, ``torch`` on every other device -- except while torch.compile
                   traces, where the CPU choice is ``reference``: fastrnn's step loop, which the compiler sees
                   through and fuses (torch.nn.LSTM itself cannot be compiled with ``fullgraph=True``).

The requested backend comes from the module's ``backend=`` argument, else the ``FASTRNN_BACKEND``
environment variable, else ``auto``. float64 inputs never reach the Triton kernels: they run on the
reference path (documented in the README's support matrix).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "triton", "torch")
ENV_VAR = "FASTRNN_BACKEND"


def check_backend(backend: str | None) -> str | None:
    """Validate a ``backend=`` argument at construction time (None means: decide per call)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def requested(backend: str | None = None) -> str:
    """The backend asked for: the explicit argument, else $FASTRNN_BACKEND, else ``auto``."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "auto") or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    return name


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # looked up once: cheap and compile-friendly


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def resolve(backend: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the implementation for tensors on ``device`` of ``dtype``: 'reference', 'triton' or 'torch'."""
    name = requested(backend)
    if name == "auto":
        if device.type == "cuda" and triton_installed():
            name = "triton"
        else:
            name = "reference" if torch.compiler.is_compiling() else "torch"
    if name != "triton":
        return name
    if not triton_installed():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"backend='triton' runs on CUDA tensors, got tensors on {device.type!r}; set TRITON_INTERPRET=1 "
            "to run the Triton kernels on CPU (slow, for testing) or use backend='reference'/'torch'"
        )
    if dtype == torch.float64:
        return "reference"  # the kernels compute in fp32; fp64 users get the exact fp64 loop
    return "triton"
