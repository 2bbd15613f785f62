"""Random augmentations that depend on the sample, not on the process that
loads it.

mmengine seeds each data-loader worker from (seed, rank, worker id), and
every random transform (flip, crop, resize scale, photometric changes,
MMDetection's retry of a broken sample) draws from the global generators of
the process that runs the pipeline. So the augmentations of a sample depend
on which worker loads it and on what that worker drew before: a run resumed
in the middle of an epoch, whose workers start afresh, or the same run with
another ``num_workers``, trains on other augmented images. Neither mmengine
nor PyTorch's ``DataLoader`` offers anything else.

Here every sample is loaded with Python's, NumPy's and torch's global
generators seeded from :func:`sample_seed` of (seed, epoch, sample index),
and restored afterwards (so the main process's draws, e.g. stochastic depth,
do not depend on the loading either). The batch sampler
(:class:`~poolformer_mm.engine.ResumableBatchSampler` with
``seed_samples=True``) computes each sample's seed in the main process and
sends it with the index; :class:`SampleSeededDataset` loads the index under
it. The train loops of this package set both up when their
``seed_per_sample`` is True (the ``configs/_base_`` files name it).
"""
import contextlib
import random
from typing import Any, Iterator, Tuple, Union

import numpy as np
import torch
from mmengine.registry import DATASETS
from torch.utils.data import Dataset

# Seeds are drawn from 64 bits; NumPy's legacy global generator takes 32.
_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index`` in ``epoch`` of a run seeded with
    ``seed``: 64 bits from NumPy's ``SeedSequence`` of the three, so that
    nearby triples give unrelated streams."""
    entropy = [int(seed) & _MASK64, int(epoch), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded_generators(seed: int) -> Iterator[None]:
    """Inside: Python's ``random``, NumPy's global generator and torch's CPU
    generator seeded from ``seed``; afterwards their states as before."""
    saved = (random.getstate(), np.random.get_state(),
             torch.random.get_rng_state())
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    # The CPU generator only: torch.manual_seed would reseed CUDA's too.
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


@DATASETS.register_module()
class SampleSeededDataset(Dataset):
    """A data set whose samples load under their own seeds.

    ``dataset[(index, seed)]`` is ``dataset.dataset[index]`` loaded inside
    :func:`seeded_generators` of ``seed``; a plain ``dataset[index]`` is
    loaded as the wrapped data set loads it. Every other attribute
    (``metainfo``, ``get_data_info``, ``pipeline``, ...) is the wrapped data
    set's.

    Args:
        dataset (dict | Dataset): The data set, or its config (built in the
            current scope, then fully initialised, as mmengine's
            ``build_dataloader`` does).
    """

    def __init__(self, dataset: Union[dict, Dataset]) -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
            if hasattr(dataset, 'full_init'):
                dataset.full_init()
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with seeded_generators(seed):
                return self.dataset[index]
        return self.dataset[key]

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def __getattr__(self, name: str) -> Any:
        # Only for what the instance lacks; 'dataset' itself is missing
        # while pickle restores an instance (data-loader workers).
        if name == 'dataset' or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.dataset, name)
