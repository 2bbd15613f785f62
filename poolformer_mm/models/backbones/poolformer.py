"""PoolFormer: the MetaFormer macro-architecture with a pooling token mixer.

Paper: `MetaFormer Is Actually What You Need for Vision
<https://arxiv.org/abs/2111.11418>`_ (Yu et al., CVPR 2022). Original
implementation: https://github.com/sail-sg/poolformer (Apache-2.0). The network
is an instance of :class:`.metaformer.BaseMetaFormer`: no stem or downsampling
norms, GroupNorm(1) pre-norms, GELU MLPs with biases, layer scale, and (as in
the original detection and segmentation code) a GroupNorm ``norm{i}`` on every
emitted stage.
"""
from typing import Dict, List, Optional, Sequence, Union

from mmengine.model.weight_init import trunc_normal_init

from ..registration import register_backbone
from .metaformer import BaseMetaFormer, complete_spec

_ARCH_KEYS = ('layers', 'embed_dims', 'mlp_ratios', 'layer_scale_init_value')


@register_backbone
class PoolFormer(BaseMetaFormer):
    """PoolFormer backbone for dense prediction: four stage feature maps at
    strides 4, 8, 16 and 32.

    Args:
        arch (str | dict): ``'s12'``, ``'s24'``, ``'s36'``, ``'m36'``,
            ``'m48'``, or a dict with ``layers`` and ``embed_dims`` (4 ints
            each), ``mlp_ratios`` (4 numbers, or one for all stages) and
            ``layer_scale_init_value``. Defaults to 's12'.
        pool_size (int): Pooling window of the token mixer. Defaults to 3.
        norm_cfg (dict): All norms: the blocks' pre-norms and the output
            norms. Defaults to ``dict(type='GN', num_groups=1, eps=1e-5)``,
            GroupNorm over (C, H, W) as in the original.
        act_cfg (dict): Activation of the MLPs.
            Defaults to ``dict(type='GELU')``.
        layer_scale_init_value (float, optional): Initial layer scale of
            every block, e.g. 1.0 to train from scratch; None takes the
            arch's (1e-5 for S12 / S24, 1e-6 for the others). Loaded weights
            bring their own. Defaults to None.
        deploy (bool): Build inference-only, ``impl='deploy'``.
            Defaults to False.

        ``in_channels``, ``drop_rate``, ``drop_path_rate``, ``out_indices``,
        ``frozen_stages``, ``norm_eval``, ``with_cp``, ``impl`` and
        ``init_cfg`` are those of :class:`~poolformer_mm.MetaFormer`.
    """

    arch_settings: Dict[str, dict] = {
        's12': dict(layers=[2, 2, 6, 2], embed_dims=[64, 128, 320, 512],
                    mlp_ratios=4, layer_scale_init_value=1e-5),
        's24': dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512],
                    mlp_ratios=4, layer_scale_init_value=1e-5),
        's36': dict(layers=[6, 6, 18, 6], embed_dims=[64, 128, 320, 512],
                    mlp_ratios=4, layer_scale_init_value=1e-6),
        'm36': dict(layers=[6, 6, 18, 6], embed_dims=[96, 192, 384, 768],
                    mlp_ratios=4, layer_scale_init_value=1e-6),
        'm48': dict(layers=[8, 8, 24, 8], embed_dims=[96, 192, 384, 768],
                    mlp_ratios=4, layer_scale_init_value=1e-6),
    }

    def __init__(self,
                 arch: Union[str, dict] = 's12',
                 in_channels: int = 3,
                 pool_size: int = 3,
                 norm_cfg: dict = dict(type='GN', num_groups=1, eps=1e-5),
                 act_cfg: dict = dict(type='GELU'),
                 layer_scale_init_value: Optional[float] = None,
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
            if arch.lower() not in self.arch_settings:
                raise ValueError(
                    f'Unknown PoolFormer arch {arch!r}; choose one of '
                    f'{sorted(self.arch_settings)} or give a dict with keys '
                    f'{list(_ARCH_KEYS)}')
            name, arch = arch.lower(), self.arch_settings[arch.lower()]
        elif isinstance(arch, dict):
            name = 'custom'
            missing = [k for k in _ARCH_KEYS if k not in arch]
            unknown = sorted(set(arch) - set(_ARCH_KEYS))
            if missing or unknown:
                raise ValueError(
                    f'Custom PoolFormer arch {arch!r} lacks the keys '
                    f'{missing} or has unknown keys {unknown}; required: '
                    f'{list(_ARCH_KEYS)}')
        else:
            raise TypeError('arch must be a str or a dict, got '
                            f'{type(arch).__name__}: {arch!r}')
        if layer_scale_init_value is None:
            layer_scale_init_value = arch['layer_scale_init_value']
        spec = complete_spec(
            dict(
                layers=arch['layers'],
                embed_dims=arch['embed_dims'],
                token_mixers=dict(type='Pooling', pool_size=pool_size),
                mlp_ratios=arch['mlp_ratios'],
                norm_cfgs=norm_cfg,
                act_cfg=act_cfg,
                mlp_bias=True,
                layer_scale_init_values=layer_scale_init_value,
                res_scale_init_values=None,
                stem_norm_cfg=None,
                downsample_norm_cfg=None,
                out_norm_cfg=norm_cfg), f'PoolFormer arch {name!r}')
        super().__init__(
            name,
            spec,
            in_channels=in_channels,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            with_cp=with_cp,
            impl='deploy' if deploy else impl,
            init_cfg=init_cfg)

    def _init_original_weights(self) -> None:
        """As the original: the MLPs' 1x1 convs trunc normal std .02 with
        zero bias; every other layer keeps PyTorch's initialisation."""
        for stage in self.stages:
            for block in stage.blocks:
                trunc_normal_init(block.mlp.fc1, std=.02, bias=0)
                trunc_normal_init(block.mlp.fc2, std=.02, bias=0)
