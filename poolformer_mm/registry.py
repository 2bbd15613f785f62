"""Registration of this package's models in the OpenMMLab frameworks.

Backbones go into MMDetection's and MMSegmentation's ``MODELS`` registries so
that ``type='PoolFormer'`` resolves under ``default_scope='mmdet'`` and
``'mmseg'`` alike. Each framework is tried on its own: a missing or broken
MMSegmentation must not hide the class from MMDetection, nor the reverse. The
class is also registered in mmengine's root ``MODELS``, which every scope
falls back to, so it stays buildable when neither framework is installed.

The same registries get a check after every build
(:func:`check_neck_channels`): a detector or segmentor whose neck expects
other channels than this package's backbone emits fails when it is built,
with both lists in the message, instead of with a convolution shape error in
its first forward pass. It sits here because the backbone cannot see the
neck, and it wraps the ``build_func`` of all three registries because the
runner builds models through mmengine's root ``MODELS`` while scripts use
``mmdet.registry.MODELS`` or ``mmseg.registry.MODELS``, and each keeps its
own. Models with other backbones are left alone.

This module also makes ``_base_ = ['poolformer_mm::<folder>/<config>.py']``
resolve once the package is imported (:func:`register_config_package`):
mmengine reads such bases only for packages in its ``MODULE2PACKAGE`` dict
and offers no API to add one, so the entry is added here. mmengine then
finds the configs under ``poolformer_mm/.mim/configs`` of an installed wheel
(:func:`config_dir`). These two are the package's only changes to mmengine's
state.
"""
import functools
import importlib
import os.path as osp
import warnings
from typing import Callable, Dict, Set, Type

import torch.nn as nn
from mmengine.config import Config
from mmengine.config import utils as config_utils
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

FRAMEWORK_REGISTRIES = ('mmdet.registry', 'mmseg.registry')
# Backbone classes registered by this package.
_BACKBONES: Set[Type] = set()
_CHECKED = '_poolformer_mm_checks_necks'


def _framework_registries() -> Dict[str, Registry]:
    registries = {}
    for module_name in FRAMEWORK_REGISTRIES:
        try:
            registries[module_name] = importlib.import_module(
                module_name).MODELS
        except ImportError as exc:
            warnings.warn(f'{module_name} could not be imported ({exc}); '
                          'poolformer_mm models are not registered there.')
    return registries


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
    if neck is None or not isinstance(backbone, tuple(_BACKBONES)):
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


def _with_neck_check(build_func: Callable) -> Callable:
    if getattr(build_func, _CHECKED, False):
        return build_func

    @functools.wraps(build_func)
    def build(cfg, *args, **kwargs):
        model = build_func(cfg, *args, **kwargs)
        check_neck_channels(model)
        return model

    setattr(build, _CHECKED, True)
    return build


def register_backbone(cls: Type) -> Type:
    """Class decorator: register ``cls`` in every available ``MODELS``, and
    check the neck of every model built there (:func:`check_neck_channels`).
    """
    _BACKBONES.add(cls)
    registries = [MMENGINE_MODELS] + list(_framework_registries().values())
    for registry in registries:
        registry.register_module(module=cls)
        registry.build_func = _with_neck_check(registry.build_func)
    return cls


PACKAGE = 'poolformer_mm'


def config_dir() -> str:
    """The folder holding this package's configs: ``.mim/configs`` inside an
    installed wheel, the checkout's ``configs/`` for an editable install.

    A config outside this package names its bases by this folder where
    ``poolformer_mm::`` cannot be used (a tool that reads the config before
    anything imports poolformer_mm), e.g. through an environment variable:
    ``_base_ = ['{{$POOLFORMER_MM_CONFIGS:}}/retinanet_poolformer_s12.py']``.
    """
    package_dir = osp.dirname(osp.abspath(__file__))
    installed = osp.join(package_dir, '.mim', 'configs')
    if osp.isdir(installed):
        return installed
    return osp.join(osp.dirname(package_dir), 'configs')


def register_config_package() -> None:
    """Let mmengine read ``poolformer_mm::<folder>/<config>.py`` bases.

    mmengine resolves ``pkg::path`` only for packages in
    ``mmengine.config.utils.MODULE2PACKAGE`` (and, by its pattern
    ``pkg::folder/file``, only for configs in a sub-folder: ``_base_/`` and
    ``demo/`` here). It finds them under the installed package's
    ``.mim/configs``, which wheels of this package carry; an editable
    install has none there, so name configs by :func:`config_dir` instead.
    """
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)


def resolve_package_scope(cfg: Config) -> Config:
    """A copy of ``cfg`` in which ``_scope_='poolformer_mm'`` is replaced by
    the config's ``default_scope``.

    mmengine marks every setting a config inherits through a ``pkg::`` base
    with ``_scope_=pkg``, to build it with that package's registries. This
    package has none of its own: its configs are MMDetection or
    MMSegmentation configs (their ``default_scope``), and e.g. a pipeline
    inherited from one would otherwise be looked up in mmengine's root
    registries, which lack the frameworks' transforms.

    Args:
        cfg (Config): A config read by ``Config.fromfile``.

    Returns:
        Config: ``cfg`` itself when nothing is marked, else a copy.
    """
    scope = cfg.get('default_scope')

    def resolve(value):
        if isinstance(value, dict):
            resolved = {key: resolve(item) for key, item in value.items()}
            if resolved.get('_scope_') == PACKAGE:
                if scope is None:
                    del resolved['_scope_']
                else:
                    resolved['_scope_'] = scope
            return resolved
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(item) for item in value)
        return value

    as_dict = cfg.to_dict()
    resolved = resolve(as_dict)
    if resolved == as_dict:
        return cfg
    return Config(resolved, filename=cfg.filename)


register_config_package()
