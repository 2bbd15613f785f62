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
from .frameworks import check_frameworks

check_frameworks()  # before anything imports mmengine or mmcv

from . import engine  # noqa: E402,F401  (registers the training runtime)
from .config_package import config_dir  # noqa: E402
from .models import MetaFormer, PoolFormer  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['MetaFormer', 'PoolFormer', '__version__', 'config_dir']
