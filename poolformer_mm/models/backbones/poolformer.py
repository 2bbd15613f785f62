"""PoolFormer: the MetaFormer macro-architecture with a pooling token mixer.

Paper: `MetaFormer Is Actually What You Need for Vision
<https://arxiv.org/abs/2111.11418>`_ (Yu et al., CVPR 2022). Original
implementation: https://github.com/sail-sg/poolformer (Apache-2.0). The network
is an instance of :class:`.metaformer.BaseMetaFormer` (the layers of
:mod:`.layers`, the sizes of :data:`.specs.POOLFORMER_ARCHS`): no stem or
downsampling norms, GroupNorm(1) pre-norms, GELU MLPs with biases, layer
scale, and (as in the original detection and segmentation code) a GroupNorm
``norm{i}`` on every emitted stage.
"""
from typing import Dict, List, Optional, Sequence, Union

from mmengine.model.weight_init import trunc_normal_init

from ..registration import register_backbone
from .metaformer import BaseMetaFormer
from .specs import (POOLFORMER_ARCH_KEYS, POOLFORMER_ARCHS, complete_spec,
                    poolformer_arch)


@register_backbone
class PoolFormer(BaseMetaFormer):
    """PoolFormer backbone for dense prediction: four stage feature maps at
    strides 4, 8, 16 and 32.

    Args:
        arch (str | dict): ``'s12'``, ``'s24'``, ``'s36'``, ``'m36'``,
            ``'m48'`` (``PoolFormer.arch_settings``), or a dict with
            ``layers`` and ``embed_dims`` (4 ints each), ``mlp_ratios`` (4
            numbers, or one for all stages) and ``layer_scale_init_values``
            (likewise, None for no layer scale), the keys of
            :class:`~poolformer_mm.MetaFormer` arch dicts. The older singular
            ``layer_scale_init_value`` is read as ``layer_scale_init_values``
            (committed configs and the configs saved with checkpoints use
            it). Defaults to 's12'.
        in_channels (int): Input image channels. Defaults to 3.
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
        drop_rate (float): Dropout inside the MLPs. Defaults to 0.
        drop_path_rate (float): Stochastic depth rate of the last block; it
            rises linearly from 0 over all blocks. Defaults to 0.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned,
            each through its own output norm. Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i`` the stem
            and stages ``0..i-1`` with their output norms (kept in eval
            mode). Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers (if ``norm_cfg`` is one) in
            eval mode during training. Defaults to False.
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

    arch_settings: Dict[str, dict] = POOLFORMER_ARCHS

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
                    f'{list(POOLFORMER_ARCH_KEYS)}')
            name, arch = arch.lower(), self.arch_settings[arch.lower()]
        elif isinstance(arch, dict):
            name, arch = 'custom', poolformer_arch(arch)
        else:
            raise TypeError('arch must be a str or a dict, got '
                            f'{type(arch).__name__}: {arch!r}')
        if layer_scale_init_value is None:
            layer_scale_init_value = arch['layer_scale_init_values']
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
            impl=impl,
            deploy=deploy,
            init_cfg=init_cfg)

    def _init_original_weights(self) -> None:
        """As the original: the MLPs' 1x1 convs trunc normal std .02 with
        zero bias; every other layer keeps PyTorch's initialisation."""
        for stage in self.stages:
            for block in stage.blocks:
                trunc_normal_init(block.mlp.fc1, std=.02, bias=0)
                trunc_normal_init(block.mlp.fc2, std=.02, bias=0)
