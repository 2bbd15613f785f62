"""The build-time check that a model's neck takes what its backbone emits.

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


def check_neck_channels(model: nn.Module) -> None:
    """Raise if ``model.neck`` expects other channels than ``model.backbone``
    (one of this package's backbones) emits.

    Models without a neck, other backbones, and necks whose ``in_channels``
    is not a list (e.g. a single int) are not checked.

    Raises:
        ValueError: Names both channel lists and the backbone settings.
    """
    backbone = getattr(model, 'backbone', None)
    neck = getattr(model, 'neck', None)
    if neck is None or not isinstance(backbone, tuple(BACKBONES)):
        return
    if isinstance(neck, nn.Sequential) and len(neck) > 0:
        neck = neck[0]  # a list of necks: the first one takes the features
    in_channels = getattr(neck, 'in_channels', None)
    if not isinstance(in_channels, (list, tuple)):
        return
    out_channels = list(backbone.out_channels)
    if list(in_channels) != out_channels:
        raise ValueError(
            f'{type(model).__name__}: the neck ({type(neck).__name__}) has '
            f'in_channels={list(in_channels)} but the backbone '
            f'({type(backbone).__name__}, arch '
            f'{getattr(backbone, "arch_name", "?")!r}, out_indices='
            f'{tuple(backbone.out_indices)}) emits out_channels='
            f'{out_channels}: one entry per backbone output, in order. Set '
            f'model.neck.in_channels={out_channels} or change '
            'model.backbone.out_indices / arch.')


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
