"""The layers of the MetaFormer family, as the papers define them.

PoolFormer (pooling), `MetaFormer Is Actually What You Need for Vision
<https://arxiv.org/abs/2111.11418>`_ (Yu et al., CVPR 2022), and
PoolFormerV2, ConvFormer, CAFormer, IdentityFormer and RandFormer,
`MetaFormer Baselines for Vision <https://arxiv.org/abs/2210.13452>`_ (Yu et
al., TPAMI 2023). Original code: https://github.com/sail-sg/poolformer and
https://github.com/sail-sg/metaformer (Copyright 2022 Garena Online Private
Limited, Apache License 2.0). Layout and module names follow timm's
``timm/models/metaformer.py`` (Fredo Guan and Ross Wightman, Apache 2.0), so
that timm checkpoints load key for key: a :class:`Stem`, then four
:class:`MetaFormerStage` s that each own their :class:`Downsampling` and
blocks, every :class:`MetaFormerBlock` a pre-normed token mixer and a
pre-normed channel :class:`Mlp` on residual branches.

What differs from the classification networks: the norms compute in float32
under mixed precision (:class:`Fp32GroupNorm`, :class:`Fp32LayerNorm`).

This module is the reference network in plain PyTorch, and knows nothing of
how else it may execute: the backbones that assemble these layers are in
:mod:`.metaformer` and :mod:`.poolformer`, their arch specs in :mod:`.specs`,
and the faster modules that stand in for some of these layers, with the same
parameters, in :mod:`poolformer_mm.models.fast`.
"""
import math
from functools import partial
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from torch import Tensor


def to_fp32(x: Tensor, *params: Optional[Tensor]) -> List[Optional[Tensor]]:
    """``x`` and ``params`` in float32 at least (fp16 / bf16 go up): what
    the fp32 norms compute in, here and in their fast stand-ins."""
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
        x32, weight, bias = to_fp32(x, self.weight, self.bias)
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
        x32, weight, bias = to_fp32(x, self.weight, self.bias)
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


def token_mixer_cfg(cfg: Union[str, dict]) -> dict:
    """A copy of a token mixer config as a dict (a str is its ``type``);
    raises ``ValueError`` for a type not in :data:`TOKEN_MIXERS`."""
    cfg = dict(type=cfg) if isinstance(cfg, str) else dict(cfg)
    if cfg.get('type') not in TOKEN_MIXERS:
        raise ValueError(f'Unknown token mixer {cfg!r}; the type must be one '
                         f'of {sorted(TOKEN_MIXERS)}')
    return cfg


def build_token_mixer(cfg: dict, channels: int, drop_rate: float) -> nn.Module:
    """Build a token mixer from a dict with ``type`` and its arguments."""
    cfg = token_mixer_cfg(cfg)
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
