"""Autograd functions of the fused training path (``impl='triton'``), each a
chain of the kernels of :mod:`.triton_kernels` and :mod:`.triton_pointwise`
with a written-out backward (no double backward).

Imported lazily, with the kernels, by :mod:`.triton_modules`. Dtypes follow
the reference modules: every function returns what the modules it stands
in for would (the norms return their input's dtype; a product with a
float32 scale promotes), and returns each gradient in its input's dtype;
statistics and sums are float32 whatever the inputs.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import triton_kernels as tk
from . import triton_pointwise as tp

ACTIVATIONS = {
    'gelu': tp.GELU,
    'gelu_tanh': tp.GELU_TANH,
    'star_relu': tp.STAR_RELU
}


def _promote(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype of a product / sum of ``tensors`` (None skipped)."""
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(
                dtype, t.dtype)
    return dtype


def _cast(grad: Optional[Tensor], like: Optional[Tensor]) -> Optional[Tensor]:
    """``grad`` in the dtype and shape of ``like`` (None if either is)."""
    if grad is None or like is None:
        return None
    return grad.reshape(like.shape).to(like.dtype)


def _gain(weight: Optional[Tensor],
          layer_scale: Optional[Tensor]) -> Optional[Tensor]:
    """``ls * g`` (C, ) in float32, None when neither is there."""
    gain = None
    for t in (weight, layer_scale):
        if t is not None:
            gain = t.float() if gain is None else gain * t.float()
    return gain


def _sample_scale(gain: Optional[Tensor], rstd: Tensor,
                  channels: int) -> Tensor:
    """``s = gain * rstd``, (N, C) float32 contiguous."""
    if gain is None:
        return rstd[:, None].expand(-1, channels).contiguous()
    return (rstd[:, None] * gain[None, :]).contiguous()


class PoolMix(torch.autograd.Function):
    """PoolFormer's token-mixing half, ``rs * x + ls * (pool(n(x)) -
    n(x))``, ``n`` a GroupNorm(1) with weight ``g`` and bias ``b``, in one
    pass over ``x`` after its statistics.

    The average (without padding) of a per-channel constant is that
    constant, so ``b`` and the mean cancel in ``pool(y) - y`` and this is
    ``rs * x + s * (P x - x)`` with ``s = ls * g * rstd`` per sample and
    channel (see ``cpu._PoolNormResidual``, whose backward this is, plus
    ``d rs = sum(G * x)``). With ``stats_eps`` it also returns the mean and
    rstd of its output (non-differentiable; :class:`Normalize` has the
    gradient through them), gathered while the output is written.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], layer_scale: Optional[Tensor],
                res_scale: Optional[Tensor], pool_size: int, eps: float,
                stats_eps: Optional[float]):
        mean, rstd = tk.group_norm1_stats(x, eps)
        scale = _sample_scale(_gain(weight, layer_scale), rstd, x.shape[1])
        out, stats = tk.pool_mix_forward(x, scale, res_scale, pool_size // 2,
                                         _promote(x, layer_scale, res_scale),
                                         stats_eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias, layer_scale,
                              res_scale)
        ctx.pool_size = pool_size
        if stats is None:
            return out
        ctx.mark_non_differentiable(*stats)
        return (out, ) + stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, *unused):
        x, mean, rstd, weight, bias, layer_scale, res_scale = ctx.saved_tensors
        needs = ctx.needs_input_grad
        radius = ctx.pool_size // 2
        grad = tk.like(grad, tk.channels_last(x))
        with_u = res_scale is not None and needs[4]
        t, u = tk.pool_mix_reduce(grad, x, radius, with_u)
        gain = _gain(weight, layer_scale)
        grad_x = None
        if needs[0]:
            # d rstd / dx = -rstd^3 (x - mean) / M
            grad_rstd = (t if gain is None else t * gain).sum(1)
            coef = grad_rstd * rstd.pow(3) * (-1. / x[0].numel())
            grad_x = tk.pool_mix_grad_input(
                grad, x, _sample_scale(gain, rstd, x.shape[1]), res_scale,
                mean, coef, radius)
        grad_gain = (t * rstd[:, None]).sum(0)
        grad_weight = grad_bias = grad_ls = grad_rs = None
        if needs[1] and weight is not None:
            grad_weight = _cast(
                grad_gain if layer_scale is None else grad_gain *
                layer_scale.float(), weight)
        if needs[2] and bias is not None:
            grad_bias = torch.zeros_like(bias)  # it cancels
        if needs[3] and layer_scale is not None:
            grad_ls = _cast(
                grad_gain if weight is None else grad_gain * weight.float(),
                layer_scale)
        if with_u:
            grad_rs = _cast(u.sum(0), res_scale)
        return grad_x, grad_weight, grad_bias, grad_ls, grad_rs, None, None, \
            None


def _norm_backward(dy: Tensor, src: Tensor, src_is_xhat: bool, mean: Tensor,
                   rstd: Tensor, weight: Optional[Tensor], need_x: bool,
                   dtype: torch.dtype) -> Tuple[Optional[Tensor], ...]:
    """``dx`` (in ``dtype``) and the float32 (N, C) sums ``sum_hw(dy *
    xhat)``, ``sum_hw(dy)`` of GroupNorm(1): ``dx = rstd * (w dy -
    mean(w dy) - xhat * mean(w dy xhat))``, means over (C, H, W)."""
    dy = tk.like(dy, tk.channels_last(src))
    a, b = tk.normalize_reduce(dy, src, mean, rstd, src_is_xhat)
    dx = None
    if need_x:
        w = None if weight is None else weight.float()
        m = src[0].numel()
        ca = (a if w is None else a * w).sum(1) / m
        cb = (b if w is None else b * w).sum(1) / m
        dx = tk.normalize_grad_input(dy, src, mean, rstd, weight, ca, cb,
                                     src_is_xhat, dtype)
    return dx, a, b


class Normalize(torch.autograd.Function):
    """``(x - mean) * rstd`` with the GroupNorm(1) statistics of ``x`` given
    (from :class:`PoolMix`), and the gradient through them. It saves its
    output, ``xhat``, which the 1x1 convolution after it saves anyway."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
        y = tk.normalize(x, mean, rstd, None, None)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        y, rstd = ctx.saved_tensors
        dx = _norm_backward(grad, y, True, rstd, rstd, None,
                            ctx.needs_input_grad[0], y.dtype)[0]
        return dx, None, None


class GroupNorm1(torch.autograd.Function):
    """``Fp32GroupNorm`` with one group: statistics split over the GPU
    (:func:`~.triton_kernels.group_norm1_stats`), one pass to apply them,
    two in the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float) -> Tensor:
        mean, rstd = tk.group_norm1_stats(x, eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        return tk.normalize(x, mean, rstd, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dx, a, b = _norm_backward(grad, x, False, mean, rstd, weight,
                                  needs[0], x.dtype)
        grad_weight = _cast(a.sum(0), weight) if needs[1] else None
        grad_bias = _cast(b.sum(0), bias) if needs[2] else None
        return dx, grad_weight, grad_bias, None


class BiasAct(torch.autograd.Function):
    """``act(h + bias)`` after a bias-free 1x1 convolution: GELU (erf or
    tanh) or StarReLU ``scale * relu(z)^2 + beta`` with learnable scalars.
    It saves ``h`` (as the activation module saves its input)."""

    @staticmethod
    def forward(ctx, h: Tensor, bias: Optional[Tensor],
                star_scale: Optional[Tensor], star_bias: Optional[Tensor],
                act: str) -> Tensor:
        code = ACTIVATIONS[act]
        star = None if code != tp.STAR_RELU else (star_scale, star_bias)
        # StarReLU's (1, ) scalars promote, as in the module.
        dtype = h.dtype if star is None else _promote(h, *star)
        ctx.save_for_backward(h, bias, star_scale, star_bias)
        ctx.code = code
        return tp.bias_act_forward(h, bias, code, star, dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, bias, star_scale, star_bias = ctx.saved_tensors
        star = None if ctx.code != tp.STAR_RELU else (star_scale, star_bias)
        grad = tk.like(grad, tk.channels_last(h))
        dz, db, ds, dbeta = tp.bias_act_backward(grad, h, bias, ctx.code,
                                                 star)
        return (dz, _cast(db, bias), _cast(ds, star_scale),
                _cast(dbeta, star_bias), None)


class ScaleResidual(torch.autograd.Function):
    """``rs * x + ls * (y + b)`` (res-scale, layer scale, the bias of the
    1x1 convolution before: each per channel and optional) in one pass; its
    backward writes ``dx`` and ``dy`` only where a scale makes them differ
    from the output's gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, res_scale: Optional[Tensor],
                layer_scale: Optional[Tensor],
                bias: Optional[Tensor]) -> Tensor:
        cl = tk.channels_last(x)
        y = tk.like(y, cl)
        out = tp.scale_residual_forward(x, y, res_scale, layer_scale, bias,
                                        _promote(x, res_scale, y, layer_scale))
        ctx.save_for_backward(None if res_scale is None else x,
                              None if layer_scale is None else y, res_scale,
                              layer_scale, bias)
        ctx.dtypes = (x.dtype, y.dtype)
        ctx.cl = cl
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, res_scale, layer_scale, bias = ctx.saved_tensors
        grad = tk.like(grad, ctx.cl)
        dx = dy = grad_rs = grad_ls = gsum = None
        if not (res_scale is None and layer_scale is None and bias is None):
            dx, dy, grad_rs, grad_ls, gsum = tp.scale_residual_backward(
                grad, x, y, res_scale, layer_scale, bias)
        dx = grad.to(ctx.dtypes[0]) if dx is None else dx
        dy = grad.to(ctx.dtypes[1]) if dy is None else dy
        if gsum is not None and layer_scale is not None:
            gsum = gsum * layer_scale.float()
        return (dx, dy, _cast(grad_rs, res_scale), _cast(grad_ls, layer_scale),
                _cast(gsum, bias))
