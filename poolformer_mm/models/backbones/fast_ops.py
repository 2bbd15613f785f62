"""Faster CPU kernels for the blocks' default (training and eval) path.

Both compute what the modules they replace compute, with the same parameters,
to float32 rounding (about 1e-7 relative):

- :func:`pool_mixer`, PoolFormer's ``avg_pool(x) - x`` with
  ``count_include_pad=False``: PyTorch's CPU ``avg_pool2d`` on NCHW tensors
  walks every window with a per-element divisor and is, with its backward,
  several times slower than the 1x1 convolutions' neighbours. Here the
  window sum is separable (a running sum along W, then along H, as in-place
  slice additions), the divisor is a cached per-position map, and the
  backward is the same box sum of ``grad / count`` (the box is symmetric).
- :func:`pointwise_conv`, a 1x1 convolution of NCHW maps as one GEMM per
  image (``W @ x.view(C, H*W)``), and in training its backward as the two
  GEMMs it is (``W^T @ dy`` and ``dy @ x^T``): MKL runs them without the
  layout reorders oneDNN's NCHW convolution makes, which cost most at the
  first stage's wide, shallow maps (measured on 2 threads, 64 -> 256
  channels at 128x128: forward and backward 27 ms as a convolution, 17 ms
  as GEMMs).

Elsewhere (CUDA, channels_last inputs, autocast, other dtypes) the PyTorch
operations run unchanged, and :func:`plain_ops` turns the kernels off (to
compare, e.g. in ``tools/benchmark.py``).
"""
import contextlib
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['pool_mixer', 'pointwise_conv', 'box_sum', 'inv_count', 'plain_ops']

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


def _fast_cpu(x: Tensor, channels_last: bool = False) -> bool:
    """Float32 CPU maps, contiguous (or channels_last where allowed),
    outside autocast, with the fast ops on."""
    return (_ENABLED and x.device.type == 'cpu' and x.dtype == torch.float32
            and x.dim() == 4
            and (_dense(x) if channels_last else x.is_contiguous())
            and not torch.is_autocast_enabled('cpu'))


def pool_mixer(pool: nn.AvgPool2d, x: Tensor) -> Tensor:
    """``pool(x) - x`` for PoolFormer's pooling (stride 1, padding
    ``k // 2``, ``count_include_pad=False``, odd square ``k``), with the
    separable kernel on contiguous float32 CPU tensors."""
    k = pool.kernel_size
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else None)
    stride = pool.stride if isinstance(pool.stride, int) else (
        pool.stride[0] if pool.stride[0] == pool.stride[1] else None)
    padding = pool.padding if isinstance(pool.padding, int) else (
        pool.padding[0] if pool.padding[0] == pool.padding[1] else None)
    if (_fast_cpu(x, channels_last=True) and k is not None and k % 2 == 1
            and stride == 1
            and padding == k // 2 and not pool.count_include_pad
            and not pool.ceil_mode and pool.divisor_override is None):
        return _PoolMixer.apply(x, k)
    return pool(x) - x


class _PointwiseConv(torch.autograd.Function):
    """A 1x1 convolution of (N, C, H*W) rows as GEMMs, forward and backward:
    ``y = W x + b``, ``dx = W^T dy``, ``dW = sum_n dy_n x_n^T``,
    ``db = sum dy``."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor,
                bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _batched_mm(weight, rows, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_rows = _batched_mm(weight.t(), grad)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad[0], rows[0].t())
            for n in range(1, rows.shape[0]):
                grad_weight.addmm_(grad[n], rows[n].t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2))
        return grad_rows, grad_weight, grad_bias


def _batched_mm(weight: Tensor,
                rows: Tensor,
                bias: Optional[Tensor] = None) -> Tensor:
    """``weight @ rows[n] (+ bias)`` for every n, one GEMM each: matmul of
    a matrix with a batch would copy the batch to fold it."""
    out = rows.new_empty(rows.shape[0], weight.shape[0], rows.shape[2])
    for n in range(rows.shape[0]):
        if bias is None:
            torch.mm(weight, rows[n], out=out[n])
        else:
            torch.addmm(bias.view(-1, 1), weight, rows[n], out=out[n])
    return out


def pointwise_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a 1x1, stride-1, ungrouped convolution, as GEMMs per
    image (forward and backward) on contiguous float32 CPU maps."""
    if not (_fast_cpu(x) and type(conv) is nn.Conv2d
            and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.weight.dtype == x.dtype):
        return conv(x)
    n, c, h, w = x.shape
    weight = conv.weight.view(conv.out_channels, c)
    out = _PointwiseConv.apply(x.view(n, c, h * w), weight, conv.bias)
    return out.view(n, -1, h, w)
