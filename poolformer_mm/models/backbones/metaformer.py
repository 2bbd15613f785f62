"""The MetaFormer family as dense-prediction backbones: the reference network.

PoolFormer (pooling), `MetaFormer Is Actually What You Need for Vision
<https://arxiv.org/abs/2111.11418>`_ (Yu et al., CVPR 2022), and
PoolFormerV2, ConvFormer, CAFormer, IdentityFormer and RandFormer,
`MetaFormer Baselines for Vision <https://arxiv.org/abs/2210.13452>`_ (Yu et
al., TPAMI 2023). Original code: https://github.com/sail-sg/poolformer and
https://github.com/sail-sg/metaformer (Copyright 2022 Garena Online Private
Limited, Apache License 2.0). Layout and module names follow timm's
``timm/models/metaformer.py`` (Fredo Guan and Ross Wightman, Apache 2.0), so
that timm checkpoints load key for key: a stem, then four stages that each own
their downsampling and blocks, every block a pre-normed token mixer and a
pre-normed channel MLP on residual branches.

What differs from the classification networks: every emitted stage has its
own output norm ``norm{i}``, there is no classifier, and the norms compute in
float32 under mixed precision.

This file is plain PyTorch, as the papers define the network. Faster ways to
execute it with the same parameters live in :mod:`poolformer_mm.models.fast`
and are chosen by the ``impl`` argument (:meth:`BaseMetaFormer.switch_impl`).
"""
import math
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_init
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint.fitting import init_weights
from ..registration import register_backbone


def _fp32(x: Tensor, *params: Optional[Tensor]) -> List[Optional[Tensor]]:
    """``x`` and ``params`` in float32 at least (fp16 / bf16 go up)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return [None if t is None else t.to(dtype) for t in (x, ) + params]


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm (over (C, H, W) with one group, as PoolFormer's) that
    computes in float32 and returns the input dtype: statistics over C*H*W
    elements lose precision in bf16 / fp16, and autocast keeps the CPU's
    group_norm in the input dtype. ``bias=False`` drops the bias."""

    def __init__(self,
                 num_channels: int,
                 num_groups: int = 1,
                 eps: float = 1e-5,
                 affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        if not bias:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        x32, weight, bias = _fp32(x, self.weight, self.bias)
        out = F.group_norm(x32, self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension (channels of (N, L, C) tokens) in
    float32 (see :class:`Fp32GroupNorm`)."""

    def __init__(self,
                 num_channels: int,
                 eps: float = 1e-6,
                 affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(
            num_channels, eps=eps, elementwise_affine=affine, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x32, weight, bias = _fp32(x, self.weight, self.bias)
        out = F.layer_norm(x32, self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class Fp32LayerNorm2d(Fp32LayerNorm):
    """:class:`Fp32LayerNorm` over the channels of (N, C, H, W) maps."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# Norm types built here rather than by mmcv, so that they compute in fp32.
NORM_LAYERS = {
    'GN': Fp32GroupNorm,
    'LN': Fp32LayerNorm,
    'LN2d': Fp32LayerNorm2d
}


def build_norm(cfg: Optional[dict], num_channels: int) -> nn.Module:
    """Build a norm: ``GN`` (needs ``num_groups``), ``LN`` (last dimension)
    and ``LN2d`` (channels of NCHW) of this module, any other type (``BN``,
    ``SyncBN``, ...) by mmcv; ``None`` gives ``nn.Identity``."""
    if cfg is None:
        return nn.Identity()
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(
            f'A norm config must be a dict with a `type` key, got {cfg!r}')
    cfg = dict(cfg)
    norm_type = cfg.pop('type')
    requires_grad = cfg.pop('requires_grad', True)
    if norm_type not in NORM_LAYERS:
        return build_norm_layer(
            dict(type=norm_type, requires_grad=requires_grad, **cfg),
            num_channels)[1]
    if norm_type == 'GN' and 'num_groups' not in cfg:
        raise ValueError(f"A 'GN' norm config needs `num_groups`, got "
                         f'{dict(type=norm_type, **cfg)!r}')
    layer = NORM_LAYERS[norm_type](num_channels, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return layer


class StarReLU(nn.Module):
    """StarReLU, ``scale * relu(x) ** 2 + bias`` with learnable scalars."""

    def __init__(self,
                 scale_value: float = 1.,
                 bias_value: float = 0.) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale_value * torch.ones(1))
        self.bias = nn.Parameter(bias_value * torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.relu(x)**2 + self.bias


def build_act(cfg: dict) -> nn.Module:
    """Build an activation: ``StarReLU`` here, any other type by mmcv."""
    cfg = dict(cfg)
    if cfg.get('type') == 'StarReLU':
        cfg.pop('type')
        return StarReLU(**cfg)
    return build_activation_layer(cfg)


class Pooling(nn.Module):
    """PoolFormer's token mixer, ``AvgPool(x) - x``: the block adds ``x``
    back through its residual; padding is left out of the average."""

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size,
            stride=1,
            padding=pool_size // 2,
            count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x) - x


class SepConv(nn.Module):
    """ConvFormer's token mixer, MobileNetV2's inverted separable
    convolution: 1x1 conv, activation, depthwise conv, 1x1 conv."""

    def __init__(self,
                 channels: int,
                 expansion_ratio: float = 2,
                 kernel_size: int = 7,
                 act_cfg: dict = dict(type='StarReLU'),
                 bias: bool = False) -> None:
        super().__init__()
        hidden = int(expansion_ratio * channels)
        self.pwconv1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act1 = build_act(act_cfg)
        self.dwconv = nn.Conv2d(
            hidden,
            hidden,
            kernel_size,
            padding=kernel_size // 2,
            groups=hidden,
            bias=bias)
        self.act2 = nn.Identity()  # timm's module layout
        self.pwconv2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(self.act1(self.pwconv1(x)))
        return self.pwconv2(self.act2(x))


class Attention(nn.Module):
    """CAFormer's token mixer: multi-head self-attention over (N, L, C)
    tokens, without position encoding, so at any input size."""

    def __init__(self,
                 channels: int,
                 head_dim: int = 32,
                 num_heads: Optional[int] = None,
                 qkv_bias: bool = False,
                 proj_bias: bool = False,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads or max(channels // head_dim, 1)
        self.attention_dim = self.num_heads * head_dim
        self.qkv = nn.Linear(channels, 3 * self.attention_dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(self.attention_dim, channels, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads,
                                  self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(n, length, self.attention_dim)
        return self.proj_drop(self.proj(x))


class RandomMixing(nn.Module):
    """RandFormer's token mixer: a frozen random row-stochastic matrix mixes
    all tokens.

    The matrix fits the square pre-training grid (``num_tokens`` tokens). On
    another grid it is resized as a (query H, W, key H, W) map, bilinearly
    over the keys and then the queries, and its rows are renormalised, so
    that it still averages tokens.
    """

    def __init__(self, num_tokens: int = 196) -> None:
        super().__init__()
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError('RandomMixing needs a square token grid, got '
                             f'num_tokens={num_tokens}')
        self.side = side
        # A parameter without gradient, as in the original, so that it is
        # saved with the weights.
        self.random_matrix = nn.Parameter(
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1),
            requires_grad=False)

    def matrix(self, height: int, width: int) -> Tensor:
        """The (H*W, H*W) mixing matrix of a ``height`` x ``width`` grid."""
        if (height, width) == (self.side, self.side):
            return self.random_matrix
        s, size = self.side, (height, width)
        m = self.random_matrix.float()
        for _ in range(2):  # the keys, then the queries
            m = F.interpolate(
                m.reshape(-1, 1, s, s),
                size=size,
                mode='bilinear',
                align_corners=False).reshape(-1, height * width).t()
        return (m / m.sum(dim=-1, keepdim=True)).to(self.random_matrix.dtype)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        mixed = torch.einsum('mn,bcn->bcm',
                             self.matrix(h, w).to(x.dtype),
                             x.reshape(n, c, h * w))
        return mixed.reshape(n, c, h, w)


# Token mixers by config type, and whether they take (N, L, C) tokens
# instead of (N, C, H, W) maps.
TOKEN_MIXERS = {
    'Pooling': (Pooling, False),
    'Identity': (nn.Identity, False),
    'RandomMixing': (RandomMixing, False),
    'SepConv': (SepConv, False),
    'Attention': (Attention, True),
}


def _mixer_cfg(cfg: Union[str, dict]) -> dict:
    cfg = dict(type=cfg) if isinstance(cfg, str) else dict(cfg)
    if cfg.get('type') not in TOKEN_MIXERS:
        raise ValueError(f'Unknown token mixer {cfg!r}; the type must be one '
                         f'of {sorted(TOKEN_MIXERS)}')
    return cfg


def build_token_mixer(cfg: dict, channels: int, drop_rate: float) -> nn.Module:
    """Build a token mixer from a dict with ``type`` and its arguments."""
    cfg = _mixer_cfg(cfg)
    mixer_type = cfg.pop('type')
    if mixer_type in ('SepConv', 'Attention'):
        cfg['channels'] = channels
    if mixer_type == 'Attention':
        cfg.setdefault('proj_drop', drop_rate)
    return TOKEN_MIXERS[mixer_type][0](**cfg)


class Stem(nn.Module):
    """Patch embedding at stride 4: conv 7x7, stride 4, padding 2, then an
    optional norm."""

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=7, stride=4, padding=2)
        self.norm = build_norm(norm_cfg, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Downsampling(nn.Module):
    """Stride-2 patch merging between stages: an optional norm, then conv
    3x3, stride 2, padding 1."""

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.norm = build_norm(norm_cfg, in_channels)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x))


class Scale(nn.Module):
    """Learnable per-channel scale: layer scale of a residual branch or
    res-scale of the shortcut (``scale`` as in timm)."""

    def __init__(self,
                 channels: int,
                 init_value: float,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.shape = (channels, ) if channels_last else (channels, 1, 1)
        self.scale = nn.Parameter(init_value * torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(self.shape)


class Mlp(nn.Module):
    """Channel MLP: 1x1 convolutions on (N, C, H, W) maps, or linear layers
    on (N, L, C) tokens (``channels_last``)."""

    def __init__(self,
                 in_channels: int,
                 hidden_channels: int,
                 act_cfg: dict = dict(type='GELU'),
                 drop_rate: float = 0.,
                 bias: bool = True,
                 channels_last: bool = False) -> None:
        super().__init__()
        layer = nn.Linear if channels_last else partial(
            nn.Conv2d, kernel_size=1)
        self.fc1 = layer(in_channels, hidden_channels, bias=bias)
        self.act = build_act(act_cfg)
        self.fc2 = layer(hidden_channels, in_channels, bias=bias)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class MetaFormerBlock(nn.Module):
    """A MetaFormer block, each half pre-normed and residual, with optional
    layer scale (of the branch) and res-scale (of the shortcut)::

        x = res_scale1(x) + layer_scale1(token_mixer(norm1(x)))
        x = res_scale2(x) + layer_scale2(mlp(norm2(x)))
    """

    def __init__(self,
                 channels: int,
                 token_mixer: nn.Module,
                 mlp_ratio: float,
                 norm_cfg: dict,
                 act_cfg: dict,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: Optional[float] = 1e-5,
                 res_scale_init_value: Optional[float] = None,
                 mlp_bias: bool = True,
                 channels_last: bool = False) -> None:
        super().__init__()

        def scale(init_value):
            if init_value is None:
                return nn.Identity()
            return Scale(channels, init_value, channels_last)

        self.norm1 = build_norm(norm_cfg, channels)
        self.token_mixer = token_mixer
        self.layer_scale1 = scale(layer_scale_init_value)
        self.res_scale1 = scale(res_scale_init_value)
        self.norm2 = build_norm(norm_cfg, channels)
        self.mlp = Mlp(channels, int(channels * mlp_ratio), act_cfg, drop_rate,
                       mlp_bias, channels_last)
        self.layer_scale2 = scale(layer_scale_init_value)
        self.res_scale2 = scale(res_scale_init_value)
        self.drop_path = (
            DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        x = self.res_scale1(x) + self.drop_path(
            self.layer_scale1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.drop_path(
            self.layer_scale2(self.mlp(self.norm2(x))))
        return x


class MetaFormerStage(nn.Module):
    """A stage: its downsampling (Identity in the first stage), then its
    blocks. Blocks of (N, L, C) tokens (``channels_last``) get the map
    flattened; the stage takes and returns (N, C, H, W) maps."""

    def __init__(self,
                 downsample: nn.Module,
                 blocks: List[nn.Module],
                 channels_last: bool = False,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.channels_last = channels_last
        self.with_cp = with_cp

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        n, c, h, w = x.shape
        if self.channels_last:
            x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.channels_last:
            x = x.transpose(1, 2).reshape(n, c, h, w)
        return x


# The bias-free norms of MetaFormer Baselines (`LayerNormGeneral` in the
# original): over channels, and with normalized_dim=(1, 2, 3) GroupNorm(1).
_LN2D_NO_BIAS = dict(type='LN2d', eps=1e-6, bias=False)
_LN_NO_BIAS = dict(type='LN', eps=1e-6, bias=False)
_GN1_NO_BIAS = dict(type='GN', num_groups=1, eps=1e-6, bias=False)
# Keys of a full spec with the MetaFormer Baselines defaults; the first
# three are required.
SPEC_DEFAULTS = dict(
    layers=None,
    embed_dims=None,
    token_mixers=None,
    mlp_ratios=4,
    norm_cfgs=_LN2D_NO_BIAS,
    act_cfg=dict(type='StarReLU'),
    mlp_bias=False,
    layer_scale_init_values=None,
    res_scale_init_values=(None, None, 1., 1.),
    stem_norm_cfg=_LN2D_NO_BIAS,
    downsample_norm_cfg=_LN2D_NO_BIAS,
    out_norm_cfg=dict(type='LN2d', eps=1e-6),
)
_REQUIRED = ('layers', 'embed_dims', 'token_mixers')
# Keys that may hold one value for all stages or a list of four.
_PER_STAGE = ('layers', 'embed_dims', 'token_mixers', 'mlp_ratios',
              'norm_cfgs', 'layer_scale_init_values', 'res_scale_init_values')
# Norms over the last dimension, the only ones that fit (N, L, C) tokens.
_TOKEN_NORMS = ('LN', )


def complete_spec(spec: dict, name: str, num_stages: int = 4) -> dict:
    """Check an arch spec, fill in ``SPEC_DEFAULTS`` and expand per-stage
    values to lists; ``name`` prefixes the error messages."""
    if not isinstance(spec, dict):
        raise TypeError(f'{name}: arch must be a str or a dict, got '
                        f'{type(spec).__name__}: {spec!r}')
    missing = [k for k in _REQUIRED if k not in spec]
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if missing or unknown:
        what = (f'lacks the keys {missing}' if missing else
                f'has unknown keys {unknown}')
        raise ValueError(f'{name}: {spec!r} {what}; required: '
                         f'{list(_REQUIRED)}, allowed: {list(SPEC_DEFAULTS)}')
    full = dict(SPEC_DEFAULTS, **spec)
    for key in _PER_STAGE:
        value = full[key]
        if isinstance(value, (list, tuple)):
            if len(value) != num_stages:
                raise ValueError(
                    f'{name}: {key} must have {num_stages} entries (one per '
                    f'stage), got {list(value)}')
            full[key] = list(value)
        elif key in ('layers', 'embed_dims'):
            raise ValueError(f'{name}: {key} must be a list of {num_stages} '
                             f'ints (one per stage), got {value!r}')
        else:
            full[key] = [value] * num_stages
    full['token_mixers'] = [_mixer_cfg(m) for m in full['token_mixers']]
    for i, (mixer, norm) in enumerate(
            zip(full['token_mixers'], full['norm_cfgs'])):
        tokens = TOKEN_MIXERS[mixer['type']][1]
        if tokens != ((norm or {}).get('type') in _TOKEN_NORMS):
            raise ValueError(
                f'{name}: stage {i} has token mixer {mixer["type"]!r} with '
                f'norm {norm!r}; use ' +
                ("type='LN' (over the channels of (N, L, C) tokens)"
                 if tokens else "a norm of (N, C, H, W) maps such as 'LN2d', "
                 "'GN' or 'BN', not 'LN'"))
    return full


class BaseMetaFormer(BaseModule):
    """The MetaFormer backbone for dense prediction, built from a full spec
    (:func:`complete_spec`); :class:`MetaFormer` and
    :class:`~poolformer_mm.PoolFormer` name its archs. The arguments after
    ``spec`` are those of :class:`MetaFormer`."""

    num_stages = 4

    def __init__(self,
                 arch_name: str,
                 spec: dict,
                 in_channels: int = 3,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 impl: str = 'auto',
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_name = arch_name
        self.out_indices = self._parse_out_indices(out_indices)
        if not (isinstance(frozen_stages, int)
                and -1 <= frozen_stages <= self.num_stages):
            raise ValueError(
                f'frozen_stages must be an int in -1..{self.num_stages} '
                f'(-1 freezes nothing), got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.in_channels = in_channels
        self.norm_eval = norm_eval

        layers = spec['layers']
        self.embed_dims = list(spec['embed_dims'])
        # Stochastic depth rises linearly from 0 at the first block to
        # drop_path_rate at the last (plain Python: buildable on 'meta').
        num_blocks = sum(layers)
        dpr = [
            drop_path_rate * j / max(num_blocks - 1, 1)
            for j in range(num_blocks)
        ]
        self.stem = Stem(in_channels, self.embed_dims[0],
                         spec['stem_norm_cfg'])
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            mixer_cfg = spec['token_mixers'][i]
            channels_last = TOKEN_MIXERS[mixer_cfg['type']][1]
            downsample = nn.Identity() if i == 0 else Downsampling(
                self.embed_dims[i - 1], self.embed_dims[i],
                spec['downsample_norm_cfg'])
            first = sum(layers[:i])
            blocks = [
                MetaFormerBlock(
                    self.embed_dims[i],
                    token_mixer=build_token_mixer(mixer_cfg,
                                                  self.embed_dims[i],
                                                  drop_rate),
                    mlp_ratio=spec['mlp_ratios'][i],
                    norm_cfg=spec['norm_cfgs'][i],
                    act_cfg=spec['act_cfg'],
                    drop_rate=drop_rate,
                    drop_path_rate=dpr[first + j],
                    layer_scale_init_value=spec['layer_scale_init_values'][i],
                    res_scale_init_value=spec['res_scale_init_values'][i],
                    mlp_bias=spec['mlp_bias'],
                    channels_last=channels_last) for j in range(layers[i])
            ]
            self.stages.append(
                MetaFormerStage(downsample, blocks, channels_last, with_cp))
        for i in self.out_indices:
            self.add_module(
                f'norm{i}', build_norm(spec['out_norm_cfg'],
                                       self.embed_dims[i]))

        self._init_original_weights()
        self._freeze_stages()
        self.switch_impl(impl)

    @property
    def out_channels(self) -> List[int]:
        """Channels of the returned feature maps, in ``out_indices`` order."""
        return [self.embed_dims[i] for i in self.out_indices]

    @property
    def with_cp(self) -> bool:
        """Whether every block runs under gradient checkpointing."""
        return all(stage.with_cp for stage in self.stages)

    @with_cp.setter
    def with_cp(self, value: bool) -> None:
        for stage in self.stages:
            stage.with_cp = bool(value)

    def switch_impl(self, impl: str) -> 'BaseMetaFormer':
        """Execute the network by ``impl`` (see the ``impl`` argument);
        parameters and state dict stay as they are. Returns ``self``."""
        # The fast paths live beside the network; this is where they enter.
        from ..fast import apply_impl
        apply_impl(self, impl)
        return self

    def switch_to_deploy(self) -> 'BaseMetaFormer':
        """``switch_impl('deploy')``, the folded inference path (MMPretrain's
        name): norm affines and layer scales of PoolFormer-style blocks fold
        into the 1x1 convolutions and the pooling. The state dict stays, and
        weights loaded later are used; ``train()`` is refused."""
        return self.switch_impl('deploy')

    @property
    def deploy(self) -> bool:
        """Whether the backbone runs the folded inference path."""
        return getattr(self, 'impl', None) == 'deploy'

    def _parse_out_indices(self, out_indices: Sequence[int]) -> Tuple[int]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        bad = [
            i for i in out_indices
            if not isinstance(i, int) or not 0 <= i < self.num_stages
        ]
        if bad or not out_indices:
            raise ValueError(
                f'out_indices must be a non-empty sequence of stage indices '
                f'in 0..{self.num_stages - 1}, got {out_indices!r}')
        if len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f'out_indices must not repeat a stage, got {out_indices!r}')
        return out_indices

    def _init_original_weights(self) -> None:
        """As sail-sg/metaformer: every conv and linear layer trunc normal
        std .02 with zero bias; norms one and zero."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_init(m, std=.02, bias=0)

    def init_weights(self) -> None:
        """Apply ``init_cfg``; ``Pretrained`` entries go through this
        package's loader
        (:func:`~poolformer_mm.checkpoint.fitting.init_weights`), which
        reads every public naming and fails on weights that do not fit.
        Without ``init_cfg`` the constructor's initialisation stays."""
        init_weights(self, super().init_weights)

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        modules = [self.stem]
        for i in range(self.frozen_stages):
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        for module in modules:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'BaseMetaFormer':
        if mode and self.deploy:
            raise RuntimeError(
                f'This {type(self).__name__} was switched to the '
                'inference-only deploy path (switch_to_deploy() or '
                'deploy=True) and cannot train. Build it without deploy to '
                'train or fine-tune.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f'{name} expects a Tensor, got {type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'{name} expects a 4D (N, C, H, W) tensor with '
                f'C={self.in_channels} channels, got shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError(
                f'{name} expects a floating point tensor, got {x.dtype}')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return the normed feature maps of the stages in ``out_indices``.

        Args:
            x (Tensor): Images of shape (N, in_channels, H, W).

        Returns:
            tuple[Tensor]: One contiguous (N, C, H, W) map per entry of
            ``out_indices``, in that order, at stride 4, 8, 16 or 32. (mmcv's
            CPU ops, e.g. ``RoIAlign``, read any input as NCHW memory.)
        """
        self._check_input(x)
        x = self.stem(x)
        outs = {}
        for i, stage in enumerate(self.stages[:max(self.out_indices) + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs[i] = getattr(self, f'norm{i}')(x).contiguous()
        return tuple(outs[i] for i in self.out_indices)


# Depths and widths: PoolFormer's sizes (PoolFormerV2, IdentityFormer,
# RandFormer) and the ConvFormer / CAFormer ones.
_V1_SIZES = {
    's12': dict(layers=[2, 2, 6, 2], embed_dims=[64, 128, 320, 512]),
    's24': dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512]),
    's36': dict(layers=[6, 6, 18, 6], embed_dims=[64, 128, 320, 512]),
    'm36': dict(layers=[6, 6, 18, 6], embed_dims=[96, 192, 384, 768]),
    'm48': dict(layers=[8, 8, 24, 8], embed_dims=[96, 192, 384, 768]),
}
_V2_SIZES = {
    's18': dict(layers=[3, 3, 9, 3], embed_dims=[64, 128, 320, 512]),
    's36': dict(layers=[3, 12, 18, 3], embed_dims=[64, 128, 320, 512]),
    'm36': dict(layers=[3, 12, 18, 3], embed_dims=[96, 192, 384, 576]),
    'b36': dict(layers=[3, 12, 18, 3], embed_dims=[128, 256, 512, 768]),
}


def _family(prefix: str, sizes: Dict[str, dict], **spec) -> Dict[str, dict]:
    return {f'{prefix}_{s}': dict(**dims, **spec) for s, dims in sizes.items()}


# RandFormer's matrices are drawn for the 14x14 and 7x7 grids of stages 2
# and 3 at 224x224.
_RANDOM = [
    'Identity', 'Identity',
    dict(type='RandomMixing', num_tokens=196),
    dict(type='RandomMixing', num_tokens=49)
]
_CA = ['SepConv', 'SepConv', 'Attention', 'Attention']
_CA_NORMS = [_LN2D_NO_BIAS, _LN2D_NO_BIAS, _LN_NO_BIAS, _LN_NO_BIAS]


@register_backbone
class MetaFormer(BaseMetaFormer):
    """MetaFormer Baselines backbones for dense prediction: PoolFormerV2,
    ConvFormer, CAFormer, IdentityFormer and RandFormer.

    Emits four stage feature maps at strides 4, 8, 16 and 32, each through an
    output LayerNorm ``norm{i}`` (over channels, with bias, eps 1e-6). Module
    names are timm's, so timm checkpoints load key for key; sail-sg/metaformer
    checkpoints are renamed on loading.

    Args:
        arch (str | dict): A name in ``MetaFormer.arch_settings``
            (``poolformerv2_{s12,s24,s36,m36,m48}``,
            ``convformer_{s18,s36,m36,b36}``, ``caformer_{s18,s36,m36,b36}``,
            ``identityformer_*`` and ``randformer_*`` in PoolFormer's sizes),
            or a dict with ``layers``, ``embed_dims`` (4 ints each),
            ``token_mixers`` (one or 4 of ``'Pooling'``, ``'Identity'``,
            ``'RandomMixing'``, ``'SepConv'``, ``'Attention'``, or dicts with
            ``type`` and arguments) and optionally the other keys of
            ``SPEC_DEFAULTS``, which hold the MetaFormer Baselines defaults.
            Defaults to 'convformer_s18'.
        in_channels (int): Input image channels. Defaults to 3.
        drop_rate (float): Dropout inside the MLPs and after attention.
            Defaults to 0.
        drop_path_rate (float): Stochastic depth rate of the last block; it
            rises linearly from 0 over all blocks. Defaults to 0.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned,
            each through its own output norm. Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i`` the stem
            and stages ``0..i-1`` with their output norms (kept in eval
            mode). Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers (if a norm config uses them)
            in eval mode during training. Defaults to False.
        with_cp (bool): Gradient checkpointing of every block: less memory,
            a second forward pass. Defaults to False.
        impl (str): How the network executes: ``'auto'`` (the faster modules
            of :mod:`poolformer_mm.models.fast` where they apply),
            ``'reference'`` (this file's modules) or ``'deploy'`` (folded,
            inference only, :meth:`switch_to_deploy`). Same parameters and
            results. Defaults to 'auto'.
        init_cfg (dict | list[dict], optional): Initialization config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix=...)``.
            Defaults to None.
    """

    arch_settings: Dict[str, dict] = {
        **_family('poolformerv2', _V1_SIZES, token_mixers='Pooling',
                  norm_cfgs=_GN1_NO_BIAS),
        **_family('convformer', _V2_SIZES, token_mixers='SepConv',
                  norm_cfgs=_LN2D_NO_BIAS),
        **_family('caformer', _V2_SIZES, token_mixers=_CA,
                  norm_cfgs=_CA_NORMS),
        **_family('identityformer', _V1_SIZES, token_mixers='Identity',
                  norm_cfgs=_GN1_NO_BIAS),
        **_family('randformer', _V1_SIZES, token_mixers=_RANDOM,
                  norm_cfgs=_GN1_NO_BIAS),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'convformer_s18',
                 in_channels: int = 3,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 impl: str = 'auto',
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        if isinstance(arch, str):
            name = arch.lower()
            if name not in self.arch_settings:
                hint = (' (PoolFormer v1 is type=\'PoolFormer\', '
                        f'arch={name[len("poolformer_"):]!r})'
                        if name.startswith('poolformer_') else '')
                raise ValueError(
                    f'Unknown MetaFormer arch {arch!r}{hint}; choose one of '
                    f'{sorted(self.arch_settings)} or give a dict with keys '
                    f'{list(_REQUIRED)} and optionally '
                    f'{[k for k in SPEC_DEFAULTS if k not in _REQUIRED]}')
            arch = self.arch_settings[name]
        else:
            name = 'custom'
        super().__init__(
            name,
            complete_spec(arch, f'MetaFormer arch {name!r}'),
            in_channels=in_channels,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            with_cp=with_cp,
            impl=impl,
            init_cfg=init_cfg)
