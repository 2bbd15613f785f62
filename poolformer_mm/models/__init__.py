"""The backbones and how they execute.

- :mod:`.backbones`: the network, in plain PyTorch: :mod:`.backbones.layers`
  (the reference layers), :mod:`.backbones.specs` (the arch specs),
  :mod:`.backbones.metaformer` (``BaseMetaFormer``, ``MetaFormer``) and
  :mod:`.backbones.poolformer` (``PoolFormer``).
- :mod:`.fast`: faster execution paths with the same parameters
  (:mod:`.fast.cpu`, :mod:`.fast.cuda`, the folded :mod:`.fast.folded`),
  chosen by one selector, :func:`.fast.apply_impl`.
- :mod:`.execution`: switching every backbone inside a detector or segmentor.
- :mod:`.registration`, :mod:`.neck_check`: the OpenMMLab registries.
"""
from .backbones import MetaFormer, PoolFormer

__all__ = ['MetaFormer', 'PoolFormer']
