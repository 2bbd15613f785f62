"""PoolFormer and MetaFormer backbones for MMDetection 3.x and MMSegmentation
1.x.

Importing this package registers the backbones in both frameworks' ``MODELS``
registries, so configs can use
``custom_imports=dict(imports=['poolformer_mm'])``.
It also registers the training runtime of :mod:`poolformer_mm.engine`
(``SafeRunner``, ``SafeCheckpointHook``, ``SwitchToDeployHook``,
``CPUDistributedDataParallel``, ``AutocastOptimWrapper``) in mmengine's
registries, which the configs name.
"""
from . import engine  # noqa: F401  (registers the training runtime)
from .models import MetaFormer, PoolFormer
from .version import __version__

__all__ = ['MetaFormer', 'PoolFormer', '__version__']
