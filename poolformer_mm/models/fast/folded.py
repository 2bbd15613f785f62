"""The folded inference path (``impl='deploy'``, ``switch_to_deploy()``).

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
  per-channel, per-sample ``a = ls1 * g1 * rstd1``: one in-place ``lerp``
  after the pooling;
- channel MLP: ``g2`` and ``b2`` fold into ``fc1`` (``W1 * g2``,
  ``c1 + W1 b2``) and ``ls2`` into ``fc2`` (``ls2 * W2``, ``ls2 * c2``), so
  only the affine-free ``z2`` is computed;
- kernels: on CPU (float32, oneDNN available) activations stay
  channels_last, and the folded 1x1 convolutions run as oneDNN convolutions,
  ``fc1`` with the activation (GELU, ReLU, SiLU) fused into it and ``fc2``
  adding its result into the residual stream in place. Their weights, and
  those of the stem and downsampling convolutions, are reordered into
  oneDNN's blocked layout for an input shape the second time that shape is
  seen (a reorder made without the shape can pick a slow kernel). On CPU
  in other dtypes the same folded block runs on plain PyTorch ops.
- off the CPU (CUDA): NCHW maps, the statistics from one ``var_mean`` per
  norm (``group_norm`` with one group leaves a GPU nearly idle at
  detection sizes), the mixer as one ``lerp_`` (with res-scales a ``mul_``
  and an ``addcmul_``) and ``z2`` as one ``addcmul`` written in the
  convolutions' dtype; under autocast the residual stream stays in the
  parameters' dtype (float32 unless the model was cast) and the 1x1
  convolutions run in the autocast dtype with weights cast once, as
  autocast would run the modules.
  ``fc2`` stays unscaled and ``ls2`` is applied in the residual
  ``addcmul_``: folded into the weight it could underflow in float16.
- recorded (TorchScript tracing, ONNX export, ``torch.compile``;
  :func:`.tracing.is_recording`): the same folded block out of place in
  public ops (:func:`folded_block_recorded`), the statistics as two means
  (``ReduceMean`` in ONNX), the stem and downsampling convolutions as in
  the reference network.

On CPU the statistics are those of GroupNorm(1), from
:func:`.cpu.mean_rstd`: one pass, or two (the mean, then the norm of
the centred values) when the mean is large against the spread, so that it
costs no precision. Outputs equal the normal eval path to about 1e-6
relative.

The modules here replace the reference modules with the same parameters, so
the state dict keeps its names. The folded tensors are plain attributes of
:class:`DeployPoolBlock`, made again whenever one of the block's parameters
changed (a checkpoint loaded after the switch is used) or moved to another
device or dtype. Blocks of other patterns keep their ``impl='auto'`` modules.
"""
import threading
from collections import OrderedDict
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..backbones.metaformer import (Downsampling, MetaFormerBlock,
                                    MetaFormerStage, Pooling, Stem)
from .cpu import (ChannelsLastStem, FastPooling, FusedPoolBlock, box_sum,
                  channel_scale, inv_count, is_group_norm1, is_pointwise_conv,
                  mean_rstd, pool_window, use_onednn, window_sum)
from .cuda import group_norm1_stats
from .tracing import is_recording


def can_fold(block: nn.Module) -> bool:
    """Whether ``block`` is a PoolFormer block that :func:`fold_block`
    handles: GroupNorm(1) pre-norms, a pooling mixer, a 1x1-conv MLP with an
    element-wise activation, per-channel scales (or Identity) as layer
    scales and res-scales."""
    if type(block) not in (MetaFormerBlock, FusedPoolBlock, DeployPoolBlock):
        return False
    mlp = block.mlp
    return (is_group_norm1(block.norm1) and is_group_norm1(block.norm2)
            and type(block.token_mixer) in (Pooling, FastPooling)
            and pool_window(block.token_mixer.pool) is not None
            and is_pointwise_conv(mlp.fc1) and is_pointwise_conv(mlp.fc2)
            and all(
                channel_scale(getattr(block, name))[0]
                for name in ('layer_scale1', 'layer_scale2', 'res_scale1',
                             'res_scale2')))


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
def fold_block(block: nn.Module) -> FoldedConstants:
    """Fold the norm affines and layer scales of a PoolFormer block into
    the mixer's per-channel scale and the MLP's 1x1 convolutions.

    The arithmetic is done in float64; the results have the dtype of
    ``mlp.fc1.weight``.
    ``block`` must fit (:func:`can_fold`).
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
           if _runs_off_cpu(fc2.weight) else {}))


class _Workspace(threading.local):
    """Scratch tensors of the fast path, one set per thread, reused from
    call to call (fresh large allocations cost page faults on CPU)."""

    def __init__(self) -> None:
        self.tensors: Dict[Tuple, Tensor] = {}

    def get(self, name: str, like: Tensor) -> Tensor:
        # A tensor made under torch.inference_mode() cannot be written in
        # place outside it: one set per mode.
        key = (name, tuple(like.shape), like.dtype, like.device,
               torch.is_inference_mode_enabled())
        t = self.tensors.get(key)
        if t is None:
            if len(self.tensors) >= 32:
                self.tensors.clear()
            t = torch.empty_like(like, memory_format=torch.channels_last)
            self.tensors[key] = t
        return t


_WORKSPACE = _Workspace()


def _onednn_act(act: nn.Module) -> Optional[Tuple[str, Optional[str]]]:
    """oneDNN's name (and algorithm) of an activation it fuses into a
    convolution, None for others."""
    if type(act) is nn.GELU:
        return 'gelu', ('tanh' if act.approximate == 'tanh' else 'none')
    if type(act) is nn.ReLU:
        return 'relu', None
    if type(act) is nn.SiLU:
        return 'swish', None
    return None


class PackCache:
    """oneDNN-reordered weights per input shape.

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


def _pack_conv(weight: Tensor, padding: Sequence[int], stride: Sequence[int],
               dilation: Sequence[int], groups: int,
               input_size: Sequence[int]) -> Tensor:
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight, list(padding), list(stride), list(dilation), groups,
        list(input_size))


def _mixer_(p: FoldedConstants, x: Tensor) -> Tensor:
    """``x = r1 * x + ls1 * g1 * rstd1 * (pool(x) - x)``, in place, on
    CPU."""
    k, r = p.pool_size, p.pool_size // 2
    _, rstd1 = mean_rstd(x, p.eps1, out=_WORKSPACE.get('a', x))
    if use_onednn(x):
        # One pass (a depthwise convolution with a ones kernel): faster than
        # avg_pool2d and than separable sums on CPU.
        pooled = window_sum(x.contiguous(memory_format=torch.channels_last),
                            k)
        pooled.mul_(inv_count(x.shape[-2], x.shape[-1], k, x))
    else:
        # Separable window sums into scratch tensors: faster than
        # avg_pool2d on CPU.
        pooled = box_sum(x, r, _WORKSPACE.get('a', x),
                         _WORKSPACE.get('b', x))
        pooled.mul_(inv_count(x.shape[-2], x.shape[-1], k, x))
    a = (p.mix_scale * rstd1).to(x.dtype)
    if p.res_scale1 is None:
        return x.lerp_(pooled, a)
    return x.mul_(p.res_scale1 - a).addcmul_(pooled, a)


def _runs_off_cpu(x: Tensor) -> bool:
    """Whether ``x`` takes the path of :func:`_folded_block_off_cpu_`."""
    return x.device.type != 'cpu'


def _folded_block_off_cpu_(p: FoldedConstants, x: Tensor) -> Tensor:
    """A folded block off the CPU (CUDA): plain PyTorch ops on NCHW maps
    (cuDNN's 1x1 convolutions were slower on channels_last ones), few
    kernel launches, which bound the block at small sizes, and the
    statistics from one ``var_mean`` (:func:`.cuda.group_norm1_stats`;
    ``group_norm`` leaves the GPU nearly idle with one group, see
    :class:`.cuda._GroupNorm1`).

    Under autocast it computes what autocast makes of the modules, the
    statistics in float32, the pooling and the residual stream in the
    parameters' dtype (float32 unless the model was cast) and the 1x1
    convolutions in the autocast dtype, with the weights cast once
    (:meth:`FoldedConstants.cast`) instead of at every call.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        conv_dtype = torch.get_autocast_dtype(device_type)
        # The residual stream of the modules: the layer scale promotes it
        # to the parameters' dtype.
        x = x.to(torch.promote_types(x.dtype, p.mix_scale.dtype))
        with torch.autocast(device_type, enabled=False):
            return _off_cpu_block_(p, x, conv_dtype)
    return _off_cpu_block_(p, x, x.dtype)


def _off_cpu_block_(p: FoldedConstants, x: Tensor,
                    conv_dtype: torch.dtype) -> Tensor:
    c = p.cast(x.dtype, conv_dtype)
    k = p.pool_size
    _, rstd1 = group_norm1_stats(x, p.eps1)
    pooled = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)
    a = rstd1.mul(c.mix_scale).to(x.dtype)
    if c.res_scale1 is None:
        x = x.lerp_(pooled, a)
    else:
        x = x.mul_(c.res_scale1 - a).addcmul_(pooled, a)
    mean2, rstd2 = group_norm1_stats(x, p.eps2)
    # z = (x - mean2) * rstd2 in one pass, written in the convolution's
    # dtype.
    z = torch.addcmul(mean2.mul_(rstd2).neg_(), x, rstd2,
                      out=torch.empty_like(x, dtype=conv_dtype))
    if c.res_scale2 is not None:
        x = x.mul_(c.res_scale2)
    # An activation with parameters (StarReLU) returns their dtype.
    hidden = p.act(F.conv2d(z, c.fc1_weight, c.fc1_bias)).to(conv_dtype)
    out = F.conv2d(hidden, c.fc2_weight, c.fc2_bias)
    if c.mlp_scale is None:
        return x.add_(out)
    return x.addcmul_(out, c.mlp_scale)


def folded_block_recorded(p: FoldedConstants, x: Tensor) -> Tensor:
    """A folded block on ``x`` out of place, in public operators only: what
    tracing and ONNX export record. GroupNorm(1)'s statistics become the
    mean of ``x`` and of its squared deviation over (C, H, W), which every
    ONNX runtime computes as written."""
    dims = tuple(range(1, x.dim()))

    def stats(t: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
        mean = t.mean(dims, keepdim=True)
        var = (t - mean).pow(2).mean(dims, keepdim=True)
        return mean, torch.rsqrt(var + eps)

    k = p.pool_size
    _, rstd1 = stats(x, p.eps1)
    pooled = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)
    mixed = p.mix_scale * rstd1 * (pooled - x)
    x = x + mixed if p.res_scale1 is None else x * p.res_scale1 + mixed
    mean2, rstd2 = stats(x, p.eps2)
    z = (x - mean2) * rstd2
    if p.res_scale2 is not None:
        x = x * p.res_scale2
    hidden = p.act(F.conv2d(z, p.fc1_weight, p.fc1_bias))
    return x + F.conv2d(hidden, p.fc2_weight, p.fc2_bias)


def folded_block_forward(p: FoldedConstants, x: Tensor) -> Tensor:
    """Run a folded block on ``x`` (N, C, H, W), updating it in place;
    returns it (a new tensor while :func:`.tracing.is_recording`)."""
    if is_recording():
        return folded_block_recorded(p, x)
    if _runs_off_cpu(x):
        return _folded_block_off_cpu_(p, x)
    x = _mixer_(p, x)
    if x.dtype in (torch.float32, torch.float64):
        z = _WORKSPACE.get('a', x)
        mean2, rstd2 = mean_rstd(x, p.eps2, out=z)
        z = torch.sub(x, mean2, out=z).mul_(rstd2)
    else:
        mean2, rstd2 = mean_rstd(x, p.eps2)
        z = ((x.float() - mean2) * rstd2).to(x.dtype)
    if p.res_scale2 is not None:
        x = x.mul_(p.res_scale2)
    if use_onednn(x):
        mkldnn = torch.ops.mkldnn
        packed = p.packed.get(
            tuple(x.shape), lambda: (
                _pack_conv(p.fc1_weight, (0, 0), (1, 1), (1, 1), 1, z.shape),
                _pack_conv(p.fc2_weight, (0, 0), (1, 1), (1, 1), 1,
                           (x.shape[0], p.fc2_weight.shape[1]) +
                           tuple(x.shape[2:]))))
        w1, w2 = packed or (p.fc1_weight, p.fc2_weight)
        fused = _onednn_act(p.act)
        attr, algorithm = fused or ('none', None)
        hidden = mkldnn._convolution_pointwise(z, w1, p.fc1_bias, [0, 0],
                                               [1, 1], [1, 1], 1, attr, [],
                                               algorithm)
        if fused is None:
            hidden = p.act(hidden)
        # x += fc2(hidden), written into x by the convolution.
        return mkldnn._convolution_pointwise_.binary(
            x, hidden, w2, p.fc2_bias, [0, 0], [1, 1], [1, 1], 1, 'add', 1.0,
            None, [], None)
    hidden = p.act(F.conv2d(z, p.fc1_weight, p.fc1_bias))
    return x.add_(F.conv2d(hidden, p.fc2_weight, p.fc2_bias))


class _DropsCaches:
    """Leaves the ``_fast_*`` caches (oneDNN weights do not pickle) out of
    pickles and copies; they are made again."""

    def __getstate__(self) -> dict:
        return {
            k: v
            for k, v in self.__dict__.items() if not k.startswith('_fast_')
        }


def _fingerprint(module: nn.Module) -> Tuple:
    """Changes when a parameter of ``module`` is written, replaced or moved:
    its data pointer, version counter, dtype and device."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                 for t in module.parameters())


class DeployPoolBlock(_DropsCaches, MetaFormerBlock):
    """A foldable PoolFormer block (:func:`can_fold`) run folded, inference
    only. :meth:`forward_` updates its input in place."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return can_fold(module)

    def folded(self) -> FoldedConstants:
        """The folded constants, made again when a parameter changed."""
        key = _fingerprint(self)
        if getattr(self, '_fast_folded_key', None) != key:
            self._fast_folded = fold_block(self)
            self._fast_folded_key = key
        return self._fast_folded

    def forward_(self, x: Tensor) -> Tensor:
        """The block on ``x``, which it overwrites and returns."""
        return folded_block_forward(self.folded(), x)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.forward_(x.clone())


def _deploy_conv(module: nn.Module, x: Tensor, reference) -> Tensor:
    """A stem / downsampling (``module``, whose ``reference`` forward is
    given) on CPU with channels_last output; a bare convolution (Identity
    norm) on oneDNN with weights reordered for the input shape."""
    if _runs_off_cpu(x) or is_recording():
        return reference(x)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = module.conv
    if (not isinstance(module.norm, nn.Identity) or not use_onednn(x)
            or conv.padding_mode != 'zeros' or isinstance(conv.padding, str)):
        return reference(x).contiguous(memory_format=torch.channels_last)
    args = (list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups)
    if getattr(module, '_fast_packed_key', None) != _fingerprint(conv):
        module._fast_packs = PackCache()
        module._fast_packed_key = _fingerprint(conv)
    weight = module._fast_packs.get(
        tuple(x.shape),
        lambda: _pack_conv(conv.weight.detach(), *args, x.shape))
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight if weight is None else weight, conv.bias, *args, 'none',
        [], None)


class DeployStem(_DropsCaches, Stem):
    """:class:`Stem` of the deploy path; refuses inputs that need a
    gradient."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) in (Stem, ChannelsLastStem)

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            raise RuntimeError(
                'The deploy path is inference-only and computes no '
                'gradients, but the input requires grad. Use a backbone '
                'without deploy / switch_to_deploy() to differentiate it.')
        with torch.no_grad():
            return _deploy_conv(self, x, super().forward)


class DeployDownsampling(_DropsCaches, Downsampling):
    """:class:`Downsampling` of the deploy path."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) is Downsampling

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return _deploy_conv(self, x, super().forward)


class DeployStage(MetaFormerStage):
    """:class:`MetaFormerStage` of (N, C, H, W) maps whose folded blocks
    update one copy of the stage's input in place."""

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) is MetaFormerStage and not module.channels_last

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            y = self.downsample(x)
            if y is x:
                y = x.clone()
            for block in self.blocks:
                if isinstance(block, DeployPoolBlock):
                    y = block.forward_(y)
                else:
                    y = block(y)
            return y
