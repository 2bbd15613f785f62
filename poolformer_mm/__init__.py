"""PoolFormer and MetaFormer backbones for MMDetection 3.x and MMSegmentation
1.x.

Importing this package registers the backbones in both frameworks' ``MODELS``
registries, so configs can use
``custom_imports=dict(imports=['poolformer_mm'])``.
It also registers the training runtime of :mod:`poolformer_mm.engine`
(``SafeRunner``, ``SafeCheckpointHook``, ``SwitchToDeployHook``,
``CPUDistributedDataParallel``, ``AutocastOptimWrapper``) in mmengine's
registries, which the configs name, and lets configs inherit this
package's by ``poolformer_mm::<folder>/<file>``
(:func:`config_dir` says where they are). It adds nothing to torch's
``weights_only`` allowlist: the checkpoints it writes are plain data
(:mod:`poolformer_mm.checkpoint`).
"""
from . import engine  # noqa: F401  (registers the training runtime)
from .models import MetaFormer, PoolFormer
from .config_package import config_dir
from .version import __version__

__all__ = ['MetaFormer', 'PoolFormer', '__version__', 'config_dir']
