"""Exact decompositions of the ATen pooling backward ops into matrix products, for ONNX export.

An analog block's transposed pass (its ∂Φ/∂s, `hybridc.energy.transpose`) runs the transpose of every
pooling op through ATen's backward kernels (`aten.avg_pool2d_backward`, `aten._adaptive_avg_pool2d_backward`,
their 3-d forms), for which the ONNX translator has no conversion. Average and adaptive average pooling are
separable per spatial axis, so each backward is a contraction of every spatial axis with an (m, n) window
matrix, built from traced ops only: torch.export records the matrices as constant expressions that the ONNX
optimizer folds. `hybridc.export.onnx_blocks.export_onnx` applies `DECOMPOSITIONS` to every program it
converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

aten = torch.ops.aten


def _window_matrix(
    start: torch.Tensor, end: torch.Tensor, n: int, divisor: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """(m, n) matrix with row i = 1/divisor_i on columns [start_i, end_i) (built from traced ops only, so
    torch.export records it as a constant expression the ONNX optimizer folds)."""
    cols = torch.arange(n, device=like.device)
    mask = (cols.unsqueeze(0) >= start.unsqueeze(1)) & (cols.unsqueeze(0) < end.unsqueeze(1))
    a = mask.to(like.dtype)
    if divisor is not None:
        a = a / divisor.clamp(min=1).to(like.dtype).unsqueeze(1)
    return a


def _adaptive_matrix(n: int, m: int, like: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling of one axis as an (m, n) matrix: window [floor(i n/m), ceil((i+1) n/m))."""
    i = torch.arange(m, device=like.device)
    start = torch.div(i * n, m, rounding_mode="floor")
    end = torch.div((i + 1) * n + m - 1, m, rounding_mode="floor")
    return _window_matrix(start, end, n, end - start, like)


def _avg_matrix(
    n: int, m: int, k: int, s: int, p: int, count_include_pad: bool, ones: bool, like: torch.Tensor
) -> torch.Tensor:
    """Average pooling of one axis as an (m, n) matrix, as ATen computes it (avg_pool2d's kernel):
    the divisor of a window is the product over axes of its per-axis size (padded size when
    count_include_pad, else clipped), so the pooling is separable. `ones`: unit entries (divisor_override)."""
    start = torch.arange(m, device=like.device) * s - p
    end = torch.clamp(start + k, max=n + p)
    padded = end - start
    start, end = torch.clamp(start, min=0), torch.clamp(end, max=n)
    divisor = None if ones else (padded if count_include_pad else end - start)
    return _window_matrix(start, end, n, divisor, like)


def _apply_transposed(grad: torch.Tensor, mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """grad (..., m_1..m_d) -> (..., n_1..n_d): contract each spatial axis with its (m, n) matrix."""
    nd = len(mats)
    out = grad
    for axis, a in enumerate(mats):
        dim = out.dim() - nd + axis
        out = torch.matmul(out.movedim(dim, -1), a).movedim(-1, dim)
    return out


def _adaptive_nd(grad: torch.Tensor, x: torch.Tensor, nd: int) -> torch.Tensor:
    mats = [_adaptive_matrix(int(x.shape[-nd + i]), int(grad.shape[-nd + i]), grad) for i in range(nd)]
    return _apply_transposed(grad, mats)


def _adaptive2d_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _adaptive_nd(grad, x, 2)


def _adaptive3d_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _adaptive_nd(grad, x, 3)


def _avg_nd(
    grad: torch.Tensor,
    x: torch.Tensor,
    nd: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor: int | None,
) -> torch.Tensor:
    del ceil_mode  # the output size (from grad) already reflects it; windows are clipped the same way

    def expand(v: Sequence[int] | int) -> list[int]:
        v = [v] if isinstance(v, int) else list(v)
        return v * nd if len(v) == 1 else v

    kernel = expand(kernel)
    stride = expand(stride) if stride else kernel
    padding = expand(padding)
    mats = [
        _avg_matrix(
            int(x.shape[-nd + i]),
            int(grad.shape[-nd + i]),
            kernel[i],
            stride[i],
            padding[i],
            count_include_pad,
            divisor is not None,
            grad,
        )
        for i in range(nd)
    ]
    out = _apply_transposed(grad, mats)
    return out / divisor if divisor is not None else out


def _avg2d_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None = None,
) -> torch.Tensor:
    return _avg_nd(grad, x, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg3d_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None = None,
) -> torch.Tensor:
    return _avg_nd(grad, x, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


#: ATen ops without an ONNX conversion -> exact decompositions into exportable ops
DECOMPOSITIONS: dict[Any, Any] = {
    aten._adaptive_avg_pool2d_backward.default: _adaptive2d_backward,
    aten._adaptive_avg_pool3d_backward.default: _adaptive3d_backward,
    aten.avg_pool2d_backward.default: _avg2d_backward,
    aten.avg_pool3d_backward.default: _avg3d_backward,
}


__all__ = ["DECOMPOSITIONS"]
