"""Where the training runtime depends on mmengine's (and MMDetection's)
internals: what to re-check when mmengine changes.

The runtime extends mmengine through its registries and by subclassing, but
in a few places mmengine offers no extension point, so the runtime copies a
method body or reads a private member. They are listed here, with the
mmengine version they were written against (:data:`MMENGINE_VERSION`):

- :data:`COPIED_METHODS`: mmengine methods whose body a method of this
  package repeats (with its own changes), with hashes of mmengine's source:
  one per tested stack where they differ (mmengine 0.10.7, onedl-mmengine
  0.10.12). ``tests/test_engine/test_mmengine_coupling.py`` fails, naming
  the method, when the installed mmengine's source of one is none of them:
  compare the two, carry mmengine's change over, and record the new hash.
- :data:`PRIVATE_MEMBERS`: private attributes and functions the runtime
  reads or writes; the test checks that they still exist.

Nothing here is imported by the runtime; it is the list the test and a
maintainer read.
"""
from typing import NamedTuple, Tuple

MMENGINE_VERSION = '0.10.7'


class CopiedMethod(NamedTuple):
    """An mmengine method whose body ``ours`` repeats."""
    theirs: str  # module:Class.method
    ours: str  # module:Class.method
    # First 16 hex digits of the dedented source, per tested mmengine.
    source_sha256: Tuple[str, ...]
    why: str


COPIED_METHODS: Tuple[CopiedMethod, ...] = (
    CopiedMethod(
        'mmengine.runner:EpochBasedTrainLoop.run_epoch',
        'poolformer_mm.engine.loops:ResumableEpochBasedTrainLoop.run_epoch',
        ('15a2640790e3e43e', ),
        'the epoch starts after the batches a mid-epoch checkpoint trained; '
        'mmengine has no hook between building the iterator and the first '
        'batch'),
    CopiedMethod(
        'mmengine.runner:IterBasedTrainLoop.run',
        'poolformer_mm.engine.loops:ResumableIterBasedTrainLoop.run',
        # onedl-mmengine 0.10.12 changed only the resume's advance of the
        # iterator (fast_forward_on_resume, skip_iter): the part this
        # method replaces by skipping in the batch sampler.
        ('4ae70d98940dda6c', '48b8b9c181c6001b'),
        'a resume skips the batches done in the batch sampler instead of '
        'loading every one; mmengine advances its iterator in run()'),
    CopiedMethod(
        'mmengine.runner:Runner.load_checkpoint',
        'poolformer_mm.engine.runner:SafeRunner.load_checkpoint',
        ('7da9fa33940582fb', ),
        'the file is read as plain data and fitted under the package\'s '
        'policy; mmengine reads and loads in the same method'),
    CopiedMethod(
        'mmengine.hooks:CheckpointHook._save_checkpoint_with_step',
        'poolformer_mm.engine.hooks:SafeCheckpointHook.'
        '_save_checkpoint_with_step',
        ('9b971b6cd3cc507d', ),
        'outdated checkpoints are deleted after the new one is complete '
        '(mmengine deletes them first)'),
)


class PrivateMember(NamedTuple):
    """A private attribute or function the runtime relies on."""
    owner: str  # module:object (a class or a module)
    name: str
    where: str
    # 'class': an attribute of the class (methods, class attributes);
    # 'instance': set in the owner's __init__ (checked in its source).
    kind: str = 'class'


PRIVATE_MEMBERS: Tuple[PrivateMember, ...] = (
    PrivateMember('mmengine.runner:Runner', '_has_loaded',
                  'SafeRunner.load_checkpoint, load_or_resume', 'instance'),
    PrivateMember('mmengine.runner:Runner', '_resume',
                  'SafeRunner.load_or_resume', 'instance'),
    PrivateMember('mmengine.runner:Runner', '_load_from',
                  'SafeRunner.load_or_resume', 'instance'),
    PrivateMember('mmengine.runner.loops:_InfiniteDataloaderIterator',
                  '_epoch', 'ResumableIterBasedTrainLoop._advance',
                  'instance'),
    PrivateMember('mmengine.runner:loops', '_InfiniteDataloaderIterator',
                  'ResumableIterBasedTrainLoop._advance'),
    PrivateMember('mmengine.runner:EpochBasedTrainLoop', '_epoch',
                  'ResumableEpochBasedTrainLoop', 'instance'),
    PrivateMember('mmengine.runner:EpochBasedTrainLoop', '_iter',
                  'ResumableEpochBasedTrainLoop', 'instance'),
    PrivateMember('mmengine.runner:IterBasedTrainLoop', '_iter',
                  'ResumableIterBasedTrainLoop', 'instance'),
    PrivateMember('mmengine.runner:IterBasedTrainLoop', '_max_iters',
                  'ResumableIterBasedTrainLoop.run', 'instance'),
    PrivateMember('mmengine.runner:IterBasedTrainLoop',
                  '_decide_current_val_interval',
                  'ResumableIterBasedTrainLoop.run'),
    PrivateMember('mmengine.hooks:CheckpointHook',
                  '_save_checkpoint_with_step',
                  'SafeCheckpointHook (overridden)'),
    PrivateMember('mmengine.dataset:InfiniteSampler', '_indices_of_rank',
                  'ResumableBatchSampler.restart'),
    PrivateMember('mmdet.datasets.samplers:AspectRatioBatchSampler',
                  '_aspect_ratio_buckets', 'ResumableBatchSampler.restart',
                  'instance'),
    PrivateMember('mmengine.logging:HistoryBuffer', '_log_history',
                  'checkpoint.plain.to_plain', 'instance'),
    PrivateMember('mmengine.logging:HistoryBuffer', '_count_history',
                  'checkpoint.plain.to_plain', 'instance'),
    PrivateMember('mmengine.config:utils', 'MODULE2PACKAGE',
                  'config_package.register_config_package (edited: '
                  'mmengine offers no API to add a config package)'),
)
