"""Triton kernels of the elementwise passes of the fused training path:
bias + activation after a 1x1 convolution, and the scaled residual sum.

Same conventions as :mod:`.triton_kernels` (tiles of (N, C, H, W) maps,
float32 arithmetic, per-tile partial sums for the parameter gradients), and
imported as lazily.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_kernels import (GELU, GELU_TANH, STAR_RELU, _load_channel,
                             _Maps, _store_partial, _tile)


@triton.jit
def _tanh(u):
    # From exp, which every backend and the interpreter have (exp overflows
    # to inf for large u, giving 1).
    return 1. - 2. / (tl.exp(2. * u) + 1.)


@triton.jit
def _bias_act_fwd_kernel(H, A, BIAS, STAR, C, HW, HAS_BIAS: tl.constexpr,
                         ACT: tl.constexpr, CL: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    z = tl.load(H + offs, mask=mask, other=0.).to(tl.float32)
    z += _load_channel(BIAS, c, cmask, HAS_BIAS, 0.)
    # Constants as literals (1 / sqrt(2); sqrt(2 / pi) and 0.044715 of the
    # tanh approximation): globals in a kernel would have to be constexpr.
    if ACT == 0:
        a = 0.5 * z * (1. + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 1:
        a = 0.5 * z * (1. + _tanh(
            (z + 0.044715 * z * z * z) * 0.7978845608028654))
    else:
        r = tl.maximum(z, 0.)
        a = tl.load(STAR).to(tl.float32) * r * r + tl.load(STAR + 1).to(
            tl.float32)
    tl.store(A + offs, a.to(A.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(G, H, DZ, BIAS, STAR, PB, PS, PBETA, C, HW, P_BLOCKS,
                         HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                         CL: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_P: tl.constexpr):
    """``dz = G * act'(h + bias)``; per-tile sums of ``dz`` (bias) and, for
    StarReLU, of ``G * relu(z)^2`` (scale) and ``G`` (its bias)."""
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    g = tl.load(G + offs, mask=mask, other=0.).to(tl.float32)
    z = tl.load(H + offs, mask=mask, other=0.).to(tl.float32)
    z += _load_channel(BIAS, c, cmask, HAS_BIAS, 0.)
    if ACT == 0:
        # Phi(z) + z * phi(z); 1 / sqrt(2 pi) = 0.3989...
        cdf = 0.5 * (1. + tl.math.erf(z * 0.7071067811865476))
        dz = g * (cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z))
    elif ACT == 1:
        t = _tanh((z + 0.044715 * z * z * z) * 0.7978845608028654)
        du = (1. + 0.134145 * z * z) * 0.7978845608028654  # 3 * 0.044715
        dz = g * (0.5 * (1. + t) + 0.5 * z * (1. - t * t) * du)
    else:
        r = tl.maximum(z, 0.)
        dz = g * (2. * tl.load(STAR).to(tl.float32) * r)
        _store_partial(PS, tl.sum(g * r * r, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
        _store_partial(PBETA, tl.sum(g, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
    dz = tl.where(mask, dz, 0.)
    tl.store(DZ + offs, dz.to(DZ.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        _store_partial(PB, tl.sum(dz, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)


def _star(star: Optional[Tuple[Tensor, Tensor]], like: Tensor) -> Tensor:
    """StarReLU's (scale, bias) as one float32 (2, ) tensor."""
    if star is None:
        return like
    return torch.cat([t.reshape(1) for t in star]).float()


def bias_act_forward(h: Tensor, bias: Optional[Tensor], act: int,
                     star: Optional[Tuple[Tensor, Tensor]],
                     out_dtype: torch.dtype) -> Tensor:
    """Bias and activation after a bias-free 1x1 convolution, one pass.

    Args:
        h (Tensor): Dense (N, C, H, W) maps, NCHW or channels_last.
        bias (Tensor, optional): Per-channel bias (C, ), or None.
        act (int): :data:`GELU`, :data:`GELU_TANH` or :data:`STAR_RELU`.
        star (Tuple[Tensor, Tensor], optional): StarReLU's scale and bias
            (one element each); None for GELU.
        out_dtype (torch.dtype): The output's dtype.

    Returns:
        Tensor: ``act(h + bias)`` in ``h``'s layout.
    """
    maps = _Maps(h)
    a = torch.empty_like(h, dtype=out_dtype)
    _bias_act_fwd_kernel[maps.grid](
        h, a, h if bias is None else bias, _star(star, h), maps.c, maps.hw,
        HAS_BIAS=bias is not None, ACT=act, **maps.meta())
    return a


def bias_act_backward(
    grad: Tensor, h: Tensor, bias: Optional[Tensor], act: int,
    star: Optional[Tuple[Tensor, Tensor]]
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The gradients of :func:`bias_act_forward`: ``dz`` (``h``'s dtype and
    layout), and float32 sums: the bias's (C, ), StarReLU's scale and bias
    (scalars), each None where absent."""
    maps = _Maps(h)
    dz = torch.empty_like(h)
    pb, ps, pbeta = maps.partials(h, 3)
    _bias_act_bwd_kernel[maps.grid](
        grad, h, dz, h if bias is None else bias, _star(star, h), pb, ps,
        pbeta, maps.c, maps.hw, maps.p_blocks, HAS_BIAS=bias is not None,
        ACT=act, **maps.meta())
    grad_bias = pb.sum((0, 1)) if bias is not None else None
    if act != STAR_RELU:
        return dz, grad_bias, None, None
    return dz, grad_bias, ps.sum(), pbeta.sum()


@triton.jit
def _scale_residual_fwd_kernel(X, Y, OUT, RS, LS, B, C, HW,
                               HAS_RS: tl.constexpr, HAS_LS: tl.constexpr,
                               HAS_B: tl.constexpr, CL: tl.constexpr,
                               BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    x = tl.load(X + offs, mask=mask, other=0.).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.).to(tl.float32)
    y = (y + _load_channel(B, c, cmask, HAS_B, 0.)) * _load_channel(
        LS, c, cmask, HAS_LS, 1.)
    out = x * _load_channel(RS, c, cmask, HAS_RS, 1.) + y
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _scale_residual_bwd_kernel(G, X, Y, DX, DY, RS, LS, B, PRS, PLS, PG, C, HW,
                               P_BLOCKS, HAS_RS: tl.constexpr,
                               HAS_LS: tl.constexpr, HAS_B: tl.constexpr,
                               CL: tl.constexpr, BLOCK_C: tl.constexpr,
                               BLOCK_P: tl.constexpr):
    """``dx = rs * G``, ``dy = ls * G`` (written only with ``rs`` / ``ls``)
    and per-tile sums of ``G * x`` (rs), ``G * (y + b)`` (ls), ``G`` (b)."""
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    g = tl.load(G + offs, mask=mask, other=0.).to(tl.float32)
    if HAS_RS:
        x = tl.load(X + offs, mask=mask, other=0.).to(tl.float32)
        rs = _load_channel(RS, c, cmask, HAS_RS, 1.)
        tl.store(DX + offs, (g * rs).to(DX.dtype.element_ty), mask=mask)
        _store_partial(PRS, tl.sum(g * x, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
    if HAS_LS:
        y = tl.load(Y + offs, mask=mask, other=0.).to(tl.float32)
        y += _load_channel(B, c, cmask, HAS_B, 0.)
        ls = _load_channel(LS, c, cmask, HAS_LS, 1.)
        tl.store(DY + offs, (g * ls).to(DY.dtype.element_ty), mask=mask)
        _store_partial(PLS, tl.sum(g * y, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
    if HAS_B:
        _store_partial(PG, tl.sum(g, axis=1), n, pid_p, c, cmask, C, P_BLOCKS)


def scale_residual_forward(x: Tensor, y: Tensor, res_scale: Optional[Tensor],
                           layer_scale: Optional[Tensor],
                           bias: Optional[Tensor],
                           out_dtype: torch.dtype) -> Tensor:
    """The scaled residual sum of a block half, one pass.

    Args:
        x (Tensor): The shortcut, dense (N, C, H, W) maps.
        y (Tensor): The branch, in ``x``'s shape and layout.
        res_scale (Tensor, optional): ``rs`` (C, ), or None for 1.
        layer_scale (Tensor, optional): ``ls`` (C, ), or None for 1.
        bias (Tensor, optional): ``b`` (C, ) added to ``y``, or None.
        out_dtype (torch.dtype): The output's dtype.

    Returns:
        Tensor: ``rs * x + ls * (y + b)`` in ``x``'s layout.
    """
    maps = _Maps(x)
    out = torch.empty_like(x, dtype=out_dtype)
    _scale_residual_fwd_kernel[maps.grid](
        x, y, out, *(x if t is None else t
                     for t in (res_scale, layer_scale, bias)), maps.c, maps.hw,
        HAS_RS=res_scale is not None, HAS_LS=layer_scale is not None,
        HAS_B=bias is not None, **maps.meta())
    return out


def scale_residual_backward(
        grad: Tensor, x: Optional[Tensor], y: Optional[Tensor],
        res_scale: Optional[Tensor], layer_scale: Optional[Tensor],
        bias: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """``(dx, dy, d rs, d ls, sum G)`` of :func:`scale_residual_forward`,
    ``grad`` in the layout of the inputs: ``dx`` / ``dy`` only with ``rs`` /
    ``ls`` (else they are ``G`` itself, left to the caller), the sums
    float32 (C, ), None where absent. ``x`` is needed only with ``rs``,
    ``y`` only with ``ls``."""
    maps = _Maps(grad)
    has_rs, has_ls = res_scale is not None, layer_scale is not None
    dx = torch.empty_like(x) if has_rs else None
    dy = torch.empty_like(y) if has_ls else None
    prs, pls, pg = maps.partials(grad, 3)
    _scale_residual_bwd_kernel[maps.grid](
        grad, *(grad if t is None else t
                for t in (x, y, dx, dy, res_scale, layer_scale, bias)),
        prs, pls, pg, maps.c, maps.hw, maps.p_blocks, HAS_RS=has_rs,
        HAS_LS=has_ls, HAS_B=bias is not None, **maps.meta())
    return (dx, dy, prs.sum((0, 1)) if has_rs else None,
            pls.sum((0, 1)) if has_ls else None,
            pg.sum((0, 1)) if bias is not None else None)


__all__ = [
    'GELU', 'GELU_TANH', 'STAR_RELU', 'bias_act_forward', 'bias_act_backward',
    'scale_residual_forward', 'scale_residual_backward'
]
