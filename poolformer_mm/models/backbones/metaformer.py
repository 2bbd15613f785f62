"""The MetaFormer family as dense-prediction backbones.

One implementation of the MetaFormer macro-architecture (a stem, four stages
that each own their downsampling and blocks, every block a pre-normed token
mixer and a pre-normed channel MLP on residual branches) with pluggable token
mixers, shared by:

- PoolFormer (:class:`~poolformer_mm.PoolFormer`, pooling): `MetaFormer Is
  Actually What You Need for Vision <https://arxiv.org/abs/2111.11418>`_ (Yu
  et al., CVPR 2022), original code https://github.com/sail-sg/poolformer.
- PoolFormerV2 (pooling), ConvFormer (separable convolution), CAFormer
  (separable convolution, then self-attention), IdentityFormer (identity)
  and RandFormer (identity, then a frozen random mixing matrix)
  (:class:`MetaFormer`): `MetaFormer Baselines for Vision
  <https://arxiv.org/abs/2210.13452>`_ (Yu et al., TPAMI 2023), original
  code https://github.com/sail-sg/metaformer.

Both original repositories are Copyright 2022 Garena Online Private Limited
and released under the Apache License 2.0. The module layout and names follow
timm's ``timm/models/metaformer.py`` (Fredo Guan and Ross Wightman, Apache
2.0), which unifies the two, so that timm checkpoints load key for key.

What differs from the classification networks: every emitted stage gets its
own output norm ``norm{i}`` (as the original PoolFormer detection and
segmentation code does), there is no classifier, and all norms compute in
float32 under mixed precision (see :class:`Fp32GroupNorm`).
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

from ...checkpoint import load_pretrained
from ...registry import register_backbone
from .fast_ops import (group_norm, pointwise_mlp, pool_mixer,
                       pool_norm_residual, use_channels_last)

# Original ImageNet-1k weights of sail-sg/metaformer, used by the configs'
# ``init_cfg``; ``{family}`` is the arch name up to the underscore.
PRETRAINED_URL = ('https://huggingface.co/sail/dl/resolve/main/{family}/'
                  '{arch}.pth')


# ---------------------------------------------------------------------------
# Norms that compute in float32
# ---------------------------------------------------------------------------
def _compute_dtype(x: Tensor) -> torch.dtype:
    # fp16 / bf16 go up to fp32, fp32 and fp64 stay as they are.
    return torch.promote_types(x.dtype, torch.float32)


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm that normalises in float32 whatever the input dtype.

    With one group it normalises over (C, H, W), as PoolFormer's norms do.
    On CUDA, autocast already runs ``group_norm`` and ``layer_norm`` in fp32
    (and returns fp32); on CPU it runs them in the input's dtype (bf16), and
    a network cast to fp16 without autocast would too, where statistics over
    C*H*W elements lose precision or, computed by hand as in the original
    ``LayerNormGeneral``, overflow. So the input and the affine parameters
    are cast up here and the result is cast back to the input dtype, the
    same on every device. Explicitly fp32 inputs are not cast down by
    autocast on any device (these ops are on no lower-precision list).

    Args:
        num_channels (int): Number of channels.
        num_groups (int): Number of groups. Defaults to 1.
        eps (float): Added to the variance. Defaults to 1e-5.
        affine (bool): Learn a per-channel weight (and bias). Defaults to
            True.
        bias (bool): Learn a per-channel bias; the MetaFormer Baselines
            networks have none. Defaults to True.
    """

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
        dtype = _compute_dtype(x)
        out = group_norm(
            x.to(dtype), self.num_groups, _cast(self.weight, dtype),
            _cast(self.bias, dtype), self.eps)
        return out.to(x.dtype)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension (channels of (N, L, C) tokens),
    computed in float32 whatever the input dtype (see
    :class:`Fp32GroupNorm` for why).

    Args:
        num_channels (int): Number of channels.
        eps (float): Added to the variance. Defaults to 1e-6.
        affine (bool): Learn a per-channel weight (and bias). Defaults to
            True.
        bias (bool): Learn a per-channel bias. Defaults to True.
    """

    def __init__(self,
                 num_channels: int,
                 eps: float = 1e-6,
                 affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(
            num_channels, eps=eps, elementwise_affine=affine, bias=bias)

    def _norm(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        out = F.layer_norm(
            x.to(dtype), self.normalized_shape, _cast(self.weight, dtype),
            _cast(self.bias, dtype), self.eps)
        return out.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._norm(x)


class Fp32LayerNorm2d(Fp32LayerNorm):
    """LayerNorm over the channels of (N, C, H, W) maps, computed in float32
    whatever the input dtype (see :class:`Fp32GroupNorm` for why).

    Args:
        num_channels (int): Number of channels.
        eps (float): Added to the variance. Defaults to 1e-6.
        affine (bool): Learn a per-channel weight (and bias). Defaults to
            True.
        bias (bool): Learn a per-channel bias. Defaults to True.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# Norm types built here rather than by mmcv, so that they compute in fp32.
NORM_LAYERS = {
    'GN': Fp32GroupNorm,
    'LN': Fp32LayerNorm,
    'LN2d': Fp32LayerNorm2d,
}
# Norms over the last dimension, the only ones that fit (N, L, C) tokens.
_CHANNELS_LAST_NORMS = ('LN', )


def build_norm(cfg: Optional[dict], num_channels: int) -> nn.Module:
    """Build a norm layer; ``None`` gives ``nn.Identity``.

    ``GN`` (needs ``num_groups``), ``LN`` (last dimension) and ``LN2d``
    (channels of NCHW) are the float32 norms of this module and accept
    ``eps``, ``affine`` and ``bias``; any other type (e.g. ``BN``,
    ``SyncBN``) is built by mmcv's ``build_norm_layer``. ``requires_grad``
    works for all types.

    Args:
        cfg (dict, optional): Norm config with a ``type`` key.
        num_channels (int): Number of channels.

    Returns:
        nn.Module: The norm layer.
    """
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


# ---------------------------------------------------------------------------
# Activations and token mixers
# ---------------------------------------------------------------------------
class StarReLU(nn.Module):
    """StarReLU: ``scale * relu(x) ** 2 + bias`` with a learnable scalar
    scale and bias (MetaFormer Baselines, Sec. 3.2).

    Args:
        scale_value (float): Initial scale. Defaults to 1.
        bias_value (float): Initial bias. Defaults to 0.
    """

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
    """The PoolFormer token mixer: ``AvgPool(x) - x``.

    The input is subtracted because the block adds it back through its
    residual connection. Padding is excluded from the average so that border
    tokens are not pulled towards zero. On CPU the window sums run faster
    than ``nn.AvgPool2d`` (:func:`.fast_ops.pool_mixer`), with the same
    result; after a GroupNorm(1) in a block, the block runs norm, pooling,
    layer scale and residual as one operation
    (:func:`.fast_ops.pool_norm_residual`).

    Args:
        pool_size (int): Pooling window. Defaults to 3.
    """

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size,
            stride=1,
            padding=pool_size // 2,
            count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        return pool_mixer(self.pool, x)


class SepConv(nn.Module):
    """ConvFormer's token mixer, MobileNetV2's inverted separable
    convolution: 1x1 conv, StarReLU, depthwise conv, 1x1 conv.

    Args:
        channels (int): Input and output channels.
        expansion_ratio (float): Hidden channels over ``channels``.
            Defaults to 2.
        kernel_size (int): Depthwise kernel; padding keeps the size.
            Defaults to 7.
        act_cfg (dict): Activation after the first 1x1 conv.
            Defaults to ``dict(type='StarReLU')``.
        bias (bool): Biases of the convolutions. Defaults to False.
    """

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
        # Kept (as an identity) for timm's module layout.
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(self.act1(self.pwconv1(x)))
        return self.pwconv2(self.act2(x))


class Attention(nn.Module):
    """CAFormer's token mixer: global multi-head self-attention over
    (N, L, C) tokens.

    Attention has no position encoding and no fixed token count, so it works
    at any input size the convolutions before it accept.

    Args:
        channels (int): Input and output channels.
        head_dim (int): Channels per head. Defaults to 32.
        num_heads (int, optional): Number of heads; ``channels // head_dim``
            (at least 1) when None. Defaults to None.
        qkv_bias (bool): Bias of the query / key / value projection.
            Defaults to False.
        proj_bias (bool): Bias of the output projection. Defaults to False.
        attn_drop (float): Dropout of the attention weights. Defaults to 0.
        proj_drop (float): Dropout after the output projection.
            Defaults to 0.
    """

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
    all tokens, ``x'_m = sum_n R[m, n] x_n``.

    The original matrix has a fixed token count (14x14 or 7x7 at the
    224x224 pre-training size). On another grid it is resized as a 4-D
    (query H, W, key H, W) map with bilinear interpolation over the key and
    then the query positions, and its rows are renormalised to sum to one,
    so that the mixer still takes weighted averages of tokens; on the
    pre-training grid it is used as is.

    Args:
        num_tokens (int): Tokens of the square pre-training grid.
            Defaults to 196.
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
        """The (H*W, H*W) mixing matrix of an ``height`` x ``width`` grid."""
        if (height, width) == (self.side, self.side):
            return self.random_matrix
        s, size = self.side, (height, width)
        m = self.random_matrix.float()
        # Keys: (queries, 1, s, s) -> (queries, h*w).
        m = F.interpolate(
            m.reshape(s * s, 1, s, s),
            size=size,
            mode='bilinear',
            align_corners=False)
        m = m.reshape(s * s, height * width).t()
        # Queries: (h*w keys, 1, s, s) -> (h*w keys, h*w queries).
        m = F.interpolate(
            m.reshape(height * width, 1, s, s),
            size=size,
            mode='bilinear',
            align_corners=False)
        m = m.reshape(height * width, height * width).t()
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


def build_token_mixer(cfg: Union[str, dict],
                      channels: int,
                      drop_rate: float = 0.) -> nn.Module:
    """Build a token mixer from its type name or a dict with ``type`` and
    constructor arguments (``channels`` is filled in).

    Args:
        cfg (str | dict): e.g. ``'SepConv'`` or
            ``dict(type='Pooling', pool_size=5)``.
        channels (int): Channels of the block.
        drop_rate (float): Output dropout of ``Attention``. Defaults to 0.
    """
    cfg = _mixer_cfg(cfg)
    mixer_type = cfg.pop('type')
    if mixer_type in ('SepConv', 'Attention'):
        cfg['channels'] = channels
    if mixer_type == 'Attention':
        cfg.setdefault('proj_drop', drop_rate)
    return TOKEN_MIXERS[mixer_type][0](**cfg)


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------
class Stem(nn.Module):
    """Patch embedding at stride 4: conv 7x7, stride 4, padding 2, then an
    optional norm (MetaFormer Baselines).

    Args:
        in_channels (int): Input image channels.
        out_channels (int): Channels of the first stage.
        norm_cfg (dict, optional): Norm after the conv; None for none
            (PoolFormer). Defaults to None.
    """

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
    """Stride-2 patch merging between stages: an optional norm (MetaFormer
    Baselines), then conv 3x3, stride 2, padding 1.

    Args:
        in_channels (int): Channels of the previous stage.
        out_channels (int): Channels of this stage.
        norm_cfg (dict, optional): Norm before the conv; None for none
            (PoolFormer). Defaults to None.
    """

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
    """Learnable per-channel scale: CaiT's LayerScale of a residual branch,
    or NormFormer's res-scale of the shortcut.

    The parameter is called ``scale`` as in timm so that timm checkpoints load
    without renaming.

    Args:
        channels (int): Number of channels.
        init_value (float): Initial value of every scale.
        channels_last (bool): Inputs are (N, L, C) tokens rather than
            (N, C, H, W) maps. Defaults to False.
    """

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
    on (N, L, C) tokens.

    Args:
        in_channels (int): Input and output channels.
        hidden_channels (int): Hidden channels.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        drop_rate (float): Dropout after the activation and the output.
            Defaults to 0.
        bias (bool): Biases of the two layers. Defaults to True.
        channels_last (bool): Use linear layers on (N, L, C) tokens.
            Defaults to False.
    """

    def __init__(self,
                 in_channels: int,
                 hidden_channels: int,
                 act_cfg: dict = dict(type='GELU'),
                 drop_rate: float = 0.,
                 bias: bool = True,
                 channels_last: bool = False) -> None:
        super().__init__()
        # A 1x1 conv and a linear layer are the same map on different layouts.
        layer = nn.Linear if channels_last else partial(
            nn.Conv2d, kernel_size=1)
        self.fc1 = layer(in_channels, hidden_channels, bias=bias)
        self.act = build_act(act_cfg)
        self.fc2 = layer(hidden_channels, in_channels, bias=bias)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.drop.p > 0):
            fused = pointwise_mlp(self.fc1, self.act, self.fc2, x)
            if fused is not None:
                return fused
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


# The former name of the NCHW MLP and of the layer scale.
ConvMlp = Mlp
LayerScale = Scale


class MetaFormerBlock(nn.Module):
    """One MetaFormer block: token mixing and a channel MLP, each pre-normed
    and residual, with optional layer scale (of the branch) and res-scale
    (of the shortcut)::

        x = res_scale1(x) + layer_scale1(token_mixer(norm1(x)))
        x = res_scale2(x) + layer_scale2(mlp(norm2(x)))

    Args:
        channels (int): Channels of the block.
        token_mixer (nn.Module): Token mixer, e.g. :class:`Pooling`.
        mlp_ratio (float): Hidden channels of the MLP over ``channels``.
        norm_cfg (dict): Config of the two pre-norms.
        act_cfg (dict): Activation of the MLP.
        drop_rate (float): Dropout inside the MLP. Defaults to 0.
        drop_path_rate (float): Stochastic depth of both residual branches.
            Defaults to 0.
        layer_scale_init_value (float, optional): Initial layer scale; None
            disables layer scale. Defaults to 1e-5.
        res_scale_init_value (float, optional): Initial res-scale; None
            disables it. Defaults to None.
        mlp_bias (bool): Biases in the MLP. Defaults to True.
        channels_last (bool): The block works on (N, L, C) tokens (for
            attention) instead of (N, C, H, W) maps. Defaults to False.
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

    def _fused_token_mixing(self, x: Tensor) -> Optional[Tensor]:
        """The first residual half as one operation where it fits (CPU
        float32, a :class:`Pooling` mixer after a GroupNorm(1), no
        res-scale, no stochastic depth in training; see
        :func:`.fast_ops.pool_norm_residual`), else None."""
        # Exact types: a subclass may compute something else.
        if not (type(self.token_mixer) is Pooling
                and type(self.norm1) in (Fp32GroupNorm, nn.GroupNorm)
                and isinstance(self.res_scale1, nn.Identity)):
            return None
        if self.training and not isinstance(self.drop_path, nn.Identity):
            return None
        if type(self.layer_scale1) is Scale:
            if self.layer_scale1.shape[1:] != (1, 1):
                return None
            layer_scale = self.layer_scale1.scale
        elif isinstance(self.layer_scale1, nn.Identity):
            layer_scale = None
        else:
            return None
        return pool_norm_residual(x, self.token_mixer.pool, self.norm1,
                                  layer_scale)

    def forward(self, x: Tensor) -> Tensor:
        fused = self._fused_token_mixing(x)
        if fused is not None:
            x = fused
        else:
            x = self.res_scale1(x) + self.drop_path(
                self.layer_scale1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.drop_path(
            self.layer_scale2(self.mlp(self.norm2(x))))
        return x


class MetaFormerStage(nn.Module):
    """A stage: its own downsampling (none for the first stage), then blocks.

    Args:
        downsample (nn.Module, optional): Downsampling at the stage's input.
        blocks (list[nn.Module]): The stage's blocks.
        channels_last (bool): The blocks take (N, L, C) tokens; the stage's
            input and output stay (N, C, H, W). Defaults to False.
    """

    def __init__(self,
                 downsample: Optional[nn.Module],
                 blocks: List[nn.Module],
                 channels_last: bool = False) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else (
            nn.Identity())
        self.blocks = nn.Sequential(*blocks)
        self.channels_last = channels_last


# ---------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------
# The bias-free norms of MetaFormer Baselines (`LayerNormGeneral` in the
# original): over channels, and with normalized_dim=(1, 2, 3) GroupNorm(1).
_LN2D_NO_BIAS = dict(type='LN2d', eps=1e-6, bias=False)
_LN_NO_BIAS = dict(type='LN', eps=1e-6, bias=False)
_GN1_NO_BIAS = dict(type='GN', num_groups=1, eps=1e-6, bias=False)
# Keys of a full MetaFormer spec, with the MetaFormer Baselines defaults
# (sail-sg/metaformer's `MetaFormer` class); the first three are required.
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


class BaseMetaFormer(BaseModule):
    """The MetaFormer backbone for dense prediction, built from a full spec.

    Use :class:`MetaFormer` (MetaFormer Baselines archs) or
    :class:`~poolformer_mm.PoolFormer` (PoolFormer v1); this class holds what
    they share. It emits four stage feature maps at strides 4, 8, 16 and 32,
    each through its own output norm ``norm{i}``.

    Args:
        arch_name (str): Name of the arch, for messages and ``arch_name``.
        spec (dict): Full arch spec: every key of ``SPEC_DEFAULTS``, with
            per-stage lists of four for the keys in ``_PER_STAGE``.
        in_channels (int): Number of input image channels. Defaults to 3.
        drop_rate (float): Dropout inside the MLPs (and after attention).
            Defaults to 0.
        drop_path_rate (float): Stochastic depth rate of the last block; it
            rises linearly from 0 over all blocks. Defaults to 0.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned,
            each through its own output norm. Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i`` the stem
            and stages ``0..i-1`` with their output norms. Frozen parts stay
            in eval mode. Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers (if a norm config uses them)
            in eval mode during training. Defaults to False.
        with_cp (bool): Gradient checkpointing of every block: saves memory,
            costs a second forward pass. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix=...)``.
            Defaults to None.
    """

    num_stages = 4
    strides = (4, 8, 16, 32)

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
        self.with_cp = with_cp

        layers = spec['layers']
        self.embed_dims = list(spec['embed_dims'])
        # Stochastic depth rises linearly from 0 at the first block to
        # drop_path_rate at the last, over all stages. (Plain Python, so that
        # the network can be built on the meta device.)
        num_blocks = sum(layers)
        dpr = [
            drop_path_rate * j / max(num_blocks - 1, 1)
            for j in range(num_blocks)
        ]

        self.stem = Stem(in_channels, self.embed_dims[0],
                         spec['stem_norm_cfg'])
        self.stages = nn.ModuleList()
        block_idx = 0
        for i in range(self.num_stages):
            mixer_cfg = spec['token_mixers'][i]
            channels_last = TOKEN_MIXERS[mixer_cfg['type']][1]
            downsample = None if i == 0 else Downsampling(
                self.embed_dims[i - 1], self.embed_dims[i],
                spec['downsample_norm_cfg'])
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
                    drop_path_rate=dpr[block_idx + j],
                    layer_scale_init_value=spec['layer_scale_init_values'][i],
                    res_scale_init_value=spec['res_scale_init_values'][i],
                    mlp_bias=spec['mlp_bias'],
                    channels_last=channels_last) for j in range(layers[i])
            ]
            block_idx += layers[i]
            self.stages.append(
                MetaFormerStage(downsample, blocks, channels_last))

        for i in self.out_indices:
            self.add_module(
                f'norm{i}', build_norm(spec['out_norm_cfg'],
                                       self.embed_dims[i]))

        self._init_original_weights()
        self._freeze_stages()

    @property
    def out_channels(self) -> List[int]:
        """Channels of the returned feature maps, in ``out_indices`` order."""
        return [self.embed_dims[i] for i in self.out_indices]

    @classmethod
    def _complete_spec(cls, spec: dict, arch_name: str) -> dict:
        """Check a spec, fill in defaults and expand per-stage values."""
        family = f'{cls.__name__} arch {arch_name!r}'
        missing = [k for k in _REQUIRED if k not in spec]
        if missing:
            raise ValueError(f'Custom arch {spec!r} lacks the keys {missing}; '
                             f'required: {list(_REQUIRED)}')
        unknown = set(spec) - set(SPEC_DEFAULTS)
        if unknown:
            raise ValueError(
                f'Custom arch has unknown keys {sorted(unknown)}; allowed: '
                f'{list(SPEC_DEFAULTS)}')
        full = dict(SPEC_DEFAULTS, **spec)
        for key in _PER_STAGE:
            value = full[key]
            if isinstance(value, (list, tuple)):
                if len(value) != cls.num_stages:
                    raise ValueError(
                        f'{family}: {key} must have {cls.num_stages} '
                        f'entries (one per stage), got {list(value)}')
                full[key] = list(value)
            elif key in ('layers', 'embed_dims'):
                raise ValueError(
                    f'{family}: {key} must be a list of {cls.num_stages} '
                    f'ints (one per stage), got {value!r}')
            else:
                full[key] = [value] * cls.num_stages
        full['token_mixers'] = [_mixer_cfg(m) for m in full['token_mixers']]
        for i, (mixer, norm) in enumerate(
                zip(full['token_mixers'], full['norm_cfgs'])):
            # Attention blocks see (N, L, C) tokens, the others (N, C, H, W)
            # maps; only a last-dimension norm fits tokens.
            tokens = TOKEN_MIXERS[mixer['type']][1]
            norm_type = (norm or {}).get('type')
            if tokens != (norm_type in _CHANNELS_LAST_NORMS):
                raise ValueError(
                    f'{family}: stage {i} has token mixer {mixer["type"]!r} '
                    f'with norm {norm!r}; use ' +
                    ("type='LN' (over the channels of (N, L, C) tokens)"
                     if tokens else "a norm of (N, C, H, W) maps such as "
                     "'LN2d', 'GN' or 'BN', not 'LN'"))
        return full

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
        """Initialise as sail-sg/metaformer: every conv and linear layer
        trunc normal std .02 with zero bias; norms one and zero."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_init(m, std=.02, bias=0)

    def init_weights(self) -> None:
        """Apply ``init_cfg``.

        ``Pretrained`` entries go through :func:`load_pretrained`, which
        reads every public naming of these networks, never unpickles code,
        and raises instead of silently skipping weights that do not fit.
        Other entries are handled by mmengine. With no ``init_cfg`` the
        original initialisation from the constructor stands.
        """
        if self.init_cfg is None:
            return
        cfgs = self.init_cfg if isinstance(self.init_cfg,
                                           list) else [self.init_cfg]
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if others:
            init_cfg, self.init_cfg = self.init_cfg, others
            super().init_weights()
            self.init_cfg = init_cfg
        for cfg in pretrained:
            unknown = set(cfg) - {
                'type', 'checkpoint', 'prefix', 'map_location'
            }
            if unknown or 'checkpoint' not in cfg:
                raise ValueError(
                    f'Pretrained init_cfg {cfg} must have `checkpoint` and '
                    'may have `prefix`, `map_location`; unknown keys: '
                    f'{sorted(unknown)}')
            load_pretrained(
                self,
                cfg['checkpoint'],
                prefix=cfg.get('prefix'),
                map_location=cfg.get('map_location', 'cpu'))
        self._is_init = True

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.stem]
        for i in range(self.frozen_stages):
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'BaseMetaFormer':
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

    def _run_blocks(self, blocks: nn.Sequential, x: Tensor) -> Tensor:
        for block in blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def _run_stage(self, stage: MetaFormerStage, x: Tensor) -> Tensor:
        x = stage.downsample(x)
        if not stage.channels_last:
            return self._run_blocks(stage.blocks, x)
        n, c, h, w = x.shape
        x = self._run_blocks(stage.blocks, x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(n, c, h, w)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return the normed feature maps of the stages in ``out_indices``.

        Args:
            x (Tensor): Images of shape (N, in_channels, H, W).

        Returns:
            tuple[Tensor]: One contiguous (N, C, H, W) map per entry of
            ``out_indices``, at stride 4, 8, 16 or 32 of the input.
        """
        self._check_input(x)
        if use_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages[:last + 1]):
            x = self._run_stage(stage, x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return self._emit(outs)

    def _emit(self, outs: List[Tensor]) -> Tuple[Tensor, ...]:
        """The stage outputs, collected in stage order, in the order of
        ``out_indices`` and as contiguous NCHW tensors whatever layout the
        stages ran in: mmcv's CPU ops (e.g. ``RoIAlign`` of the RoI heads)
        index the memory of their input as NCHW without checking, and read
        channels_last maps wrongly."""
        order = sorted(self.out_indices)
        return tuple(outs[order.index(i)].contiguous()
                     for i in self.out_indices)


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
    return {
        f'{prefix}_{size}': dict(**dims, **spec)
        for size, dims in sizes.items()
    }


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

    A PyTorch implementation of `MetaFormer Baselines for Vision
    <https://arxiv.org/abs/2210.13452>`_, emitting four stage feature maps at
    strides 4, 8, 16 and 32, each through an output LayerNorm ``norm{i}``
    (over channels, with bias, eps 1e-6: the classifier's output norm type).
    Modules are named as in timm, so timm checkpoints load key for key;
    sail-sg/metaformer checkpoints are renamed on loading.

    All archs have layer scale off, res-scale (init 1) in stages 2 and 3,
    StarReLU MLPs without bias (ratio 4), bias-free LayerNorm (eps 1e-6)
    after the stem and before each downsampling conv, and bias-free block
    norms: GroupNorm(1) for PoolFormerV2 / IdentityFormer / RandFormer,
    channel LayerNorm for ConvFormer / CAFormer.

    Args:
        arch (str | dict): A name in ``MetaFormer.arch_settings``:
            ``poolformerv2_{s12,s24,s36,m36,m48}``,
            ``convformer_{s18,s36,m36,b36}``, ``caformer_{s18,s36,m36,b36}``,
            ``identityformer_{s12,s24,s36,m36,m48}``,
            ``randformer_{s12,s24,s36,m36,m48}``; or a dict with the keys
            ``layers``, ``embed_dims`` (4 ints each) and ``token_mixers``
            (one or 4 of ``'Pooling'``, ``'Identity'``, ``'RandomMixing'``,
            ``'SepConv'``, ``'Attention'``, or dicts with ``type`` and
            arguments), and optionally any other key of ``SPEC_DEFAULTS``
            (``mlp_ratios``, ``norm_cfgs``, ``act_cfg``, ``mlp_bias``,
            ``layer_scale_init_values``, ``res_scale_init_values``,
            ``stem_norm_cfg``, ``downsample_norm_cfg``, ``out_norm_cfg``),
            whose defaults are the MetaFormer Baselines ones.
            Defaults to 'convformer_s18'.
        in_channels (int): Number of input image channels. Defaults to 3.
        drop_rate (float): Dropout inside the MLPs and after attention.
            Defaults to 0.
        drop_path_rate (float): Stochastic depth rate of the last block; it
            rises linearly from 0 over all blocks. Defaults to 0.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned,
            each through its own output norm. Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i`` the stem
            and stages ``0..i-1`` with their output norms. Frozen parts stay
            in eval mode. Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers (if a norm config uses them)
            in eval mode during training. Defaults to False.
        with_cp (bool): Gradient checkpointing of every block: saves memory,
            costs a second forward pass. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix=...)``.
            Defaults to None.
    """

    arch_settings: Dict[str, dict] = {
        **_family(
            'poolformerv2',
            _V1_SIZES,
            token_mixers='Pooling',
            norm_cfgs=_GN1_NO_BIAS),
        **_family(
            'convformer',
            _V2_SIZES,
            token_mixers='SepConv',
            norm_cfgs=_LN2D_NO_BIAS),
        **_family(
            'caformer', _V2_SIZES, token_mixers=_CA, norm_cfgs=_CA_NORMS),
        **_family(
            'identityformer',
            _V1_SIZES,
            token_mixers='Identity',
            norm_cfgs=_GN1_NO_BIAS),
        **_family(
            'randformer',
            _V1_SIZES,
            token_mixers=_RANDOM,
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
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        arch_name, spec = self._parse_arch(arch)
        super().__init__(
            arch_name,
            spec,
            in_channels=in_channels,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            with_cp=with_cp,
            init_cfg=init_cfg)

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> Tuple[str, dict]:
        if isinstance(arch, str):
            name = arch.lower()
            if name not in cls.arch_settings:
                hint = (' (PoolFormer v1 is type=\'PoolFormer\', '
                        f'arch={name[len("poolformer_"):]!r})'
                        if name.startswith('poolformer_') else '')
                raise ValueError(
                    f'Unknown MetaFormer arch {arch!r}{hint}; choose one of '
                    f'{sorted(cls.arch_settings)} or give a dict with keys '
                    f'{list(_REQUIRED)} and optionally '
                    f'{[k for k in SPEC_DEFAULTS if k not in _REQUIRED]}')
            return name, cls._complete_spec(cls.arch_settings[name], name)
        if not isinstance(arch, dict):
            raise TypeError('arch must be a str or a dict, got '
                            f'{type(arch).__name__}: {arch!r}')
        return 'custom', cls._complete_spec(arch, 'custom')

    @staticmethod
    def pretrained_url(arch: str) -> str:
        """URL of the original ImageNet-1k weights of a named arch."""
        return PRETRAINED_URL.format(family=arch.split('_')[0], arch=arch)
