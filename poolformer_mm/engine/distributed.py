"""Multi-process training on CPUs: gloo process group and a DDP wrapper.

mmengine 0.10 assumes a GPU per process: ``init_dist`` calls
``torch.cuda.set_device`` and ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to DistributedDataParallel, which torch rejects
for CPU modules. On a machine without an accelerator,
:class:`~poolformer_mm.engine.SafeRunner` therefore opens the gloo process
group itself (:func:`init_cpu_process_group`, before mmengine's ``init_dist``
would run) and wraps the model with :class:`CPUDistributedDataParallel`
(:func:`cpu_model_wrapper_cfg`). With CUDA nothing here is used.
"""
import logging
import os
from datetime import timedelta
from typing import Optional

import torch.distributed as torch_dist
from torch.distributed.constants import default_pg_timeout
from mmengine.config import ConfigDict
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
    torch_dist.init_process_group(
        backend=backend, **kwargs, **elastic_store_kwargs(timeout))


def elastic_store_kwargs(timeout: Optional[float] = None) -> dict:
    """``init_process_group`` arguments that make the workers of one
    torchrun attempt meet apart from those of earlier attempts.

    torchrun's agent hosts the store that its workers meet in and keeps it
    when it starts the worker group again (``--max-restarts``). torch's
    ``env://`` initialisation uses the same keys in every attempt, so a
    worker of the new group can read the address that a dead worker of the
    old one published, and fail ("Connection refused"). Under the agent's
    store (``TORCHELASTIC_USE_AGENT_STORE``) this gives that store with the
    keys prefixed by the attempt (``TORCHELASTIC_RESTART_COUNT``), and the
    rank and world size; otherwise nothing (``env://`` as usual).

    Args:
        timeout (float, optional): Seconds; torch's default otherwise.

    Returns:
        dict: ``store``, ``rank`` and ``world_size``, or empty.
    """
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True':
        return {}
    world_size = int(os.environ['WORLD_SIZE'])
    agent_store = torch_dist.TCPStore(
        host_name=os.environ['MASTER_ADDR'],
        port=int(os.environ['MASTER_PORT']),
        world_size=world_size,
        is_master=False,
        timeout=(default_pg_timeout
                 if timeout is None else timedelta(seconds=timeout)))
    attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    return dict(
        store=torch_dist.PrefixStore(f'poolformer_mm/attempt_{attempt}/',
                                     agent_store),
        rank=int(os.environ['RANK']),
        world_size=world_size)


def cpu_model_wrapper_cfg(model_wrapper_cfg: Optional[dict],
                          find_unused_parameters: bool = False
                          ) -> Optional[dict]:
    """The ``model_wrapper_cfg`` of a multi-process run on CPUs.

    mmengine's DDP wrappers (none given, or ``MMDistributedDataParallel``)
    become :class:`CPUDistributedDataParallel` with the same options;
    ``broadcast_buffers`` defaults to False and ``find_unused_parameters`` to
    the config's top-level value, as mmengine's own default wrapper has them.
    Other wrappers (e.g. FSDP) are returned unchanged.

    Args:
        model_wrapper_cfg (dict, optional): The config's
            ``model_wrapper_cfg``.
        find_unused_parameters (bool): The config's
            ``find_unused_parameters``. Defaults to False.

    Returns:
        dict | None: A new dict, or ``model_wrapper_cfg`` itself if it is
        left alone.
    """
    wrapper = ConfigDict(model_wrapper_cfg or {})
    wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
    if wrapper_type not in ('MMDistributedDataParallel',
                            MMDistributedDataParallel,
                            'CPUDistributedDataParallel',
                            CPUDistributedDataParallel):
        return model_wrapper_cfg
    wrapper.type = 'CPUDistributedDataParallel'
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', find_unused_parameters)
    return wrapper


def close_distributed() -> None:
    """Leave the process group at the end of a multi-process run.

    Without it the interpreter can exit while gloo's threads still run;
    torchrun then sees a rank die with SIGABRT ("terminate called without an
    active exception") after the work is done, and reports the run failed.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
