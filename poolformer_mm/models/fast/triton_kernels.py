"""Triton kernels of the fused training path (``impl='triton'``).

Raw kernels and the launchers that allocate their outputs; the autograd
functions that chain them are in :mod:`.triton_functions`, the modules that
call those in :mod:`.triton_modules`. This module imports triton at its top
and is imported only when a Triton module first runs, so that
``import poolformer_mm`` works without triton, and so that the kernels are
defined after a test has set ``TRITON_INTERPRET=1`` (they are then run by
Triton's CPU interpreter, on CPU tensors: :data:`INTERPRETED`).

Every kernel but the statistics works on (N, C, H, W) maps, NCHW or
channels_last (``CL``), in tiles of ``BLOCK_C`` channels by ``BLOCK_P``
positions of one sample: grid ``(position blocks, channel blocks, N)``, so
that one or two samples of detection size still fill the GPU. They load any
of float32 / float16 / bfloat16, compute and accumulate in float32, and
store in the output's dtype. Reductions over positions (parameter
gradients, the sums of a norm's backward) are written per tile to a float32
buffer ``(N, position blocks, C)`` and summed by torch: no atomics, so the
results do not depend on the order the blocks run in.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# Whether the kernels are run by Triton's interpreter (on CPU tensors): fixed
# when they are defined, which is when this module is imported.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# Tile sizes. A tile holds about ``elements`` values; NCHW tiles run along
# the positions (contiguous there), channels_last tiles along the channels.
# Tests shrink them to exercise several tiles per sample; a GPU run may
# sweep them (docs/fast_paths.md).
TILE = dict(elements=2048, max_block_p=1024, max_block_c=128,
            stats_block=4096, finalize_block=1024, num_warps=4)

# Activations of :func:`bias_act_forward` (``ACT``).
GELU, GELU_TANH, STAR_RELU = 0, 1, 2


def serves(device: torch.device) -> bool:
    """Whether the kernels run on tensors of ``device``: CUDA when compiled,
    the CPU when interpreted."""
    return device.type == ('cpu' if INTERPRETED else 'cuda')


def channels_last(x: Tensor) -> bool:
    """Whether ``x`` is channels_last and not also NCHW-contiguous."""
    return (not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def like(t: Tensor, cl: bool) -> Tensor:
    """``t`` dense in the layout ``cl`` (a no-op when it already is)."""
    return t.contiguous(
        memory_format=torch.channels_last if cl else torch.contiguous_format)


class _Maps:
    """Layout, tile and grid of the (N, C, H, W) maps ``x``."""

    def __init__(self, x: Tensor) -> None:
        self.n, self.c, self.h, self.w = x.shape
        self.hw = self.h * self.w
        self.cl = channels_last(x)
        pow2 = triton.next_power_of_2
        if self.cl:
            self.block_c = min(pow2(self.c), TILE['max_block_c'])
            self.block_p = max(
                1, min(pow2(self.hw), TILE['elements'] // self.block_c))
        else:
            self.block_p = min(pow2(self.hw), TILE['max_block_p'])
            self.block_c = max(
                1, min(pow2(self.c), TILE['elements'] // self.block_p))
        self.p_blocks = triton.cdiv(self.hw, self.block_p)
        self.grid = (self.p_blocks, triton.cdiv(self.c, self.block_c), self.n)

    def meta(self) -> dict:
        return dict(CL=self.cl, BLOCK_C=self.block_c, BLOCK_P=self.block_p,
                    num_warps=TILE['num_warps'])

    def partials(self, x: Tensor, count: int = 1) -> Tuple[Tensor, ...]:
        """``count`` float32 buffers of per-tile channel sums."""
        return tuple(
            x.new_empty((self.n, self.p_blocks, self.c), dtype=torch.float32)
            for _ in range(count))


# ---------------------------------------------------------------------------
# Shared pieces of the kernels
# ---------------------------------------------------------------------------
@triton.jit
def _tile(C, HW, CL: tl.constexpr, BLOCK_C: tl.constexpr,
          BLOCK_P: tl.constexpr):
    """Channels, positions, their masks and the element offsets of this
    program's tile (offsets from the start of the tensor, int64)."""
    pid_p = tl.program_id(0)
    n = tl.program_id(2)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = p < HW
    if CL:
        inner = p[None, :] * C + c[:, None]
    else:
        inner = c[:, None] * HW + p[None, :]
    offs = n.to(tl.int64) * C * HW + inner
    return n, pid_p, c, p, cmask, pmask, cmask[:, None] & pmask[None, :], offs


@triton.jit
def _load_channel(PTR, c, cmask, HAS: tl.constexpr, default: tl.constexpr):
    """A per-channel parameter as a (BLOCK_C, 1) float32 column."""
    if HAS:
        v = tl.load(PTR + c, mask=cmask, other=default).to(tl.float32)
    else:
        v = tl.full(c.shape, default, tl.float32)
    return v[:, None]


@triton.jit
def _store_partial(PART, values, n, pid_p, c, cmask, C, P_BLOCKS):
    """Per-channel sums of a tile into the (N, P_BLOCKS, C) buffer."""
    tl.store(PART + (n * P_BLOCKS + pid_p) * C + c, values, mask=cmask)


@triton.jit
def _window_count(i, size, R: tl.constexpr):
    """Positions of the window of radius ``R`` around ``i`` inside
    ``[0, size)``."""
    return tl.minimum(i + R, size - 1) - tl.maximum(i - R, 0) + 1


@triton.jit
def _tile_stats(PART, idx, NT, values, mask):
    """Count, mean and sum of squared deviations of a tile's valid values,
    the mean and deviations taken within the tile (two passes in registers),
    into ``PART`` (3, N, T) at ``idx = n * T + t``."""
    count = tl.sum(mask.to(tl.float32))
    mean = tl.sum(tl.where(mask, values, 0.)) / tl.maximum(count, 1.)
    dev = tl.where(mask, values - mean, 0.)
    tl.store(PART + idx, count)
    tl.store(PART + NT + idx, mean)
    tl.store(PART + 2 * NT + idx, tl.sum(dev * dev))


# ---------------------------------------------------------------------------
# GroupNorm(1) statistics: tiles over each sample, then a finalize
# ---------------------------------------------------------------------------
@triton.jit
def _row_stats_kernel(X, PART, M, NT, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    n = tl.program_id(1)
    offs = t * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    x = tl.load(X + n.to(tl.int64) * M + offs, mask=mask, other=0.)
    _tile_stats(PART, n * tl.num_programs(0) + t, NT, x.to(tl.float32), mask)


@triton.jit
def _stats_finalize_kernel(PART, MEAN, RSTD, T, NT, eps, BLOCK: tl.constexpr):
    """Mean and ``1 / sqrt(var + eps)`` of sample ``n`` from its ``T`` tile
    statistics: the global mean first, then the tiles' squared deviations
    plus ``count * (tile mean - mean)^2`` (exact, and without the
    cancellation of ``E[x^2] - E[x]^2``)."""
    n = tl.program_id(0)
    acc_n = tl.zeros([BLOCK], tl.float32)
    acc_s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, T, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < T
        cnt = tl.load(PART + n * T + offs, mask=m, other=0.)
        mu = tl.load(PART + NT + n * T + offs, mask=m, other=0.)
        acc_n += cnt
        acc_s += cnt * mu
    total = tl.sum(acc_n)
    mean = tl.sum(acc_s) / total
    acc_m2 = tl.zeros([BLOCK], tl.float32)
    for start in range(0, T, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < T
        cnt = tl.load(PART + n * T + offs, mask=m, other=0.)
        mu = tl.load(PART + NT + n * T + offs, mask=m, other=0.)
        m2 = tl.load(PART + 2 * NT + n * T + offs, mask=m, other=0.)
        acc_m2 += m2 + cnt * (mu - mean) * (mu - mean)
    tl.store(MEAN + n, mean)
    tl.store(RSTD + n, 1. / tl.sqrt(tl.sum(acc_m2) / total + eps))


def finalize_stats(part: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Mean and rstd, (N, ) float32, from tile statistics (3, N, T)."""
    _, n, t = part.shape
    mean = part.new_empty(n)
    rstd = part.new_empty(n)
    block = min(triton.next_power_of_2(t), TILE['finalize_block'])
    _stats_finalize_kernel[(n, )](part, mean, rstd, t, n * t, eps,
                                  BLOCK=block)
    return mean, rstd


def group_norm1_stats(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """GroupNorm(1) statistics split over the GPU: tiles of
    ``TILE['stats_block']`` elements of every sample, then a finalize.

    Args:
        x (Tensor): Dense (N, ...) maps, any layout (a sample is one
            contiguous run), float32 / float16 / bfloat16.
        eps (float): Added to the variance.

    Returns:
        Tuple[Tensor, Tensor]: Mean and ``1 / sqrt(var + eps)``, float32
        (N, ).
    """
    n = x.shape[0]
    m = x[0].numel()
    block = min(triton.next_power_of_2(m), TILE['stats_block'])
    t = triton.cdiv(m, block)
    part = x.new_empty((3, n, t), dtype=torch.float32)
    _row_stats_kernel[(t, n)](x, part, m, n * t, BLOCK=block,
                              num_warps=TILE['num_warps'])
    return finalize_stats(part, eps)


# ---------------------------------------------------------------------------
# The token mixer: rs * x + s * (P x - x)
# ---------------------------------------------------------------------------
@triton.jit
def _pool_mix_fwd_kernel(X, OUT, SCALE, RS, PART, C, H, W, NT,
                         HAS_RS: tl.constexpr, STATS: tl.constexpr,
                         R: tl.constexpr, CL: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    HW = H * W
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    row = p // W
    col = p - row * W
    if CL:
        step = C
    else:
        step = 1
    x = tl.load(X + offs, mask=mask, other=0.).to(tl.float32)
    # The window sum, from shifted loads (neighbours are in L1 / L2).
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for i in tl.static_range(2 * R + 1):
        rr = row + (i - R)
        row_ok = pmask & (rr >= 0) & (rr < H)
        for j in tl.static_range(2 * R + 1):
            cc = col + (j - R)
            ok = row_ok & (cc >= 0) & (cc < W)
            shift = ((i - R) * W + (j - R)) * step
            acc += tl.load(X + offs + shift, mask=cmask[:, None] & ok[None, :],
                           other=0.).to(tl.float32)
    count = _window_count(row, H, R) * _window_count(col, W, R)
    count = tl.where(pmask, count, 1).to(tl.float32)
    s = tl.load(SCALE + n * C + c, mask=cmask, other=0.)
    rs = _load_channel(RS, c, cmask, HAS_RS, 1.)
    out = rs * x + s[:, None] * (acc / count[None, :] - x)
    out = out.to(OUT.dtype.element_ty)
    tl.store(OUT + offs, out, mask=mask)
    if STATS:
        # Statistics of the next norm, of the values as stored.
        _tile_stats(PART, n * (tl.num_programs(0) * tl.num_programs(1)) +
                    pid_p * tl.num_programs(1) + tl.program_id(1), NT,
                    out.to(tl.float32), mask)


@triton.jit
def _pool_mix_bwd_kernel(G, X, DX, SCALE, RS, MEAN, COEF, PT, PU, C, H, W,
                         P_BLOCKS, REDUCE: tl.constexpr, HAS_RS: tl.constexpr,
                         R: tl.constexpr, CL: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``REDUCE``: per-tile ``t = sum(Q * x)`` and ``u = sum(G * x)`` over
    positions; otherwise ``dx = rs * G + s * Q + coef * (x - mean)``, with
    ``Q = P^T G - G``; ``P^T G`` is the window sum of ``G / count`` (the
    window is symmetric)."""
    HW = H * W
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    row = p // W
    col = p - row * W
    if CL:
        step = C
    else:
        step = 1
    g = tl.load(G + offs, mask=mask, other=0.).to(tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for i in tl.static_range(2 * R + 1):
        rr = row + (i - R)
        row_ok = pmask & (rr >= 0) & (rr < H)
        row_count = _window_count(rr, H, R)
        for j in tl.static_range(2 * R + 1):
            cc = col + (j - R)
            ok = row_ok & (cc >= 0) & (cc < W)
            count = tl.where(ok, row_count * _window_count(cc, W, R), 1)
            shift = ((i - R) * W + (j - R)) * step
            acc += tl.load(G + offs + shift, mask=cmask[:, None] & ok[None, :],
                           other=0.).to(tl.float32) / count.to(
                               tl.float32)[None, :]
    q = acc - g
    x = tl.load(X + offs, mask=mask, other=0.).to(tl.float32)
    if REDUCE:
        _store_partial(PT, tl.sum(q * x, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
        if HAS_RS:
            _store_partial(PU, tl.sum(g * x, axis=1), n, pid_p, c, cmask, C,
                           P_BLOCKS)
    else:
        s = tl.load(SCALE + n * C + c, mask=cmask, other=0.)
        rs = _load_channel(RS, c, cmask, HAS_RS, 1.)
        mean = tl.load(MEAN + n)
        coef = tl.load(COEF + n)
        dx = rs * g + s[:, None] * q + coef * (x - mean)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


def pool_mix_forward(
        x: Tensor, scale: Tensor, res_scale: Optional[Tensor], radius: int,
        out_dtype: torch.dtype, stats_eps: Optional[float]
) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
    """PoolFormer's token mixer after its folded norm, one pass.

    Args:
        x (Tensor): Dense (N, C, H, W) maps, NCHW or channels_last.
        scale (Tensor): ``s = ls * g * rstd``, float32 (N, C) contiguous.
        res_scale (Tensor, optional): ``rs`` (C, ), or None for 1.
        radius (int): Half the (odd) pooling window.
        out_dtype (torch.dtype): The output's dtype.
        stats_eps (float, optional): With a value, the GroupNorm(1)
            statistics of the output (as stored) with this eps as well.

    Returns:
        Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]: ``rs * x + s * (P x
        - x)`` in ``x``'s layout (``P`` the window average without
        padding), and the (mean, rstd) of it or None.
    """
    maps = _Maps(x)
    out = torch.empty_like(x, dtype=out_dtype)
    nt = maps.n * maps.grid[0] * maps.grid[1]
    part = (x.new_empty((3, nt), dtype=torch.float32)
            if stats_eps is not None else scale)
    _pool_mix_fwd_kernel[maps.grid](
        x, out, scale, x if res_scale is None else res_scale, part, maps.c,
        maps.h, maps.w, nt, HAS_RS=res_scale is not None,
        STATS=stats_eps is not None, R=radius, **maps.meta())
    if stats_eps is None:
        return out, None
    return out, finalize_stats(part.view(3, maps.n, -1), stats_eps)


def pool_mix_reduce(grad: Tensor, x: Tensor, radius: int,
                    with_u: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``t = sum_hw((P^T - I) G * x)`` and (``with_u``) ``u = sum_hw(G *
    x)``, each (N, C) float32; ``grad`` in the layout of ``x``."""
    maps = _Maps(x)
    pt, pu = maps.partials(x, 2) if with_u else (maps.partials(x)[0], None)
    _pool_mix_bwd_kernel[maps.grid](
        grad, x, x, x, x, x, x, pt, pt if pu is None else pu, maps.c, maps.h,
        maps.w, maps.p_blocks, REDUCE=True, HAS_RS=with_u, R=radius,
        **maps.meta())
    return pt.sum(1), None if pu is None else pu.sum(1)


def pool_mix_grad_input(grad: Tensor, x: Tensor, scale: Tensor,
                        res_scale: Optional[Tensor], mean: Tensor,
                        coef: Tensor, radius: int) -> Tensor:
    """``dx = rs * G + s * (P^T - I) G + coef * (x - mean)``, in ``x``'s
    dtype and layout."""
    maps = _Maps(x)
    dx = torch.empty_like(x)
    _pool_mix_bwd_kernel[maps.grid](
        grad, x, dx, scale, x if res_scale is None else res_scale, mean, coef,
        scale, scale, maps.c, maps.h, maps.w, maps.p_blocks, REDUCE=False,
        HAS_RS=res_scale is not None, R=radius, **maps.meta())
    return dx


# ---------------------------------------------------------------------------
# GroupNorm(1) apply and backward
# ---------------------------------------------------------------------------
@triton.jit
def _normalize_fwd_kernel(X, Y, MEAN, RSTD, WEIGHT, BIAS, C, HW,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                          CL: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    x = tl.load(X + offs, mask=mask, other=0.).to(tl.float32)
    y = (x - tl.load(MEAN + n)) * tl.load(RSTD + n)
    y = (y * _load_channel(WEIGHT, c, cmask, HAS_W, 1.) +
         _load_channel(BIAS, c, cmask, HAS_B, 0.))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _normalize_bwd_kernel(DY, SRC, DX, MEAN, RSTD, WEIGHT, CA, CB, PA, PB, C,
                          HW, P_BLOCKS, REDUCE: tl.constexpr,
                          SRC_IS_XHAT: tl.constexpr, HAS_W: tl.constexpr,
                          CL: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    """``REDUCE``: per-tile ``sum(dy * xhat)`` and ``sum(dy)`` over
    positions; otherwise ``dx = rstd * (w * dy - ca * xhat - cb)``.
    ``SRC`` is ``xhat`` itself or the input ``x``."""
    n, pid_p, c, p, cmask, pmask, mask, offs = _tile(C, HW, CL, BLOCK_C,
                                                     BLOCK_P)
    dy = tl.load(DY + offs, mask=mask, other=0.).to(tl.float32)
    src = tl.load(SRC + offs, mask=mask, other=0.).to(tl.float32)
    rstd = tl.load(RSTD + n)
    if SRC_IS_XHAT:
        xhat = src
    else:
        xhat = tl.where(mask, (src - tl.load(MEAN + n)) * rstd, 0.)
    if REDUCE:
        _store_partial(PA, tl.sum(dy * xhat, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
        _store_partial(PB, tl.sum(dy, axis=1), n, pid_p, c, cmask, C,
                       P_BLOCKS)
    else:
        d = dy * _load_channel(WEIGHT, c, cmask, HAS_W, 1.)
        dx = rstd * (d - tl.load(CA + n) * xhat - tl.load(CB + n))
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


def normalize(x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
              bias: Optional[Tensor]) -> Tensor:
    """``(x - mean) * rstd * weight + bias`` in ``x``'s dtype and layout."""
    maps = _Maps(x)
    y = torch.empty_like(x)
    _normalize_fwd_kernel[maps.grid](
        x, y, mean, rstd, x if weight is None else weight,
        x if bias is None else bias, maps.c, maps.hw,
        HAS_W=weight is not None, HAS_B=bias is not None, **maps.meta())
    return y


def normalize_reduce(dy: Tensor, src: Tensor, mean: Tensor, rstd: Tensor,
                     src_is_xhat: bool) -> Tuple[Tensor, Tensor]:
    """``sum_hw(dy * xhat)`` and ``sum_hw(dy)``, each (N, C) float32."""
    maps = _Maps(src)
    pa, pb = maps.partials(src, 2)
    _normalize_bwd_kernel[maps.grid](
        dy, src, src, mean, rstd, src, src, src, pa, pb, maps.c, maps.hw,
        maps.p_blocks, REDUCE=True, SRC_IS_XHAT=src_is_xhat, HAS_W=False,
        **maps.meta())
    return pa.sum(1), pb.sum(1)


def normalize_grad_input(dy: Tensor, src: Tensor, mean: Tensor, rstd: Tensor,
                         weight: Optional[Tensor], ca: Tensor, cb: Tensor,
                         src_is_xhat: bool, dtype: torch.dtype) -> Tensor:
    """``rstd * (w * dy - ca * xhat - cb)`` in ``dtype``, ``src``'s layout."""
    maps = _Maps(src)
    dx = torch.empty_like(src, dtype=dtype)
    _normalize_bwd_kernel[maps.grid](
        dy, src, dx, mean, rstd, src if weight is None else weight, ca, cb,
        ca, ca, maps.c, maps.hw, maps.p_blocks, REDUCE=False,
        SRC_IS_XHAT=src_is_xhat, HAS_W=weight is not None, **maps.meta())
    return dx
