"""Faster ways to execute the backbones, beside the reference network.

The network is :mod:`poolformer_mm.models.backbones` (its layers in
:mod:`~poolformer_mm.models.backbones.layers`); the modules here stand in for
some of those layers with the same parameters, and import the layers, never
the backbones. A backbone's ``impl`` / ``deploy`` arguments (or its
``switch_impl()``) choose a path, here and nowhere else (:func:`apply_impl`):

- ``'reference'``: the modules of :mod:`~poolformer_mm.models.backbones.layers`
  as built.
- ``'auto'`` (the default): module by module, a faster module with the same
  parameters where one computes the same thing (:data:`AUTO_MODULES`). Each
  serves the inputs it is written for and runs the reference ``forward`` for
  all others: :mod:`.cpu` float32 CPU maps (not under autocast, tracing,
  export or ``torch.compile``, :mod:`.tracing`), :mod:`.cuda` large CUDA
  maps.
- ``'deploy'``: inference only: ``'auto'`` with foldable PoolFormer blocks,
  the stem and the downsampling convolutions replaced by the folded path of
  :mod:`.folded` (:data:`DEPLOY_MODULES`), whose constants :mod:`.folding`
  computes; what ``deploy=True``, ``switch_to_deploy()`` and
  ``tools/test.py --deploy`` select.
- ``'triton'`` (opt-in, for training on GPUs): the fused Triton kernels of
  :mod:`.triton_modules` (:data:`TRITON_MODULES`) where they fit, the
  ``'auto'`` modules elsewhere. Needs triton (a clear ``ImportError``
  without it); the kernels are imported at the first forward, never at
  ``import poolformer_mm``.
- ``'compile'`` (opt-in): the reference network under ``torch.compile``
  (inductor, ``dynamic=True``), region by region: the stem, each stage and
  each output norm (:data:`COMPILE_MODULES` of :mod:`.compiled`, only the
  outermost modules that fit), each compiled at its first forward.

Which modules fit which fast module is decided by the device-neutral checks
of :mod:`.patterns` and each fast module's ``fits``. A replacement takes over
the module's parameters, buffers, children and hooks (the same objects), so
the state dict keeps its names and order, and switching back to
``'reference'`` restores the reference classes exactly. Every replacement is
tested against the reference module (tests/test_models).
"""
from collections import Counter
from typing import Callable, Optional, Sequence, Type

import torch.nn as nn
from mmengine.logging import print_log

from .cpu import ChannelsLastStem, FastPooling, FusedMlp, FusedPoolBlock
from .cuda import GroupNorm1
from .folded import (DeployDownsampling, DeployPoolBlock, DeployStage,
                     DeployStem)
from .compiled import COMPILE_MODULES
from .triton_modules import TRITON_MODULES, require_triton

IMPLS = ('auto', 'reference', 'deploy', 'triton', 'compile')
# Tried in this order on every module (blocks before the norms and pooling
# inside them, whose exact types the block replacements check).
AUTO_MODULES = (FusedPoolBlock, GroupNorm1, FastPooling, FusedMlp,
                ChannelsLastStem)
DEPLOY_MODULES = (DeployPoolBlock, DeployStage, DeployStem,
                  DeployDownsampling)
_FAST_MODULES = (AUTO_MODULES + DEPLOY_MODULES + TRITON_MODULES +
                 COMPILE_MODULES)


def reference_type(module: nn.Module) -> Type[nn.Module]:
    """The reference class a module of this package stands in for (its own
    class for a reference module)."""
    for cls in type(module).__mro__:
        if cls not in _FAST_MODULES and issubclass(cls, nn.Module):
            return cls
    return type(module)


def _as(module: nn.Module, cls: Type[nn.Module]) -> nn.Module:
    """A module of class ``cls`` holding ``module``'s state (parameters,
    buffers, children, hooks: the same objects), without its caches."""
    new = cls.__new__(cls)
    new.__dict__.update({
        k: v
        for k, v in module.__dict__.items() if not k.startswith('_fast_')
    })
    return new


def _replace(module: nn.Module,
             choose: Callable[[nn.Module], Optional[type]],
             inside_replaced: bool = True) -> None:
    """Replace every submodule of ``module`` for which ``choose`` names
    another class, depth first from the outside in; with
    ``inside_replaced=False`` what is inside a replaced module stays as it
    is (only the outermost fits are replaced)."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        cls = choose(child)
        replaced = cls is not None and cls is not type(child)
        if replaced:
            child = module._modules[name] = _as(child, cls)
        if inside_replaced or not replaced:
            _replace(child, choose, inside_replaced)


def _first_fit(types: Sequence[type]) -> Callable[[nn.Module], Optional[type]]:

    def choose(module: nn.Module) -> Optional[type]:
        return next((cls for cls in types if cls.fits(module)), None)

    return choose


def apply_impl(model: nn.Module, impl: str) -> None:
    """Execute ``model`` (a backbone of this package) by ``impl``, one of
    :data:`IMPLS`, and log which modules run which path.

    Raises:
        ValueError: ``impl`` is not one of :data:`IMPLS`.
        ImportError: ``impl='triton'`` where triton cannot be imported.
    """
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    if impl == 'triton':
        require_triton()
    _replace(model, reference_type)
    if impl in ('auto', 'deploy'):
        _replace(model, _first_fit(AUTO_MODULES))
    if impl == 'triton':
        _replace(model, _first_fit(TRITON_MODULES + AUTO_MODULES))
    if impl == 'deploy':
        _replace(model, _first_fit(DEPLOY_MODULES))
    if impl == 'compile':
        # A stage compiles with everything in it, its norms included.
        _replace(model, _first_fit(COMPILE_MODULES), inside_replaced=False)
    model.impl = impl
    if impl == 'deploy':
        model.eval()
    counts = Counter(
        type(m).__name__ for m in model.modules()
        if type(m) in _FAST_MODULES)
    replaced = ', '.join(f'{n} x{c}' for n, c in sorted(counts.items()))
    print_log(
        f'{type(model).__name__} ({getattr(model, "arch_name", "?")}) runs '
        f"impl='{impl}'" + (f': {replaced}' if replaced else ''),
        logger='current')
