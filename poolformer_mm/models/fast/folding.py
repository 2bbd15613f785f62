"""What a PoolFormer block folds into for inference (``impl='deploy'``).

A PoolFormer block is

.. code-block:: none

    x = r1 * x + ls1 * (pool(n1(x)) - n1(x))     n1 = GroupNorm(1): g1*z1 + b1
    x = r2 * x + ls2 * fc2(act(fc1(n2(x))))      n2 = GroupNorm(1): g2*z2 + b2

with ``z = (x - mean(x)) * rstd(x)`` over (C, H, W) of each sample, the
res-scales ``r1``, ``r2`` being 1 in PoolFormer (v1). In eval mode
everything except the two sets of statistics folds into constants:

- token mixer: the average (``count_include_pad=False``) of a per-channel
  constant is that constant, so ``b1`` and the mean cancel in
  ``pool(y) - y``, and the branch becomes ``x + a * (pool(x) - x)`` with the
  per-channel, per-sample ``a = ls1 * g1 * rstd1``;
- channel MLP: ``g2`` and ``b2`` fold into ``fc1`` (``W1 * g2``,
  ``c1 + W1 b2``) and ``ls2`` into ``fc2`` (``ls2 * W2``, ``ls2 * c2``), so
  only the affine-free ``z2`` is computed.

:func:`fold_block` computes these constants (:class:`FoldedConstants`) once
per set of parameters, whatever the device; :mod:`.folded` runs them with the
kernels of each device and holds the deploy modules.
"""
from collections import OrderedDict
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .patterns import pool_window


class PackCache:
    """Weights re-laid out for an input shape (by oneDNN on CPU), per shape.

    A shape's weights are reordered the second time it is seen (the first
    call runs on the plain weights, so that inputs of ever-changing sizes
    pay no reorder), and the weights of at most ``max_shapes`` shapes are
    kept, the least recently used going first.
    """

    max_shapes = 2

    def __init__(self) -> None:
        self._entries: 'OrderedDict[Tuple, object]' = OrderedDict()

    def get(self, shape: Tuple, make: Callable[[], object]):
        """The packed weights for ``shape``, or None on its first sight."""
        entries = self._entries
        if shape not in entries:
            entries[shape] = None  # seen once
            packed = None
            first = True
        else:
            first = False
            packed = entries[shape]
            if packed is None:
                packed = entries[shape] = make()
        entries.move_to_end(shape)
        while len(entries) > 2 * self.max_shapes:
            entries.popitem(last=False)
        held = [k for k, v in entries.items() if v is not None]
        for key in held[:-self.max_shapes]:
            entries[key] = None
        return None if first else packed


class FoldedConstants:
    """Constants of one folded block (plain tensors, no autograd).

    Attributes:
        pool_size (int): Window of the average pooling.
        mix_scale (Tensor): ``ls1 * g1``, shape (1, C, 1, 1).
        res_scale1 (Tensor, optional): ``r1``, shape (1, C, 1, 1); None for
            no res-scale.
        res_scale2 (Tensor, optional): ``r2``, likewise.
        eps1 (float): eps of ``norm1``.
        eps2 (float): eps of ``norm2``.
        fc1_weight (Tensor): ``W1 * g2``, shape (hidden, C, 1, 1).
        fc1_bias (Tensor): ``c1 + W1 b2``, shape (hidden, ).
        act (nn.Module): The MLP's element-wise activation.
        fc2_weight (Tensor): ``ls2 * W2``, shape (C, hidden, 1, 1).
        fc2_bias (Tensor): ``ls2 * c2``, shape (C, ).
        fc2_unscaled_weight (Tensor): ``W2`` (the parameter itself), for
            low-precision convolutions: ``ls2 * W2`` would underflow in
            float16 with layer scales near their initial 1e-5. Off the CPU
            only, as the next two.
        fc2_unscaled_bias (Tensor): ``c2``, shape (C, ).
        mlp_scale (Tensor, optional): ``ls2``, shape (1, C, 1, 1); None for
            no layer scale.
        packed (PackCache): oneDNN-reordered ``fc1`` / ``fc2`` weights.
        casts (dict): The tensors that the blocks use off the CPU, per
            dtype pair (:meth:`cast`).
    """

    def __init__(self, **kwargs) -> None:
        self.packed = PackCache()
        self.casts: Dict[Tuple[torch.dtype, torch.dtype], CastWeights] = {}
        self.__dict__.update(kwargs)

    def cast(self, dtype: torch.dtype,
             conv_dtype: torch.dtype) -> 'CastWeights':
        """The tensors of the block as it runs off the CPU, the per-channel
        ones in ``dtype`` (that of the residual stream), the convolutions'
        in ``conv_dtype``; made once per pair."""
        weights = self.casts.get((dtype, conv_dtype))
        if weights is None:

            def to(t: Optional[Tensor], to_dtype: torch.dtype):
                return None if t is None else t.to(to_dtype)

            weights = self.casts[(dtype, conv_dtype)] = CastWeights(
                mix_scale=to(self.mix_scale, dtype),
                res_scale1=to(self.res_scale1, dtype),
                res_scale2=to(self.res_scale2, dtype),
                mlp_scale=to(self.mlp_scale, dtype),
                fc1_weight=to(self.fc1_weight, conv_dtype),
                fc1_bias=to(self.fc1_bias, conv_dtype),
                fc2_weight=to(self.fc2_unscaled_weight, conv_dtype),
                fc2_bias=to(self.fc2_unscaled_bias, conv_dtype))
        return weights


class CastWeights(NamedTuple):
    """A :class:`FoldedConstants`'s tensors in the dtypes of one run
    (:meth:`FoldedConstants.cast`); ``fc2_*`` are unscaled."""
    mix_scale: Tensor
    res_scale1: Optional[Tensor]
    res_scale2: Optional[Tensor]
    mlp_scale: Optional[Tensor]
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_bias: Tensor


def _affine(norm: nn.GroupNorm, ref: Tensor) -> Tuple[Tensor, Tensor]:
    ones = torch.ones(
        norm.num_channels, dtype=torch.float64, device=ref.device)
    weight = norm.weight.double() if norm.weight is not None else ones
    bias = norm.bias.double() if norm.bias is not None else ones * 0
    return weight, bias


def _scale(module: nn.Module) -> Optional[Tensor]:
    if isinstance(module, nn.Identity):
        return None
    return module.scale.double().flatten()


@torch.no_grad()
def fold_block(block: nn.Module, off_cpu: bool = False) -> FoldedConstants:
    """Fold the norm affines and layer scales of a PoolFormer block into
    the mixer's per-channel scale and the MLP's 1x1 convolutions.

    The arithmetic is done in float64; the results have the dtype of
    ``mlp.fc1.weight``. ``off_cpu`` adds what the off-CPU kernels need
    (``fc2_unscaled_*``, ``mlp_scale``). ``block`` must fit
    (:func:`.folded.can_fold`).
    """
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    dtype = fc1.weight.dtype
    w1 = fc1.weight.double().flatten(1)  # (hidden, C)
    w2 = fc2.weight.double().flatten(1)  # (C, hidden)
    c1 = fc1.bias.double() if fc1.bias is not None else w1.new_zeros(
        w1.shape[0])
    c2 = fc2.bias.double() if fc2.bias is not None else w2.new_zeros(
        w2.shape[0])
    g1, _ = _affine(block.norm1, w1)  # b1 cancels in pool(y) - y
    g2, b2 = _affine(block.norm2, w1)
    ones = torch.ones_like(g1)
    ls1 = _scale(block.layer_scale1)
    ls2 = _scale(block.layer_scale2)
    ls1 = ones if ls1 is None else ls1
    ls2 = ones if ls2 is None else ls2

    def channel_map(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(dtype).view(1, -1, 1, 1)

    return FoldedConstants(
        pool_size=pool_window(block.token_mixer.pool),
        mix_scale=channel_map(ls1 * g1),
        res_scale1=channel_map(_scale(block.res_scale1)),
        res_scale2=channel_map(_scale(block.res_scale2)),
        eps1=float(block.norm1.eps),
        eps2=float(block.norm2.eps),
        fc1_weight=(w1 * g2).to(dtype)[:, :, None, None].contiguous(),
        fc1_bias=(c1 + w1 @ b2).to(dtype),
        act=block.mlp.act,
        fc2_weight=(w2 * ls2[:, None]).to(dtype)[:, :, None,
                                                 None].contiguous(),
        fc2_bias=(c2 * ls2).to(dtype),
        **(dict(fc2_unscaled_weight=fc2.weight.detach(),
                fc2_unscaled_bias=c2.to(dtype),
                mlp_scale=channel_map(_scale(block.layer_scale2)))
           if off_cpu else {}))
