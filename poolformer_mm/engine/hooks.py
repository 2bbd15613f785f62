"""Hooks that the configs name: crash-safe checkpoints and the deploy switch.

:class:`SafeCheckpointHook` (``default_hooks.checkpoint`` of the
``configs/_base_`` files): mmengine's ``CheckpointHook`` writes
``epoch_N.pth`` in place, rewrites the ``last_checkpoint`` pointer in place
and, with ``max_keep_ckpts``, deletes the oldest checkpoint *before* writing
the new one. A job killed while saving can leave a torn newest file, an empty
pointer, or (with ``max_keep_ckpts=1``) no checkpoint at all. This hook keeps
the same options and file names but writes every file under a temporary
name, flushes it to disk and renames it into place (an atomic step on POSIX
file systems), updates the pointer the same way, and deletes old checkpoints
only after that.

:class:`SwitchToDeployHook` (added by ``tools/test.py --deploy``, or by a
config's ``custom_hooks``) switches the model to its inference fast path
after the runner has loaded the checkpoint.
"""
import os
import os.path as osp
from typing import List

import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

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
      one and the pointer are in place (mmengine deletes them first).

    Other storage backends are written as mmengine does. Best-checkpoint
    saving (``save_best``) is inherited unchanged; resuming never reads it.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
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

    def _remove_checkpoint(self, step: int) -> None:
        path = self.file_backend.join_path(self.out_dir,
                                           self.filename_tmpl.format(step))
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

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        local = self._is_local()
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename + PART_SUFFIX if local else ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not is_main_process():
            return
        if local:
            commit_file(self.last_ckpt + PART_SUFFIX, self.last_ckpt)
        write_text_atomic(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old_step in outdated:
            self._remove_checkpoint(old_step)


def switch_model_to_deploy(model: nn.Module) -> List[str]:
    """Call ``switch_to_deploy()`` on every outermost submodule of ``model``
    (``model`` included) that has it.

    Args:
        model (nn.Module): A detector, segmentor or backbone.

    Returns:
        list[str]: Names of the switched modules ('' for ``model``).

    Raises:
        RuntimeError: No module has ``switch_to_deploy``.
    """
    switched: List[str] = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + '.') for s in switched if s):
            continue
        if '' in switched:
            break
        if callable(getattr(module, 'switch_to_deploy', None)):
            module.switch_to_deploy()
            switched.append(name)
    if not switched:
        raise RuntimeError(
            f'No module of {type(model).__name__} has switch_to_deploy(); '
            '--deploy needs a backbone with an inference fast path, such as '
            'PoolFormer')
    return switched


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
