"""The modules of ``impl='triton'``: fused Triton training kernels for the
memory-bound passes of the MetaFormer blocks, with the same parameters.

The kernels (:mod:`.triton_kernels`, :mod:`.triton_pointwise`) and their
autograd functions (:mod:`.triton_functions`) are imported when a module
here first runs, never at ``import poolformer_mm``: triton is optional
(:func:`require_triton` says what is missing), and Triton's CPU
interpreter (``TRITON_INTERPRET=1``, for the tests) must be chosen before
the kernels are defined. Each module serves float32 / float16 / bfloat16
(N, C, H, W) maps, NCHW or channels_last, on CUDA (on the CPU when the
kernels are interpreted), outside tracing, export and ``torch.compile``
(:func:`serves`), and runs the reference ``forward`` for every other input,
as it does in training with stochastic depth or dropout:

- :class:`TritonPoolBlock`, PoolFormer's and PoolFormerV2's blocks: the
  token-mixing half ``rs1 * x + ls1 * (pool(n1(x)) - n1(x))`` is one pass
  after the statistics of ``n1`` (``triton_functions.PoolMix``), which also
  gathers those of ``n2``; ``n2`` is one normalising pass whose affine is
  folded into ``fc1`` (``W g`` and ``W b + bias``, so autograd gives
  ``g``'s and ``b``'s gradients); ``fc1`` runs without its bias, which is
  added in the activation's pass; ``fc2``'s bias, ``ls2`` and ``rs2`` are
  one residual pass.
- :class:`TritonResidualBlock`, any other block of maps (IdentityFormer,
  RandFormer, ConvFormer): both residual sums with their scales, one pass
  each.
- :class:`TritonGroupNorm1`: other GroupNorm(1)s of maps.
- :class:`TritonMlp` (bias + GELU / StarReLU after ``fc1``) and
  :class:`TritonSepConv` (StarReLU after ``pwconv1``) elsewhere.

docs/fast_paths.md has the design, the tests and what a GPU still checks.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..backbones.layers import (Fp32GroupNorm, MetaFormerBlock, Mlp, Pooling,
                                SepConv, StarReLU)
from .patterns import (channel_scale, is_group_norm1, is_pointwise_conv,
                       pool_window)
from .tracing import is_recording

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FUNCTIONS = None


def require_triton() -> None:
    """Raise ``ImportError`` naming what is missing when triton cannot be
    imported (it is optional: e.g. no wheel for the platform)."""
    try:
        import triton  # noqa: F401
    except Exception as err:  # a broken install raises more than ImportError
        raise ImportError(
            "impl='triton' needs the `triton` package, which cannot be "
            f'imported here ({type(err).__name__}: {err}). Install the '
            'triton that matches your torch (CUDA wheels of torch on Linux '
            "ship it; else `pip install triton`), or use impl='auto'."
        ) from err


def _functions():
    """:mod:`.triton_functions`, imported (with the kernels) on first use."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        require_triton()
        from . import triton_functions
        _FUNCTIONS = triton_functions
    return _FUNCTIONS


def serves(x: Tensor) -> bool:
    """Whether the Triton modules serve ``x``: non-empty dense (N, C, H, W)
    maps of float32 / float16 / bfloat16 on the kernels' device, outside
    tracing, export and ``torch.compile``."""
    return (x.dim() == 4 and x.dtype in _DTYPES and x.numel() > 0
            and x.numel() // x.shape[0] < 2**31 and not is_recording()
            and (x.is_contiguous()
                 or x.is_contiguous(memory_format=torch.channels_last))
            and _functions().tk.serves(x.device))


def activation(act: nn.Module) -> Optional[str]:
    """The fused kernel's name of an activation module, None if none."""
    if type(act) is StarReLU:
        return 'star_relu'
    if type(act) is nn.GELU:
        return {'none': 'gelu', 'tanh': 'gelu_tanh'}.get(act.approximate)
    return None


def bias_act(h: Tensor, bias: Optional[Tensor], act: nn.Module) -> Tensor:
    """``act(h + bias)`` in one pass (``act`` fits :func:`activation`)."""
    name = activation(act)
    star = (act.scale, act.bias) if name == 'star_relu' else (None, None)
    return _functions().BiasAct.apply(h, bias, *star, name)


def fits_mlp(mlp: nn.Module) -> bool:
    """An :class:`Mlp` of 1x1 convolutions around a fused activation."""
    return (type(mlp) is Mlp and activation(mlp.act) is not None
            and is_pointwise_conv(mlp.fc1) and is_pointwise_conv(mlp.fc2))


def _fits_gn1(norm: nn.Module) -> bool:
    return type(norm) is Fp32GroupNorm and is_group_norm1(norm)


def _drops_paths(block: MetaFormerBlock) -> bool:
    """Whether the block drops paths now (stochastic depth in training)."""
    return block.training and not isinstance(block.drop_path, nn.Identity)


class TritonPoolBlock(MetaFormerBlock):
    """A PoolFormer / PoolFormerV2 :class:`MetaFormerBlock` (pooling mixer,
    GroupNorm(1) norms, a fitting :class:`Mlp`, per-channel or no scales) in
    five fused passes plus the two 1x1 convolutions (see the module
    docstring)."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return (type(module) is MetaFormerBlock
                and type(module.token_mixer) is Pooling
                and pool_window(module.token_mixer.pool) is not None
                and _fits_gn1(module.norm1) and _fits_gn1(module.norm2)
                and all(
                    channel_scale(s)[0]
                    for s in (module.layer_scale1, module.res_scale1,
                              module.layer_scale2, module.res_scale2))
                and fits_mlp(module.mlp))

    def forward(self, x: Tensor) -> Tensor:
        if (_drops_paths(self) or (self.training and self.mlp.drop.p > 0)
                or not serves(x)):
            return super().forward(x)
        fn = _functions()
        norm1, norm2, mlp = self.norm1, self.norm2, self.mlp
        x, mean, rstd = fn.PoolMix.apply(
            x, norm1.weight, norm1.bias,
            channel_scale(self.layer_scale1)[1],
            channel_scale(self.res_scale1)[1],
            pool_window(self.token_mixer.pool), float(norm1.eps),
            float(norm2.eps))
        xhat = fn.Normalize.apply(x, mean, rstd)
        weight, bias = fold_affine(mlp.fc1.weight, mlp.fc1.bias, norm2.weight,
                                   norm2.bias)
        hidden = bias_act(F.conv2d(xhat, weight), bias, mlp.act)
        return fn.ScaleResidual.apply(x, F.conv2d(hidden, mlp.fc2.weight),
                                      channel_scale(self.res_scale2)[1],
                                      channel_scale(self.layer_scale2)[1],
                                      mlp.fc2.bias)


def fold_affine(weight: Tensor, bias: Optional[Tensor],
                norm_weight: Optional[Tensor],
                norm_bias: Optional[Tensor]) -> tuple:
    """A 1x1 convolution of a norm's output ``g * xhat + b`` as one of
    ``xhat``, in autograd (so that ``g`` and ``b`` get their gradients).

    Args:
        weight (Tensor): The convolution's weight (O, C, 1, 1).
        bias (Tensor, optional): Its bias (O, ), or None.
        norm_weight (Tensor, optional): The norm's ``g`` (C, ), or None.
        norm_bias (Tensor, optional): The norm's ``b`` (C, ), or None.

    Returns:
        tuple: ``weight * g`` and ``weight @ b + bias`` (None without
        either bias; float32, as a matrix product would be cast down under
        autocast).
    """
    folded = weight
    if norm_weight is not None:
        folded = weight * norm_weight.to(weight.dtype).view(1, -1, 1, 1)
    if norm_bias is not None:
        shift = (weight.flatten(1).float() * norm_bias.float()).sum(1)
        bias = shift if bias is None else bias.float() + shift
    return folded, bias


class TritonResidualBlock(MetaFormerBlock):
    """Any other :class:`MetaFormerBlock` of maps: each half's
    ``rs * x + ls * branch`` is one pass (``ScaleResidual``); the norms,
    mixer and MLP run as modules (which may be Triton ones too)."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return (type(module) is MetaFormerBlock and all(
            channel_scale(s)[0]
            for s in (module.layer_scale1, module.res_scale1,
                      module.layer_scale2, module.res_scale2)))

    def forward(self, x: Tensor) -> Tensor:
        if _drops_paths(self) or not serves(x):
            return super().forward(x)
        fn = _functions()
        halves = ((self.norm1, self.token_mixer, self.res_scale1,
                   self.layer_scale1),
                  (self.norm2, self.mlp, self.res_scale2, self.layer_scale2))
        for norm, branch, res_scale, layer_scale in halves:
            x = fn.ScaleResidual.apply(x, branch(norm(x)),
                                       channel_scale(res_scale)[1],
                                       channel_scale(layer_scale)[1], None)
        return x


class TritonGroupNorm1(Fp32GroupNorm):
    """``Fp32GroupNorm`` with one group: split statistics, one pass to
    normalise, two for the backward (``triton_functions.GroupNorm1``)."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return _fits_gn1(module)

    def forward(self, x: Tensor) -> Tensor:
        if not serves(x):
            return super().forward(x)
        return _functions().GroupNorm1.apply(x, self.weight, self.bias,
                                             float(self.eps))


class TritonMlp(Mlp):
    """:class:`Mlp` of 1x1 convolutions whose ``fc1`` bias and activation
    are one pass (forward and backward)."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return fits_mlp(module)

    def forward(self, x: Tensor) -> Tensor:
        if (self.training and self.drop.p > 0) or not serves(x):
            return super().forward(x)
        hidden = bias_act(F.conv2d(x, self.fc1.weight), self.fc1.bias,
                          self.act)
        return self.fc2(hidden)


class TritonSepConv(SepConv):
    """ConvFormer's :class:`SepConv` whose ``pwconv1`` bias and activation
    (StarReLU) are one pass; the depthwise and second 1x1 convolutions run
    as modules."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return (type(module) is SepConv and is_pointwise_conv(module.pwconv1)
                and activation(module.act1) is not None
                and isinstance(module.act2, nn.Identity))

    def forward(self, x: Tensor) -> Tensor:
        if not serves(x):
            return super().forward(x)
        hidden = bias_act(F.conv2d(x, self.pwconv1.weight),
                          self.pwconv1.bias, self.act1)
        return self.pwconv2(self.dwconv(hidden))


# Tried in this order on every module (blocks before the modules inside).
TRITON_MODULES = (TritonPoolBlock, TritonResidualBlock, TritonGroupNorm1,
                  TritonMlp, TritonSepConv)
