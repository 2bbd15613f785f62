"""Hooks that the preemption tests add to a training (``custom_hooks``).

Importable by ``custom_imports`` in fresh processes (the tests put this
folder on ``PYTHONPATH``).
"""
import json
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordSamples(Hook):
    """Append ``{"iter", "rank", "ids", "flips"}`` (the batch's image ids
    and whether each was flipped) per training iteration to
    ``<out_dir>/rank<R>.jsonl``."""

    priority = 'VERY_HIGH'

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        ids = [
            sample.metainfo.get('img_id', sample.metainfo.get('img_path'))
            for sample in data_batch['data_samples']
        ]
        flips = [
            sample.metainfo.get('flip')
            for sample in data_batch['data_samples']
        ]
        record = dict(iter=runner.iter, batch_idx=batch_idx,
                      epoch=runner.epoch, rank=runner.rank, ids=ids,
                      flips=flips)
        path = os.path.join(self.out_dir, f'rank{runner.rank}.jsonl')
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')


@HOOKS.register_module()
class SignalAt(Hook):
    """Send ``signum`` to this process on the given ranks, as a scheduler
    would: after training iteration ``at`` (1-based), or from inside the
    ``at_save``-th checkpoint write of the process (rank 0 writes them).
    ``then_kill`` follows with SIGKILL there (a grace period ending in the
    middle of the write). ``only_first_start``: not after a torchrun
    restart."""

    priority = 'NORMAL'  # before PreemptionHook looks at its flag

    def __init__(self, at=None, at_save=None, signum='SIGTERM', ranks=(0, ),
                 then_kill=False, only_first_start=False):
        self.at = at
        self.at_save = at_save
        self.signum = getattr(signal, signum)
        self.ranks = tuple(ranks)
        self.then_kill = then_kill
        self.only_first_start = only_first_start
        self.saves = 0

    def _armed(self, runner):
        restarted = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0'))
        return runner.rank in self.ranks and not (self.only_first_start
                                                  and restarted)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at and self._armed(runner):
            os.kill(os.getpid(), self.signum)

    def before_save_checkpoint(self, runner, checkpoint):
        self.saves += 1
        if self.saves == self.at_save and self._armed(runner):
            os.kill(os.getpid(), self.signum)
            if self.then_kill:
                os.kill(os.getpid(), signal.SIGKILL)
