"""GroupNorm with one group on CUDA, statistics from one reduction.

PyTorch's CUDA GroupNorm kernel reduces each group in one thread block, so
with one group and one or two samples of detection size (S12 at
2x3x800x1216) the GPU is nearly idle during the norms, which were most of
the forward time there (docs/benchmark.md). :class:`GroupNorm1` takes the
statistics from one ``var_mean``, a reduction that CUDA spreads over the
whole GPU, and replaces ``Fp32GroupNorm(1)`` under ``impl='auto'``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..backbones.layers import Fp32GroupNorm, to_fp32
from .tracing import is_recording


def group_norm1_stats(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Mean and ``1 / sqrt(var + eps)`` over all but the first dimension,
    each of shape (N, 1, ...), in float32 at least: one ``var_mean``, a
    reduction that CUDA spreads over the whole GPU. (A float16 variance
    overflows from a standard deviation of 256 on.)"""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    dims = tuple(range(1, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return mean, var.add_(eps).rsqrt_()


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A (C, ) tensor viewed to broadcast over the channels of ``x``."""
    return t.view((1, -1) + (1, ) * (x.dim() - 2))


class _GroupNorm1(torch.autograd.Function):
    """``F.group_norm(x, 1, weight, bias, eps)`` with the statistics from
    :func:`group_norm1_stats`. PyTorch's CUDA forward reduces each group in
    one thread block, so with one group and one or two samples of
    detection size (S12 at 2x3x800x1216) the GPU is nearly idle during the
    norms, which were most of timm's and the default path's forward time
    there (see docs/benchmark.md). Its backward reduces per sample and
    channel and is used as it is."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float) -> Tensor:
        x = x.contiguous()
        mean, rstd = group_norm1_stats(x, eps)
        scale = rstd if weight is None else rstd * _channel_view(weight, x)
        if bias is None:
            shift = torch.mul(mean, scale).neg_()
        else:
            shift = torch.addcmul(_channel_view(bias, x), mean, scale,
                                  value=-1)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return torch.addcmul(shift, x, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = (
            torch.ops.aten.native_group_norm_backward(
                grad.contiguous(), x, mean.view(n, 1), rstd.view(n, 1),
                weight, n, c, x[0, 0].numel(), 1,
                [needs[0], weight is not None and needs[1],
                 ctx.has_bias and needs[2]]))
        return grad_input, grad_weight, grad_bias, None


# Below this many elements per sample PyTorch's one-block reduction takes
# about as long as the extra launches of :class:`_GroupNorm1` (measured on
# an H100: docs/benchmark.md, CUDA).
GROUP_NORM1_MIN_SIZE = 2**20


def _on_gpu(x: Tensor) -> bool:
    return x.is_cuda


class GroupNorm1(Fp32GroupNorm):
    """``Fp32GroupNorm`` with one group whose CUDA float32 / float64 maps of
    at least :data:`GROUP_NORM1_MIN_SIZE` elements per sample go through
    :class:`_GroupNorm1` (no double backward); everything else, and tracing
    or export (where an autograd function is an opaque op), runs the
    reference ``forward``."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) is Fp32GroupNorm and module.num_groups == 1

    def forward(self, x: Tensor) -> Tensor:
        x32, weight, bias = to_fp32(x, self.weight, self.bias)
        if (not _on_gpu(x) or x32.numel() == 0
                or x32.shape[1:].numel() < GROUP_NORM1_MIN_SIZE
                or is_recording()):
            return super().forward(x)
        return _GroupNorm1.apply(x32, weight, bias, self.eps).to(x.dtype)
