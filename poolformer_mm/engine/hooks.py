"""Hooks that the configs name: crash-safe checkpoints, stopping on a
scheduler's signal, and the deploy switch.

:class:`SafeCheckpointHook` (``default_hooks.checkpoint`` of the
``configs/_base_`` files): mmengine's ``CheckpointHook`` writes
``epoch_N.pth`` in place, rewrites the ``last_checkpoint`` pointer in place
and, with ``max_keep_ckpts``, deletes the oldest checkpoint *before* writing
the new one. A job killed while saving can leave a torn newest file, an empty
pointer, or (with ``max_keep_ckpts=1``) no checkpoint at all. This hook keeps
the same options and file names but writes every file under a temporary
name, flushes it to disk and renames it into place (an atomic step on POSIX
file systems), updates the pointer the same way, and deletes old checkpoints
only after that. Every checkpoint also carries the random generator states
of every process (:func:`~poolformer_mm.engine.loops.capture_rng_states`).

:class:`PreemptionHook` (``default_hooks.preemption``): cluster schedulers
stop a job with a signal, wait a grace period, then kill it. The hook lets
the current iteration finish, writes an iteration checkpoint through
:class:`SafeCheckpointHook`, and exits with :data:`PREEMPTED_EXIT_CODE`.

:class:`SwitchToDeployHook` (added by ``tools/test.py --deploy``, or by a
config's ``custom_hooks``) switches the model to its inference fast path
after the runner has loaded the checkpoint.
"""
import logging
import os
import os.path as osp
import signal
import threading
from typing import List, Optional, Sequence

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from ..models.execution import switch_model_to_deploy
from .distributed import close_distributed
from .loops import (RNG_STATES, ResumableEpochBasedTrainLoop,
                    capture_rng_states)
from .runner import SafeRunner

PART_SUFFIX = '.part'


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(tmp_path: str, path: str) -> None:
    """Flush ``tmp_path`` to disk and rename it to ``path`` atomically."""
    with open(tmp_path, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, path)
    _fsync_dir(osp.dirname(osp.abspath(path)))


def write_text_atomic(path: str, text: str) -> None:
    """Replace ``path`` by a file holding ``text``, never a partial one."""
    tmp_path = path + PART_SUFFIX
    with open(tmp_path, 'w') as f:
        f.write(text)
    commit_file(tmp_path, path)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic checkpoint and pointer writes.

    Takes the same arguments as :class:`mmengine.hooks.CheckpointHook`. For
    checkpoints on the local file system:

    - ``epoch_N.pth`` / ``iter_N.pth`` is written as ``<name>.part``, flushed
      and renamed, so the final name only ever holds a whole file;
    - ``last_checkpoint`` is replaced the same way, after the checkpoint;
    - with ``max_keep_ckpts``, outdated checkpoints are deleted after the new
      one and the pointer are in place (mmengine deletes them first);
    - the checkpoint holds the random states of every process, for an exact
      resume (:class:`~poolformer_mm.engine.SafeRunner` restores them);
    - the checkpoint is plain data (:class:`~poolformer_mm.engine.SafeRunner`
      writes it so), which torch's default weights-only loader reads;
    - :meth:`save_interim_checkpoint` writes a checkpoint in the middle of an
      epoch for :class:`PreemptionHook`.

    Other storage backends are written as mmengine does. Best-checkpoint
    saving (``save_best``) is inherited unchanged; resuming never reads it.
    """

    saved_after_iters: Optional[int] = None
    interim_ckpts: List[str] = []

    def before_train(self, runner) -> None:
        if not isinstance(runner, SafeRunner):
            raise TypeError(
                f'SafeCheckpointHook writes plain-data checkpoints through '
                f'SafeRunner, but the runner is a {type(runner).__name__}; '
                "set runner_type='SafeRunner' (the configs/_base_ files do).")
        super().before_train(runner)
        self.interim_ckpts: List[str] = list(
            runner.message_hub.get_info('interim_ckpts', []))
        # Leftovers of writes that a kill interrupted.
        if is_main_process() and self._is_local() and osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):
                if name.endswith('.pth' + PART_SUFFIX):
                    os.remove(osp.join(self.out_dir, name))

    def _is_local(self) -> bool:
        backend = getattr(self, 'file_backend', None)
        # A deprecated FileClient (file_client_args) wraps its backend.
        backend = getattr(backend, 'client', backend)
        return isinstance(backend, LocalBackend)

    def _remove(self, filename: str) -> None:
        path = self.file_backend.join_path(self.out_dir, filename)
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated: List[int] = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            # Saved inside the checkpoint, as mmengine does.
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        self._write(runner, self.filename_tmpl.format(step), self.by_epoch,
                    meta)
        if is_main_process():
            for old_step in outdated:
                self._remove(self.filename_tmpl.format(old_step))

    def save_interim_checkpoint(self, runner) -> str:
        """Write ``iter_N.pth`` after the current iteration ``N`` (1-based),
        whatever ``by_epoch`` says, for a run about to stop.

        An epoch-based run resumes from it in the middle of the epoch (see
        :class:`~poolformer_mm.engine.ResumableEpochBasedTrainLoop`). It does
        not count towards ``max_keep_ckpts``: the next checkpoint of any kind
        replaces it. Called on every rank, from ``after_train_iter``.

        Returns:
            str: The checkpoint's path.
        """
        step = runner.iter + 1
        if self.saved_after_iters == step:  # by_epoch=False: already saved
            return self.last_ckpt
        filename = f'iter_{step}.pth'
        # Listed inside itself, so that a resumed run removes it later.
        self.interim_ckpts = self.interim_ckpts + [filename]
        self._write(runner, filename, False, dict())
        return self.last_ckpt

    def _write(self, runner, filename: str, by_epoch: bool,
               meta: dict) -> None:
        """Save, commit, point ``last_checkpoint`` at it, then remove the
        interim checkpoints it replaces. Called on every rank."""
        superseded = [
            name for name in self.interim_ckpts if name != filename
        ]
        self.interim_ckpts = [
            name for name in self.interim_ckpts if name == filename
        ]
        runner.message_hub.update_info('interim_ckpts',
                                       list(self.interim_ckpts))
        # Collective; read back by SafeRunner.resume.
        runner.message_hub.update_info(RNG_STATES, capture_rng_states())

        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        # What the checkpoint's meta['iter'] says (mmengine's convention).
        self.saved_after_iters = runner.iter if by_epoch else runner.iter + 1

        local = self._is_local()
        runner.save_checkpoint(
            self.out_dir,
            filename + PART_SUFFIX if local else filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not is_main_process():
            return
        if local:
            commit_file(self.last_ckpt + PART_SUFFIX, self.last_ckpt)
        write_text_atomic(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for name in superseded:
            self._remove(name)


@HOOKS.register_module()
class SwitchToDeployHook(Hook):
    """Switch the model to its inference fast path before testing.

    The runner loads the checkpoint in ``Runner.test()``
    (``load_or_resume``), right before the test loop calls the
    ``before_test`` hooks, so the switch happens there: modules with a
    ``switch_to_deploy`` method that folds weights (e.g. re-parameterised
    blocks) need the loaded weights first.
    """

    priority = 'LOWEST'

    def before_test(self, runner) -> None:
        names = switch_model_to_deploy(runner.model)
        print_log(
            'Switched to the deploy (inference) path: ' +
            ', '.join(n or type(runner.model).__name__ for n in names),
            logger='current')


# sysexits.h's EX_TEMPFAIL: "a temporary failure; the user is invited to
# retry". tools/slurm_train.sh requeues the job when a step exits with it.
PREEMPTED_EXIT_CODE = 75


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stop cleanly on a scheduler's signal: finish the iteration, write a
    checkpoint, exit with a distinct code.

    From ``before_train`` to ``after_train`` the hook catches ``signals``
    (Slurm sends SIGTERM before it preempts a job, or the signal that
    ``--signal=USR1@90`` asks for before the time limit; torchrun forwards
    SIGTERM to its workers). The handler only notes the signal. After each
    training iteration the processes agree whether any of them got one (one
    all-reduce of a flag; a single process just reads it), so every rank
    stops after the same iteration. Then the hook writes ``iter_N.pth`` with
    :meth:`SafeCheckpointHook.save_interim_checkpoint` (atomic, pointed to
    by ``last_checkpoint``), logs what it did, leaves the process group and
    raises ``SystemExit(exit_code)``. ``--resume`` continues from there
    exactly (see :class:`~poolformer_mm.engine.ResumableEpochBasedTrainLoop`).

    A signal that arrives while a checkpoint is written is acted on after
    the next iteration; the checkpoint being written completes first.

    Args:
        signals (Sequence[str]): Signal names to catch. Defaults to
            ('SIGTERM', 'SIGUSR1').
        exit_code (int): The exit status of a stopped run. Defaults to
            :data:`PREEMPTED_EXIT_CODE` (75).
    """

    priority = 'LOWEST'  # after every other hook's work on the iteration

    def __init__(self,
                 signals: Sequence[str] = ('SIGTERM', 'SIGUSR1'),
                 exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        self.signals = []
        for name in signals:
            number = getattr(signal, str(name), None)
            if not isinstance(number, signal.Signals):
                raise ValueError(
                    f'signals: {name!r} is not a signal of this platform; '
                    'give names such as SIGTERM or SIGUSR1')
            self.signals.append(number)
        if not isinstance(exit_code, int) or not 1 <= exit_code <= 255:
            raise ValueError(
                f'exit_code must be an integer in 1-255, not {exit_code!r}')
        self.exit_code = exit_code
        self.received: Optional[int] = None
        self._previous_handlers: dict = {}

    def before_train(self, runner) -> None:
        self.checkpoint_hook = self._find_checkpoint_hook(runner)
        self.received = None
        loop = runner.train_loop
        if (isinstance(loop, EpochBasedTrainLoop)
                and not isinstance(loop, ResumableEpochBasedTrainLoop)):
            print_log(
                f'PreemptionHook: {type(loop).__name__} resumes a checkpoint '
                'written in the middle of an epoch at the start of that '
                "epoch; train_cfg.type='ResumableEpochBasedTrainLoop' "
                'continues it where it stopped.',
                logger='current',
                level=logging.WARNING)
        if threading.current_thread() is not threading.main_thread():
            print_log(
                'PreemptionHook: training runs outside the main thread, '
                'where Python cannot catch signals; the hook stays idle.',
                logger='current',
                level=logging.WARNING)
            return
        for number in self.signals:
            self._previous_handlers[number] = signal.signal(
                number, self._note_signal)

    def _find_checkpoint_hook(self, runner) -> SafeCheckpointHook:
        found = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
        for hook in found:
            if isinstance(hook, SafeCheckpointHook):
                return hook
        raise TypeError(
            'PreemptionHook writes its checkpoint with SafeCheckpointHook, '
            'but the runner has '
            f'{type(found[0]).__name__ if found else "no checkpoint hook"}; '
            "set default_hooks.checkpoint.type='SafeCheckpointHook' (the "
            'configs/_base_ files do).')

    def _note_signal(self, signum, frame) -> None:
        # Only note it: the iteration in progress must finish first, and
        # little is safe to do inside a signal handler.
        if self.received is None:
            self.received = signum

    def stop_requested(self) -> bool:
        """Whether any process got one of the signals (collective in a
        multi-process run: every rank calls it once per iteration)."""
        flag = 0 if self.received is None else 1
        if get_world_size() == 1:
            return bool(flag)
        agreed = torch.tensor([flag], dtype=torch.int32)
        all_reduce(agreed, op='max')
        return bool(agreed.item())

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if not self.stop_requested():
            return
        path = self.checkpoint_hook.save_interim_checkpoint(runner)
        reason = (
            signal.Signals(self.received).name
            if self.received is not None else 'a signal to another process')
        runner.logger.warning(
            f'Stopping after iteration {runner.iter + 1} (epoch '
            f'{runner.epoch + 1}) on {reason}: wrote {path}. Exiting with '
            f'code {self.exit_code}; --resume continues from there.')
        self._restore_handlers()
        close_distributed()
        raise SystemExit(self.exit_code)

    def after_train(self, runner) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}
