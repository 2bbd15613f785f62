"""Training-time pieces that mmengine lacks for safe resume, CPU
multi-process training and CPU mixed precision. Importing this package
registers them in mmengine's root registries (HOOKS, MODEL_WRAPPERS,
OPTIM_WRAPPERS), which MMDetection's and MMSegmentation's fall back to."""
from .checkpoint_hook import SafeCheckpointHook
from .distributed import CPUDistributedDataParallel, init_cpu_process_group
from .optim_wrapper import AutocastOptimWrapper

__all__ = [
    'AutocastOptimWrapper', 'CPUDistributedDataParallel', 'SafeCheckpointHook',
    'init_cpu_process_group'
]
