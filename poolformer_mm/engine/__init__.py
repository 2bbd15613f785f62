"""The training runtime that the configs name: a runner, hooks, a loop, a
distributed wrapper and an optimizer wrapper for what mmengine lacks (safe
resume, crash-safe checkpoints, stopping on a scheduler's signal and exact
mid-epoch resume, multi-process training and mixed precision on CPUs, the
deploy switch for testing).

Importing this package registers them in mmengine's root registries
(RUNNERS, HOOKS, LOOPS, DATA_SAMPLERS, MODEL_WRAPPERS, OPTIM_WRAPPERS), which
MMDetection's and MMSegmentation's fall back to. Modules:

- :mod:`.runner`: :class:`SafeRunner` and how it finds the checkpoint to
  resume from;
- :mod:`.hooks`: :class:`SafeCheckpointHook`, :class:`PreemptionHook`,
  :class:`SwitchToDeployHook`;
- :mod:`.loops`: :class:`ResumableEpochBasedTrainLoop`,
  :class:`ResumableIterBasedTrainLoop` and the random states that
  checkpoints carry;
- :mod:`.distributed`: :class:`CPUDistributedDataParallel` and the gloo
  process group;
- :mod:`.sample_seeds`: per-sample seeds of the data pipeline's random
  draws (:class:`~.sample_seeds.SampleSeededDataset`);
- :mod:`.optim_wrapper`: :class:`AutocastOptimWrapper`;
- :mod:`.mmengine_coupling`: the mmengine internals this runtime relies on
  and the methods it copies, for the next mmengine release;
- :mod:`.strict_loading`: the maintained fork's mmengine loads checkpoints
  without its fallback to unsafe unpickling (applied at import).
"""
from ..checkpoint import load_training_checkpoint
from .distributed import CPUDistributedDataParallel, init_cpu_process_group
from .hooks import (PREEMPTED_EXIT_CODE, PreemptionHook, SafeCheckpointHook,
                    SwitchToDeployHook)
from .loops import (ResumableBatchSampler, ResumableEpochBasedTrainLoop,
                    ResumableIterBasedTrainLoop)
from .optim_wrapper import AutocastOptimWrapper
from .runner import SafeRunner
from .strict_loading import refuse_unsafe_fallback

refuse_unsafe_fallback()

__all__ = [
    'AutocastOptimWrapper', 'CPUDistributedDataParallel',
    'PREEMPTED_EXIT_CODE',
    'PreemptionHook', 'ResumableBatchSampler', 'ResumableEpochBasedTrainLoop',
    'ResumableIterBasedTrainLoop',
    'SafeCheckpointHook', 'SafeRunner', 'SwitchToDeployHook',
    'init_cpu_process_group', 'load_training_checkpoint'
]
