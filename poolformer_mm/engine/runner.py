"""The runner the configs name: mmengine's ``Runner``, safe to resume and
able to train in several processes on CPUs.

``runner_type='SafeRunner'`` in the ``configs/_base_`` files makes this
package's ``tools/train.py`` and MMDetection's / MMSegmentation's own
``tools/train.py`` (which build ``RUNNERS.build(cfg)`` when a config has a
``runner_type``) run the same thing. :class:`SafeRunner` changes, each in a
method of mmengine's ``Runner`` that it overrides:

- ``load_checkpoint`` (``load_from``; ``resume`` loads through it): reads
  the file with :func:`~poolformer_mm.checkpoint.load_training_checkpoint`
  (plain data, or older checkpoints through validating stand-ins), names it
  when it is torn or not data, and fits it under the package's one policy
  (:mod:`poolformer_mm.checkpoint.fitting`): a checkpoint of another model
  is refused, except by a training's ``load_from``, which may fine-tune
  from other heads;
- ``call_hook``: a checkpoint about to be saved becomes plain data after
  the hooks' ``before_save_checkpoint``, so torch's default weights-only
  loader reads it in any process, with nothing added to its allowlist;
- ``resume``: checks right after loading that the optimizer state fits the
  parameters (:func:`check_optimizer_state`), gives the train sampler the
  checkpoint's seed (:func:`sync_sampler_seed`), then restores the random
  generator states the checkpoint holds;
- ``load_or_resume``: ``resume=True`` without ``load_from`` (``--resume``
  without a value) continues from the newest *complete* checkpoint
  (:func:`find_resumable_checkpoint`), where mmengine trusts the
  ``last_checkpoint`` pointer whatever it names; a job that torchrun or
  Slurm started again resumes by itself;
- ``from_cfg``: settings that a config inherits through
  ``_base_ = ['poolformer_mm::...']`` are built in the config's
  ``default_scope``
  (:func:`~poolformer_mm.config_package.resolve_package_scope`);
- ``setup_env`` and ``wrap_model``: without an accelerator, a multi-process
  run opens a gloo process group and wraps the model with
  :class:`~poolformer_mm.engine.CPUDistributedDataParallel` (see
  :mod:`poolformer_mm.engine.distributed`); processes that torchrun started
  again meet apart from the dead ones. Otherwise they are mmengine's.
"""
import logging
import os
import os.path as osp
import re
import zipfile
from collections import OrderedDict
from typing import Callable, List, Optional, Union

import torch
from mmengine.device import get_device
from mmengine.dist import init_dist, is_distributed
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint import (load_training_checkpoint, load_weights, to_plain,
                          weights_from_checkpoint)
from ..errors import CheckpointError
from ..config_package import resolve_package_scope
from .distributed import (cpu_model_wrapper_cfg, elastic_store_kwargs,
                          init_cpu_process_group)
from .loops import RNG_STATES, restore_rng_states

LAST_CHECKPOINT = 'last_checkpoint'
# File names CheckpointHook gives its checkpoints by default.
_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


@RUNNERS.register_module()
class SafeRunner(Runner):
    """mmengine's ``Runner`` with safe checkpoint loading, auto-resume from
    the newest complete checkpoint, and multi-process training on CPUs.

    Takes the same arguments as :class:`mmengine.runner.Runner`; a config
    selects it with ``runner_type='SafeRunner'``. See the module docstring
    for what differs.
    """

    @classmethod
    def from_cfg(cls, cfg) -> 'SafeRunner':
        """``Runner.from_cfg`` after
        :func:`~poolformer_mm.config_package.resolve_package_scope`."""
        return super().from_cfg(resolve_package_scope(cfg))

    def _on_cpu_processes(self) -> bool:
        """A multi-process run without an accelerator."""
        return self.distributed and get_device() == 'cpu'

    def setup_env(self, env_cfg: dict) -> None:
        """Set up the environment as mmengine does, opening the process group
        first.

        - A multi-process CPU run: mmengine's ``init_dist`` calls
          ``torch.cuda.set_device``, so the group is opened here; the
          default backend, ``nccl``, needs CUDA: gloo is used instead (a log
          line says so).
        - Processes started by torchrun: the group meets in the store of
          the current torchrun attempt
          (:func:`~poolformer_mm.engine.distributed.elastic_store_kwargs`),
          so that a worker group restarted by ``--max-restarts`` does not
          read what the one before left there.

        With the group open, mmengine's own ``init_dist`` is skipped.

        Args:
            env_cfg (dict): The config's ``env_cfg``.
        """
        dist_cfg = dict((env_cfg or {}).get('dist_cfg') or {})
        if self._on_cpu_processes() and not is_distributed():
            backend = dist_cfg.get('backend', 'nccl')
            if backend == 'nccl':
                print_log(
                    'No CUDA device: the processes communicate with the gloo '
                    'backend instead of the config\'s nccl.',
                    logger='current')
                backend = 'gloo'
            init_cpu_process_group(self.launcher, backend,
                                   dist_cfg.get('timeout'))
        elif (self.distributed and self.launcher == 'pytorch'
              and not is_distributed()):
            # mmengine's init_dist, meeting apart from earlier torchrun
            # attempts (see elastic_store_kwargs).
            init_dist(self.launcher, **dist_cfg,
                      **elastic_store_kwargs(dist_cfg.get('timeout')))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[dict],
                   model: torch.nn.Module) -> torch.nn.Module:
        """Wrap the model as mmengine does; in a multi-process CPU run with
        :class:`~poolformer_mm.engine.CPUDistributedDataParallel` in place
        of ``MMDistributedDataParallel`` (see
        :func:`~poolformer_mm.engine.distributed.cpu_model_wrapper_cfg`).

        Args:
            model_wrapper_cfg (dict, optional): The config's
                ``model_wrapper_cfg``.
            model (nn.Module): The model to wrap.
        """
        if self._on_cpu_processes() and not is_model_wrapper(model):
            cpu_cfg = cpu_model_wrapper_cfg(
                model_wrapper_cfg, self.cfg.get('find_unused_parameters',
                                                False))
            if cpu_cfg is not model_wrapper_cfg:
                self.logger.info(
                    'No CUDA device: wrapping the model with '
                    f'CPUDistributedDataParallel ({dict(cpu_cfg)}).')
            model_wrapper_cfg = cpu_cfg
        return super().wrap_model(model_wrapper_cfg, model)

    # A training's load_from may fit partially (fine-tuning from a model
    # with other heads); tools/test.py's and a resume's checkpoint must fit.
    _fine_tuning = False

    def train(self) -> torch.nn.Module:
        """``Runner.train``; its ``load_from`` may fit the model partially
        (see :meth:`load_checkpoint`)."""
        self._fine_tuning = True
        try:
            return super().train()
        finally:
            self._fine_tuning = False

    def load_checkpoint(self,
                        filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]) -> dict:
        """``Runner.load_checkpoint``, reading the file with
        :func:`~poolformer_mm.checkpoint.load_training_checkpoint` (plain
        data and older checkpoints alike, nothing widened in torch's
        allowlist) and fitting it under the package's one policy
        (:mod:`poolformer_mm.checkpoint.fitting`): the checkpoint must fit
        the model, tensor for tensor, for ``tools/test.py`` and for a
        resume; a training's ``load_from`` loads what fits and warns about
        the rest (fine-tuning from other heads), unless ``strict``.

        Args:
            filename (str): As for mmengine's ``Runner.load_checkpoint``.
            map_location (str | callable): Where tensors go.
                Defaults to 'cpu'.
            strict (bool): Refuse a partial fit also for a training's
                ``load_from``. Defaults to False.
            revise_keys (list): ``(pattern, replacement)`` pairs applied to
                the keys. Defaults to stripping ``module.``.

        Raises:
            CheckpointError: The file is torn, not a checkpoint, not plain
                data, or does not fit the model.
        """
        checkpoint = load_training_checkpoint(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(
            self.model) else self.model
        state_dict = checkpoint.get('state_dict', checkpoint)
        for pattern, replacement in revise_keys:
            state_dict = OrderedDict(
                (re.sub(pattern, replacement, k), v)
                for k, v in state_dict.items())
        weights = weights_from_checkpoint(
            dict(state_dict=state_dict, meta=checkpoint.get('meta', {})),
            str(filename))
        load_weights(model, weights, partial=self._fine_tuning and not strict)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def call_hook(self, fn_name: str, **kwargs) -> None:
        """Call the hooks as mmengine does; after every hook's
        ``before_save_checkpoint``, turn the checkpoint about to be saved
        into plain data (:func:`~poolformer_mm.checkpoint.to_plain`), which
        torch's default weights-only loader reads in any process.

        Raises:
            TypeError: The checkpoint holds an object with no plain form;
                the message says where.
        """
        super().call_hook(fn_name, **kwargs)
        if fn_name == 'before_save_checkpoint':
            checkpoint = kwargs['checkpoint']
            for key, value in list(checkpoint.items()):
                checkpoint[key] = to_plain(value, f'checkpoint[{key!r}]')

    def resume(self, filename: str, *args, **kwargs) -> None:
        """``Runner.resume`` (the checkpoint must fit the model), then
        :func:`check_optimizer_state`, the sampler's seed
        (:func:`sync_sampler_seed`), then the random generator states the
        checkpoint holds for this process
        (:func:`~poolformer_mm.engine.loops.restore_rng_states`; mmengine
        only reseeds them)."""
        fine_tuning, self._fine_tuning = self._fine_tuning, False
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._fine_tuning = fine_tuning
        check_optimizer_state(self, filename)
        sync_sampler_seed(self)
        if restore_rng_states(self.message_hub.get_info(RNG_STATES)):
            self.logger.info('Restored the random generator states of the '
                             'checkpoint.')

    def load_or_resume(self) -> None:
        """Load or resume as mmengine does, except that:

        - auto-resume (``resume=True`` without ``load_from``) picks the
          checkpoint with :func:`find_resumable_checkpoint`: a torn newest
          file is skipped with a warning, and a work dir without checkpoints
          trains from scratch;
        - a job that its launcher started again (:func:`restart_count`:
          torchrun's ``--max-restarts``, a requeued Slurm job) resumes from
          the newest complete checkpoint in the work dir when there is one,
          whatever ``load_from`` / ``resume`` say: they describe how the
          first start began.
        """
        restarts = restart_count()
        if restarts and not self._has_loaded:
            latest = find_resumable_checkpoint(self.work_dir)
            if latest is not None:
                self.logger.info(
                    f'Restart {restarts} of this job: resuming from {latest}'
                    f', the newest complete checkpoint in {self.work_dir}.')
                self._resume, self._load_from = True, latest
        if self._resume and self._load_from is None and not self._has_loaded:
            latest = find_resumable_checkpoint(self.work_dir)
            if latest is None:
                self.logger.info(f'No checkpoint in {self.work_dir} to '
                                 'resume from: training from scratch.')
                self._resume = False
            else:
                self.logger.info(f'Resuming from {latest}, the newest '
                                 f'complete checkpoint in {self.work_dir}.')
                self._load_from = latest
        super().load_or_resume()


def sync_sampler_seed(runner: Runner) -> None:
    """Give the train sampler the seed the resumed run trained with.

    A config without a fixed seed draws a new one at every start, and the
    sampler is built with it before mmengine's ``resume`` restores the
    checkpoint's: the resumed run would shuffle its epochs otherwise than
    the run it continues, so a resumed epoch would train some samples twice
    and others not. mmengine's samplers read ``seed`` at every pass.

    Args:
        runner (Runner): The runner that has just resumed.
    """
    loader = runner.train_loop.dataloader
    sampler = getattr(loader, 'sampler', None)
    samplers = [sampler, getattr(getattr(loader, 'batch_sampler', None),
                                 'sampler', None)]
    for sampler in samplers:
        seed = getattr(sampler, 'seed', None)
        if isinstance(seed, int) and seed != runner.seed:
            print_log(
                f'The train sampler shuffles with the checkpoint\'s seed '
                f'{runner.seed} (it was built with {seed}).',
                logger='current')
            sampler.seed = runner.seed


def restart_count() -> int:
    """How many times the job's launcher has started it again: torchrun
    after a worker failed (``TORCHELASTIC_RESTART_COUNT``, up to
    ``--max-restarts``), Slurm after requeueing it (``SLURM_RESTART_COUNT``).
    0 for a first start."""
    counts = []
    for name in ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT'):
        value = os.environ.get(name, '0') or '0'
        try:
            counts.append(int(value))
        except ValueError:
            raise RuntimeError(
                f'{name}={value!r}: the launcher sets it to an integer')
    return max(counts)


def check_optimizer_state(runner: Runner, filename: str) -> None:
    """Fail right after resuming if the optimizer state does not fit the
    parameters it was assigned to.

    torch restores optimizer state by parameter *position*. A checkpoint of a
    model whose parameters are registered in another order or have other
    shapes (e.g. saved by an older version of the code) loads without
    complaint and breaks in the first ``optimizer.step()`` with a broadcast
    error; this names the parameter instead.

    Args:
        runner (Runner): The runner that has just resumed.
        filename (str): The checkpoint, for the message.

    Raises:
        CheckpointError: A state tensor's shape differs from its
            parameter's.
    """
    from mmengine.optim import OptimWrapperDict
    model = getattr(runner.model, 'module', runner.model)
    names = {id(p): n for n, p in model.named_parameters()}
    wrappers = runner.optim_wrapper
    wrappers = (
        list(wrappers.values())
        if isinstance(wrappers, OptimWrapperDict) else [wrappers])
    for wrapper in wrappers:
        optimizer = getattr(wrapper, 'optimizer', None)
        if optimizer is None:
            continue
        for group in optimizer.param_groups:
            for param in group['params']:
                for key, value in optimizer.state.get(param, {}).items():
                    if (isinstance(value, torch.Tensor) and value.dim() > 0
                            and value.shape != param.shape):
                        raise CheckpointError(
                            f'Cannot resume from {filename!r}: its optimizer '
                            f'state {key!r} has shape {tuple(value.shape)} '
                            'where the model parameter '
                            f'{names.get(id(param), "?")} has '
                            f'{tuple(param.shape)}. The checkpoint was saved '
                            'by a model with other parameters or another '
                            'parameter order (an older version of the code?).'
                            ' Start a new run from its weights with '
                            '--cfg-options load_from=PATH instead.')


def checkpoint_is_complete(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file.

    torch writes a zip archive whose central directory comes last, so a file
    cut short by a crash has none; a CRC check over every record catches
    damage in the middle. Nothing is unpickled.

    Args:
        path (str): A local file.
    """
    if not osp.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(
                    n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
                return False
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _checkpoints_in(directory: str) -> List[str]:
    """``epoch_N.pth`` / ``iter_N.pth`` in ``directory``, newest first: by
    the time they were written (an epoch-based run writes both kinds), then
    by number."""
    if not osp.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _CHECKPOINT_NAME.match(name)
        if match:
            found.append(
                (osp.getmtime(osp.join(directory, name)), int(match.group(2)),
                 osp.join(directory, name)))
    return [path for *_, path in sorted(found, reverse=True)]


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to resume from: the one ``last_checkpoint`` names if it
    is complete, otherwise the newest complete ``epoch_N.pth`` /
    ``iter_N.pth`` next to it (a warning says which was skipped).

    Args:
        work_dir (str): The run's work dir, where ``last_checkpoint`` is.

    Returns:
        str | None: None when the work dir has no checkpoint at all.

    Raises:
        CheckpointError: Checkpoints exist but none of them is complete.
    """
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is not None and checkpoint_is_complete(named):
        return named
    directories = [work_dir]
    if named is not None and osp.dirname(named) not in ('', work_dir):
        directories.insert(0, osp.dirname(named))
    candidates = [p for d in directories for p in _checkpoints_in(d)]
    for path in candidates:
        if checkpoint_is_complete(path):
            if named is not None:
                print_log(
                    f'{pointer} names {named}, which is missing or '
                    f'incomplete (a crash while it was written?); resuming '
                    f'from {path} instead.',
                    logger='current',
                    level=logging.WARNING)
            return path
    if named is None and not candidates:
        return None
    raise CheckpointError(
        f'Cannot resume from {work_dir}: '
        f'{LAST_CHECKPOINT} names {named!r} and no complete checkpoint '
        f'(epoch_N.pth / iter_N.pth) was found; checked '
        f'{candidates or "no files"}. Give one with --resume PATH or start '
        'without --resume.')
