"""The MetaFormer family as dense-prediction backbones.

PoolFormer, PoolFormerV2, ConvFormer, CAFormer, IdentityFormer and RandFormer
(papers and original code credited in :mod:`.layers`) with the layout of
timm's ``timm/models/metaformer.py``: a stem, then four stages that each own
their downsampling and blocks. What differs from the classification networks:
every emitted stage has its own output norm ``norm{i}``, there is no
classifier, and the norms compute in float32 under mixed precision.

Where each part lives:

- :mod:`.layers`: the reference layers (norms, token mixers, blocks, stages);
- :mod:`.specs`: the arch specs (sizes, defaults, ``arch_settings``);
- this module: :class:`BaseMetaFormer`, which builds a network from a spec
  and chooses its execution path, and :class:`MetaFormer`, the MetaFormer
  Baselines backbones; :mod:`.poolformer` holds PoolFormer (v1);
- :mod:`poolformer_mm.models.fast`: faster execution paths with the same
  parameters, chosen by the ``impl`` / ``deploy`` arguments through its one
  selector, :func:`~poolformer_mm.models.fast.apply_impl`.

The layers and specs are re-exported here: this module was their import path
before they had their own.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_init
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint.fitting import init_weights
from ..fast import apply_impl
from ..registration import register_backbone
from .layers import (NORM_LAYERS, TOKEN_MIXERS, Attention, Downsampling,
                     Fp32GroupNorm, Fp32LayerNorm, Fp32LayerNorm2d,
                     MetaFormerBlock, MetaFormerStage, Mlp, Pooling,
                     RandomMixing, Scale, SepConv, StarReLU, Stem, build_act,
                     build_norm, build_token_mixer)
from .specs import (METAFORMER_ARCHS, REQUIRED_KEYS, SPEC_DEFAULTS,
                    complete_spec)

__all__ = [
    'BaseMetaFormer', 'MetaFormer', 'NORM_LAYERS', 'TOKEN_MIXERS', 'Attention',
    'Downsampling', 'Fp32GroupNorm', 'Fp32LayerNorm', 'Fp32LayerNorm2d',
    'MetaFormerBlock', 'MetaFormerStage', 'Mlp', 'Pooling', 'RandomMixing',
    'Scale', 'SepConv', 'StarReLU', 'Stem', 'build_act', 'build_norm',
    'build_token_mixer', 'SPEC_DEFAULTS', 'complete_spec'
]


class BaseMetaFormer(BaseModule):
    """The MetaFormer backbone for dense prediction, built from a full spec
    (:func:`complete_spec`); :class:`MetaFormer` and
    :class:`~poolformer_mm.PoolFormer` name its archs. ``arch_name`` names
    the network in messages; the arguments after ``spec`` are those of
    :class:`MetaFormer`.

    The network is built of the reference layers of :mod:`.layers`; ``impl``
    and ``deploy`` then choose how it executes (:meth:`switch_impl`), which
    changes modules' classes but no parameter.
    """

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
                 deploy: bool = False,
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
        self.switch_impl('deploy' if deploy else impl)

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
                "inference-only deploy path (deploy=True, impl='deploy' or "
                'switch_to_deploy()) and cannot train. Build it without '
                'deploy to train or fine-tune.')
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
            :data:`~.specs.SPEC_DEFAULTS`, which hold the MetaFormer
            Baselines defaults. Defaults to 'convformer_s18'.
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
            ``'reference'`` (the modules of :mod:`.layers`), ``'deploy'``
            (folded, inference only, :meth:`switch_to_deploy`), and opt-in
            ``'triton'`` (fused Triton kernels) or ``'compile'``
            (``torch.compile`` by region). Same parameters and results.
            Defaults to 'auto'.
        deploy (bool): Build inference-only: ``True`` is ``impl='deploy'``,
            whatever ``impl`` says (MMPretrain's argument). Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix=...)``.
            Defaults to None.
    """

    arch_settings: Dict[str, dict] = METAFORMER_ARCHS

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
                 deploy: bool = False,
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
                    f'{list(REQUIRED_KEYS)} and optionally '
                    f'{[k for k in SPEC_DEFAULTS if k not in REQUIRED_KEYS]}')
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
            deploy=deploy,
            init_cfg=init_cfg)
