"""PoolFormer backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing this package registers the backbones in both frameworks' ``MODELS``
registries, so configs can use ``custom_imports=dict(imports=['poolformer_mm'])``.
"""
from .models import PoolFormer
from .version import __version__

__all__ = ['PoolFormer', '__version__']
