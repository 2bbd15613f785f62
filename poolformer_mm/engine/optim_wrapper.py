"""Mixed precision without loss scaling, for CPUs (and bf16 anywhere).

mmengine's ``AmpOptimWrapper`` refuses to start without a GPU (it asserts that
CUDA, NPU, MLU or MUSA is available) and always brings a CUDA ``GradScaler``.
bfloat16 has float32's exponent range, so it needs no loss scaling: this
wrapper runs the forward pass under ``torch.autocast`` and, like
``GradScaler`` does for float16, skips an optimizer step whose gradients are
not finite instead of writing NaN into the weights (a warning names the
parameters; many such steps in a row stop the run).

Known trap: torch's CPU (oneDNN) bfloat16 convolution returns NaN weight
gradients for a stride-2 convolution over a feature map one pixel wide (seen
with torch 2.14: RetinaNet's P7 convolution on images of 64 px or less). The
configs' image sizes never produce such maps.
"""
import logging
from contextlib import contextmanager
from typing import List, Optional, Union

import torch
import torch.nn as nn
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward pass runs under ``torch.autocast``.

    Args:
        dtype (str | torch.dtype): Autocast dtype. Defaults to 'bfloat16'.
        device_type (str, optional): Autocast device type; the device mmengine
            trains on when None. Defaults to None.
        max_skipped_steps (int): Consecutive steps with non-finite gradients
            that are skipped before the run stops with an error.
            Defaults to 10.
        **kwargs: Passed to :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self,
                 dtype: Union[str, torch.dtype] = 'bfloat16',
                 device_type: Optional[str] = None,
                 max_skipped_steps: int = 10,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0
        if isinstance(dtype, str):
            if dtype not in ('bfloat16', 'float16'):
                raise ValueError(
                    f"AutocastOptimWrapper dtype must be 'bfloat16' or "
                    f"'float16', got {dtype!r}")
            dtype = getattr(torch, dtype)
        self.cast_dtype = dtype
        self.device_type = device_type or get_device()

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
                device_type=self.device_type, dtype=self.cast_dtype):
            yield

    def _nonfinite_grads(self) -> List[tuple]:
        bad = []
        for group in self.optimizer.param_groups:
            for param in group['params']:
                if param.grad is not None and not torch.isfinite(
                        param.grad).all():
                    bad.append(tuple(param.shape))
        return bad

    def step(self, **kwargs) -> None:
        """Update the parameters, or skip the step if a gradient is not
        finite."""
        bad = self._nonfinite_grads()
        if not bad:
            self.skipped_steps = 0
            super().step(**kwargs)
            return
        self.skipped_steps += 1
        message = (f'{len(bad)} parameter(s) (shapes {bad[:5]}) got '
                   f'non-finite gradients under {self.cast_dtype} autocast')
        if self.skipped_steps >= self.max_skipped_steps:
            raise RuntimeError(
                f'{message} in {self.skipped_steps} steps in a row; '
                'stopping. Train without --amp, or see the note on CPU '
                'bfloat16 convolutions in poolformer_mm.engine.optim_wrapper.')
        print_log(
            f'{message}: optimizer step skipped',
            logger='current',
            level=logging.WARNING)
