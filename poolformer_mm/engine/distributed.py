"""Multi-process training on CPUs: gloo process group and a DDP wrapper.

mmengine 0.10 assumes a GPU per process: ``init_dist`` calls
``torch.cuda.set_device`` and ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to DistributedDataParallel, which torch rejects
for CPU modules. Without CUDA the tools therefore open the gloo process group
themselves (:func:`init_cpu_process_group`, before the runner exists, so
mmengine skips its own ``init_dist``) and wrap the model with
:class:`CPUDistributedDataParallel`. With CUDA nothing here is used.
"""
import logging
import os
from datetime import timedelta
from typing import Optional

import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for modules on the CPU.

    ``device_ids`` / ``output_device`` are dropped for CPU modules (torch
    accepts only None there), and SyncBatchNorm layers, which have no CPU
    implementation, become BatchNorm with per-process statistics (as
    mmengine does for single-process runs); a warning says so. Modules on
    another device are wrapped unchanged.
    """

    def __init__(self,
                 module,
                 device_ids=None,
                 output_device=None,
                 **kwargs) -> None:
        params = list(module.parameters())
        if not params or params[0].device.type == 'cpu':
            device_ids = output_device = None
            if any('SyncBatchNorm' in type(m).__name__
                   for m in module.modules()):
                print_log(
                    'SyncBatchNorm has no CPU implementation: its layers '
                    'train as BatchNorm with per-process statistics.',
                    logger='current',
                    level=logging.WARNING)
                module = revert_sync_batchnorm(module)
        super().__init__(
            module=module,
            device_ids=device_ids,
            output_device=output_device,
            **kwargs)


def init_cpu_process_group(launcher: str,
                           backend: str = 'gloo',
                           timeout: Optional[float] = None) -> None:
    """Open the process group of a CPU run started by torchrun.

    Args:
        launcher (str): The tools' ``--launcher``; only 'pytorch' (torchrun,
            ``tools/dist_train.sh``) is supported without CUDA.
        backend (str): Defaults to 'gloo'.
        timeout (float, optional): Seconds, as mmengine's
            ``env_cfg.dist_cfg.timeout``.
    """
    if torch_dist.is_initialized():
        return
    if launcher != 'pytorch':
        raise RuntimeError(
            f'--launcher {launcher!r} needs CUDA; on CPUs start the '
            "processes with torchrun (tools/dist_train.sh, --launcher "
            "pytorch), which uses the gloo backend")
    missing = [
        k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
        if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch: environment variables {missing} are not '
            'set; start the tool with torchrun (tools/dist_train.sh)')
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = timedelta(seconds=timeout)
    torch_dist.init_process_group(backend=backend, **kwargs)
