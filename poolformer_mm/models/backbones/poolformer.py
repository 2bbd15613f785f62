"""PoolFormer: the MetaFormer macro-architecture with a pooling token mixer.

Paper: `MetaFormer Is Actually What You Need for Vision
<https://arxiv.org/abs/2111.11418>`_ (Yu et al., CVPR 2022). Original
implementation: https://github.com/sail-sg/poolformer (Apache-2.0). The module
layout follows timm's ``timm/models/metaformer.py`` (a stem, then four stages
that each own their downsampling and blocks), so that stage ``i`` is output
``i`` and timm checkpoints map onto this network key for key.

This is the dense-prediction variant of the original network: every emitted
stage gets its own GroupNorm (``norm{i}``), as in the original detection and
segmentation code.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_init
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import load_pretrained
from ...registry import register_backbone

# Original release weights, used by the configs' ``init_cfg``.
PRETRAINED_URL = ('https://github.com/sail-sg/poolformer/releases/download/'
                  'v1.0/poolformer_{arch}.pth.tar')


class Stem(nn.Module):
    """Patch embedding at stride 4: conv 7x7, stride 4, padding 2.

    Args:
        in_channels (int): Input image channels.
        out_channels (int): Channels of the first stage.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=7, stride=4, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Downsampling(nn.Module):
    """Stride-2 patch merging between stages: conv 3x3, stride 2, padding 1.

    Args:
        in_channels (int): Channels of the previous stage.
        out_channels (int): Channels of this stage.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Pooling(nn.Module):
    """The PoolFormer token mixer: ``AvgPool(x) - x``.

    The input is subtracted because the block adds it back through its
    residual connection. Padding is excluded from the average so that border
    tokens are not pulled towards zero.

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
        return self.pool(x) - x


class LayerScale(nn.Module):
    """Learnable per-channel scale of a residual branch (CaiT's LayerScale).

    The parameter is called ``scale`` as in timm so that timm checkpoints load
    without renaming.

    Args:
        channels (int): Number of channels.
        init_value (float): Initial value of every scale.
    """

    def __init__(self, channels: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(-1, 1, 1)


class ConvMlp(nn.Module):
    """Channel MLP made of 1x1 convolutions, applied to NCHW tensors.

    Args:
        in_channels (int): Input and output channels.
        hidden_channels (int): Hidden channels.
        act_cfg (dict): Activation config. Defaults to ``dict(type='GELU')``.
        drop_rate (float): Dropout after the activation and the output.
            Defaults to 0.
    """

    def __init__(self,
                 in_channels: int,
                 hidden_channels: int,
                 act_cfg: dict = dict(type='GELU'),
                 drop_rate: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, 1)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Conv2d(hidden_channels, in_channels, 1)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class MetaFormerBlock(nn.Module):
    """One MetaFormer block: token mixing and a channel MLP, each pre-normed,
    layer-scaled and residual.

    Args:
        channels (int): Channels of the block.
        token_mixer (nn.Module): Token mixer, e.g. :class:`Pooling`.
        mlp_ratio (float): Hidden channels of the MLP over ``channels``.
        norm_cfg (dict): Config of the two pre-norms.
        act_cfg (dict): Activation of the MLP.
        drop_rate (float): Dropout inside the MLP.
        drop_path_rate (float): Stochastic depth of both residual branches.
        layer_scale_init_value (float, optional): Initial layer scale; None
            disables layer scale.
    """

    def __init__(self,
                 channels: int,
                 token_mixer: nn.Module,
                 mlp_ratio: float,
                 norm_cfg: dict,
                 act_cfg: dict,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: Optional[float] = 1e-5) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, channels)[1]
        self.token_mixer = token_mixer
        self.norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio), act_cfg,
                           drop_rate)
        if layer_scale_init_value is None:
            self.layer_scale1 = self.layer_scale2 = nn.Identity()
        else:
            self.layer_scale1 = LayerScale(channels, layer_scale_init_value)
            self.layer_scale2 = LayerScale(channels, layer_scale_init_value)
        self.drop_path = (
            DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(
            self.layer_scale1(self.token_mixer(self.norm1(x))))
        x = x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))
        return x


class MetaFormerStage(nn.Module):
    """A stage: its own downsampling (none for the first stage), then blocks.

    Args:
        downsample (nn.Module, optional): Downsampling at the stage's input.
        blocks (list[nn.Module]): The stage's blocks.
    """

    def __init__(self, downsample: Optional[nn.Module],
                 blocks: List[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else (
            nn.Identity())
        self.blocks = nn.Sequential(*blocks)


@register_backbone
class PoolFormer(BaseModule):
    """PoolFormer backbone for dense prediction.

    A PyTorch implementation of `MetaFormer Is Actually What You Need for
    Vision <https://arxiv.org/abs/2111.11418>`_, emitting four stage feature
    maps at strides 4, 8, 16 and 32.

    Args:
        arch (str | dict): PoolFormer architecture. A name in
            ``s12, s24, s36, m36, m48``, or a dict with keys:

            - **layers** (list[int]): Number of blocks in each of 4 stages.
            - **embed_dims** (list[int]): Channels of each stage.
            - **mlp_ratios** (list[float]): MLP ratio of each stage.
            - **layer_scale_init_value** (float): Initial layer scale.

            Defaults to 's12'.
        in_channels (int): Number of input image channels. Defaults to 3.
        pool_size (int): Pooling window of the token mixer. Defaults to 3.
        norm_cfg (dict): Config of all norms: the blocks' pre-norms and the
            output norms. Defaults to ``dict(type='GN', num_groups=1,
            eps=1e-5)``, GroupNorm over (C, H, W) as in the original.
        act_cfg (dict): Activation of the MLPs.
            Defaults to ``dict(type='GELU')``.
        drop_rate (float): Dropout inside the MLPs. Defaults to 0.
        drop_path_rate (float): Stochastic depth rate of the last block; it
            rises linearly from 0 over all blocks. Defaults to 0.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned,
            each through its own output norm. Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i`` the stem
            and stages ``0..i-1`` with their output norms. Frozen parts stay
            in eval mode. Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers (if ``norm_cfg`` uses them) in
            eval mode during training. Defaults to False.
        with_cp (bool): Gradient checkpointing of every block: saves memory,
            costs a second forward pass. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix=...)``.
            Defaults to None.
    """

    arch_settings: Dict[str, dict] = {
        's12': dict(
            layers=[2, 2, 6, 2],
            embed_dims=[64, 128, 320, 512],
            mlp_ratios=[4, 4, 4, 4],
            layer_scale_init_value=1e-5),
        's24': dict(
            layers=[4, 4, 12, 4],
            embed_dims=[64, 128, 320, 512],
            mlp_ratios=[4, 4, 4, 4],
            layer_scale_init_value=1e-5),
        's36': dict(
            layers=[6, 6, 18, 6],
            embed_dims=[64, 128, 320, 512],
            mlp_ratios=[4, 4, 4, 4],
            layer_scale_init_value=1e-6),
        'm36': dict(
            layers=[6, 6, 18, 6],
            embed_dims=[96, 192, 384, 768],
            mlp_ratios=[4, 4, 4, 4],
            layer_scale_init_value=1e-6),
        'm48': dict(
            layers=[8, 8, 24, 8],
            embed_dims=[96, 192, 384, 768],
            mlp_ratios=[4, 4, 4, 4],
            layer_scale_init_value=1e-6),
    }
    num_stages = 4
    strides = (4, 8, 16, 32)

    def __init__(self,
                 arch: Union[str, dict] = 's12',
                 in_channels: int = 3,
                 pool_size: int = 3,
                 norm_cfg: dict = dict(type='GN', num_groups=1, eps=1e-5),
                 act_cfg: dict = dict(type='GELU'),
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_name, arch = self._parse_arch(arch)
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

        layers = arch['layers']
        self.embed_dims = list(arch['embed_dims'])
        mlp_ratios = arch['mlp_ratios']
        layer_scale = arch['layer_scale_init_value']
        # Stochastic depth rises linearly from 0 at the first block to
        # drop_path_rate at the last, over all stages.
        dpr = torch.linspace(0, drop_path_rate, sum(layers)).tolist()

        self.stem = Stem(in_channels, self.embed_dims[0])
        self.stages = nn.ModuleList()
        block_idx = 0
        for i in range(self.num_stages):
            downsample = None if i == 0 else Downsampling(
                self.embed_dims[i - 1], self.embed_dims[i])
            blocks = [
                MetaFormerBlock(
                    self.embed_dims[i],
                    token_mixer=Pooling(pool_size),
                    mlp_ratio=mlp_ratios[i],
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    drop_rate=drop_rate,
                    drop_path_rate=dpr[block_idx + j],
                    layer_scale_init_value=layer_scale)
                for j in range(layers[i])
            ]
            block_idx += layers[i]
            self.stages.append(MetaFormerStage(downsample, blocks))

        for i in self.out_indices:
            self.add_module(f'norm{i}',
                            build_norm_layer(norm_cfg, self.embed_dims[i])[1])

        self._init_original_weights()
        self._freeze_stages()

    @property
    def out_channels(self) -> List[int]:
        """Channels of the returned feature maps, in ``out_indices`` order."""
        return [self.embed_dims[i] for i in self.out_indices]

    def _parse_arch(self, arch: Union[str, dict]) -> Tuple[str, dict]:
        if isinstance(arch, str):
            if arch.lower() not in self.arch_settings:
                raise ValueError(
                    f'Unknown PoolFormer arch {arch!r}; choose one of '
                    f'{sorted(self.arch_settings)} or give a dict with keys '
                    "'layers', 'embed_dims', 'mlp_ratios', "
                    "'layer_scale_init_value'")
            return arch.lower(), dict(self.arch_settings[arch.lower()])
        if not isinstance(arch, dict):
            raise TypeError('arch must be a str or a dict, got '
                            f'{type(arch).__name__}: {arch!r}')
        required = {'layers', 'embed_dims', 'mlp_ratios',
                    'layer_scale_init_value'}
        missing = required - set(arch)
        if missing:
            raise ValueError(f'Custom arch {arch!r} lacks the keys '
                             f'{sorted(missing)}; required: {sorted(required)}')
        unknown = set(arch) - required
        if unknown:
            raise ValueError(f'Custom arch has unknown keys {sorted(unknown)}; '
                             f'allowed: {sorted(required)}')
        arch = dict(arch)
        if isinstance(arch['mlp_ratios'], (int, float)):
            arch['mlp_ratios'] = [arch['mlp_ratios']] * self.num_stages
        for key in ('layers', 'embed_dims', 'mlp_ratios'):
            if len(arch[key]) != self.num_stages:
                raise ValueError(
                    f'Custom arch {key} must have {self.num_stages} entries '
                    f'(one per stage), got {list(arch[key])}')
        return 'custom', arch

    def _parse_out_indices(self, out_indices: Sequence[int]) -> Tuple[int]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices
               if not isinstance(i, int) or not 0 <= i < self.num_stages]
        if bad or not out_indices:
            raise ValueError(
                f'out_indices must be a non-empty sequence of stage indices '
                f'in 0..{self.num_stages - 1}, got {out_indices!r}')
        if len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f'out_indices must not repeat a stage, got {out_indices!r}')
        return out_indices

    def _init_original_weights(self) -> None:
        """Initialise as the original: MLP 1x1 convs trunc normal std .02
        with zero bias; norms one and zero and all other layers keep
        PyTorch's defaults."""
        for stage in self.stages:
            for block in stage.blocks:
                trunc_normal_init(block.mlp.fc1, std=.02, bias=0)
                trunc_normal_init(block.mlp.fc2, std=.02, bias=0)

    def init_weights(self) -> None:
        """Apply ``init_cfg``.

        ``Pretrained`` entries go through :func:`load_pretrained`, which
        reads every public PoolFormer naming, never unpickles code, and
        raises instead of silently skipping weights that do not fit. Other
        entries are handled by mmengine. With no ``init_cfg`` the original
        initialisation from the constructor stands.
        """
        if self.init_cfg is None:
            return
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [
            self.init_cfg
        ]
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if others:
            init_cfg, self.init_cfg = self.init_cfg, others
            super().init_weights()
            self.init_cfg = init_cfg
        for cfg in pretrained:
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix',
                                  'map_location'}
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

    def train(self, mode: bool = True) -> 'PoolFormer':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(
                f'PoolFormer expects a Tensor, got {type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                'PoolFormer expects a 4D (N, C, H, W) tensor with '
                f'C={self.in_channels} channels, got shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError('PoolFormer expects a floating point tensor, got '
                            f'{x.dtype}')

    def _run_blocks(self, blocks: nn.Sequential, x: Tensor) -> Tensor:
        for block in blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return the normed feature maps of the stages in ``out_indices``.

        Args:
            x (Tensor): Images of shape (N, in_channels, H, W).

        Returns:
            tuple[Tensor]: One map per entry of ``out_indices``, at stride
            4, 8, 16 or 32 of the input.
        """
        self._check_input(x)
        x = self.stem(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages[:last + 1]):
            x = self._run_blocks(stage.blocks, stage.downsample(x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        # Keep the order the caller asked for in out_indices.
        order = sorted(self.out_indices)
        return tuple(outs[order.index(i)] for i in self.out_indices)
