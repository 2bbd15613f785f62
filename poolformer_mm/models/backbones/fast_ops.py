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
  is the same box sum of ``grad / count`` (the box is symmetric). With
  oneDNN the window sums of channels_last maps run as one depthwise
  convolution with a ones kernel (:func:`window_sum`).
- :func:`pool_norm_residual`, the whole token-mixing half of a PoolFormer
  block, ``x + ls * (pool(n(x)) - n(x))`` with ``n`` a GroupNorm(1), as one
  autograd function: the norm's bias and mean cancel in
  ``pool(y) - y``, so it is ``x + s * (pool(x) - x)`` with
  ``s = ls * g * rstd`` per channel and sample, and the backward is written
  out. The plain modules make five activation-sized tensors (the
  normalised map, the pooled one, their difference, its scaled copy, the
  sum) and save two of them for the backward; this makes one and saves
  the input only. Forward plus backward of stage 1's mixer of S12 at
  512x512: 8.3 -> 4.6 ms on 2 threads.
- :func:`pointwise_mlp`, the channel MLP ``fc2(gelu(fc1(x)))`` of 1x1
  convolutions in training, as one autograd function: the forward runs
  oneDNN's convolutions as before; in the backward each input gradient is
  a transposed convolution (oneDNN, the weight as it is), each weight
  gradient one matrix product of the channels_last maps viewed as
  (positions, channels) matrices (MKL), and GELU's gradient is written
  over the hidden gradient instead of into a new tensor. Together with
  :func:`pool_norm_residual` 4%-5% less time for the S12 train step at
  512x512 on 2 threads (``tools/benchmark.py --variants ours
  ours_unfused``; :func:`unfused_blocks` turns both off).

Elsewhere (CUDA, autocast, other dtypes) the PyTorch operations run
unchanged, except:

- :func:`group_norm` (used by ``Fp32GroupNorm``): on CUDA a float32
  GroupNorm with one group of maps with at least
  :data:`GROUP_NORM1_MIN_SIZE` elements per sample takes its statistics
  from one ``var_mean`` (:class:`_GroupNorm1`): PyTorch's kernel reduces
  each sample in one thread block and was most of the forward time at
  detection sizes.

:func:`plain_ops` turns all of this off (to compare, e.g. in
``tools/benchmark.py``).
"""
import contextlib
import math
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    'pool_mixer', 'pool_norm_residual', 'pointwise_mlp', 'is_pointwise_conv',
    'use_channels_last', 'use_onednn', 'pool_window', 'window_sum', 'box_sum',
    'inv_count', 'mean_rstd', 'plain_ops', 'unfused_blocks', 'group_norm',
    'group_norm1_stats'
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


_FUSED = True


@contextlib.contextmanager
def unfused_blocks() -> Iterator[None]:
    """Within the context, run the default path without its fused block
    functions (:func:`pool_norm_residual`, :func:`pointwise_mlp`), the
    other fast ops on: what they bring is then measurable
    (``tools/benchmark.py --variants ours ours_unfused``)."""
    global _FUSED
    fused, _FUSED = _FUSED, False
    try:
        yield
    finally:
        _FUSED = fused


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


def _fast_cpu(x: Tensor) -> bool:
    """Float32 CPU maps outside autocast, with the fast ops on."""
    return (_ENABLED and x.device.type == 'cpu' and x.dtype == torch.float32
            and x.dim() == 4 and not torch.is_autocast_enabled('cpu'))


def use_channels_last(x: Tensor) -> bool:
    """Whether the backbone should run ``x`` (its input image batch) in
    channels_last memory format: float32 CPU maps outside autocast, with
    the fast ops on."""
    return _fast_cpu(x)


def _square(value) -> Optional[int]:
    if isinstance(value, int):
        return value
    return value[0] if value[0] == value[1] else None


def pool_window(pool: nn.Module) -> Optional[int]:
    """The window of PoolFormer's pooling (an ``nn.AvgPool2d`` with an odd
    square window, stride 1, padding ``k // 2``, ``count_include_pad=False``),
    None for any other module."""
    if type(pool) is not nn.AvgPool2d:
        return None
    k, stride, padding = (_square(pool.kernel_size), _square(pool.stride),
                          _square(pool.padding))
    if (k is None or k % 2 == 0 or stride != 1 or padding != k // 2
            or pool.count_include_pad or pool.ceil_mode
            or pool.divisor_override is not None):
        return None
    return k


def pool_mixer(pool: nn.AvgPool2d, x: Tensor) -> Tensor:
    """``pool(x) - x`` for PoolFormer's pooling (see :func:`pool_window`),
    with the fast window sums on float32 CPU tensors (NCHW or
    channels_last)."""
    k = pool_window(pool)
    if k is not None and _fast_cpu(x) and _dense(x):
        return _PoolMixer.apply(x, k)
    return pool(x) - x


def is_pointwise_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a plain 1x1 ``nn.Conv2d`` (stride 1, no
    padding, one group)."""
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1)
            and module.stride == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), 0) and module.dilation == (1, 1))


def pointwise_mlp(fc1: nn.Module, act: nn.Module, fc2: nn.Module,
                  x: Tensor) -> Optional[Tensor]:
    """``fc2(act(fc1(x)))`` as one autograd function
    (:class:`_PointwiseMlp`) for 1x1 convolutions (:func:`is_pointwise_conv`)
    around an ``nn.GELU``, on channels_last float32 CPU maps under
    autograd; None where it does not apply (the caller runs the modules,
    which is as fast without autograd)."""
    if not (_FUSED and torch.is_grad_enabled() and _fast_cpu(x)
            and _channels_last(x) and type(act) is nn.GELU
            and is_pointwise_conv(fc1) and is_pointwise_conv(fc2)):
        return None
    return _PointwiseMlp.apply(x, fc1.weight, fc1.bias, fc2.weight,
                               fc2.bias, act.approximate)


def pool_norm_residual(x: Tensor, pool: nn.AvgPool2d, norm: nn.GroupNorm,
                       layer_scale: Optional[Tensor]) -> Optional[Tensor]:
    """``x + layer_scale * (pool(norm(x)) - norm(x))`` as one operation
    (:class:`_PoolNormResidual`) on float32 CPU maps, for PoolFormer's
    pooling (:func:`pool_window`) and a GroupNorm with one group;
    ``layer_scale`` is (C, ) or None. Returns None where it does not apply
    (the caller runs the modules)."""
    k = pool_window(pool)
    if (k is None or not _FUSED or not _fast_cpu(x) or not _dense(x)
            or not isinstance(norm, nn.GroupNorm) or norm.num_groups != 1):
        return None
    return _PoolNormResidual.apply(x, norm.weight, norm.bias, layer_scale, k,
                                   float(norm.eps))


# ---------------------------------------------------------------------------
# GroupNorm with one group on CUDA
# ---------------------------------------------------------------------------
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


def _reduces_per_group(x: Tensor) -> bool:
    """Whether :func:`group_norm` leaves a one-group norm of ``x`` to
    PyTorch: off CUDA (on the CPU its kernels are fast, and the blocks'
    fast path takes the token mixer's norm), with the fast ops off, and
    while tracing or exporting (the autograd function would be an opaque
    Python op there)."""
    return (not _ENABLED or not x.is_cuda or torch.jit.is_tracing()
            or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


# Below this many elements per sample PyTorch's one-block reduction takes
# about as long as the extra launches of :class:`_GroupNorm1`. Measured on
# an H100 with every norm of S12 on it, against PyTorch's (two runs each):
# at 1x3x512x512 (maps of 2**17 to 2**20 elements) 0.62x-0.78x for the
# train step and 0.68x-1.20x for eval, at 2x3x800x1216 fp16 (2**19 to
# 2**22) 1.23x-1.30x and 2.9x-4.5x.
GROUP_NORM1_MIN_SIZE = 2**20


def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor],
               bias: Optional[Tensor], eps: float) -> Tensor:
    """``F.group_norm``; with one group on CUDA, for float32 / float64 maps
    of at least :data:`GROUP_NORM1_MIN_SIZE` elements per sample and
    parameters of their dtype (as ``Fp32GroupNorm`` passes them), as
    :class:`_GroupNorm1`, which has no double backward."""
    if (num_groups != 1 or x.dim() < 2 or x.numel() == 0
            or x.dtype not in (torch.float32, torch.float64)
            or any(t is not None and t.dtype != x.dtype
                   for t in (weight, bias))
            or x.shape[1:].numel() < GROUP_NORM1_MIN_SIZE
            or _reduces_per_group(x)):
        return F.group_norm(x, num_groups, weight, bias, eps)
    return _GroupNorm1.apply(x, weight, bias, eps)
