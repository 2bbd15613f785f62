"""Faster CPU execution of the blocks' default (training and eval) path.

It computes what the plain modules compute, with the same parameters, to
float32 rounding (about 1e-7 relative):

- :func:`use_channels_last`: on CPU in float32 the backbone runs its maps in
  channels_last memory format (NHWC in memory; the outputs are made
  contiguous again for the necks and mmcv's ops), where oneDNN runs the
  convolutions without reordering their inputs and outputs from and to
  NCHW at every call. Measured on 2 threads, S12 at 512x512: eval forward
  188 -> 153 ms, train step 428 -> 392 ms against NCHW with the 1x1
  convolutions as MKL GEMMs (the faster of the NCHW options).
- :func:`pool_mixer`, PoolFormer's ``avg_pool(x) - x`` with
  ``count_include_pad=False``: PyTorch's CPU ``avg_pool2d`` walks every
  window with a per-element divisor and is, with its backward, several
  times slower than the 1x1 convolutions' neighbours. Here the window sum
  is separable (a running sum along W, then along H, as in-place slice
  additions), the divisor is a cached per-position map, and the backward
  is the same box sum of ``grad / count`` (the box is symmetric).

Elsewhere (CUDA, autocast, other dtypes) the PyTorch operations run
unchanged, and :func:`plain_ops` turns all of this off (to compare, e.g. in
``tools/benchmark.py``).
"""
import contextlib
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    'pool_mixer', 'use_channels_last', 'box_sum', 'inv_count', 'plain_ops'
]

_ENABLED = True


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Within the context, run the plain PyTorch operations."""
    global _ENABLED
    enabled, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = enabled


_INV_COUNT: Dict[Tuple, Tensor] = {}
_INV_COUNT_MAX = 64


def inv_count(height: int, width: int, pool_size: int, like: Tensor) -> Tensor:
    """``1 / (number of in-image positions of each window)``, (H, W)."""
    key = (height, width, pool_size, like.device, like.dtype)
    inv = _INV_COUNT.get(key)
    if inv is None:
        r = pool_size // 2
        rows = torch.arange(height, dtype=torch.float64)
        cols = torch.arange(width, dtype=torch.float64)
        n_rows = (rows + r).clamp(max=height - 1) - (rows - r).clamp(min=0) + 1
        n_cols = (cols + r).clamp(max=width - 1) - (cols - r).clamp(min=0) + 1
        inv = (1. / (n_rows[:, None] * n_cols[None, :])).to(like)
        if len(_INV_COUNT) >= _INV_COUNT_MAX:
            _INV_COUNT.clear()
        _INV_COUNT[key] = inv
    return inv


def box_sum(x: Tensor,
            radius: int,
            out: Optional[Tensor] = None,
            tmp: Optional[Tensor] = None) -> Tensor:
    """Sum over the ``(2r+1) x (2r+1)`` window of every position of the
    last two dimensions, zero outside. ``out`` and ``tmp`` (tensors like
    ``x``, distinct from it) receive the result and the row sums; new
    tensors when not given."""
    rows = x.clone() if tmp is None else tmp.copy_(x)
    width = x.shape[-1]
    for d in range(1, min(radius, width - 1) + 1):
        rows[..., d:] += x[..., :-d]
        rows[..., :-d] += x[..., d:]
    out = rows.clone() if out is None else out.copy_(rows)
    height = x.shape[-2]
    for d in range(1, min(radius, height - 1) + 1):
        out[..., d:, :] += rows[..., :-d, :]
        out[..., :-d, :] += rows[..., d:, :]
    return out


class _PoolMixer(torch.autograd.Function):
    """``avg_pool(x, k, stride 1, padding k // 2, count_include_pad=False)
    - x``."""

    @staticmethod
    def forward(ctx, x: Tensor, pool_size: int) -> Tensor:
        ctx.pool_size = pool_size
        inv = inv_count(x.shape[-2], x.shape[-1], pool_size, x)
        return box_sum(x, pool_size // 2).mul_(inv).sub_(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not _dense(grad):
            grad = grad.contiguous()
        inv = inv_count(grad.shape[-2], grad.shape[-1], ctx.pool_size, grad)
        return box_sum(grad * inv, ctx.pool_size // 2).sub_(grad), None


def _dense(x: Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(
        memory_format=torch.channels_last)


def _fast_cpu(x: Tensor) -> bool:
    """Float32 CPU maps outside autocast, with the fast ops on."""
    return (_ENABLED and x.device.type == 'cpu' and x.dtype == torch.float32
            and x.dim() == 4 and not torch.is_autocast_enabled('cpu'))


def use_channels_last(x: Tensor) -> bool:
    """Whether the backbone should run ``x`` (its input image batch) in
    channels_last memory format: float32 CPU maps outside autocast, with
    the fast ops on."""
    return _fast_cpu(x)


def pool_mixer(pool: nn.AvgPool2d, x: Tensor) -> Tensor:
    """``pool(x) - x`` for PoolFormer's pooling (stride 1, padding
    ``k // 2``, ``count_include_pad=False``, odd square ``k``), with the
    separable kernel on float32 CPU tensors (NCHW or channels_last)."""
    k = pool.kernel_size
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else None)
    stride = pool.stride if isinstance(pool.stride, int) else (
        pool.stride[0] if pool.stride[0] == pool.stride[1] else None)
    padding = pool.padding if isinstance(pool.padding, int) else (
        pool.padding[0] if pool.padding[0] == pool.padding[1] else None)
    if (_fast_cpu(x) and _dense(x) and k is not None and k % 2 == 1
            and stride == 1
            and padding == k // 2 and not pool.count_include_pad
            and not pool.ceil_mode and pool.divisor_override is None):
        return _PoolMixer.apply(x, k)
    return pool(x) - x
