"""Exact continuation of a stopped training: the batches and random states
a resumed run needs to go on as if it had never stopped.

mmengine resumes an epoch-based run at the start of the epoch it was in: a
checkpoint written in the middle of an epoch (by
:class:`~poolformer_mm.engine.PreemptionHook`) would make the resumed run
train that epoch's first batches twice and the whole epoch once more. An
iteration-based run it resumes by loading every batch done. And it reseeds
the random generators from the config's seed, so random augmentations
after a resume differ from those of an uninterrupted run.

- :class:`ResumableEpochBasedTrainLoop` (``train_cfg`` of the RetinaNet and
  Mask R-CNN ``configs/_base_`` files) continues an epoch after the batches
  it had already trained; :class:`ResumableIterBasedTrainLoop` (the Semantic
  FPN base) an iteration-based schedule. Both draw the batches done from the
  batch sampler and drop them (:class:`ResumableBatchSampler`): indices
  only, no image is read, and the remaining batches are exactly those of
  the uninterrupted run, whatever the batch sampler (mmdet's
  ``AspectRatioBatchSampler`` groups indices by aspect ratio, so dropping
  sampler indices instead of whole batches would not do), the number of
  processes, or the data-loader workers (persistent or not).
- :func:`capture_rng_states` / :func:`restore_rng_states`: every checkpoint
  that :class:`~poolformer_mm.engine.SafeCheckpointHook` writes carries the
  generator states of every process (Python, NumPy, torch, CUDA), and
  :class:`~poolformer_mm.engine.SafeRunner` restores them after resuming.
  Augmentations drawn in data-loader worker processes use the workers' own
  generators, which are seeded when the workers start and are not part of a
  checkpoint.
"""
import copy
import logging
import random
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.logging import print_log
from mmengine.dataset import InfiniteSampler
from mmengine.registry import DATA_SAMPLERS, LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from torch.utils.data import BatchSampler, DataLoader, Sampler

from .sample_seeds import SampleSeededDataset, sample_seed

RNG_STATES = 'rng_states'


@DATA_SAMPLERS.register_module()
class ResumableBatchSampler(BatchSampler):
    """A batch sampler that can drop the first batches of its next pass,
    and give every sample a seed of its own.

    Wraps the batch sampler a dataloader config names (or torch's
    ``BatchSampler`` when it names none) and yields its batches unchanged,
    except that after :meth:`skip_next_batches` the next pass draws that many
    batches from it and drops them. Only indices are drawn: no sample is
    loaded for a dropped batch.

    With ``seed_samples`` each index comes as ``(index, seed)``, the seed
    :func:`~poolformer_mm.engine.sample_seeds.sample_seed` of the sampler's
    seed, the epoch and the index, for
    :class:`~poolformer_mm.engine.sample_seeds.SampleSeededDataset`. The
    epoch is the sampler's ``epoch`` (mmengine's ``DefaultSampler``: set by
    ``DistSamplerSeedHook`` or the iteration-based loop), or for an
    ``InfiniteSampler`` the pass through the data set that the index belongs
    to in the sampler's stream, or else the number of passes made.

    Args:
        sampler (Sampler): The sampler, as mmengine passes it.
        batch_size (int): Samples per batch, as mmengine passes it.
        batch_sampler (dict | BatchSampler, optional): The batch sampler to
            wrap, a config (built with ``sampler`` and ``batch_size``) or an
            object. Defaults to None: ``torch.utils.data.BatchSampler``.
        drop_last (bool): For the default batch sampler: drop the last,
            smaller batch. Defaults to False.
        seed_samples (bool): Yield ``(index, seed)`` pairs.
            Defaults to False.
        seed (int, optional): The seed of the samples' seeds when the
            sampler has no ``seed`` of its own. Defaults to None.
    """

    def __init__(self,
                 sampler: Sampler,
                 batch_size: int,
                 batch_sampler: Union[dict, BatchSampler, None] = None,
                 drop_last: bool = False,
                 seed_samples: bool = False,
                 seed: Optional[int] = None) -> None:
        if batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        elif isinstance(batch_sampler, dict):
            batch_sampler = DATA_SAMPLERS.build(
                batch_sampler,
                default_args=dict(sampler=sampler, batch_size=batch_size))
        self.batch_sampler = batch_sampler
        # DistSamplerSeedHook sets the epoch through ``batch_sampler.sampler``
        # when the dataloader's own ``sampler`` has no ``set_epoch``.
        self.sampler = getattr(batch_sampler, 'sampler', sampler)
        self.batch_size = getattr(batch_sampler, 'batch_size', batch_size)
        self.drop_last = getattr(batch_sampler, 'drop_last', drop_last)
        self.seed_samples = seed_samples
        self.seed = seed
        if seed_samples and self.samples_seed() is None:
            raise ValueError(
                'seed_samples needs a seed: the sampler has none, give '
                '`seed`')
        self._skip = 0
        self._passes = 0
        # Indices drawn from an InfiniteSampler's stream since it started.
        self._position = 0

    def samples_seed(self) -> Optional[int]:
        """The seed the samples' seeds derive from: the sampler's, else
        ``seed``."""
        seed = getattr(self.sampler, 'seed', None)
        return seed if isinstance(seed, int) else self.seed

    def skip_next_batches(self, count: int) -> None:
        """Drop the first ``count`` batches of the next pass."""
        if count < 0:
            raise ValueError(f'count must be >= 0, not {count}')
        self._skip = count

    def restart(self) -> None:
        """Forget the pass that an abandoned data-loader iterator began, so
        that the next pass starts clean: an ``InfiniteSampler``'s stream
        starts again from its beginning, and the half-filled aspect-ratio
        buckets of MMDetection's ``AspectRatioBatchSampler`` are emptied.

        A resumed iteration-based run needs it: mmengine's loop makes a
        data-loader iterator when it is built, whose workers prefetch
        batches at once (drawing them from the one stream of an
        ``InfiniteSampler``, and leaving a full bucket behind, which the
        next pass would never yield).
        """
        if isinstance(self.sampler, InfiniteSampler):
            self.sampler.indices = self.sampler._indices_of_rank()
        buckets = getattr(self.batch_sampler, '_aspect_ratio_buckets', None)
        if isinstance(buckets, list):
            self.batch_sampler._aspect_ratio_buckets = [[] for _ in buckets]
        self._position = 0

    def _epoch_of(self) -> Callable[[int], int]:
        """The epoch of the sample at stream position ``p`` in this pass."""
        sampler = self.sampler
        if isinstance(sampler, InfiniteSampler):
            world_size, rank, size = (sampler.world_size, sampler.rank,
                                      max(sampler.size, 1))
            return lambda p: (p * world_size + rank) // size
        epoch = getattr(sampler, 'epoch', None)
        if not isinstance(epoch, int):
            epoch = self._passes
        return lambda p: epoch

    def __iter__(self) -> Iterator[list]:
        skip, self._skip = self._skip, 0
        epoch_of = self._epoch_of() if self.seed_samples else None
        self._passes += 1
        for n, batch in enumerate(self.batch_sampler):
            start = self._position
            self._position += len(batch)
            if n < skip:
                continue
            if epoch_of is None:
                yield batch
            else:
                seed = self.samples_seed()
                yield [(index, sample_seed(seed, epoch_of(start + k), index))
                       for k, index in enumerate(batch)]

    def __len__(self) -> int:
        return len(self.batch_sampler)


def resumable_dataloader_cfg(dataloader_cfg: dict,
                             seed: Optional[int] = None) -> dict:
    """A copy of a train dataloader config whose batch sampler is wrapped in
    :class:`ResumableBatchSampler` (unchanged if it already is).

    Args:
        dataloader_cfg (dict): The config's ``train_dataloader``.
        seed (int, optional): Give every sample a seed of its own derived
            from this one: the batch sampler yields ``(index, seed)`` pairs
            and the data set is wrapped in
            :class:`~poolformer_mm.engine.sample_seeds.SampleSeededDataset`.
            Defaults to None: no per-sample seeds.
    """
    cfg = copy.deepcopy(dataloader_cfg)
    inner = cfg.pop('batch_sampler', None)
    if isinstance(inner, dict) and inner.get('type') in (
            'ResumableBatchSampler', ResumableBatchSampler):
        wrapper = inner
    else:
        wrapper = dict(type=ResumableBatchSampler, batch_sampler=inner)
        if inner is None:
            # torch rejects drop_last next to a batch sampler: it moves into
            # the default one. With a batch sampler of the config's own it
            # stays where the config put it.
            wrapper['drop_last'] = cfg.pop('drop_last', False)
    if seed is not None:
        wrapper.update(seed_samples=True, seed=seed)
    # (A ConfigDict stores a copy of what it is given.)
    cfg['batch_sampler'] = wrapper
    if seed is not None:
        dataset = cfg.get('dataset')
        if not (isinstance(dataset, dict) and dataset.get('type') in (
                'SampleSeededDataset', SampleSeededDataset)):
            cfg['dataset'] = dict(type=SampleSeededDataset, dataset=dataset)
    return cfg


class _ResumableDataloader:
    """The train dataloader of the resumable loops (the mixin before
    mmengine's loop class): :func:`resumable_dataloader_cfg` of the config,
    seeded per sample with the runner's seed when ``seed_per_sample``."""

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 *args,
                 seed_per_sample: bool = True,
                 **kwargs) -> None:
        if isinstance(dataloader, dict):
            dataloader = resumable_dataloader_cfg(
                dataloader, runner.seed if seed_per_sample else None)
        elif seed_per_sample:
            print_log(
                'seed_per_sample: the train dataloader was given as an '
                'object, not a config, so its samples draw from the '
                "data-loader workers' generators (mmengine's behaviour).",
                logger='current',
                level=logging.WARNING)
        super().__init__(runner, dataloader, *args, **kwargs)


def _load_and_drop(batches: Iterator, done: int) -> Iterator:
    """Advance ``batches`` past the ``done`` batches already trained by
    loading them: the way left when the train dataloader was given as an
    object, so no :class:`ResumableBatchSampler` can skip them by index."""
    print_log(
        'The train dataloader was given as an object, not a config: '
        f'loading the {done} batches done to skip them.',
        logger='current',
        level=logging.WARNING)
    for _ in range(done):
        next(batches)
    return batches


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(_ResumableDataloader, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes in the middle of an epoch.

    Takes the same arguments as :class:`mmengine.runner.EpochBasedTrainLoop`.
    After resuming from a checkpoint written at iteration ``i`` of epoch
    ``e`` (``i - e * len(dataloader)`` batches of it done), the epoch goes on
    with its next batch: the hooks see the batch indices of the
    uninterrupted run, and the epoch ends (validation, epoch checkpoint,
    epoch-based schedules) as it would have. A checkpoint written at the end
    of an epoch resumes as in mmengine.

    A dataloader given as a config gets a :class:`ResumableBatchSampler`, so
    the batches done are skipped by index. A dataloader given as an object
    is advanced by loading them (slower, same batches).

    Args:
        seed_per_sample (bool): Load every sample with the random generators
            seeded from (seed, epoch, sample index)
            (:mod:`~poolformer_mm.engine.sample_seeds`), so that a resumed
            run, or the same run with another ``num_workers``, augments every
            sample as the uninterrupted run does. False draws from the
            data-loader workers' generators, as mmengine does.
            Defaults to True.

        The other arguments are those of ``EpochBasedTrainLoop``.
    """

    def batches_done_in_epoch(self) -> int:
        """Batches of the current epoch trained before a resume (0 at the
        start of an epoch).

        Raises:
            RuntimeError: The iteration does not lie in the current epoch,
                e.g. the data set, batch size or number of processes changed
                since the checkpoint.
        """
        per_epoch = len(self.dataloader)
        done = self._iter - self._epoch * per_epoch
        if not 0 <= done <= per_epoch:
            raise RuntimeError(
                f'Cannot continue epoch {self._epoch + 1} at iteration '
                f'{self._iter}: an epoch has {per_epoch} iterations, so it '
                f'spans iterations {self._epoch * per_epoch}-'
                f'{(self._epoch + 1) * per_epoch}. The data set, the batch '
                'size or the number of processes differs from the run that '
                'wrote the checkpoint.')
        return done

    def run_epoch(self) -> None:
        """Iterate the rest of the current epoch."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        done = self.batches_done_in_epoch()
        batches = self._batches_after(done)
        for idx, data_batch in enumerate(batches, start=done):
            self.run_iter(idx, data_batch)

        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _batches_after(self, done: int):
        if done == 0:
            return self.dataloader
        print_log(
            f'Continuing epoch {self._epoch + 1} after the {done} of its '
            f'{len(self.dataloader)} iterations that the checkpoint had '
            'trained.',
            logger='current')
        batch_sampler = self.dataloader.batch_sampler
        if isinstance(batch_sampler, ResumableBatchSampler):
            batch_sampler.skip_next_batches(done)
            return self.dataloader
        return _load_and_drop(iter(self.dataloader), done)


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(_ResumableDataloader, IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that resumes without loading the batches done.

    Takes the same arguments as :class:`mmengine.runner.IterBasedTrainLoop`.
    mmengine resumes at iteration ``i`` by drawing ``i`` batches from the
    dataloader, each loaded and dropped: late in a long schedule that takes
    as long as loading that many batches. This loop draws them from the
    batch sampler instead (:class:`ResumableBatchSampler`; indices only) and
    continues with the same batches. With an ``InfiniteSampler`` (the
    MMSegmentation configs) the batches are one stream; with another sampler
    the dataloader restarts every ``len(dataloader)`` batches with the next
    ``set_epoch``, as mmengine's does.

    Args:
        seed_per_sample (bool): As for :class:`ResumableEpochBasedTrainLoop`.
            Defaults to True.

        The other arguments are those of ``IterBasedTrainLoop``.
    """

    def run(self) -> torch.nn.Module:
        """Launch training: mmengine's loop, resumed by index."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            self._advance(self._iter)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()

            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)

            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                self.runner.val_loop.run()

        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def _advance(self, done: int) -> None:
        """Go on after ``done`` batches."""
        batch_sampler = self.dataloader.batch_sampler
        if not isinstance(batch_sampler, ResumableBatchSampler):
            _load_and_drop(self.dataloader_iterator, done)
            return
        sampler = batch_sampler.sampler
        passes, into_pass = 0, done
        batch_sampler.restart()
        if not isinstance(sampler, InfiniteSampler):
            passes, into_pass = divmod(done, len(self.dataloader))
            if passes and hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(passes)
        print_log(
            f'Continuing at iteration {done + 1}: drawing the {done} batches '
            'done from the batch sampler without loading them.',
            logger='current')
        batch_sampler.skip_next_batches(into_pass)
        self.dataloader_iterator = _InfiniteDataloaderIterator(
            self.dataloader)
        # The restarts it counts are the passes already made.
        self.dataloader_iterator._epoch = passes


def _rng_state() -> dict:
    state = dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def capture_rng_states() -> List[dict]:
    """The random generator states of every process, in rank order.

    A collective call in a multi-process run: every rank must call it.

    Returns:
        list[dict]: Per rank, the states of Python's ``random``, NumPy's
        global generator, torch's CPU generator and (when CUDA is in use)
        every CUDA generator.
    """
    state = _rng_state()
    if get_world_size() == 1:
        return [state]
    return all_gather_object(state)


def restore_rng_states(states: Optional[List[dict]]) -> bool:
    """Set this process's random generators to its entry in ``states``.

    Args:
        states (list[dict], optional): As :func:`capture_rng_states` returns
            them.

    Returns:
        bool: Whether they were restored. Not when ``states`` is None or was
        captured by another number of processes (a warning says so).
    """
    if not states:
        return False
    if len(states) != get_world_size():
        print_log(
            f'The checkpoint holds the random states of {len(states)} '
            f'processes, this run has {get_world_size()}: the generators '
            'keep their seeds.',
            logger='current',
            level=logging.WARNING)
        return False
    state = states[get_rank()]
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return True
