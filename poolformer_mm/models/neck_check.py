"""The build-time check that a model's neck (or, without one, its heads)
takes what its backbone emits.

A detector or segmentor whose neck expects other channels than this
package's backbone emits fails when it is built, with both lists in the
message, instead of with a convolution shape error in its first forward
pass. It wraps the ``build_func`` of the registries the backbones are in
(:mod:`.registration`) because the backbone cannot see the neck, and the
runner builds models through mmengine's root ``MODELS`` while scripts use
``mmdet.registry.MODELS`` or ``mmseg.registry.MODELS``, each with its own.
Models with other backbones are left alone.
"""
import functools
from typing import Callable, Set, Type

import torch.nn as nn

# Backbone classes registered by this package.
BACKBONES: Set[Type] = set()
_CHECKED = '_poolformer_mm_checks_necks'


def _mismatch(model: nn.Module, backbone: nn.Module, part: str,
              takes: object, emits: object, where: str) -> ValueError:
    key = part.split(' ')[0]
    return ValueError(
        f'{type(model).__name__}: the {part} has in_channels={takes} but the '
        f'backbone ({type(backbone).__name__}, arch '
        f'{getattr(backbone, "arch_name", "?")!r}, out_indices='
        f'{tuple(backbone.out_indices)}) emits {where}{emits}: one entry per '
        f'backbone output it reads, in order. Set model.{key}.in_channels='
        f'{emits} or change model.backbone.out_indices / arch.')


def check_neck_channels(model: nn.Module) -> None:
    """Raise if what takes the features of ``model.backbone`` (one of this
    package's backbones) expects other channels than it emits: the neck, or
    without a neck (UperNet) the decode and auxiliary heads, whose
    ``in_index`` picks the backbone outputs they read.

    Models with other backbones, and parts whose ``in_channels`` is not a
    list (or, for a head, an int with an int ``in_index``), are not checked.

    Raises:
        ValueError: Names both channel lists and the backbone settings.
    """
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, tuple(BACKBONES)):
        return
    out_channels = list(backbone.out_channels)
    neck = getattr(model, 'neck', None)
    if neck is not None:
        if isinstance(neck, nn.Sequential) and len(neck) > 0:
            neck = neck[0]  # a list of necks: the first takes the features
        in_channels = getattr(neck, 'in_channels', None)
        if isinstance(in_channels, (list, tuple)) and list(
                in_channels) != out_channels:
            raise _mismatch(model, backbone, f'neck ({type(neck).__name__})',
                            list(in_channels), out_channels, 'out_channels=')
        return
    for part in ('decode_head', 'auxiliary_head'):
        head = getattr(model, part, None)
        in_channels = getattr(head, 'in_channels', None)
        in_index = getattr(head, 'in_index', None)
        if isinstance(in_channels, (list, tuple)) and isinstance(
                in_index, (list, tuple)):
            takes, emits = list(in_channels), [
                out_channels[i] if -len(out_channels) <= i < len(out_channels)
                else None for i in in_index
            ]
        elif isinstance(in_channels, int) and isinstance(in_index, int):
            takes = in_channels
            emits = (out_channels[in_index] if -len(out_channels) <= in_index
                     < len(out_channels) else None)
        else:
            continue
        if takes != emits:
            raise _mismatch(model, backbone, part, takes, emits,
                            f'at in_index={in_index} ')


def with_neck_check(build_func: Callable) -> Callable:
    """``build_func`` followed by :func:`check_neck_channels` (once)."""
    if getattr(build_func, _CHECKED, False):
        return build_func

    @functools.wraps(build_func)
    def build(cfg, *args, **kwargs):
        model = build_func(cfg, *args, **kwargs)
        check_neck_channels(model)
        return model

    setattr(build, _CHECKED, True)
    return build
