"""Registration of this package's backbones in the OpenMMLab frameworks.

Backbones go into MMDetection's and MMSegmentation's ``MODELS`` registries so
that ``type='PoolFormer'`` resolves under ``default_scope='mmdet'`` and
``'mmseg'`` alike. Each framework is tried on its own: a missing or broken
MMSegmentation must not hide the class from MMDetection, nor the reverse. The
class is also registered in mmengine's root ``MODELS``, which every scope
falls back to, so it stays buildable when neither framework is installed.
Every registry that holds a backbone also checks the necks of the models it
builds (:mod:`.neck_check`).
"""
import importlib
import warnings
from typing import Dict, Type

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

from .neck_check import BACKBONES, with_neck_check

FRAMEWORK_REGISTRIES = ('mmdet.registry', 'mmseg.registry')


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


def register_backbone(cls: Type) -> Type:
    """Class decorator: register ``cls`` in every available ``MODELS``, and
    check the neck of every model built there
    (:func:`.neck_check.check_neck_channels`)."""
    BACKBONES.add(cls)
    registries = [MMENGINE_MODELS] + list(_framework_registries().values())
    for registry in registries:
        registry.register_module(module=cls)
        registry.build_func = with_neck_check(registry.build_func)
    return cls
