"""The modules of ``impl='compile'``: the reference network under
``torch.compile`` (inductor, ``dynamic=True``), region by region.

The outermost parts of a backbone (its stem, each of its stages and each
output norm) are replaced by the classes here (:data:`COMPILE_MODULES`),
which keep their parameters and run the reference ``forward`` compiled. The
compiled function is created at the first forward, never when the backbone
is built or switched, and is a cache (``_fast_compiled``): it is not in the
state dict, is dropped by pickling, ``copy.deepcopy`` and switching to
another ``impl``, and is made again where it is missing.

Why these choices:

- ``dynamic=True``: detection pads every batch to another size; symbolic
  heights and widths from the first compilation keep dynamo from compiling
  again for each size (what :func:`count_recompiles` measures). That holds
  for eval forwards. For training steps inductor itself specializes: its
  lowering of the convolution backward fixes the strides of the
  activations (``kernel/conv.py``, ``guard_int_seq`` of the layout), so
  each new size compiles each stage again, until dynamo's
  ``recompile_limit`` (8 per region) runs that region eagerly for further
  sizes (seen on the CPU with torch 2.14; the GPU check counts it there).
- One code object per region: dynamo keeps its compiled entries, and counts
  them against ``torch._dynamo.config.recompile_limit`` (8), per code
  object. All stages share ``MetaFormerStage.forward`` (and
  ``nn.Module.compile()`` shares ``Module._call_impl`` among all modules),
  so four stages in train and eval mode alone reach that limit, and the
  ninth entry runs eagerly without a word. Each region here compiles a
  copy of the reference ``forward`` with a code object of its own
  (:func:`_own_code`), so each has the whole limit.
- Regions rather than the whole backbone: the backbone's ``forward`` (input
  checks, stages, output norms) stays the reference's, and the selector
  replaces modules, never the backbone's own class.
- While tracing, export or an outer ``torch.compile`` records the network
  (:func:`.tracing.is_recording`), the reference ``forward`` runs as it is,
  so that e.g. mmengine's ``compile=True`` traces one graph of the whole
  model, not a compiled call inside it.
"""
import random
import time
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..backbones.layers import (Fp32GroupNorm, Fp32LayerNorm, Fp32LayerNorm2d,
                                MetaFormerStage, Stem)
from .tracing import is_recording

# torch.compile's arguments for every region (inductor, its default mode).
# No layout optimisation: on the CPU inductor converts convolutions to
# channels_last, and with dynamic shapes (torch 2.14) the compiled backward
# then asserts the strides of the size it was first compiled for and fails
# at the next size. On CUDA inductor turns it off for dynamic shapes anyway.
COMPILE_OPTIONS = dict(dynamic=True,
                       options=dict(layout_optimization=False))
_CACHE = '_fast_compiled'


def _own_code(function: Callable) -> Callable:
    """A copy of ``function`` with a code object of its own, on which dynamo
    keeps this region's compiled entries apart from every other region's
    (see the module docstring)."""
    copy = types.FunctionType(function.__code__.replace(),
                              function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    return copy


class _Compiled:
    """The ``forward`` of a region: the reference class's ``forward``
    (``_reference``), compiled at the first call."""

    _reference: type = nn.Module

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return type(module) is cls._reference

    def forward(self, *args: Tensor) -> Tensor:
        if is_recording():
            return self._reference.forward(self, *args)
        compiled = self.__dict__.get(_CACHE)
        if compiled is None:
            compiled = torch.compile(
                _own_code(self._reference.forward).__get__(self),
                **COMPILE_OPTIONS)
            # In __dict__, beside the parameters: a function, not a module,
            # so neither the state dict nor module listings see it.
            self.__dict__[_CACHE] = compiled
        return compiled(*args)

    def __getstate__(self) -> dict:
        # The compiled function holds this module (its bound method): a
        # copy must compile its own, not run the original's parameters.
        state = super().__getstate__()
        state.pop(_CACHE, None)
        return state


class CompiledStem(_Compiled, Stem):
    """The stem (convolution and norm) compiled."""
    _reference = Stem


class CompiledStage(_Compiled, MetaFormerStage):
    """A stage (downsampling and blocks, with gradient checkpointing if
    ``with_cp``) compiled as one region."""
    _reference = MetaFormerStage


class CompiledGroupNorm(_Compiled, Fp32GroupNorm):
    """An output norm ``Fp32GroupNorm`` (PoolFormer's) compiled."""
    _reference = Fp32GroupNorm


class CompiledLayerNorm2d(_Compiled, Fp32LayerNorm2d):
    """An output norm ``Fp32LayerNorm2d`` (the MetaFormer Baselines')
    compiled."""
    _reference = Fp32LayerNorm2d


class CompiledLayerNorm(_Compiled, Fp32LayerNorm):
    """An output norm ``Fp32LayerNorm`` compiled."""
    _reference = Fp32LayerNorm


# Tried on the outermost modules only: a stage's own norms are compiled
# with the stage.
COMPILE_MODULES = (CompiledStem, CompiledStage, CompiledGroupNorm,
                   CompiledLayerNorm2d, CompiledLayerNorm)


def detection_sizes(num: int,
                    scale: Sequence[int] = (1333, 800),
                    batch: int = 2,
                    divisor: int = 32,
                    seed: int = 0) -> List[Tuple[int, int]]:
    """(H, W) of ``num`` padded batches as MMDetection's training pipeline
    makes them: the images of a batch all landscape or all portrait (its
    ``AspectRatioBatchSampler``), each of a random aspect ratio up to 2:1,
    resized to fit ``scale`` with its ratio kept (``Resize(scale,
    keep_ratio=True)``); the batch padded to its largest image and to a
    multiple of ``divisor`` (``pad_size_divisor``).

    Args:
        num (int): How many batches, >= 1.
        scale (Sequence[int]): The resize scale (long side, short side).
            Defaults to (1333, 800).
        batch (int): Images per batch, >= 1. Defaults to 2.
        divisor (int): The padding divisor, >= 1. Defaults to 32.
        seed (int): Seed of the aspect ratios. Defaults to 0.

    Returns:
        list[tuple[int, int]]: One (H, W) per batch, each at least
        ``2 * divisor`` (the backbone's last map at least 2x2 for
        ``divisor=32``: dynamo specializes sizes 0 and 1).

    Raises:
        ValueError: ``num``, ``batch`` or ``divisor`` below 1, or ``scale``
            not two positive sides.
    """
    for name, value in (('num', num), ('batch', batch), ('divisor', divisor)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be an int >= 1, got {value!r}')
    if len(scale) != 2 or min(scale) < 1:
        raise ValueError(f'scale must be (long side, short side), both >= 1, '
                         f'got {tuple(scale)!r}')
    long, short = max(scale), min(scale)
    rng = random.Random(seed)
    sizes = []
    for _ in range(num):
        heights, widths = [], []
        portrait = rng.random() < 0.5
        for _ in range(batch):
            ratio = rng.uniform(1, 2)  # long side / short side
            factor = min(long / ratio, short)
            sides = (round(factor * ratio), round(factor))
            h, w = sides if portrait else sides[::-1]
            heights.append(h)
            widths.append(w)
        sizes.append(
            tuple(
                max(2 * divisor, -(-max(side) // divisor) * divisor)
                for side in (heights, widths)))
    return sizes


def _dynamo_counts() -> Dict[str, int]:
    from torch._dynamo.utils import counters
    return dict(graphs=counters['stats']['unique_graphs'],
                frames=counters['frames']['total'],
                compiled=counters['frames']['ok'])


def count_recompiles(model: nn.Module,
                     sizes: Sequence[Tuple[int, int]],
                     batch: int = 2,
                     train: bool = True,
                     device: str = 'cpu',
                     dtype: Optional[torch.dtype] = None,
                     max_seconds: Optional[float] = None) -> dict:
    """Run ``model`` (an ``impl='compile'`` backbone) once per input size
    and count how often dynamo compiled after the first call.

    The first call compiles every region (one graph each); each graph
    compiled after it is a recompilation. Counted from
    ``torch._dynamo.utils.counters`` (process-wide: nothing else may compile
    meanwhile): ``unique_graphs`` (graphs compiled) and ``frames`` (``total``
    frames dynamo was asked to convert, ``ok`` those it compiled; the
    difference ran eagerly, e.g. past ``recompile_limit``).

    Args:
        model (nn.Module): The backbone (or a model holding it); not
            changed but by the calls.
        sizes (Sequence[tuple[int, int]]): Input (H, W) per call, e.g.
            :func:`detection_sizes`; at least one.
        batch (int): Images per call. Defaults to 2.
        train (bool): Train steps (forward and backward of the sum of the
            output means) in train mode; else eval forwards under
            ``torch.inference_mode``. Defaults to True.
        device (str): Where the inputs are made (the model's device).
            Defaults to 'cpu'.
        dtype (torch.dtype, optional): Autocast to this dtype (float16 /
            bfloat16); None: no autocast. Defaults to None.
        max_seconds (float, optional): Stop after the call that ends past
            this many seconds (a time budget); None: every size. Defaults
            to None.

    Returns:
        dict: ``calls`` (made), ``sizes`` (asked for), ``distinct_sizes``
        (among the calls made), ``first_graphs`` (graphs of the
        first call), ``recompiles`` (graphs compiled after it),
        ``eager_frames`` (frames dynamo gave up on, after the first call
        included), ``first_s`` (the first call's seconds, compiling) and
        ``rest_s`` (the other calls' seconds).

    Raises:
        ValueError: No sizes, or a size that is not two sides >= 32.
    """
    sizes = [tuple(s) for s in sizes]
    if not sizes:
        raise ValueError('sizes must hold at least one (H, W)')
    bad = [s for s in sizes if len(s) != 2 or min(s) < 32]
    if bad:
        raise ValueError(f'each size must be (H, W) with both >= 32, got '
                         f'{bad[:3]}')
    model.train(train)
    autocast = (torch.autocast(device.split(':')[0], dtype=dtype)
                if dtype is not None else None)

    def call(size: Tuple[int, int]) -> None:
        x = torch.randn(batch, 3, *size, device=device)
        if train:
            model.zero_grad(set_to_none=True)
        with torch.inference_mode(not train):
            if autocast is not None:
                with autocast:
                    outs = model(x)
            else:
                outs = model(x)
            if train:
                sum(o.float().mean() for o in outs).backward()
        if device.startswith('cuda'):
            torch.cuda.synchronize(device)

    start = _dynamo_counts()
    t0 = time.perf_counter()
    call(sizes[0])
    first = _dynamo_counts()
    t1 = time.perf_counter()
    calls = 1
    for size in sizes[1:]:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
        call(size)
        calls += 1
    end = _dynamo_counts()
    t2 = time.perf_counter()
    eager = ((end['frames'] - start['frames']) -
             (end['compiled'] - start['compiled']))
    return dict(calls=calls, sizes=len(sizes),
                distinct_sizes=len(set(sizes[:calls])),
                first_graphs=first['graphs'] - start['graphs'],
                recompiles=end['graphs'] - first['graphs'],
                eager_frames=eager, first_s=t1 - t0, rest_s=t2 - t1)
