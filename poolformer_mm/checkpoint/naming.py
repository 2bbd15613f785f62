"""The public namings of PoolFormer and MetaFormer weights, and the one
mapping of each onto this package's module names
(:func:`convert_backbone_state_dict`).

Known namings (detected from the keys):

- ``original``: the sail-sg/poolformer classification release
  (``patch_embed.proj``, ``network.{0,2,4,6}.{j}``, ``network.{1,3,5}.proj``,
  ``norm``, ``head``).
- ``original_dense``: the original detection / segmentation backbones: the
  same names (usually under ``backbone.``) with output norms
  ``norm{0,2,4,6}``. MMSegmentation's released PoolFormer models use it too.
- ``mmpretrain``: ``backbone.`` + original names, ``backbone.norm6`` (the
  classifier's final norm) and ``head.fc``.
- ``metaformer_original``: the sail-sg/metaformer release of PoolFormerV2,
  ConvFormer, CAFormer, IdentityFormer and RandFormer
  (``downsample_layers.0.{conv,post_norm}``,
  ``downsample_layers.{1,2,3}.{pre_norm,conv}``, ``stages.{i}.{j}``, ``norm``,
  ``head``), whose MLPs and separable convolutions are linear layers where
  this package has 1x1 convolutions.
- ``timm``: ``stem.{conv,norm}``, ``stages.{i}.downsample.{norm,conv}``,
  ``stages.{i}.blocks.{j}``, ``layer_scale{1,2}.scale``, ``head.{norm,fc}``,
  for PoolFormer and the MetaFormer Baselines alike.
- ``poolformer_mm``: this package's names, timm's plus output norms
  ``norm{i}``.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from torch import Tensor

from ..errors import CheckpointError

FORMATS = ('original', 'original_dense', 'mmpretrain', 'metaformer_original',
           'timm', 'poolformer_mm')
# Containers in which released checkpoints wrap their state dict.
_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'state_dict_ema',
                 'model_ema')


def unwrap_state_dict(checkpoint: Dict[str, object]) -> Dict[str, Tensor]:
    """The tensor dict inside common checkpoint wrappers."""
    state_dict = checkpoint
    for key in _WRAPPER_KEYS:
        if isinstance(state_dict, dict) and isinstance(
                state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f'Expected a state dict, got {type(state_dict).__name__}')
    # DataParallel / DDP save under `module.`.
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return OrderedDict(
        (k, v) for k, v in state_dict.items() if isinstance(v, Tensor))


def detect_format(state_dict: Dict[str, Tensor]) -> str:
    """Name the naming scheme of a PoolFormer or MetaFormer state dict (see
    the module doc).

    ``backbone.``-prefixed keys are looked at when no bare backbone key
    exists, as in detector / segmentor checkpoints.

    Raises:
        CheckpointError: No known naming is found.
    """
    keys = set(state_dict)
    bare = {k for k in keys if not k.startswith('backbone.')}
    backbone = {
        k[len('backbone.'):]
        for k in keys if k.startswith('backbone.')
    }
    for names, prefixed in ((bare, False), (backbone, True)):
        if any(k.startswith('network.') for k in names):
            if prefixed and 'head.fc.weight' in keys:
                return 'mmpretrain'
            out_norms = {m.group(1) for k in names
                         for m in [re.match(r'norm(\d+)\.', k)] if m}
            return 'original_dense' if out_norms else 'original'
        # sail-sg/metaformer also has `stages.`, so it is told apart first.
        if any(k.startswith('downsample_layers.') for k in names):
            return 'metaformer_original'
        if any(k.startswith('stages.') for k in names):
            if any(re.match(r'norm\d+\.', k) for k in names):
                return 'poolformer_mm'
            return 'timm'
    raise CheckpointError(
        'No PoolFormer weights or other MetaFormer weights recognised: '
        f'expected keys in one of the namings {FORMATS} (e.g. '
        'network.0.0.mlp.fc1.weight, downsample_layers.0.conv.weight or '
        'stages.0.blocks.0.mlp.fc1.weight); found e.g. '
        f'{sorted(keys)[:5]}')


def _rename_original(key: str, fmt: str) -> Optional[str]:
    """Original / mmpretrain name to this package's, None if not backbone."""
    m = re.match(r'patch_embed\.proj\.(.+)$', key)
    if m:
        return f'stem.conv.{m.group(1)}'
    m = re.match(r'network\.(\d+)\.(.+)$', key)
    if m:
        pos, rest = int(m.group(1)), m.group(2)
        if pos % 2 == 1:  # odd positions hold the downsamplings
            rest = re.sub(r'^proj\.', 'conv.', rest)
            return f'stages.{(pos + 1) // 2}.downsample.{rest}'
        rest = re.sub(r'layer_scale_(\d)$', r'layer_scale\1.scale', rest)
        return f'stages.{pos // 2}.blocks.{rest}'
    m = re.match(r'norm(\d+)\.(.+)$', key)
    if m and fmt == 'original_dense':
        # Original output norms sit at list positions 0, 2, 4, 6.
        return f'norm{int(m.group(1)) // 2}.{m.group(2)}'
    return None  # classifier: final `norm`, mmpretrain `norm6`, `head`


def _rename_metaformer_original(key: str, fmt: str) -> Optional[str]:
    """sail-sg/metaformer name to this package's, None if not backbone."""
    m = re.match(r'downsample_layers\.0\.(conv|post_norm)\.(.+)$', key)
    if m:
        part = 'conv' if m.group(1) == 'conv' else 'norm'
        return f'stem.{part}.{m.group(2)}'
    m = re.match(r'downsample_layers\.(\d+)\.(conv|pre_norm)\.(.+)$', key)
    if m:
        part = 'conv' if m.group(2) == 'conv' else 'norm'
        return f'stages.{m.group(1)}.downsample.{part}.{m.group(3)}'
    m = re.match(r'stages\.(\d+)\.(\d+)\.(.+)$', key)
    if m:
        return f'stages.{m.group(1)}.blocks.{m.group(2)}.{m.group(3)}'
    return None  # classifier: final `norm`, `head`


def _linear_to_conv(state_dict: Dict[str, Tensor]) -> None:
    """Reshape, in place, the original MetaFormer Baselines' linear weights
    that are 1x1 convolution weights here.

    The original runs channels-last everywhere; timm and this package run
    (N, C, H, W) maps with 1x1 convolutions, except in attention stages,
    whose blocks (MLP included) stay on (N, L, C) tokens with linear layers.
    """
    qkv = re.compile(r'stages\.(\d+)\.blocks\.\d+\.token_mixer\.qkv\.')
    token_stages = {m.group(1) for m in map(qkv.match, state_dict) if m}
    for key, value in state_dict.items():
        m = re.match(
            r'stages\.(\d+)\.blocks\.\d+\.'
            r'(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$', key)
        if m and value.dim() == 2 and (m.group(2).startswith('token_mixer')
                                       or m.group(1) not in token_stages):
            state_dict[key] = value[:, :, None, None]


def _rename_timm(key: str, fmt: str) -> Optional[str]:
    if key.startswith(('stem.', 'stages.')):
        return key
    if fmt == 'poolformer_mm' and re.match(r'norm\d+\.', key):
        return key
    return None  # head.norm / head.fc: the classifier


def convert_backbone_state_dict(
        state_dict: Dict[str, Tensor],
        fmt: Optional[str] = None) -> Tuple[Dict[str, Tensor], List[str], str]:
    """Map a PoolFormer / MetaFormer state dict of any known naming to this
    package's.

    Args:
        state_dict (dict): Backbone weights, with or without ``backbone.``.
        fmt (str, optional): Naming; detected when None.

    Returns:
        tuple: (converted backbone state dict, keys of ``state_dict`` that
        are not backbone weights, the naming used).
    """
    fmt = fmt or detect_format(state_dict)
    if fmt not in FORMATS:
        raise ValueError(f'Unknown checkpoint format {fmt!r}; one of '
                         f'{FORMATS}')
    has_bare = any(k.startswith(('network.', 'stages.', 'stem.',
                                 'patch_embed.', 'downsample_layers.'))
                   for k in state_dict)
    if fmt in ('original', 'original_dense', 'mmpretrain'):
        rename = _rename_original
    elif fmt == 'metaformer_original':
        rename = _rename_metaformer_original
    else:
        rename = _rename_timm
    converted, ignored = OrderedDict(), []
    for key, value in state_dict.items():
        name = key
        if not has_bare:
            if not key.startswith('backbone.'):
                ignored.append(key)
                continue
            name = key[len('backbone.'):]
        new_name = rename(name, fmt)
        if new_name is None:
            ignored.append(key)
        else:
            converted[new_name] = value
    if fmt == 'metaformer_original':
        _linear_to_conv(converted)
    return converted, ignored, fmt
