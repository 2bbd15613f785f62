"""Faster CPU execution of the reference modules, with the same parameters.

The modules here replace reference modules of
:mod:`poolformer_mm.models.backbones.layers` when a backbone is built with
``impl='auto'`` (see :mod:`poolformer_mm.models.fast`), where they fit
(:mod:`.patterns`). Each computes what the
module it replaces computes, to float32 rounding, on float32 CPU maps outside
autocast, tracing, export and ``torch.compile`` (:func:`applies`), and runs the
reference ``forward`` everywhere else:

- :class:`ChannelsLastStem`: the backbone's maps run in channels_last memory
  format, where oneDNN runs the convolutions without reordering their inputs
  and outputs at every call.
- :class:`FastPooling`, ``avg_pool(x) - x`` with ``count_include_pad=False``:
  the window sums are separable (or, on oneDNN, one depthwise convolution
  with a ones kernel, :func:`window_sum`), the divisor a cached per-position
  map, and the backward the same box sum of ``grad / count`` (the window is
  symmetric). PyTorch's CPU ``avg_pool2d`` walks every window with a
  per-element divisor.
- :class:`FusedPoolBlock`, whose token-mixing half
  ``x + ls * (pool(n(x)) - n(x))`` with ``n`` a GroupNorm(1) is one autograd
  function: the norm's bias and mean cancel in ``pool(y) - y``, so it is
  ``x + s * (pool(x) - x)`` with ``s = ls * g * rstd`` per channel and
  sample, with a written-out backward. It makes one activation-sized tensor
  where the modules make five, and saves only its input.
- :class:`FusedMlp`, ``fc2(gelu(fc1(x)))`` of 1x1 convolutions under autograd
  as one autograd function: input gradients as transposed convolutions,
  weight gradients as one matrix product each, GELU's gradient written over
  the hidden gradient.

docs/benchmark.md has the side-by-side measurements that keep each of them.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..backbones.layers import (Fp32GroupNorm, Mlp, MetaFormerBlock, Pooling,
                                Stem)
from .patterns import (channel_scale, is_group_norm1, is_pointwise_conv,
                       pool_window)
from .tracing import is_recording

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


def _onednn_ops_available() -> bool:
    try:
        mkldnn = torch.ops.mkldnn
        return (torch.backends.mkldnn.is_available()
                and hasattr(mkldnn, '_convolution_pointwise')
                and hasattr(mkldnn, '_convolution_pointwise_')
                and hasattr(mkldnn, '_reorder_convolution_weight'))
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_ops_available()


def use_onednn(x: Tensor) -> bool:
    """Whether the oneDNN kernels serve ``x``: CPU float32 with oneDNN."""
    return (_ONEDNN and x.device.type == 'cpu' and x.dtype == torch.float32
            and torch.backends.mkldnn.enabled)


_ONES: Dict[Tuple, Tensor] = {}


def window_sum(x: Tensor, pool_size: int) -> Tensor:
    """Sum over the ``pool_size x pool_size`` window (odd size) of every
    position of (N, C, H, W) maps, zero outside; a new tensor.

    channels_last maps on oneDNN: one depthwise convolution with a ones
    kernel, a single pass over the map; otherwise :func:`box_sum`.
    """
    r = pool_size // 2
    if (use_onednn(x) and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)):
        key = (x.shape[1], pool_size, x.device)
        ones = _ONES.get(key)
        if ones is None:
            if len(_ONES) >= _INV_COUNT_MAX:
                _ONES.clear()
            ones = _ONES[key] = x.new_ones(x.shape[1], 1, pool_size,
                                           pool_size)
        return torch.ops.mkldnn._convolution_pointwise(
            x, ones, None, [r, r], [1, 1], [1, 1], x.shape[1], 'none', [],
            None)
    return box_sum(x, r)


# The one-pass variance E[x^2] - E[x]^2 loses about float32 eps times
# E[x^2] / var of relative precision; above this ratio (a mean of more than
# about 10 standard deviations) the two-pass formula is used.
_ONE_PASS_MAX_RATIO = 100.


def mean_rstd(x: Tensor, eps: float,
              out: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Mean and ``1 / sqrt(var + eps)`` over (C, H, W) of each sample, as
    GroupNorm(1) computes them, each of shape (N, 1, 1, 1).

    On CPU (float32 / float64) both come from one pass (sum and norm of
    ``x``) unless the mean is large against the standard deviation; then,
    and elsewhere, the variance is taken of the centred values (two
    passes), in float32 at least. ``out``, a tensor like ``x``, may be
    used as scratch space.
    """
    n = x[0].numel()
    dims = (1, 2, 3)
    if x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64):
        # Two reductions, then a few numbers in float64 on the host.
        means, rstds = [], []
        for total, norm in zip(x.sum(dim=dims).tolist(),
                               torch.linalg.vector_norm(x, dim=dims).tolist()):
            mean, meansq = total / n, norm * norm / n
            var = meansq - mean * mean
            if not var * _ONE_PASS_MAX_RATIO > meansq:
                break
            means.append(mean)
            rstds.append(1. / math.sqrt(var + eps))
        else:
            shape = (len(means), 1, 1, 1)
            return (torch.tensor(means, dtype=x.dtype).view(shape),
                    torch.tensor(rstds, dtype=x.dtype).view(shape))
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
        out = None
    mean = x.sum(dim=dims, keepdim=True).div_(n)
    centred = x - mean if out is None else torch.sub(x, mean, out=out)
    norm = torch.linalg.vector_norm(centred, dim=dims, keepdim=True)
    return mean, norm.square_().div_(n).add_(eps).rsqrt_()


def _pool_minus_identity(x: Tensor, pool_size: int) -> Tensor:
    """``P x - x``, ``P`` PoolFormer's average pooling; a new tensor."""
    inv = inv_count(x.shape[-2], x.shape[-1], pool_size, x)
    return window_sum(x, pool_size).mul_(inv).sub_(x)


def _pool_minus_identity_adjoint(grad: Tensor, pool_size: int) -> Tensor:
    """``P^T g - g``: the window is symmetric, so ``P^T g`` is the window
    sum of ``g / count``."""
    inv = inv_count(grad.shape[-2], grad.shape[-1], pool_size, grad)
    return window_sum(grad * inv, pool_size).sub_(grad)


class _PoolMixer(torch.autograd.Function):
    """``avg_pool(x, k, stride 1, padding k // 2, count_include_pad=False)
    - x``."""

    @staticmethod
    def forward(ctx, x: Tensor, pool_size: int) -> Tensor:
        ctx.pool_size = pool_size
        ctx.channels_last = _channels_last(x)
        return _pool_minus_identity(x, pool_size)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = _like_input(grad, ctx.channels_last)
        return _pool_minus_identity_adjoint(grad, ctx.pool_size), None


class _PoolNormResidual(torch.autograd.Function):
    """``x + ls * (pool(n(x)) - n(x))``, ``n`` a GroupNorm(1) with weight
    ``g`` and bias ``b``, ``pool`` PoolFormer's average pooling.

    The average (without padding) of a per-channel constant is that
    constant, so ``b`` and the mean cancel in ``pool(y) - y`` and this is
    ``x + s * (P x - x)`` with ``s = ls * g * rstd`` per channel and sample
    (``P`` the pooling, linear and per channel). The gradient with respect
    to ``b`` is therefore zero (returned as zeros, so that every parameter
    gets one). For the gradient ``G`` of the output, with
    ``Q = (P^T - I) G = window_sum(G / count) - G``:

    - ``dx = G + s * Q - rstd^3 / M * (x - mean) * sum_c(k * t)``, with
      ``t[n, c] = sum_hw(G * (P x - x)) = sum_hw(Q * x)``, ``k = ls * g``
      and ``M = C * H * W`` (``d rstd / dx = -rstd^3 (x - mean) / M``);
    - ``dk[c] = sum_n(rstd * t)``, hence ``dls = dk * g``, ``dg = dk * ls``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], layer_scale: Optional[Tensor],
                pool_size: int, eps: float) -> Tensor:
        mean, rstd = mean_rstd(x, eps)
        scale = _sample_scale(_channel_gain(weight, layer_scale), rstd)
        out = _pool_minus_identity(x, pool_size).mul_(scale).add_(x)
        ctx.pool_size = pool_size
        ctx.channels_last = _channels_last(x)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, mean, rstd, weight, layer_scale)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, mean, rstd, weight, layer_scale = ctx.saved_tensors
        grad = _like_input(grad, ctx.channels_last)
        q = _pool_minus_identity_adjoint(grad, ctx.pool_size)
        t = (q * x).sum(dim=(2, 3))  # (N, C)
        gain = _channel_gain(weight, layer_scale)
        grad_x = grad_weight = grad_bias = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(grad, q, _sample_scale(gain, rstd))
            grad_rstd = (t if gain is None else t * gain).sum(1)
            coef = (grad_rstd.view(-1, 1, 1, 1) * rstd.pow(3)).mul_(
                -1. / x[0].numel())
            grad_x.addcmul_(x, coef).sub_(coef * mean)
        grad_gain = (t * rstd.view(-1, 1)).sum(0)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (grad_gain if layer_scale is None else grad_gain *
                           layer_scale)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_gain.new_zeros(grad_gain.shape)
        if layer_scale is not None and ctx.needs_input_grad[3]:
            grad_scale = (grad_gain if weight is None else grad_gain * weight)
        return grad_x, grad_weight, grad_bias, grad_scale, None, None


class _PointwiseMlp(torch.autograd.Function):
    """``fc2(gelu(fc1(x)))`` for 1x1 convolutions ``fc1``, ``fc2`` of
    channels_last maps (see :func:`pointwise_mlp`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight1: Tensor, bias1: Optional[Tensor],
                weight2: Tensor, bias2: Optional[Tensor],
                approximate: str) -> Tensor:
        hidden = F.conv2d(x, weight1, bias1)
        act = F.gelu(hidden, approximate=approximate)
        ctx.save_for_backward(x, hidden, act, weight1, weight2)
        ctx.approximate = approximate
        ctx.has_bias = (bias1 is not None, bias2 is not None)
        return F.conv2d(act, weight2, bias2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, hidden, act, weight1, weight2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = _like_input(grad, True)
        grad_weight2, grad_bias2 = _pointwise_param_grads(
            grad, act, needs[3], needs[4] and ctx.has_bias[1])
        grad_hidden = F.conv_transpose2d(grad, weight2)
        # The hidden gradient is ours alone: GELU's backward overwrites it.
        torch.ops.aten.gelu_backward.grad_input(
            grad_hidden,
            hidden,
            approximate=ctx.approximate,
            grad_input=grad_hidden)
        grad_weight1, grad_bias1 = _pointwise_param_grads(
            grad_hidden, x, needs[1], needs[2] and ctx.has_bias[0])
        grad_x = (
            F.conv_transpose2d(grad_hidden, weight1) if needs[0] else None)
        return (grad_x, grad_weight1, grad_bias1, grad_weight2, grad_bias2,
                None)


def _pointwise_param_grads(
        grad: Tensor, x: Tensor, weight: bool,
        bias: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Weight and bias gradients of a 1x1 convolution of channels_last
    ``x`` with output gradient ``grad``: one matrix product over all
    positions, one column sum."""
    rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
    grad_weight = grad_bias = None
    if weight:
        x_rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        grad_weight = torch.mm(rows.t(), x_rows)[:, :, None, None]
    if bias:
        grad_bias = rows.sum(0)
    return grad_weight, grad_bias


def _channel_gain(weight: Optional[Tensor],
                  layer_scale: Optional[Tensor]) -> Optional[Tensor]:
    """``ls * g`` (C, ), None when neither is there."""
    if layer_scale is None or weight is None:
        return weight if layer_scale is None else layer_scale
    return weight * layer_scale


def _sample_scale(gain: Optional[Tensor], rstd: Tensor) -> Tensor:
    """``gain * rstd``, (N, C, 1, 1) (or ``rstd``, (N, 1, 1, 1), without a
    gain)."""
    return rstd if gain is None else gain.view(1, -1, 1, 1) * rstd


def _channels_last(x: Tensor) -> bool:
    return (not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def _like_input(grad: Tensor, channels_last: bool) -> Tensor:
    """``grad`` dense in the layout of the forward's input (e.g. the
    expanded gradient of a ``mean`` is not)."""
    return grad.contiguous(memory_format=torch.channels_last
                           if channels_last else torch.contiguous_format)


def _dense(x: Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(
        memory_format=torch.channels_last)


def applies(x: Tensor) -> bool:
    """Whether the fast CPU modules serve ``x``: float32 CPU maps outside
    autocast, tracing, ONNX export and ``torch.compile`` (which get the
    reference computation)."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and x.dim() == 4 and not torch.is_autocast_enabled('cpu')
            and not is_recording())


class ChannelsLastStem(Stem):
    """:class:`Stem` that hands the network channels_last maps on the CPU."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) is Stem

    def forward(self, x: Tensor) -> Tensor:
        if applies(x):
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class FastPooling(Pooling):
    """:class:`Pooling` with the window sums of :func:`window_sum`."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) is Pooling and pool_window(module.pool) is not None

    def forward(self, x: Tensor) -> Tensor:
        if applies(x) and _dense(x):
            return _PoolMixer.apply(x, pool_window(self.pool))
        return super().forward(x)


class FusedMlp(Mlp):
    """:class:`Mlp` of 1x1 convolutions around a GELU, whose training
    forward and backward are one autograd function (:class:`_PointwiseMlp`)
    on channels_last maps; without autograd the modules are as fast."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return (type(module) is Mlp and type(module.act) is nn.GELU
                and is_pointwise_conv(module.fc1)
                and is_pointwise_conv(module.fc2))

    def forward(self, x: Tensor) -> Tensor:
        if (applies(x) and torch.is_grad_enabled() and _channels_last(x)
                and not (self.training and self.drop.p > 0)):
            return _PointwiseMlp.apply(x, self.fc1.weight, self.fc1.bias,
                                       self.fc2.weight, self.fc2.bias,
                                       self.act.approximate)
        return super().forward(x)


class FusedPoolBlock(MetaFormerBlock):
    """:class:`MetaFormerBlock` of PoolFormer (a pooling mixer after a
    GroupNorm(1), no res-scale before it) whose token-mixing half is one
    autograd function (:class:`_PoolNormResidual`); with stochastic depth
    in training it runs the modules."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return (type(module) is MetaFormerBlock
                and type(module.token_mixer) in (Pooling, FastPooling)
                and pool_window(module.token_mixer.pool) is not None
                and type(module.norm1) in (Fp32GroupNorm, nn.GroupNorm)
                and is_group_norm1(module.norm1)
                and isinstance(module.res_scale1, nn.Identity)
                and channel_scale(module.layer_scale1)[0])

    def forward(self, x: Tensor) -> Tensor:
        if not (applies(x) and _dense(x)) or (
                self.training and not isinstance(self.drop_path, nn.Identity)):
            return super().forward(x)
        x = _PoolNormResidual.apply(x, self.norm1.weight, self.norm1.bias,
                                    channel_scale(self.layer_scale1)[1],
                                    pool_window(self.token_mixer.pool),
                                    float(self.norm1.eps))
        return self.res_scale2(x) + self.drop_path(
            self.layer_scale2(self.mlp(self.norm2(x))))
