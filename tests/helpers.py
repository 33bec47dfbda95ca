"""Tolerances and comparison helpers shared by the test files."""

from __future__ import annotations

import torch

#: (atol, rtol) per dtype, for results compared against an fp64 reference or torch.nn.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

#: max relative (Frobenius) error ||out - ref|| / ||ref|| against an fp64 reference, for whole tensors of
#: realistic size (GPU-sized kernel checks, low-precision module checks)
REL_TOL: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def rel_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64."""
    r, o = ref.detach().double(), out.detach().double().to(ref.device)
    return ((o - r).norm() / r.norm().clamp_min(1e-30)).item()


def assert_close(name: str, ref: torch.Tensor | None, out: torch.Tensor | None, dtype=None, scale: float = 1.0):
    """Compare ``out`` with ``ref`` under the tolerance of ``dtype`` (default: out's dtype).

    The failure message names the quantity and prints the max abs and max rel error.
    """
    if ref is None or out is None:
        assert ref is None and out is None, f"{name}: one of ref/out is None (ref={ref is None}, out={out is None})"
        return
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    atol, rtol = TOLERANCES[dtype or out.dtype]
    atol, rtol = atol * scale, rtol * scale
    r, o = ref.detach().double().cpu(), out.detach().double().cpu()
    assert torch.isfinite(o).all() or not torch.isfinite(r).all(), f"{name}: non-finite values in output"
    err = (r - o).abs()
    max_abs = err.max().item() if err.numel() else 0.0
    max_rel = (err / r.abs().clamp_min(atol)).max().item() if err.numel() else 0.0
    ok = torch.allclose(o, r, atol=atol, rtol=rtol, equal_nan=False)
    assert ok, f"{name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e} (atol={atol:g}, rtol={rtol:g})"
