"""The folded inference path (``impl='deploy'``, ``switch_to_deploy()``).

A foldable PoolFormer block (:func:`can_fold`) runs on the constants of
:mod:`.folding`: its norm affines and layer scales folded into the mixer's
per-channel scale and the MLP's 1x1 convolutions, so that only the two
GroupNorm(1) statistics are computed, and the mixer branch is
``x + a * (pool(x) - x)`` with ``a = ls1 * g1 * rstd1``. The kernels:

- on CPU (float32, oneDNN available): the mixer as one in-place ``lerp``
  after the pooling; activations stay channels_last, and the folded 1x1
  convolutions run as oneDNN convolutions, ``fc1`` with the activation
  (GELU, ReLU, SiLU) fused into it and ``fc2`` adding its result into the
  residual stream in place. Their weights, and those of the stem and
  downsampling convolutions, are reordered into oneDNN's blocked layout for
  an input shape the second time that shape is seen
  (:class:`.folding.PackCache`; a reorder made without the shape can pick a
  slow kernel). On CPU in other dtypes the same folded block runs on plain
  PyTorch ops.
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
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..backbones.layers import (Downsampling, MetaFormerBlock,
                                MetaFormerStage, Pooling, Stem)
from .cpu import (ChannelsLastStem, FastPooling, FusedPoolBlock, box_sum,
                  inv_count, mean_rstd, use_onednn, window_sum)
from .cuda import group_norm1_stats
from .folding import FoldedConstants, PackCache, fold_block
from .patterns import (channel_scale, is_group_norm1, is_pointwise_conv,
                       pool_window)
from .tracing import is_recording


def can_fold(block: nn.Module) -> bool:
    """Whether ``block`` is a PoolFormer block that
    :func:`.folding.fold_block` handles: GroupNorm(1) pre-norms, a pooling
    mixer, a 1x1-conv MLP with an element-wise activation, per-channel
    scales (or Identity) as layer scales and res-scales."""
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
            self._fast_folded = fold_block(
                self, off_cpu=_runs_off_cpu(self.mlp.fc2.weight))
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
