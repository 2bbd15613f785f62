"""PoolFormer: the MetaFormer macro-architecture with a pooling token mixer.

Paper: `MetaFormer Is Actually What You Need for Vision
<https://arxiv.org/abs/2111.11418>`_ (Yu et al., CVPR 2022). Original
implementation: https://github.com/sail-sg/poolformer (Apache-2.0). The
network is an instance of the MetaFormer backbone of :mod:`.metaformer`,
whose layout follows timm's ``timm/models/metaformer.py`` (a stem, then four
stages that each own their downsampling and blocks), so that stage ``i`` is
output ``i`` and timm checkpoints map onto this network key for key.

This is the dense-prediction variant of the original network: every emitted
stage gets its own GroupNorm (``norm{i}``), as in the original detection and
segmentation code.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.model.weight_init import trunc_normal_init
from torch import Tensor

from ...registry import register_backbone
from .deploy import DeployRunner, deploy_forward
# The building blocks live in .metaformer; they are re-exported here for
# code that imported them from this module.
from .metaformer import (BaseMetaFormer, ConvMlp, Downsampling, LayerScale,
                         MetaFormerBlock, MetaFormerStage, Pooling, Stem)

__all__ = [
    'PoolFormer', 'PRETRAINED_URL', 'Stem', 'Downsampling', 'Pooling',
    'LayerScale', 'ConvMlp', 'MetaFormerBlock', 'MetaFormerStage'
]

# Original release weights, used by the configs' ``init_cfg``.
PRETRAINED_URL = ('https://github.com/sail-sg/poolformer/releases/download/'
                  'v1.0/poolformer_{arch}.pth.tar')


@register_backbone
class PoolFormer(BaseMetaFormer):
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
        deploy (bool): Build the backbone inference-only, on the fast path
            of :meth:`switch_to_deploy`; weights loaded later (``init_cfg``,
            ``load_from``) are used. Defaults to False.
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
                 deploy: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        arch_name, arch = self._parse_arch(arch)
        # PoolFormer v1 as a MetaFormer: pooling mixer, GELU MLPs with bias,
        # layer scale, no res-scale and no stem / downsampling norms.
        spec = self._complete_spec(
            dict(
                layers=arch['layers'],
                embed_dims=arch['embed_dims'],
                token_mixers=dict(type='Pooling', pool_size=pool_size),
                mlp_ratios=arch['mlp_ratios'],
                norm_cfgs=norm_cfg,
                act_cfg=act_cfg,
                mlp_bias=True,
                layer_scale_init_values=arch['layer_scale_init_value'],
                res_scale_init_values=None,
                stem_norm_cfg=None,
                downsample_norm_cfg=None,
                out_norm_cfg=norm_cfg), arch_name)
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
        self.deploy = False
        self._deploy_runner: Optional[DeployRunner] = None
        if deploy:
            self.switch_to_deploy()

    def switch_to_deploy(self) -> 'PoolFormer':
        """Switch to the inference-only fast path (MMPretrain's name for
        re-parameterised inference).

        Norm affines and layer scales are folded into the 1x1 convolutions
        and the pooling; on CPU activations stay channels_last and the
        convolutions run on oneDNN with the activation and the residual
        addition fused, on CUDA the norms' statistics come from one
        reduction each over the whole GPU (see :mod:`.deploy`). Outputs
        equal the normal eval path to about 1e-6 relative and are
        contiguous NCHW tensors.

        Parameters and state dict are unchanged: folding happens on the
        first forward and again whenever a parameter changes, so weights
        loaded after the switch are used. The backbone stays in eval mode
        and refuses ``train()``; inputs must not require grad.

        Returns:
            PoolFormer: ``self``.
        """
        self.eval()
        self._deploy_runner = DeployRunner()
        self.deploy = True
        return self

    def train(self, mode: bool = True) -> 'PoolFormer':
        if mode and getattr(self, 'deploy', False):
            raise RuntimeError(
                'This PoolFormer was switched to the inference-only deploy '
                'path (switch_to_deploy() or deploy=True) and cannot train. '
                'Build it without deploy=True to train or fine-tune.')
        return super().train(mode)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return the normed feature maps of the stages in ``out_indices``
        (on the fast path after :meth:`switch_to_deploy`).

        Args:
            x (Tensor): Images of shape (N, in_channels, H, W).

        Returns:
            tuple[Tensor]: One map per entry of ``out_indices``, at stride
            4, 8, 16 or 32 of the input.
        """
        if self.deploy:
            self._check_input(x)
            return deploy_forward(self, self._deploy_runner, x)
        return super().forward(x)

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> Tuple[str, dict]:
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_settings:
                raise ValueError(
                    f'Unknown PoolFormer arch {arch!r}; choose one of '
                    f'{sorted(cls.arch_settings)} or give a dict with keys '
                    "'layers', 'embed_dims', 'mlp_ratios', "
                    "'layer_scale_init_value'")
            return arch.lower(), dict(cls.arch_settings[arch.lower()])
        if not isinstance(arch, dict):
            raise TypeError('arch must be a str or a dict, got '
                            f'{type(arch).__name__}: {arch!r}')
        required = {'layers', 'embed_dims', 'mlp_ratios',
                    'layer_scale_init_value'}
        missing = required - set(arch)
        if missing:
            raise ValueError(f'Custom arch {arch!r} lacks the keys '
                             f'{sorted(missing)}; required: '
                             f'{sorted(required)}')
        unknown = set(arch) - required
        if unknown:
            raise ValueError('Custom arch has unknown keys '
                             f'{sorted(unknown)}; allowed: '
                             f'{sorted(required)}')
        arch = dict(arch)
        if isinstance(arch['mlp_ratios'], (int, float)):
            arch['mlp_ratios'] = [arch['mlp_ratios']] * cls.num_stages
        for key in ('layers', 'embed_dims', 'mlp_ratios'):
            if len(arch[key]) != cls.num_stages:
                raise ValueError(
                    f'Custom arch {key} must have {cls.num_stages} entries '
                    f'(one per stage), got {list(arch[key])}')
        return 'custom', arch

    def _init_original_weights(self) -> None:
        """Initialise as the original: MLP 1x1 convs trunc normal std .02
        with zero bias; norms one and zero and all other layers keep
        PyTorch's defaults."""
        for stage in self.stages:
            for block in stage.blocks:
                trunc_normal_init(block.mlp.fc1, std=.02, bias=0)
                trunc_normal_init(block.mlp.fc2, std=.02, bias=0)
